"""Dynamics of the Langevin sampler (docs/algorithms.md#sampler-dynamics): Lyapunov exponents and
memorylessness.

The map studied is T_η(X) = X − c·∇U_net(X) + η·τ·Z with c = τ²/(2T) from the EBM artifact
(thesis Eq. 2.13): only the noise is rescaled by η.

The maximal Lyapunov exponent is estimated with Benettin's method in its *finite-separation* form
(docs/algorithms.md#lyapunov-exponent): the lightweight EBM is piecewise linear, so its Hessian is 0
almost everywhere and the tangent-map version would return exactly 0 for every η. A reference chain
and a copy displaced by ``separation`` receive the *same* noise at every step; the growth of their
distance is logged and the copy is pulled back to distance ``separation`` along the current
direction.

The functions below are pure (tensors and callables in, tensors and dicts out); the command in
``ebmctl.commands.lyapunov`` wires them to artifacts, data, attacks and files.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ebmctl.defense import adapt_images
from ebmctl.errors import ConfigError, NumericalError
from ebmctl.sampling.langevin import LangevinSettings, frozen, langevin
from ebmctl.seeds import make_generator
from ebmctl.units import to_internal, to_public

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


# --- memorylessness: forgetting curves ---------------------------------------------------------

def energy_gap(energy_fn: Callable[[torch.Tensor], torch.Tensor], natural: torch.Tensor,
               adversarial: torch.Tensor, noise: torch.Tensor) -> dict:
    """Mean ± std of the model energy of natural, adversarial and noise images (thesis §2.10.1,
    Fig. 2.6: U(noise) ≫ U(adv) ≳ U(nat))."""
    out = {}
    with torch.no_grad():
        for name, x in (("natural", natural), ("adversarial", adversarial), ("noise", noise)):
            u = energy_fn(x).double()
            out[name] = {"mean": u.mean().item(),
                         "std": u.std().item() if len(u) > 1 else 0.0}
    return out


@dataclass
class ChainViews:
    """Chains run side by side from clean images x and their adversarial versions x_adv."""

    clean: torch.Tensor        # T_k(x; Z)
    adv_common: torch.Tensor   # T_k(x_adv; Z)   same noise as ``clean``
    adv_indep: torch.Tensor    # T_k(x_adv; Z')  independent noise
    clean_indep: torch.Tensor  # T_k(x; Z'')     an independent copy of the clean chain


def forgetting_curves(net: nn.Module, settings: LangevinSettings, x: torch.Tensor,
                      x_adv: torch.Tensor, checkpoints: Sequence[int], *,
                      readout: Callable[[ChainViews, int], dict[str, torch.Tensor]],
                      generators: Sequence[torch.Generator],
                      progress: Progress | None = None) -> dict[int, dict[str, torch.Tensor]]:
    """Run the purifier's chains from ``x`` and ``x_adv`` (internal units, [B,...]) and call
    ``readout(views, k)`` at each checkpoint k (0 = the start states).

    Four chains per image: clean and adversarial with common noise (the Lyapunov view: do
    nearby starts separate under the same noise?), adversarial with independent noise, and a
    second clean chain with independent noise (the level of two independent purified copies:
    "as far apart as independent samples"). ``generators`` are the three noise streams.
    """
    if len(generators) != 3:
        raise ValueError("forgetting_curves needs three noise generators")
    marks = sorted(set(int(k) for k in checkpoints))
    if not marks or marks[0] < 0:
        raise ConfigError("lyapunov.memory_steps must be non-negative integers")
    b = x.shape[0]
    start = torch.cat([x, x_adv, x_adv, x]).float()
    results: dict[int, dict[str, torch.Tensor]] = {}

    def views(state: torch.Tensor) -> ChainViews:
        return ChainViews(*torch.split(state, b))

    if 0 in marks:
        results[0] = readout(views(start), 0)

    def noise(_k: int) -> torch.Tensor:
        z, z_b, z_c = (torch.randn(x.shape, generator=g, device=x.device) for g in generators)
        return torch.cat([z, z, z_b, z_c])

    def on_step(k: int, state: torch.Tensor) -> None:
        if progress is not None:
            progress(1)
        if k + 1 in marks:
            results[k + 1] = readout(views(state), k + 1)

    if marks[-1] > 0:
        with frozen(net):
            langevin(net, start, marks[-1], settings, noise=noise, callback=on_step)
    return results


def chain_readout(task_model: Callable[[torch.Tensor], torch.Tensor], score_fn,
                  targets: torch.Tensor, clean_labels: torch.Tensor, out_size, out_channels: int,
                  ) -> Callable[[ChainViews, int], dict[str, torch.Tensor]]:
    """Per-image statistics at a checkpoint: ℓ2 distances in [0,1] pixel units at the EBM's
    resolution, task scores (accuracy/Dice) and label agreement of the task model's outputs."""

    def predict(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return task_model(adapt_images(to_public(z), out_size, out_channels))

    def agree(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # argmax over the class dimension works for classification and per-pixel segmentation
        return _per_image_mean(a.argmax(1) == b.argmax(1))

    def readout(v: ChainViews, _k: int) -> dict[str, torch.Tensor]:
        pub = [to_public(t) for t in (v.clean, v.adv_common, v.adv_indep, v.clean_indep)]
        out_clean, out_adv_c, out_adv_i, out_clean_i = (predict(t) for t in
                                                        (v.clean, v.adv_common, v.adv_indep,
                                                         v.clean_indep))
        return {
            "dist_common": row_norms(pub[0] - pub[1]).cpu(),
            "dist_independent": row_norms(pub[0] - pub[2]).cpu(),
            "dist_clean_copies": row_norms(pub[0] - pub[3]).cpu(),
            "score_clean": score_fn(out_clean, targets).float().cpu(),
            "score_adv": score_fn(out_adv_c, targets).float().cpu(),
            "agree_common": agree(out_clean, out_adv_c).cpu(),
            "agree_independent": agree(out_clean, out_adv_i).cpu(),
            "agree_clean_copies": agree(out_clean, out_clean_i).cpu(),
            "clean_label_kept": _per_image_mean(out_clean.argmax(1) == clean_labels).cpu(),
        }

    return readout


def _per_image_mean(hits: torch.Tensor) -> torch.Tensor:
    """[B] or [B,H,W] booleans → [B] fractions (labels or per-pixel labels)."""
    return hits.float().reshape(hits.shape[0], -1).mean(1)


def summarise_forgetting(results: dict[int, dict[str, torch.Tensor]], start_gap: torch.Tensor,
                         ) -> list[dict]:
    """Means over images per checkpoint, plus the remembered share of the adversarial offset:
    sqrt(max(0, E‖A−B‖² − E‖A−C‖²)) / E‖x − x_adv‖ for independent chains A (clean), B (adv),
    C (clean). Independent chains differ by their noise spread plus the squared shift of their
    means, so the excess over two clean copies is what the chain still remembers of its start:
    1 at k = 0, → 0 once the start is forgotten."""
    gap = start_gap.double().pow(2).mean().sqrt().item()
    rows = []
    for k in sorted(results):
        r = {name: v.double().mean().item() for name, v in results[k].items()}
        excess = (results[k]["dist_independent"].double().pow(2).mean()
                  - results[k]["dist_clean_copies"].double().pow(2).mean()).item()
        r["memory"] = math.sqrt(max(0.0, excess)) / gap if gap > 0 else 0.0
        rows.append({"k": k, **r})
    return rows


def to_chain_space(x01: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """[0,1] images → the EBM's internal units, size and channels."""
    return to_internal(adapt_images(x01, image_size, channels))


# --- reports: what `ebmctl lyapunov` computes from a config ----------------------------------

def exponent_settings(cfg) -> ExponentSettings:
    return ExponentSettings(etas=[float(e) for e in cfg["lyapunov.etas"]],
                            burn_in=cfg["lyapunov.burn_in"], steps=cfg["lyapunov.steps"],
                            separation=cfg["lyapunov.separation"],
                            renorm_every=cfg["lyapunov.renorm_every"],
                            seeds=list(cfg["lyapunov.seeds"]), dtype=cfg["lyapunov.precision"],
                            zero_tol=cfg["lyapunov.zero_tol"],
                            chunk_rows=cfg["langevin.chunk_size"])


def exponent_report(cfg, energy, x01: torch.Tensor, *, progress_factory=None) -> tuple[dict, torch.Tensor]:
    """Benettin exponents of ``energy`` (an :class:`ebmctl.defense.EnergyModel`) over the η grid
    for start images ``x01`` ([0,1] units), at d_0 and at d_0 × each ``separation_factors``.
    Returns (report dict, steady-state samples [n_eta, n, ...] in [0,1] units at d_0)."""
    settings = exponent_settings(cfg)
    settings.validate()
    x0 = to_chain_space(x01, energy.image_size, energy.channels)
    dtype = DTYPES[settings.dtype]
    grad_fn = net_grad_fn(energy.net, dtype)
    drift, tau = energy.settings().drift, energy.tau
    factors = [1.0] + [float(f) for f in cfg["lyapunov.separation_factors"] if float(f) != 1.0]
    if any(not (f > 0) for f in factors):
        raise ConfigError("lyapunov.separation_factors must be > 0")
    n_groups = len(settings.etas) * len(settings.seeds)
    per_chunk = max(1, settings.chunk_rows // (2 * x0.shape[0]))
    total = len(factors) * -(-n_groups // per_chunk) * (settings.burn_in + settings.steps)
    runs, samples = [], None
    with (progress_factory or _no_progress)(total, "lyapunov exponents") as bar:
        for f in factors:
            sep = settings.separation * f
            lam, finals = exponent_grid(grad_fn, x0, drift=drift, tau=tau, settings=settings,
                                        run_seed=cfg["run.seed"], separation=sep,
                                        progress=bar.advance)
            summary = summarise_exponents(settings.etas, lam, settings.zero_tol)
            runs.append({"separation": sep, **summary,
                         "per_sample": lam.reshape(len(settings.etas), -1).tolist()})
            if samples is None:
                samples = to_public(finals)
    report = {
        "map": "X <- X - drift*grad U_net(X) + eta*tau*Z (common noise for both copies)",
        "method": "Benettin, finite separation, renormalised every "
                  f"{settings.renorm_every} step(s); exponent per Langevin step",
        "drift": drift, "tau": tau, "temperature": energy.temperature,
        "etas": settings.etas, "seeds": settings.seeds, "n_images": int(x0.shape[0]),
        "burn_in": settings.burn_in, "steps": settings.steps, "precision": settings.dtype,
        "separation": settings.separation, "separation_units": "internal [-1,1] units, l2",
        "zero_tol_se": settings.zero_tol,
        "eta_star": runs[0]["eta_star"], "zero_crossing": runs[0]["zero_crossing"],
        "per_eta": runs[0]["per_eta"], "runs": runs,
    }
    return report, samples


def make_adversarial(cfg, task, model, energy, x01: torch.Tensor, y: torch.Tensor,
                     device) -> tuple[torch.Tensor, dict]:
    """Adversarial versions of ``x01`` made on the spot with a registered attack
    (``lyapunov.attack``; against the bare task model unless ``lyapunov.attack_defended``)."""
    from ebmctl.evaluate.report import build_defense, make_attack

    defended = cfg["lyapunov.attack_defended"]
    attack = make_attack(cfg, cfg["lyapunov.attack"], defended)
    defense = build_defense(cfg, model, energy if defended else None, device)
    outcome = attack.run(defense, task, x01.to(device), y.to(device),
                         (cfg["run.seed"], "lyapunov-attack"))
    info = {"attack": attack.name, "target": "defended model" if defended else "task model",
            "norm": attack.norm, "eps": attack.eps, "step_size": attack.step_size,
            "steps": attack.steps, "natural": outcome.natural_ok.float().mean().item(),
            "adversarial": outcome.robust_ok.float().mean().item()}
    return outcome.x_adv.to(device), {**info, "_broken": outcome.natural_ok & ~outcome.robust_ok}


def memory_report(cfg, energy, task, model, x01: torch.Tensor, y: torch.Tensor, device, *,
                  progress_factory=None) -> dict:
    """Forgetting curves (docs/algorithms.md#memorylessness-checks): chains from clean and
    adversarial images with common and independent noise, distances and task-model agreement along
    the chain, and the energy gap. Statistics are over the images the attack broke (all images if it
    broke none)."""
    x_adv01, attack_info = make_adversarial(cfg, task, model, energy, x01, y, device)
    broken = attack_info.pop("_broken")
    use = broken.nonzero().flatten() if broken.any() else torch.arange(len(x01))
    x01, x_adv01, y = x01[use.to(x01.device)], x_adv01[use.to(x_adv01.device)], y[use.to(y.device)]
    with torch.no_grad():
        clean_labels = model(x01).argmax(1)
    z, z_adv = (to_chain_space(t, energy.image_size, energy.channels) for t in (x01, x_adv01))
    gens = [make_generator(device, cfg["run.seed"], "lyapunov-memory", name)
            for name in ("common", "adv-independent", "clean-independent")]
    readout = chain_readout(model, task.score, y, clean_labels, tuple(x01.shape[-2:]),
                            x01.shape[1])
    marks = sorted(set(cfg["lyapunov.memory_steps"]))
    with (progress_factory or _no_progress)(max(marks), "forgetting curves") as bar:
        raw = forgetting_curves(energy.net, energy.settings(), z, z_adv, marks, readout=readout,
                                generators=gens, progress=bar.advance)
    start_gap = row_norms(to_public(z) - to_public(z_adv)).cpu()
    noise01 = torch.rand(x01.shape, generator=make_generator(device, cfg["run.seed"],
                                                             "lyapunov-noise"), device=device)
    gap = energy_gap(energy.energy01, x01, x_adv01, noise01)
    return {
        "claim": "purified copies of a clean image and of its adversarial version become as far "
                 "apart as two independent purified copies of the clean image (memory -> 0)",
        "n_images": int(len(x01)), "only_broken_images": bool(broken.any()),
        "attack": attack_info, "checkpoints": marks,
        "distance_units": "l2 in [0,1] pixel units at the EBM's resolution",
        "start_gap": start_gap.double().mean().item(),
        "curves": summarise_forgetting(raw, start_gap),
        "energy_gap": {"temperature": energy.temperature, **gap},
    }


class _NoBar:
    def advance(self, n: int = 1, status: str = "") -> None:
        pass


@contextlib.contextmanager
def _no_progress(_total: int, _description: str):
    yield _NoBar()


# --- figures ----------------------------------------------------------------------------------

def plot_exponents(path, report: dict, title: str = "") -> None:
    from ebmctl.evaluate.plots import save_panels

    curves, errors = {}, {}
    for run in report["runs"]:
        label = f"d0={run['separation']:.0e}"
        curves[label] = (report["etas"], [r["mean"] for r in run["per_eta"]])
        errors[label] = [r["std"] for r in run["per_eta"]]
    vlines = {}
    if report["zero_crossing"] is not None:
        vlines[f"zero crossing η={report['zero_crossing']:.3g}"] = report["zero_crossing"]
    save_panels(path, [{"curves": curves, "errors": errors, "xscale": "log", "hline": 0.0,
                        "vlines": vlines, "xlabel": "noise scale η",
                        "ylabel": "max Lyapunov exponent λ̂ per step (mean ± std)",
                        "title": f"{report['n_images']} images × {len(report['seeds'])} seeds, "
                                 f"{report['steps']} steps, {report['precision']}"}],
                title=title)


def plot_memory(path, report: dict, title: str = "") -> None:
    from ebmctl.evaluate.plots import save_panels

    rows = report["curves"]
    ks = [r["k"] for r in rows]

    def col(name):
        return (ks, [r[name] for r in rows])

    save_panels(path, [
        {"curves": {"clean vs adv, common noise": col("dist_common"),
                    "clean vs adv, independent noise": col("dist_independent"),
                    "two clean copies (independent)": col("dist_clean_copies")},
         "xscale": "symlog", "xlabel": "Langevin steps k", "ylabel": "ℓ2 distance ([0,1] units)",
         "title": "distance between purified copies"},
        {"curves": {"remembered share of the adversarial offset": col("memory"),
                    "label agreement clean/adv (common noise)": col("agree_common"),
                    "label agreement clean/adv (independent)": col("agree_independent"),
                    "score on T_k(x)": col("score_clean"),
                    "score on T_k(x_adv)": col("score_adv")},
         "xscale": "symlog", "xlabel": "Langevin steps k", "ylabel": "fraction",
         "title": "memory and task-model agreement", "hline": 0.0},
    ], title=title)
