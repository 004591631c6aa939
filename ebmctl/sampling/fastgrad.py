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

from ebmctl.nn.ebm import LightweightEBM

#: precision name → compute dtype of the explicit gradient (fp32/fp64: the network's own dtype)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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

    Raises:
        ValueError: ``net`` is not supported (check :func:`supports` first).
    """

    def __init__(self, net: nn.Module, precision: str = "fp32", channels_last: bool = False):
        if not supports(net):
            raise ValueError("ExplicitGrad needs a plain LeakyReLU/ReLU LightweightEBM")
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

    def __call__(self, x: torch.Tensor, energy: bool = False):
        h = x if x.dtype == self.dtype else x.to(self.dtype)
        kept = []
        for w, b, stride, padding, slope in self.layers:
            inp = h
            h = F.conv2d(h, w, b, stride, padding)
            # in place: the output is kept anyway (its sign is the mask), so no second buffer
            h = torch.relu_(h) if slope == 0.0 else F.leaky_relu_(h, slope)
            kept.append((inp, w, stride, padding, slope, h))
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
        for inp, w, stride, padding, slope, out in reversed(kept):
            g = torch.ops.aten.leaky_relu_backward(g, out, slope, True)
            g = torch.ops.aten.convolution_backward(
                g, inp, w, None, stride, padding, (1, 1), False, (0, 0), 1,
                (True, False, False))[0]
        g = g if g.dtype == x.dtype else g.to(x.dtype)
        return (e, g) if energy else g


class CudaGraphGrad:
    """A gradient function replayed from a captured CUDA graph (CUDA only; shape-static).

    ``fn`` must be free of host synchronisation and allocation-dependent control flow (the
    explicit gradient is: a fixed sequence of kernels). One graph is captured per input shape
    and layout on first use; calling copies ``x`` into the static input, replays, and returns
    the static output, which the next call overwrites (the sampler consumes it at once).
    Capture failures fall back to ``fn`` for good, with one warning.
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
        return static_g

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
