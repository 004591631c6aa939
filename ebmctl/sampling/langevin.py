"""Langevin sampling: the hot loop of every command. Pure functions over tensors.

Update (docs/algorithms.md#langevin-update):  X ← X − (τ²/(2T))·∇U_net(X) + η·τ·Z.
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

import torch
from torch import nn

from ebmctl.config import AutoBool, AutoInt, setting
from ebmctl.device import autocast, resolve_precision
from ebmctl.errors import ConfigError, NumericalError
from ebmctl.sampling import autotune, fastgrad
from ebmctl.sampling.autotune import AUTO, CPU_BLOCK_ELEMENTS, cpu_block_rows  # noqa: F401

#: Process-wide default for ``LangevinSettings.compile = None``; commands set it from the
#: profile key ``langevin.compile`` (see :func:`set_compile_default`).
_COMPILE_DEFAULT = False
#: One compiled wrapper per network (compiling is the expensive part; reuse it across calls).
_COMPILED: "weakref.WeakKeyDictionary[nn.Module, nn.Module]" = weakref.WeakKeyDictionary()
_COMPILE_FAILED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


@contextlib.contextmanager
def frozen(net: nn.Module) -> Iterator[nn.Module]:
    """Freeze parameters while sampling so no parameter gradients are built."""
    flags = [p.requires_grad for p in net.parameters()]
    for p in net.parameters():
        p.requires_grad_(False)
    try:
        yield net
    finally:
        for p, f in zip(net.parameters(), flags):
            p.requires_grad_(f)


@dataclass
class LangevinSettings:
    tau: float
    temperature: float
    eta: float = 1.0
    #: fp32 | bf16 | fp16 (autocast) | fp64 | ``"auto"`` (measured, :mod:`.autotune`)
    precision: str = "fp32"
    #: channels_last memory format; ``"auto"``: measured
    channels_last: bool | str = False
    #: torch.compile the energy network (forward + input-gradient backward); None = the
    #: process default; ``"auto"``: a candidate on CUDA only (on CPUs compiling costs minutes).
    compile: bool | str | None = None
    #: rows per gradient evaluation (0 = whole batch; None = by image size on CPU, see
    #: :func:`cpu_block_rows`; ``"auto"``: measured). Cache-sized blocks ran up to ~1.5×
    #: faster than one big batch.
    block_rows: int | str | None = None
    #: run exactly this variant, whatever the fields above say (benchmarks and tests)
    variant: "autotune.Variant | None" = None

    @property
    def drift(self) -> float:
        return self.tau ** 2 / (2.0 * self.temperature)

    @property
    def compile_request(self) -> bool | str:
        """``compile`` with None replaced by the process default (True, False or ``auto``)."""
        return _COMPILE_DEFAULT if self.compile is None else self.compile

    @property
    def use_compile(self) -> bool:
        return self.compile_request is True


@dataclass(frozen=True)
class LangevinConfig:
    """The profile section ``[langevin]``: how every Langevin chain runs (step size and
    temperature of the update above, precision, memory layout, batching, compilation)."""

    section: ClassVar[str] = "langevin"

    tau: float = setting(0.01, "Langevin step size τ (internal [-1,1] units)", minimum=0)
    temperature: float = setting(5e-5, "temperature T: drift τ²/(2T)", minimum=1e-12)
    precision: str = setting("fp32", "fp32 | bf16 | auto (measured: bf16 only where its "
                             "drift agrees with fp32's and it is faster)",
                             choices=("fp32", "bf16", "fp16", "auto"))
    channels_last: AutoBool = setting(AUTO, "channels_last memory format: true | false | auto "
                                      "(measured once per machine and EBM shape)")
    chunk_size: AutoInt = setting(AUTO, "max images per sampler batch (noise is drawn per "
                                  "chunk); auto = chunks of 2048 whose gradient is evaluated "
                                  "in blocks of a measured size", minimum=1)
    compile: AutoBool = setting(False, "torch.compile the Langevin step: true | false | auto "
                                "(a measured candidate on CUDA; never on CPU)")

    def settings(self, device: torch.device, eta: float = 1.0) -> LangevinSettings:
        """The sampler's :class:`LangevinSettings` on ``device`` (``auto`` fields are left for
        the sampler to measure, :mod:`ebmctl.sampling.autotune`; ``compile`` left to the
        process default that :func:`set_compile_default` set from this section)."""
        return LangevinSettings(self.tau, self.temperature, eta,
                                resolve_precision(self.precision, device), self.channels_last,
                                block_rows=AUTO if self.chunk_size == AUTO else None)

    @property
    def chunk_rows(self) -> int:
        """``chunk_size`` as a row count (``auto``: :data:`AUTO_CHUNK_ROWS`)."""
        return AUTO_CHUNK_ROWS if self.chunk_size == AUTO else int(self.chunk_size)

    def precision_on(self, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
        """``precision`` resolved on ``device`` (``auto`` picks bf16 where it pays) for chains in
        ``dtype``: under float64 (``run.dtype``) ``fp32`` and ``auto`` both mean no autocast and
        resolve to ``"fp64"``, so the chain stays in float64 on every machine.

        Raises:
            ConfigError: bf16 or fp16 with ``dtype`` float64.
        """
        self.check_dtype(dtype)
        if dtype == torch.float64:
            return "fp64"
        return resolve_precision(self.precision, device)

    def check_dtype(self, dtype: torch.dtype) -> None:
        """Refuse reduced-precision chains (bf16, fp16) under float64 (``run.dtype``).

        Raises:
            ConfigError: bf16 or fp16 with ``dtype`` float64, naming both keys.
        """
        if dtype == torch.float64 and self.precision in ("bf16", "fp16"):
            raise ConfigError(f"langevin.precision = {self.precision!r} cannot run under "
                              "run.dtype = 'float64'; set langevin.precision = fp32 or auto")


#: Rows per chunk (noise stream) under ``chunk_size = auto``: the former fixed default, so an
#: ``auto`` run draws the same noise as ``chunk_size = 2048``.
AUTO_CHUNK_ROWS = 2048


def set_compile_default(flag: bool | str) -> None:
    """Set what ``LangevinSettings(compile=None)`` means in this process (profile key
    ``langevin.compile``: True, False or ``"auto"``)."""
    global _COMPILE_DEFAULT
    _COMPILE_DEFAULT = AUTO if flag == AUTO else bool(flag)


def sampling_net(net: nn.Module, use_compile: bool) -> nn.Module:
    """The network the sampler calls: ``net`` itself, or its cached ``torch.compile`` wrapper.

    The wrapper shares ``net``'s parameters, so freezing and training stay visible to it.
    """
    if not use_compile or net in _COMPILE_FAILED:
        return net
    wrapped = _COMPILED.get(net)
    if wrapped is None:
        wrapped = torch.compile(net, dynamic=False)
        _COMPILED[net] = wrapped
    return wrapped


def _compiled_energy_and_grad(net: nn.Module, x: torch.Tensor, precision: str
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """energy_and_grad through the compiled wrapper; a network the compiler rejects (no C++
    compiler, unsupported op) falls back to eager once and for all, with one warning."""
    try:
        return energy_and_grad(sampling_net(net, True), x, precision)
    except Exception as exc:  # compilation errors surface on the first call
        if net in _COMPILE_FAILED or isinstance(exc, NumericalError):
            raise
        import warnings

        warnings.warn(f"torch.compile failed for the sampler ({type(exc).__name__}); "
                      "running eagerly", RuntimeWarning, stacklevel=2)
        _COMPILE_FAILED.add(net)
        _COMPILED.pop(net, None)
        return energy_and_grad(net, x, precision)


def chain_dtype(net: nn.Module) -> torch.dtype:
    """The float type a chain on ``net`` runs in: float64 for a network whose parameters are
    float64 (loaded under ``run.dtype = float64``, or converted with ``.double()``), else
    float32 (reduced precision comes from autocast, never from the chain's own type)."""
    p = next((p for p in net.parameters() if p.is_floating_point()), None)
    return torch.float64 if p is not None and p.dtype == torch.float64 else torch.float32


def energy_and_grad(net: nn.Module, x: torch.Tensor, precision: str = "fp32",
                    create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies [B] and input gradients ∇_x U_net(x) [B,...] of a batch ``x``, both in ``x``'s
    dtype (float32, or float64 under ``run.dtype``) whatever ``precision`` computed them in."""
    with torch.enable_grad():
        xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
        with autocast(precision, x.device):
            energy = net(xg)
        (grad,) = torch.autograd.grad(energy.sum(), xg, create_graph=create_graph)
    return energy.detach().to(x.dtype), grad.to(x.dtype)


def langevin(net: nn.Module, x: torch.Tensor, steps: int, settings: LangevinSettings,
             generator: torch.Generator | None = None,
             noise: Callable[[int], torch.Tensor] | None = None,
             callback: Callable[[int, torch.Tensor], None] | None = None,
             check_every: int = 50) -> torch.Tensor:
    """Run ``steps`` Langevin steps from ``x`` (internal units). Returns the final state, in the
    network's float type (:func:`chain_dtype`): float32, or float64 for a float64 network.

    ``noise(k)`` may supply the step-k noise (for common-noise experiments); otherwise it is
    drawn from ``generator`` in the chain's float type.
    """
    drift, scale = settings.drift, settings.eta * settings.tau
    x = x.detach().to(chain_dtype(net))
    with frozen(net):
        # ``auto`` settings become one measured variant (cached per machine and EBM shape)
        variant = autotune.resolve(net, x, settings, lambda v: sampler_gradient(net, v),
                                   explicit_ok=fastgrad.supports(net))
        if variant.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        step_grad = sampler_gradient(net, variant)
        for k in range(steps):
            # in place on the step's own buffers, in the order of x − drift·∇U + scale·z (the
            # same roundings, one allocation fewer per term); caller-given noise is not touched
            x = x - step_grad(x).mul_(drift)
            if noise is not None:
                x = x + scale * noise(k)
            else:
                x = x.add_(torch.randn(x.shape, generator=generator, device=x.device,
                                       dtype=x.dtype).mul_(scale))
            if check_every and (k + 1) % check_every == 0 and not torch.isfinite(x).all():
                raise NumericalError(f"Langevin chain produced NaN/Inf at step {k + 1}; "
                                     "lower langevin.tau or check the EBM")
            if callback is not None:
                callback(k, x)
    if not torch.isfinite(x).all():
        raise NumericalError("Langevin chain produced NaN/Inf; lower langevin.tau or check the EBM")
    return x.contiguous()


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t`` owns one element per index (no broadcast strides), so it may be written."""
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def sampler_gradient(net: nn.Module, variant: "autotune.Variant"
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
    """∇_x U_net of a batch as ``variant`` computes it: rows [B,...] in, gradient [B,...] out
    in the rows' dtype and layout (a fresh tensor the caller may overwrite). Rows are
    independent, so evaluating them in blocks of ``variant.block_rows`` changes nothing but
    rounding."""
    if variant.grad in ("explicit", "dense"):
        one = fastgrad.ExplicitGrad(net, variant.precision, variant.channels_last,
                                    dense=variant.grad == "dense")
        if variant.graph:
            one = fastgrad.CudaGraphGrad(one)
    else:
        energy_grad = _compiled_energy_and_grad if variant.compile else energy_and_grad

        def one(x: torch.Tensor) -> torch.Tensor:
            grad = energy_grad(net, x, variant.precision)[1]
            # autograd may hand back a broadcast (stride-0) gradient, e.g. for an energy linear
            # in x: copy it, so the caller may write the result as promised
            return grad if _dense(grad) else grad.contiguous()
    block = variant.block_rows

    def blocked(x: torch.Tensor) -> torch.Tensor:
        if not block or x.shape[0] <= block:
            return one(x)
        return torch.cat([one(part) for part in torch.split(x, block)])
    if not variant.threads:
        return blocked

    def threaded(x: torch.Tensor) -> torch.Tensor:
        # set per call (it costs well under a microsecond), so the update and the caller's
        # other work keep the process's thread count
        before = torch.get_num_threads()
        torch.set_num_threads(variant.threads)
        try:
            return blocked(x)
        finally:
            torch.set_num_threads(before)
    return threaded


def langevin_chunked(net: nn.Module, x: torch.Tensor, steps: int, settings: LangevinSettings,
                     chunk_size: int | str, generator_for_chunk: Callable[[int], torch.Generator]
                     ) -> torch.Tensor:
    """Run chains in chunks of at most ``chunk_size`` rows (memory budget); chunk ``i`` draws
    its noise from ``generator_for_chunk(i)`` so results do not depend on other chunks.
    ``chunk_size = "auto"``: chunks of :data:`AUTO_CHUNK_ROWS`, each evaluated in blocks of
    the measured size (``settings.block_rows`` None becomes ``auto``)."""
    if chunk_size == AUTO:
        chunk_size = AUTO_CHUNK_ROWS
        if settings.block_rows is None:
            settings = dataclasses.replace(settings, block_rows=AUTO)
    if x.shape[0] <= chunk_size:
        return langevin(net, x, steps, settings, generator_for_chunk(0))
    outs = [langevin(net, part, steps, settings, generator_for_chunk(i))
            for i, part in enumerate(torch.split(x, chunk_size))]
    return torch.cat(outs)
