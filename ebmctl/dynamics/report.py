"""What `ebmctl lyapunov` computes from a profile (docs/algorithms.md#sampler-dynamics): the
exponent curve over the η grid of :mod:`ebmctl.dynamics.benettin` and the forgetting curves of
:mod:`ebmctl.dynamics.forgetting` for an EBM artifact, as report dicts, and their figures.
"""

from __future__ import annotations

import functools

import torch

from ebmctl.console import progress_bar
from ebmctl.context import RunConfig
from ebmctl.defense import adapt_images
from ebmctl.dynamics.benettin import (
    DTYPES,
    ExponentSettings,
    exponent_grid,
    net_grad_fn,
    row_norms,
    summarise_exponents,
)
from ebmctl.dynamics.forgetting import (
    chain_readout,
    energy_gap,
    forgetting_curves,
    summarise_forgetting,
)
from ebmctl.errors import ConfigError
from ebmctl.sampling.langevin import LangevinConfig
from ebmctl.seeds import make_generator
from ebmctl.units import to_internal, to_public

#: the progress bar when the caller passes none: counts nothing, prints nothing
_quiet = functools.partial(progress_bar, quiet=True)


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
                            chunk_rows=cfg.section(LangevinConfig).chunk_size)


def exponent_report(cfg, energy, x01: torch.Tensor, *, progress_factory=None) -> tuple[dict, torch.Tensor]:
    """Benettin exponents of ``energy`` (an :class:`ebmctl.models.EnergyModel`) over the η grid
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
    with (progress_factory or _quiet)(total, "lyapunov exponents") as bar:
        for f in factors:
            sep = settings.separation * f
            lam, finals = exponent_grid(grad_fn, x0, drift=drift, tau=tau, settings=settings,
                                        run_seed=cfg.section(RunConfig).seed, separation=sep,
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
                         (cfg.section(RunConfig).seed, "lyapunov-attack"))
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
    gens = [make_generator(device, cfg.section(RunConfig).seed, "lyapunov-memory", name)
            for name in ("common", "adv-independent", "clean-independent")]
    readout = chain_readout(model, task.score, y, clean_labels, tuple(x01.shape[-2:]),
                            x01.shape[1])
    marks = sorted(set(cfg["lyapunov.memory_steps"]))
    with (progress_factory or _quiet)(max(marks), "forgetting curves") as bar:
        raw = forgetting_curves(energy.net, energy.settings(), z, z_adv, marks, readout=readout,
                                generators=gens, progress=bar.advance)
    start_gap = row_norms(to_public(z) - to_public(z_adv)).cpu()
    noise01 = torch.rand(x01.shape, generator=make_generator(device, cfg.section(RunConfig).seed,
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
