"""What `ebmctl lyapunov` computes (docs/algorithms.md#sampler-dynamics): the exponent curve
over the η grid of :mod:`ebmctl.dynamics.benettin` and the forgetting curves of
:mod:`ebmctl.dynamics.forgetting` for an EBM artifact, as report dicts, and their figures.
Everything here takes :class:`LyapunovSettings`, the typed sections the command builds once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from ebmctl.artifacts import atomic_write_json
from ebmctl.config import RunRecord, setting
from ebmctl.console import progress_bar
from ebmctl.contracts import DatasetBundle, Split
from ebmctl.data_utils import pick_subset
from ebmctl.units import adapt_images
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

if TYPE_CHECKING:
    from ebmctl.evaluate.plan import EvaluationSettings

#: the progress bar when the caller passes none: counts nothing, prints nothing
_quiet = functools.partial(progress_bar, quiet=True)


def to_chain_space(x01: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """[0,1] images → the EBM's internal units, size and channels."""
    return to_internal(adapt_images(x01, image_size, channels))


# --- settings ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LyapunovConfig:
    """The profile section ``[lyapunov]``: the η grid and Benettin settings of the exponent
    report, and the start images, attack and checkpoints of the forgetting curves
    (docs/algorithms.md#sampler-dynamics)."""

    section: ClassVar[str] = "lyapunov"

    etas: tuple[float, ...] = setting(tuple(round(10 ** (-2 + 3 * i / 12), 6) for i in range(13)),
                                      "noise scales η of T_η (log grid over [1e-2, 1e1])")
    n_images: int = setting(64, "start images (from lyapunov.split)", minimum=1)
    split: str = setting("test", "split the start images come from",
                         choices=("train", "val", "test"))
    seeds: tuple[int, ...] = setting((0,), "noise seeds per image (exponents average over both)")
    burn_in: int = setting(1000, "steps B before measuring", minimum=0)
    steps: int = setting(2000, "measured steps S", minimum=1)
    separation: float = setting(1e-3, "finite separation d_0 (l2, internal units)",
                                minimum=1e-300)
    separation_factors: tuple[float, ...] = setting(
        (), "also run with d_0 times each factor (sensitivity check, e.g. [0.1, 10])")
    renorm_every: int = setting(1, "renormalise the separation every r steps", minimum=1)
    precision: str = setting("float64", "float64 | float32", choices=("float64", "float32"))
    zero_tol: float = setting(3.0, "η* = first η whose mean exceeds this many SEs", minimum=0)
    memory_steps: tuple[int, ...] = setting((0, 1, 3, 10, 30, 100, 300, 1000, 1500, 3000),
                                            "checkpoints k of the forgetting curves (--checks)")
    memory_images: int = setting(64, "images attacked for the forgetting curves", minimum=1)
    attack: str = setting("pgd", "attack that makes the adversarial images")
    attack_defended: bool = setting(False, "attack the EBM-defended model (e.g. bpda-eot) "
                                           "instead of the bare task model")


@dataclass(frozen=True)
class LyapunovSettings:
    """What `ebmctl lyapunov` reads, built once by the command: the ``[lyapunov]`` and
    ``[langevin]`` sections, the run's seed (``run.seed``), the resolved profile to write into
    the reports, and for the forgetting curves the attack evaluation's settings
    (``evaluation``: the attack ``lyapunov.attack`` and its defense; None without
    ``--checks``)."""

    lyapunov: LyapunovConfig
    langevin: LangevinConfig
    seed: int
    record: RunRecord
    evaluation: "EvaluationSettings | None" = None


# --- reports: what `ebmctl lyapunov` computes -------------------------------------------------

def exponent_settings(ly: LyapunovConfig, langevin: LangevinConfig) -> ExponentSettings:
    """The Benettin settings of the ``[lyapunov]`` section (chains in ``langevin.chunk_rows``
    rows)."""
    return ExponentSettings(etas=[float(e) for e in ly.etas], burn_in=ly.burn_in, steps=ly.steps,
                            separation=ly.separation, renorm_every=ly.renorm_every,
                            seeds=list(ly.seeds), dtype=ly.precision, zero_tol=ly.zero_tol,
                            chunk_rows=langevin.chunk_rows)


def exponent_report(run: LyapunovSettings, energy, x01: torch.Tensor, *,
                    progress_factory=None) -> tuple[dict, torch.Tensor]:
    """Benettin exponents of ``energy`` (an :class:`ebmctl.models.EnergyModel`) over the η grid
    for start images ``x01`` ([0,1] units), at d_0 and at d_0 × each ``separation_factors``.
    Returns (report dict, steady-state samples [n_eta, n, ...] in [0,1] units at d_0)."""
    settings = exponent_settings(run.lyapunov, run.langevin)
    settings.validate()
    x0 = to_chain_space(x01, energy.image_size, energy.channels)
    dtype = DTYPES[settings.dtype]
    grad_fn = net_grad_fn(energy.net, dtype)
    drift, tau = energy.settings().drift, energy.tau
    factors = [1.0] + [float(f) for f in run.lyapunov.separation_factors
                       if float(f) != 1.0]
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
                                        run_seed=run.seed, separation=sep,
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


def make_adversarial(run: LyapunovSettings, task, model, energy, x01: torch.Tensor,
                     y: torch.Tensor, device) -> tuple[torch.Tensor, dict]:
    """Adversarial versions of ``x01`` made on the spot with a registered attack
    (``lyapunov.attack``; against the bare task model unless ``lyapunov.attack_defended``),
    built from ``run.evaluation``.

    Raises:
        ConfigError: ``run`` has no evaluation settings, or an unknown attack.
    """
    from ebmctl.evaluate.plan import build_defense, make_attack

    if run.evaluation is None:
        raise ConfigError("the forgetting curves need the attack evaluation's settings")
    defended = run.lyapunov.attack_defended
    attack = make_attack(run.evaluation, run.lyapunov.attack, defended)
    defense = build_defense(run.evaluation, model, energy if defended else None, device)
    outcome = attack.run(defense, task, x01.to(device), y.to(device),
                         (run.seed, "lyapunov-attack"))
    info = {"attack": attack.name, "target": "defended model" if defended else "task model",
            "norm": attack.norm, "eps": attack.eps, "step_size": attack.step_size,
            "steps": attack.steps, "natural": outcome.natural_ok.float().mean().item(),
            "adversarial": outcome.robust_ok.float().mean().item()}
    return outcome.x_adv.to(device), {**info, "_broken": outcome.natural_ok & ~outcome.robust_ok}


def memory_report(run: LyapunovSettings, energy, task, model, x01: torch.Tensor,
                  y: torch.Tensor, device, *, progress_factory=None) -> dict:
    """Forgetting curves (docs/algorithms.md#memorylessness-checks): chains from clean and
    adversarial images with common and independent noise, distances and task-model agreement along
    the chain, and the energy gap. Statistics are over the images the attack broke (all images if it
    broke none)."""
    x_adv01, attack_info = make_adversarial(run, task, model, energy, x01, y, device)
    broken = attack_info.pop("_broken")
    use = broken.nonzero().flatten() if broken.any() else torch.arange(len(x01))
    x01, x_adv01, y = x01[use.to(x01.device)], x_adv01[use.to(x_adv01.device)], y[use.to(y.device)]
    with torch.no_grad():
        clean_labels = model(x01).argmax(1)
    z, z_adv = (to_chain_space(t, energy.image_size, energy.channels) for t in (x01, x_adv01))
    gens = [make_generator(device, run.seed, "lyapunov-memory", name)
            for name in ("common", "adv-independent", "clean-independent")]
    readout = chain_readout(model, task.score, y, clean_labels, tuple(x01.shape[-2:]),
                            x01.shape[1])
    marks = sorted(set(run.lyapunov.memory_steps))
    with (progress_factory or _quiet)(max(marks), "forgetting curves") as bar:
        raw = forgetting_curves(energy.net, energy.settings(), z, z_adv, marks, readout=readout,
                                generators=gens, progress=bar.advance)
    start_gap = row_norms(to_public(z) - to_public(z_adv)).cpu()
    noise01 = torch.rand(x01.shape, generator=make_generator(device, run.seed, "lyapunov-noise"),
                         device=device)
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


# --- files: what `ebmctl lyapunov` writes -----------------------------------------------------

def memory_path(out: Path) -> Path:
    """The forgetting-curve report beside the exponent report ``out``: ``<name>.memory.json``."""
    return out.with_name(out.stem + ".memory.json")


def samples_path(out: Path) -> Path:
    """The steady-state sample grid beside the exponent report ``out``."""
    return out.with_name(out.stem + ".samples.png")


def planned_outputs(out: Path, exponent: bool, checks: bool) -> list[Path]:
    """Every file the exponent report at ``out`` (JSON, PNG, sample grid, HTML) and, with
    ``checks``, the memory report beside it (JSON, PNG, HTML) will write."""
    memory = memory_path(out)
    return (([out, out.with_suffix(".png"), samples_path(out), out.with_suffix(".html")]
             if exponent else [])
            + ([memory, memory.with_suffix(".png"), memory.with_suffix(".html")]
               if checks else []))


def start_split(ly: LyapunovConfig, bundle: DatasetBundle) -> Split:
    """The split ``lyapunov.split`` of ``bundle`` the chains start from.

    Raises:
        ConfigError: the split is empty.
    """
    name = ly.split
    data = bundle.split(name)
    if len(data) == 0:
        raise ConfigError(f"the {name} split of {bundle.name!r} is empty")
    return data


def report_header(run: LyapunovSettings, energy, bundle: DatasetBundle, device) -> dict:
    """What both reports start with: the command, the EBM, the data, the environment and the
    resolved profile."""
    from ebmctl.context import environment

    return {"command": "lyapunov", "ebm": energy.path, "dataset": bundle.name,
            "split": run.lyapunov.split, "environment": environment(device, seed=run.seed),
            "config": run.record.to_dict()}


def write_exponent_report(run: LyapunovSettings, energy, data: Split, out: Path, header: dict, title: str, device,
                          *, progress_factory=None) -> tuple[dict, list[Path]]:
    """:func:`exponent_report` from ``lyapunov.n_images`` images of ``data``, written as JSON at
    ``out`` (``header`` first), the exponent plot, the sample grid and the HTML page.
    Returns (report, the files written)."""
    from ebmctl.evaluate.html import write_html
    from ebmctl.evaluate.plots import save_grid

    x01 = pick_subset(data, run.lyapunov.n_images).x.to(device)
    report, samples = exponent_report(run, energy, x01, progress_factory=progress_factory)
    report = {**header, **report}
    atomic_write_json(out, report)
    plot_exponents(out.with_suffix(".png"), report, title)
    grid = samples[:, :min(8, samples.shape[1])]
    save_grid(grid.reshape(-1, *grid.shape[2:]), samples_path(out), nrow=grid.shape[1])
    return report, [out, out.with_suffix(".png"), samples_path(out), write_html(out)]


def write_memory_report(run: LyapunovSettings, energy, task, model, data: Split, out: Path,
                        header: dict, title: str, device, *,
                        progress_factory=None) -> tuple[dict, list[Path]]:
    """:func:`memory_report` from ``lyapunov.memory_images`` images of ``data`` attacked on
    ``model`` (a :class:`ebmctl.models.TaskModel`), written as JSON at ``out`` (``header``
    first), the curve plot and the HTML page. Returns (report, the files written)."""
    from ebmctl.evaluate.html import write_html

    held = pick_subset(data, run.lyapunov.memory_images)
    mem = memory_report(run, energy, task, model, held.x.to(device), held.y.to(device), device,
                        progress_factory=progress_factory)
    mem = {**header, **mem}
    atomic_write_json(out, mem)
    plot_memory(out.with_suffix(".png"), mem, title)
    return mem, [out, out.with_suffix(".png"), write_html(out)]


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
