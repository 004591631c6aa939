"""Threat models (docs/algorithms.md#threat-model): random starts, steps and projections for l∞
and l2 in [0,1]."""

from __future__ import annotations

import torch


def _norms(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A uniform point of the ε-ball around the [0,1] images ``x`` [B,...] (ℓ2: a uniform
    direction, radius ε·u), clamped to [0,1]. Drawn in ``x``'s float type, so a float64 run
    never depends on float32 normal draws (which differ between CPU kernels)."""
    kw = {"generator": generator, "device": x.device, "dtype": x.dtype}
    if norm == "linf":
        u = torch.rand(x.shape, **kw) * 2 - 1
        return (x + eps * u).clamp(0, 1)
    r = torch.randn(x.shape, **kw)
    u = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), **kw)
    return (x + eps * u * r / (_norms(r) + 1e-12)).clamp(0, 1)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    delta = x_adv - x
    n = _norms(delta)
    delta = delta * torch.clamp(eps / (n + 1e-10), max=1.0)
    return (x + delta).clamp(0, 1)


def ascent_step(x_adv: torch.Tensor, grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return x_adv + alpha * grad.sign()
    return x_adv + alpha * grad / (_norms(grad) + 1e-12)
