"""The input gradient ∇_x U_net(x) of a piecewise-linear ConvNet EBM without autograd.

For the lightweight EBM with LeakyReLU (or ReLU) activations (:class:`ebmctl.nn.ebm.LightweightEBM`)
the gradient is one forward pass that keeps each layer's output (its sign is the activation's
mask) and one transposed pass: the last convolution covers the remaining map, so its gradient
is its weight; each earlier layer multiplies by the mask's slope (``leaky_relu_backward`` on the
kept output) and applies the transposed convolution (``convolution_backward`` with only the
input gradient). These are the kernels autograd calls, so in float32 the result equals
``torch.autograd.grad`` of the energy; what is saved is autograd's graph building, the energy's
last layer, and, for reduced precision, the per-step weight casts that autocast repeats
(frozen weights are not cached by autocast): weights are cast and laid out once per chain.

Only networks whose every piece this module knows are accepted (:func:`supports`); smooth
activations (``smooth_leaky``, SiLU, ...) have curvature that the exact-gradient attack
differentiates through, and stay on autograd.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakTensorKeyDictionary

from ebmctl.nn.ebm import LightweightEBM

#: precision name → compute dtype of the explicit gradient (fp32/fp64: the network's own dtype)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: dense lowering: a layer becomes one matrix product when its matrix (inputs × outputs) has
#: at most this many entries (4 MiB in fp32) ...
DENSE_MAX_ENTRIES = 1 << 20
#: ... and no more multiply-adds than this factor times the convolution's (small maps: the
#: padded 4x4 stride-2 layer from 4x4 to 2x2 is exactly as much work as its matrix); the first
#: layer's input gradient (a transposed convolution to 1–3 channels, which convolution kernels
#: handle poorly) is lowered on the size bound alone
DENSE_MAX_RATIO = 1.5
#: lowered matrices per convolution weight, rebuilt when the weight changes (its version)
_DENSE = WeakTensorKeyDictionary()  # (tensors compare elementwise: not a WeakKeyDictionary)


def _slope(act: nn.Module) -> float | None:
    if type(act) is nn.LeakyReLU:
        return float(act.negative_slope)
    if type(act) is nn.ReLU:
        return 0.0
    return None


def _plain_conv(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.groups == 1 and m.dilation == (1, 1)
            and m.padding_mode == "zeros" and isinstance(m.padding, tuple))


def _hooked(net: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
               for m in net.modules())


def supports(net: nn.Module) -> bool:
    """True when ``net`` is exactly a :class:`LightweightEBM` built from plain convolutions
    and LeakyReLU/ReLU activations with no hooks: the networks :class:`ExplicitGrad` handles.
    Anything else (subclasses, smooth activations, compiled or wrapped modules) is False."""
    if type(net) is not LightweightEBM or _hooked(net):
        return False
    layers = list(net.net)
    if len(layers) < 3 or len(layers) % 2 == 0:
        return False
    convs, acts = layers[0:-1:2], layers[1:-1:2]
    return (all(_plain_conv(c) for c in convs) and _plain_conv(layers[-1])
            and all(_slope(a) is not None for a in acts))


class ExplicitGrad:
    """∇_x U_net(x) of a batch for a network :func:`supports` accepts, without autograd.

    Built once per chain (the network is frozen while it samples): the weights are cast to
    the compute dtype (``precision`` bf16/fp16, else the network's own float32/float64) and,
    with ``channels_last``, laid out channels-last once. Calling it on ``x`` [B,C,H,W] returns
    the gradient [B,C,H,W] in ``x``'s dtype and memory layout (``energy=True``: also the
    energies [B] in ``x``'s dtype).

    With ``dense`` (NCHW only) layers on small maps run as one matrix product each (the
    convolution written out as a matrix, see :data:`DENSE_MAX_ENTRIES`): on 8×8 inputs the
    convolution kernels' per-call overhead and poor shapes cost more than the dense product's
    extra zeros. The matrices are built from the weights on first use and kept while the
    weights are unchanged.

    Raises:
        ValueError: ``net`` is not supported (check :func:`supports` first), or ``dense``
            with ``channels_last``.
    """

    def __init__(self, net: nn.Module, precision: str = "fp32", channels_last: bool = False,
                 dense: bool = False):
        if not supports(net):
            raise ValueError("ExplicitGrad needs a plain LeakyReLU/ReLU LightweightEBM")
        if dense and channels_last:
            raise ValueError("the dense lowering works on NCHW rows only")
        self.dense = dense
        self.sources = [c.weight for c in list(net.net)[0:-1:2]]
        self.plans: dict[tuple, list] = {}
        layers = list(net.net)
        param = next(net.parameters())
        self.dtype = _DTYPES.get(precision, param.dtype)
        fmt = torch.channels_last if channels_last else torch.contiguous_format

        def prep(w: torch.Tensor | None) -> torch.Tensor | None:
            if w is None:
                return None
            w = w.detach().to(self.dtype)
            return w.contiguous(memory_format=fmt) if w.dim() == 4 else w.contiguous()

        self.layers = [(prep(c.weight), prep(c.bias), c.stride, c.padding, _slope(a))
                       for c, a in zip(layers[0:-1:2], layers[1:-1:2])]
        last = layers[-1]
        self.last = (prep(last.weight), prep(last.bias), last.stride, last.padding)

    def _plan(self, shape: tuple) -> list:
        """Per layer: (dense forward matrix and bias, or None; dense input-gradient matrix, or
        None; output shape) for rows of ``shape`` (C,H,W)."""
        plan = self.plans.get(shape)
        if plan is not None:
            return plan
        plan, in_shape = [], shape
        lowered = dense_layers([(w.shape, stride, padding) for w, _, stride, padding, _ in
                                self.layers], shape)
        for (w, b, stride, padding, _), src, (fwd, bwd, out_shape) in zip(
                self.layers, self.sources, lowered):
            mats = _dense_matrix(src, w, stride, padding, in_shape) if (fwd or bwd) else None
            bias = None
            if fwd and b is not None:
                bias = b.repeat_interleave(out_shape[1] * out_shape[2])  # NCHW: channel-major
            plan.append(((mats[0], bias) if fwd else None, mats[1] if bwd else None, out_shape))
            in_shape = out_shape
        self.plans[shape] = plan
        return plan

    def __call__(self, x: torch.Tensor, energy: bool = False):
        h = x if x.dtype == self.dtype else x.to(self.dtype)
        plan = self._plan(tuple(x.shape[1:])) if self.dense else [(None, None, None)] * len(
            self.layers)
        kept = []
        for (w, b, stride, padding, slope), (fwd, bwd, out_shape) in zip(self.layers, plan):
            inp = h
            if fwd is not None:
                m, bias = fwd
                flat = h.reshape(h.shape[0], -1)
                h = (torch.addmm(bias, flat, m) if bias is not None else flat @ m).view(
                    h.shape[0], *out_shape)
            else:
                h = F.conv2d(h, w, b, stride, padding)
            # in place: the output is kept anyway (its sign is the mask), so no second buffer
            h = torch.relu_(h) if slope == 0.0 else F.leaky_relu_(h, slope)
            kept.append((inp, w, stride, padding, slope, h, bwd))
        wl, bl, sl, pl = self.last
        out_hw = ((h.shape[-2] + 2 * pl[0] - wl.shape[-2]) // sl[0] + 1,
                  (h.shape[-1] + 2 * pl[1] - wl.shape[-1]) // sl[1] + 1)
        if out_hw == (1, 1) and pl == (0, 0) and tuple(wl.shape[-2:]) == tuple(h.shape[-2:]):
            # the energy is ⟨w, h⟩ + b per image: its gradient is w itself, broadcast over rows
            g = wl.expand(h.shape[0], *wl.shape[1:])
        else:
            ones = h.new_ones((h.shape[0], wl.shape[0], *out_hw))
            g = torch.ops.aten.convolution_backward(
                ones, h, wl, None, sl, pl, (1, 1), False, (0, 0), 1, (True, False, False))[0]
        e = None
        if energy:
            e = F.conv2d(h, wl, bl, sl, pl).flatten(1).sum(1).to(x.dtype)
        for inp, w, stride, padding, slope, out, bwd in reversed(kept):
            g = torch.ops.aten.leaky_relu_backward(g, out, slope, True)
            if bwd is not None:
                g = torch.mm(g.reshape(g.shape[0], -1), bwd).view(inp.shape)
            else:
                g = torch.ops.aten.convolution_backward(
                    g, inp, w, None, stride, padding, (1, 1), False, (0, 0), 1,
                    (True, False, False))[0]
        g = g if g.dtype == x.dtype else g.to(x.dtype)
        return (e, g) if energy else g


def dense_layers(convs: list[tuple], shape: tuple) -> list[tuple[bool, bool, tuple]]:
    """For convolutions given as (weight shape, stride, padding) applied in turn to rows of
    ``shape`` (C,H,W): per layer (forward lowered, input gradient lowered, output shape) under
    the bounds :data:`DENSE_MAX_ENTRIES` and :data:`DENSE_MAX_RATIO`."""
    out, in_shape = [], tuple(shape)
    for i, (wshape, stride, padding) in enumerate(convs):
        ho = (in_shape[1] + 2 * padding[0] - wshape[2]) // stride[0] + 1
        wo = (in_shape[2] + 2 * padding[1] - wshape[3]) // stride[1] + 1
        n_in = in_shape[0] * in_shape[1] * in_shape[2]
        n_out = wshape[0] * ho * wo
        macs = n_out * wshape[1] * wshape[2] * wshape[3]
        fwd = n_in * n_out <= min(DENSE_MAX_ENTRIES, DENSE_MAX_RATIO * macs)
        bwd = n_in * n_out <= DENSE_MAX_ENTRIES and (fwd or i == 0)
        out.append((fwd, bwd, (wshape[0], ho, wo)))
        in_shape = (wshape[0], ho, wo)
    return out


def dense_applies(net: nn.Module, shape: tuple) -> bool:
    """True when the dense lowering would change any layer of ``net`` (:func:`supports` must
    hold) for rows of ``shape`` (C,H,W)."""
    convs = [(c.weight.shape, c.stride, c.padding) for c in list(net.net)[0:-1:2]]
    return any(f or b for f, b, _ in dense_layers(convs, shape))


def _dense_matrix(src: torch.Tensor, w: torch.Tensor, stride, padding, in_shape: tuple
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, Mᵀ) of the convolution with weight ``w`` on rows of ``in_shape``: x.flatten() @ M
    equals conv2d(x).flatten() without bias (NCHW order). Built by convolving the one-hot
    basis, so its entries are the weights themselves; cached per ``src`` parameter and its
    version (an optimiser step changes the version)."""
    key = (src._version, w.dtype, w.device, tuple(in_shape), tuple(stride), tuple(padding))
    hit = _DENSE.get(src)
    if hit is not None and hit[0] == key:
        return hit[1]
    n = in_shape[0] * in_shape[1] * in_shape[2]
    rows = []
    for start in range(0, n, 256):  # the one-hot basis in slices: memory ~256 rows at a time
        k = min(256, n - start)
        basis = torch.zeros((k, n), dtype=w.dtype, device=w.device)
        basis[torch.arange(k, device=w.device), torch.arange(start, start + k,
                                                             device=w.device)] = 1
        rows.append(F.conv2d(basis.view(k, *in_shape), w.contiguous(), None, stride,
                             padding).reshape(k, -1))
    m = torch.cat(rows).contiguous()
    mats = (m, m.t().contiguous())
    _DENSE[src] = (key, mats)
    return mats


class CudaGraphGrad:
    """A gradient function replayed from a captured CUDA graph (CUDA only; shape-static).

    ``fn`` must be free of host synchronisation and allocation-dependent control flow (the
    explicit gradient is: a fixed sequence of kernels). One graph is captured per input shape
    and layout on first use; calling copies ``x`` into the static input, replays, and returns
    a copy of the static output (blocks of one shape share a graph, so the output must not
    alias it). Capture failures fall back to ``fn`` for good, with one warning.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn
        self.graphs: dict[tuple, tuple] = {}
        self.failed = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed or x.device.type != "cuda":
            return self.fn(x)
        key = (tuple(x.shape), x.stride(), x.dtype)
        entry = self.graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(x)
            except Exception as exc:  # capture is best effort: the eager step is the same math
                warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}); running "
                              "the step eagerly", RuntimeWarning, stacklevel=2)
                self.failed = True
                return self.fn(x)
            self.graphs[key] = entry
        graph, static_x, static_g = entry
        static_x.copy_(x)
        graph.replay()
        return static_g.clone()

    def _capture(self, x: torch.Tensor) -> tuple:
        static_x = x.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up: kernel selection and workspace allocation
            for _ in range(2):
                self.fn(static_x)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_g = self.fn(static_x)
        return graph, static_x, static_g
