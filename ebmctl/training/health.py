"""Training health of an EBM run: does it stay healthy over the horizon it will be used for?

A convergent EBM keeps samples realistic far beyond the trajectory length K used in training; a
non-convergent one oversaturates (pixels leave [-1,1]) or sinks into states with far lower energy
than data (Nijkamp et al. 2020, "On the Anatomy of MCMC-Based Maximum Likelihood Learning of
Energy-Based Models"; docs/algorithms.md#training-health-check). One check serves both
training recipes: chains from held-out data run K steps (training), K_def = ``defense.steps``
(what purification runs) and the long-run horizon L (``train.health_horizon``), and the verdict
is decided at every horizon beyond K and *named by* the longest one: a model judged at 10·K is
not claimed to be healthy at 1,500 steps. With a classifier (``train.health_classifier``) the
check also reports label survival at each horizon (the share of chains whose predicted label is
still the one of their start image); without one it says that label survival was not measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ebmctl.console import info
from ebmctl.evaluate.plots import save_grid
from ebmctl.sampling.langevin import LangevinSettings, energy_and_grad, langevin
from ebmctl.units import to_internal, to_public


class HorizonSettings(Protocol):
    """The ``[train]`` fields the horizons read (:class:`~ebmctl.training.trainer.TrainConfig`
    has them; declared here because the trainer imports this module)."""

    mcmc_steps: int
    health_horizon: int
    longrun_steps: int

# A chain is "oversaturated" when more than this share of its pixels leaves [-1, 1] by more than
# OUTSIDE_MARGIN: sampler noise alone moves saturated data pixels (black digit backgrounds, white
# skies) just past the boundary, which is not oversaturation.
MAX_OUTSIDE_FRACTION = 0.05
OUTSIDE_MARGIN = 0.1
# Long-run samples whose mean energy is more than this many data-energy standard deviations below
# the data's mean energy have drifted into low-energy states the data never visits.
MAX_ENERGY_DROP_SDS = 3.0
#: Default long-run horizon, as a multiple of the training K, when no longer horizon applies.
LONG_RUN_FACTOR = 10
LABELS_NOT_MEASURED = "label survival not measured (set train.health_classifier to a classifier)"


def parameter_grad_norm(net: torch.nn.Module) -> float:
    """L2 norm of all parameter gradients after ``backward`` (the update's size before lr)."""
    sq = [p.grad.detach().float().pow(2).sum() for p in net.parameters() if p.grad is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


def health_horizon(train: HorizonSettings, defense_steps: int, trained_horizon: int = 0) -> int:
    """The long-run horizon L in Langevin steps: ``train.health_horizon`` when set (else the
    older ``train.longrun_steps``), otherwise the longest of 10·K, K_def = ``defense_steps`` and
    ``trained_horizon``, the chain length the recipe trained its chains to last
    (:attr:`ebmctl.training.trainer.EnergyRecipe.trained_horizon`; the mid-run recipe's
    ``train.target_horizon``)."""
    explicit = train.health_horizon or train.longrun_steps
    if explicit:
        return int(explicit)
    return int(max(LONG_RUN_FACTOR * train.mcmc_steps, defense_steps, trained_horizon))


@dataclass(frozen=True)
class HealthHorizons:
    """The three chain lengths (Langevin steps) the health check runs to: the training K, the
    defense's K_def and the long-run horizon L (:func:`health_horizon`)."""

    training: int
    defense: int
    long_run: int

    @classmethod
    def of(cls, train: HorizonSettings, defense_steps: int,
           trained_horizon: int = 0) -> "HealthHorizons":
        return cls(train.mcmc_steps, defense_steps,
                   health_horizon(train, defense_steps, trained_horizon))


def load_health_classifier(path: str, device):
    """The classifier artifact at ``path`` (``train.health_classifier``: a
    :class:`ebmctl.models.TaskModel` taking [0,1] images), or None for an empty path. Called
    when training starts, so a bad path fails before training rather than after it.

    Raises:
        ConfigError: the artifact is not a classifier.
    """
    if not path:
        return None
    from ebmctl.models import TaskModel
    from ebmctl.errors import ConfigError

    model = TaskModel.load(path, torch.device(device))
    if model.kind != "classifier":
        raise ConfigError(f"train.health_classifier {path} is a {model.kind!r} artifact; label "
                          "survival needs a classifier")
    return model


def _stats(net, x: torch.Tensor, x0: torch.Tensor, precision: str) -> dict:
    energy, grad = energy_and_grad(net, x, precision)
    return {"mean_energy": round(energy.mean().item(), 6),
            "fraction_outside_range": round((x.abs() > 1.0 + OUTSIDE_MARGIN).float().mean().item(), 4),
            "mean_abs_change": round((x - x0).abs().mean().item(), 4),
            "langevin_grad_norm": round(grad.flatten(1).norm(dim=1).mean().item(), 6)}


@torch.no_grad()
def _predict(classifier, x_internal: torch.Tensor) -> torch.Tensor:
    """Predicted labels [N] of images in internal units, in batches of 256."""
    parts = [classifier(to_public(x).clamp(0, 1)).argmax(1)
             for x in torch.split(x_internal, 256)]
    return torch.cat(parts).cpu()


def longrun_health(net, starts: torch.Tensor, short_steps: int, long_steps: int,
                   settings: LangevinSettings, gen: torch.Generator, out: Path | None,
                   defense_steps: int | None = None, classifier=None,
                   labels: torch.Tensor | None = None) -> dict:
    """Chains from ``starts`` [N, C, H, W] (held-out data, internal units [-1, 1]), continued
    through ``short_steps`` = K, ``defense_steps`` = K_def and ``long_steps`` = L (the later
    states continue the earlier ones). Per horizon: mean energy, share of pixels outside
    [-1, 1] by more than 0.1, mean |x − x0| (internal units), mean ‖∇U‖; with ``classifier``
    also the share of chains whose label is still their start's (``label_kept``) and, with
    ``labels`` [N], the accuracy. Grids ``<out>.health-K<steps>.png``. Returns the report with
    the verdict of :func:`assess_convergence`."""
    was_training = net.training
    net.eval()
    plan = {"short": short_steps, "long": long_steps}
    if defense_steps is not None:
        plan["defense"] = defense_steps
    order = sorted(plan.items(), key=lambda kv: kv[1])
    states: dict[str, torch.Tensor] = {}
    try:
        data_energy, _ = energy_and_grad(net, starts, settings.precision)
        x, at = starts, 0
        for role, steps in order:
            x = langevin(net, x, max(0, steps - at), settings, gen) if steps > at else x
            at = max(at, steps)
            states[role] = x
    finally:
        net.train(was_training)
    report = {
        "start": "held-out data",
        "n_chains": int(starts.shape[0]),
        "data_mean_energy": round(data_energy.mean().item(), 6),
        "data_energy_sd": round(data_energy.std().item() if len(data_energy) > 1 else 0.0, 6),
    }
    for role, steps in order:
        report[role] = {"steps": steps, **_stats(net, states[role], starts, settings.precision)}
    if classifier is not None:
        first = _predict(classifier, starts)
        if labels is not None:
            report["start_accuracy"] = round((first == labels.cpu()).float().mean().item(), 4)
        for role, _ in order:
            pred = _predict(classifier, states[role])
            report[role]["label_kept"] = round((pred == first).float().mean().item(), 4)
            if labels is not None:
                report[role]["accuracy"] = round((pred == labels.cpu()).float().mean().item(), 4)
    if out is not None:
        out = Path(out)
        for role, steps in order:
            png = out.with_name(f"{out.stem}.health-K{steps}.png")
            save_grid(to_public(states[role][:64]), png)
            report[role]["grid"] = png.name
    report.update(assess_convergence(report))
    return report


def assess_convergence(report: dict) -> dict:
    """The verdict of a :func:`longrun_health` report: ``convergent`` (bool), ``reasons``
    (list of str), ``decided_at`` (the longest horizon judged, in Langevin steps), ``labels``
    (label survival there, or that it was not measured) and ``verdict`` (one line naming the
    horizon). Every horizon beyond training's K is judged (``defense`` = K_def and ``long``)."""
    by_steps = {report[r]["steps"]: report[r] for r in ("long", "defense") if r in report}
    beyond_k = {s: h for s, h in by_steps.items()
                if s > report.get("short", {"steps": -1})["steps"]}
    judged = list((beyond_k or by_steps).values())
    reasons = []
    sd = max(report["data_energy_sd"], 1e-8)
    for h in sorted(judged, key=lambda h: h["steps"]):
        if h["fraction_outside_range"] > MAX_OUTSIDE_FRACTION:
            reasons.append(f"{h['fraction_outside_range']:.1%} of pixels left [-1,1] (by more "
                           f"than {OUTSIDE_MARGIN}) after {h['steps']} steps (oversaturation)")
        drop = (report["data_mean_energy"] - h["mean_energy"]) / sd
        if drop > MAX_ENERGY_DROP_SDS:
            reasons.append(f"energy after {h['steps']} steps is {drop:.1f} data-SDs below the "
                           "data's energy")
    longest = max(judged, key=lambda h: h["steps"])
    at = longest["steps"]
    if "label_kept" in longest:
        labels = f"label kept on {longest['label_kept']:.2f} of chains after {at} steps"
        defense = report.get("defense")
        if defense is not None and defense["steps"] != at and "label_kept" in defense:
            labels += f" ({defense['label_kept']:.2f} after K_def = {defense['steps']})"
    else:
        labels = LABELS_NOT_MEASURED
    if reasons:
        verdict = f"non-convergent at {at} Langevin steps: " + "; ".join(reasons)
    else:
        verdict = (f"convergent at {at} Langevin steps: chains from held-out data stay in "
                   f"range and near the data's energy; {labels}")
    return {"convergent": not reasons, "reasons": reasons, "decided_at": at, "labels": labels,
            "verdict": verdict}


def run_health_check(net, bundle, settings: LangevinSettings, device, out: Path | None,
                     horizons: HealthHorizons, *, chains: int, seed: int, classifier=None,
                     classifier_path: str = "") -> dict | None:
    """The end-of-run health check of the EBM trainers: ``chains`` (``train.health_chains``)
    held-out images (validation split, else training; a seeded class-mixed subset, chains
    seeded from ``seed`` = ``run.seed``) run the ``horizons`` K, K_def and L; the verdict is
    logged and returned (None when ``chains`` = 0). ``classifier_path`` names ``classifier``
    in the report."""
    from ebmctl.data_utils import pick_subset
    from ebmctl.seeds import make_generator

    if chains <= 0:
        return None
    held_out = bundle.val if len(bundle.val) else bundle.train
    held_out = pick_subset(held_out, chains)
    starts = to_internal(held_out.x).to(device)
    report = longrun_health(net, starts, horizons.training, horizons.long_run, settings,
                            make_generator(device, seed, "health"), out,
                            defense_steps=horizons.defense, classifier=classifier,
                            labels=held_out.y if held_out.y.dim() == 1 else None)
    report["horizons"] = {"training_K": horizons.training, "defense_K_def": horizons.defense,
                          "long_run": horizons.long_run}
    if classifier is not None:
        report["classifier"] = str(classifier_path)
    info(("" if report["convergent"] else "warning: ") + "training health: " + report["verdict"])
    return report
