"""Langevin sampling: the hot loop of every command. Pure functions over tensors.

Update (docs/algorithms.md#langevin-update):  X ← X − (τ²/(2T))·∇U_net(X) + η·τ·Z.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

import torch
from torch import nn

from ebmctl.config import setting
from ebmctl.device import autocast, resolve_precision
from ebmctl.errors import NumericalError

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
    precision: str = "fp32"
    channels_last: bool = False
    #: torch.compile the energy network (forward + input-gradient backward); None = the
    #: process default. Pays on GPUs; on CPUs compiling costs minutes (bench/README.md).
    compile: bool | None = None
    #: rows per gradient evaluation on CPU (0 = whole batch; None = by image size, see
    #: :func:`cpu_block_rows`). Cache-sized blocks ran up to ~1.5× faster than one big batch.
    block_rows: int | None = None

    @property
    def drift(self) -> float:
        return self.tau ** 2 / (2.0 * self.temperature)

    @property
    def use_compile(self) -> bool:
        return _COMPILE_DEFAULT if self.compile is None else bool(self.compile)


@dataclass(frozen=True)
class LangevinConfig:
    """The profile section ``[langevin]``: how every Langevin chain runs (step size and
    temperature of the update above, precision, memory layout, batching, compilation)."""

    section: ClassVar[str] = "langevin"

    tau: float = setting(0.01, "Langevin step size τ (internal [-1,1] units)", minimum=0)
    temperature: float = setting(5e-5, "temperature T: drift τ²/(2T)", minimum=1e-12)
    precision: str = setting("fp32", "fp32 | bf16 | auto",
                             choices=("fp32", "bf16", "fp16", "auto"))
    channels_last: bool = setting(False, "channels_last memory format")
    chunk_size: int = setting(2048, "max images per sampler batch", minimum=1)
    compile: bool = setting(False, "torch.compile the Langevin step")

    def settings(self, device: torch.device, eta: float = 1.0) -> LangevinSettings:
        """The sampler's :class:`LangevinSettings` on ``device`` (``precision = auto`` resolved
        there; ``compile`` left to the process default that :func:`set_compile_default` set
        from this section)."""
        return LangevinSettings(self.tau, self.temperature, eta,
                                resolve_precision(self.precision, device), self.channels_last)

    def precision_on(self, device: torch.device) -> str:
        """``precision`` resolved on ``device`` (``auto`` picks bf16 where it pays)."""
        return resolve_precision(self.precision, device)


#: Input elements per CPU gradient block: ~64 images of 32×32×3 (about where the lightweight
#: EBM's first activations stop fitting in cache), ~3000 of 8×8×1. Measured in bench/README.md.
CPU_BLOCK_ELEMENTS = 64 * 3 * 32 * 32


def cpu_block_rows(x: torch.Tensor, net: nn.Module, settings: "LangevinSettings") -> int:
    """Rows per gradient block, or 0 for the whole batch: blocks only on CPU, and never for a
    network whose rows interact (batch norm in training mode)."""
    if x.device.type != "cpu" or settings.block_rows == 0:
        return 0
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules()):
        return 0
    rows = settings.block_rows or max(16, CPU_BLOCK_ELEMENTS // max(1, x[0].numel()))
    return rows if x.shape[0] > rows else 0


def set_compile_default(flag: bool) -> None:
    """Set what ``LangevinSettings(compile=None)`` means in this process (profile key
    ``langevin.compile``)."""
    global _COMPILE_DEFAULT
    _COMPILE_DEFAULT = bool(flag)


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


def energy_and_grad(net: nn.Module, x: torch.Tensor, precision: str = "fp32",
                    create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies [B] and input gradients ∇_x U_net(x) (fp32) for a batch."""
    with torch.enable_grad():
        xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
        with autocast(precision, x.device):
            energy = net(xg)
        (grad,) = torch.autograd.grad(energy.sum(), xg, create_graph=create_graph)
    return energy.detach().float(), grad.float() if grad.dtype != torch.float32 else grad


def langevin(net: nn.Module, x: torch.Tensor, steps: int, settings: LangevinSettings,
             generator: torch.Generator | None = None,
             noise: Callable[[int], torch.Tensor] | None = None,
             callback: Callable[[int, torch.Tensor], None] | None = None,
             check_every: int = 50) -> torch.Tensor:
    """Run ``steps`` Langevin steps from ``x`` (internal units). Returns the final state.

    ``noise(k)`` may supply the step-k noise (for common-noise experiments); otherwise it is
    drawn from ``generator``.
    """
    drift, scale = settings.drift, settings.eta * settings.tau
    x = x.detach().float()
    if settings.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    step_grad = _compiled_energy_and_grad if settings.use_compile else energy_and_grad
    block = cpu_block_rows(x, net, settings)
    if block:  # rows are independent: the gradient of each block equals its rows' gradient
        whole = step_grad

        def step_grad(net, x, precision):
            parts = [whole(net, part, precision) for part in torch.split(x, block)]
            return torch.cat([e for e, _ in parts]), torch.cat([g for _, g in parts])
    with frozen(net):
        for k in range(steps):
            _, grad = step_grad(net, x, settings.precision)
            z = noise(k) if noise is not None else torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x - drift * grad + scale * z
            if check_every and (k + 1) % check_every == 0 and not torch.isfinite(x).all():
                raise NumericalError(f"Langevin chain produced NaN/Inf at step {k + 1}; "
                                     "lower langevin.tau or check the EBM")
            if callback is not None:
                callback(k, x)
    if not torch.isfinite(x).all():
        raise NumericalError("Langevin chain produced NaN/Inf; lower langevin.tau or check the EBM")
    return x.contiguous()


def langevin_chunked(net: nn.Module, x: torch.Tensor, steps: int, settings: LangevinSettings,
                     chunk_size: int, generator_for_chunk: Callable[[int], torch.Generator]
                     ) -> torch.Tensor:
    """Run chains in chunks of at most ``chunk_size`` rows (memory budget); chunk ``i`` draws
    its noise from ``generator_for_chunk(i)`` so results do not depend on other chunks."""
    if x.shape[0] <= chunk_size:
        return langevin(net, x, steps, settings, generator_for_chunk(0))
    outs = [langevin(net, part, steps, settings, generator_for_chunk(i))
            for i, part in enumerate(torch.split(x, chunk_size))]
    return torch.cat(outs)
