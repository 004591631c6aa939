"""Lyapunov exponents of the Langevin sampler (docs/algorithms.md#lyapunov-exponent), pure maths:
tensors and callables in, tensors and dicts out.

The map studied is T_η(X) = X − c·∇U_net(X) + η·τ·Z with c = τ²/(2T) from the EBM artifact
(thesis Eq. 2.13): only the noise is rescaled by η.

The maximal Lyapunov exponent is estimated with Benettin's method in its *finite-separation* form:
the lightweight EBM is piecewise linear, so its Hessian is 0 almost everywhere and the
tangent-map version would return exactly 0 for every η. A reference chain and a copy displaced by
``separation`` receive the *same* noise at every step; the growth of their distance is logged and
the copy is pulled back to distance ``separation`` along the current direction.

:mod:`ebmctl.dynamics.report` wires these functions to an EBM artifact and a profile.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ebmctl.errors import ConfigError, NumericalError
from ebmctl.seeds import make_generator

GradFn = Callable[[torch.Tensor], torch.Tensor]
NoiseFn = Callable[[int], torch.Tensor]
Progress = Callable[[int], None]

DTYPES = {"float64": torch.float64, "float32": torch.float32}


# --- the map and Benettin's method -------------------------------------------------------------

def _rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-row vector [B] (or a scalar) against a batch [B, ...]."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return v.reshape(-1, *([1] * (like.dim() - 1))) if v.dim() else v


def langevin_map(grad_fn: GradFn, x: torch.Tensor, z: torch.Tensor, drift: float,
                 noise_scale: torch.Tensor | float) -> torch.Tensor:
    """One step of T_η: x − drift·∇U_net(x) + noise_scale·z (noise_scale = η·τ, per row)."""
    return x - drift * grad_fn(x) + _rows(noise_scale, x) * z


def row_norms(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1)


def random_unit_directions(shape: Sequence[int], generator: torch.Generator,
                           dtype: torch.dtype = torch.float64,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """One Gaussian direction per row, scaled to unit ℓ2 norm (uniform on the sphere)."""
    v = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    return v / _rows(row_norms(v), v)


def benettin_exponents(grad_fn: GradFn, x0: torch.Tensor, *, drift: float,
                       noise_scale: torch.Tensor | float, burn_in: int, steps: int,
                       separation: float, noise: NoiseFn, direction: torch.Tensor,
                       renorm_every: int = 1, progress: Progress | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximal Lyapunov exponent per row (per Langevin step), finite-separation Benettin.
    Returns (λ̂ [B] float64 on CPU, the reference chains' final states [B,...]).

    ``x0`` [B,...] are the start states; ``noise(k)`` returns the step-k noise [B,...] and is
    called once per step for burn-in and measurement alike; both copies get the same draw, which
    is what makes λ meaningful (with independent noise the distance is dominated by the noise).
    ``direction`` [B,...] are unit vectors for the initial displacement. Every ``renorm_every``
    steps (and at the end) log(d/separation) is accumulated and the copy is pulled back.
    """
    if steps < 1:
        raise ConfigError("lyapunov.steps must be >= 1")
    if not separation > 0:
        raise ConfigError("lyapunov.separation must be > 0")
    if renorm_every < 1:
        raise ConfigError("lyapunov.renorm_every must be >= 1")
    x = x0.detach().clone()
    n = x.shape[0]
    for k in range(burn_in):
        x = langevin_map(grad_fn, x, noise(k), drift, noise_scale)
        if progress is not None:
            progress(1)
    _check_finite(x, "burn-in")
    x_pert = x + separation * direction.to(x)
    log_growth = torch.zeros(n, dtype=torch.float64, device=x.device)
    tiny = torch.finfo(x.dtype).tiny
    for s in range(1, steps + 1):
        z = noise(burn_in + s - 1)
        # One batched gradient call for both copies: same cost as two, half the overhead.
        both = langevin_map(grad_fn, torch.cat([x, x_pert]), torch.cat([z, z]), drift,
                            torch.cat([_flat_scale(noise_scale, n, x)] * 2))
        x, x_pert = both[:n], both[n:]
        if s % renorm_every == 0 or s == steps:
            delta = x_pert - x
            dist = row_norms(delta)
            # A separation that collapsed to exactly 0 (numerically) restarts along its old
            # direction at d_0; its log-growth is floored at the smallest representable ratio.
            collapsed = dist <= tiny
            safe = torch.where(collapsed, torch.ones_like(dist), dist)
            keep_old = collapsed.reshape(-1, *([1] * (delta.dim() - 1)))
            unit = torch.where(keep_old, direction.to(x), delta / _rows(safe, delta))
            log_growth += torch.log(dist.clamp_min(tiny).double() / separation)
            x_pert = x + separation * unit
        if progress is not None:
            progress(1)
    _check_finite(x, "measurement")
    return (log_growth / steps).cpu(), x.detach()


def _flat_scale(noise_scale, n: int, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(noise_scale, dtype=like.dtype, device=like.device)
    return v.expand(n) if v.dim() == 0 else v


def _check_finite(x: torch.Tensor, phase: str) -> None:
    if not torch.isfinite(x).all():
        raise NumericalError(f"Lyapunov chains produced NaN/Inf during {phase}; "
                             "lower lyapunov.etas or langevin.tau, or check the EBM")


def quadratic_exponent(eigenvalues: Sequence[float], drift: float) -> float:
    """Closed form for U_net(x) = ½ xᵀAx: the separation obeys δ ← (I − c·A)δ whatever the
    noise, so λ = max_i log|1 − c·a_i| for every η."""
    return max(math.log(abs(1.0 - drift * float(a))) for a in eigenvalues)


def net_grad_fn(net: nn.Module, dtype: torch.dtype = torch.float64) -> GradFn:
    """∇_x U_net(x) of a (frozen) network, in ``dtype``. The network is copied so the caller's
    model keeps its precision; callers wrap use in :func:`ebmctl.sampling.langevin.frozen`."""
    model = copy.deepcopy(net).to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def grad(x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xg = x.detach().to(dtype).requires_grad_(True)
            (g,) = torch.autograd.grad(model(xg).sum(), xg)
        return g

    return grad


# --- the exponent curve over an η grid ---------------------------------------------------------

@dataclass
class ExponentSettings:
    etas: list[float]
    burn_in: int = 1000
    steps: int = 2000
    separation: float = 1e-3
    renorm_every: int = 1
    seeds: list[int] = field(default_factory=lambda: [0])
    dtype: str = "float64"
    zero_tol: float = 3.0
    chunk_rows: int = 2048

    def validate(self) -> None:
        if not self.etas:
            raise ConfigError("lyapunov.etas is empty")
        if any(not (e > 0) for e in self.etas):
            raise ConfigError("every lyapunov.etas value must be > 0")
        if not self.seeds:
            raise ConfigError("lyapunov.seeds is empty")
        if self.dtype not in DTYPES:
            raise ConfigError(f"lyapunov.precision must be one of {', '.join(DTYPES)}")


def exponent_grid(grad_fn: GradFn, x0: torch.Tensor, *, drift: float, tau: float,
                  settings: ExponentSettings, run_seed: int, separation: float | None = None,
                  progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """λ̂ [n_eta, n_seeds, n_images] for start states ``x0`` [n_images,...] (internal units),
    and the final reference states of the first seed per η [n_eta, n_images,...] (the
    steady-state look of the sampler at that η, Fig. 2.7's right panel).

    Rows are processed in groups (η, seed) of all images; each group draws its noise and initial
    direction from generators keyed by (run seed, η, seed), so a value does not depend on the
    rest of the grid or on how groups are packed into chunks of ``chunk_rows``.
    """
    settings.validate()
    sep = settings.separation if separation is None else separation
    dtype, dev = DTYPES[settings.dtype], x0.device
    x0 = x0.to(dtype)
    n_img = x0.shape[0]
    groups = [(i, j) for i in range(len(settings.etas)) for j in range(len(settings.seeds))]
    per_chunk = max(1, settings.chunk_rows // (2 * n_img))
    out = torch.empty(len(settings.etas), len(settings.seeds), n_img, dtype=torch.float64)
    finals = torch.empty(len(settings.etas), *x0.shape, dtype=torch.float32)
    for start in range(0, len(groups), per_chunk):
        chunk = groups[start:start + per_chunk]
        gens = [make_generator(dev, run_seed, "lyapunov", repr(float(settings.etas[i])),
                               settings.seeds[j], "noise") for i, j in chunk]
        dirs = torch.cat([random_unit_directions(
            x0.shape, make_generator(dev, run_seed, "lyapunov", repr(float(settings.etas[i])),
                                     settings.seeds[j], "direction"), dtype, dev)
            for i, j in chunk])
        scale = torch.cat([torch.full((n_img,), settings.etas[i] * tau, dtype=dtype, device=dev)
                           for i, _ in chunk])

        def noise(_k: int, _gens=gens) -> torch.Tensor:
            return torch.cat([torch.randn(x0.shape, generator=g, dtype=dtype, device=dev)
                              for g in _gens])

        lam, states = benettin_exponents(grad_fn, x0.repeat(len(chunk), *([1] * (x0.dim() - 1))),
                                 drift=drift, noise_scale=scale, burn_in=settings.burn_in,
                                 steps=settings.steps, separation=sep, noise=noise,
                                 direction=dirs, renorm_every=settings.renorm_every,
                                 progress=progress)
        for g, (i, j) in enumerate(chunk):
            out[i, j] = lam[g * n_img:(g + 1) * n_img]
            if j == 0:
                finals[i] = states[g * n_img:(g + 1) * n_img].float().cpu()
    return out, finals


def zero_crossing(etas: Sequence[float], means: Sequence[float]) -> float | None:
    """η where the mean exponent first turns from ≤ 0 to > 0, interpolated linearly in log η;
    None if it never does on the grid (or is already positive at the smallest η)."""
    for (e0, m0), (e1, m1) in zip(zip(etas, means), zip(etas[1:], means[1:])):
        if m0 <= 0 < m1:
            t = -m0 / (m1 - m0)
            return float(math.exp(math.log(e0) + t * (math.log(e1) - math.log(e0))))
    return None


def summarise_exponents(etas: Sequence[float], lam: torch.Tensor, zero_tol: float) -> dict:
    """Mean, std and standard error over images and seeds per η; the transition η* (first grid
    η whose mean exceeds ``zero_tol`` standard errors above 0) and the interpolated
    zero crossing of the mean curve."""
    flat = lam.reshape(lam.shape[0], -1)
    n = flat.shape[1]
    mean = flat.mean(1)
    std = flat.std(1, unbiased=True) if n > 1 else torch.zeros_like(mean)
    se = std / math.sqrt(n)
    rows = []
    for i, eta in enumerate(etas):
        rows.append({"eta": float(eta), "mean": mean[i].item(), "std": std[i].item(),
                     "se": se[i].item(), "positive": bool(mean[i] > zero_tol * se[i])})
    eta_star = next((r["eta"] for r in rows if r["positive"]), None)
    return {"per_eta": rows, "eta_star": eta_star, "n_samples": n,
            "zero_crossing": zero_crossing([float(e) for e in etas], mean.tolist())}
