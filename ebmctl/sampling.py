"""Langevin sampling: the hot loop of every command. Pure functions over tensors.

Update (SPEC §0.4):  X ← X − (τ²/(2T))·∇U_net(X) + η·τ·Z.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from ebmctl.device import autocast
from ebmctl.errors import NumericalError


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

    @property
    def drift(self) -> float:
        return self.tau ** 2 / (2.0 * self.temperature)


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
    with frozen(net):
        for k in range(steps):
            _, grad = energy_and_grad(net, x, settings.precision)
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
