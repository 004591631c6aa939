"""Out-of-distribution detection with the energy (thesis §6.5.4; docs/algorithms.md#ood-scores).

Score = −energy, so in-distribution images (the positive class) should score higher. AUROC is
the Mann-Whitney probability that a random in-distribution image scores above a random OOD
image (ties count one half); FPR@95%TPR is the share of OOD images accepted at the threshold
that accepts 95 % of in-distribution images. A temperature only rescales the energy, so neither
metric depends on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch

from ebmctl.config import RunRecord, setting
from ebmctl.contracts import DatasetBundle
from ebmctl.errors import InputError


@dataclass(frozen=True)
class OODConfig:
    """The profile section ``[ood]``: the out-of-distribution sets ``ebmctl ood`` scores and
    how many images of each."""

    section: ClassVar[str] = "ood"

    n_images: int = setting(1000, "images per dataset scored", minimum=1)
    sets: tuple[str, ...] = setting(("uniform-noise",), "out-of-distribution datasets "
                                    "(NAME or NAME=ROOT)")


@dataclass(frozen=True)
class OODSettings:
    """What :func:`run_ood` reads, built once by the command: the ``[ood]`` section,
    ``load_data(**changes)`` (the dataset bundle of the profile's ``[data]`` with fields
    changed: ``image_size``, ``dataset``, ``root``, ...), the run's ``seed`` and the resolved
    profile to write into the report."""

    ood: OODConfig
    load_data: Callable[..., DatasetBundle]
    seed: int
    record: RunRecord


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``; tied values share the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_vals = values[order]
    # Boundaries of runs of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0  # mean of ranks s+1..e
    return ranks


def _check(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = np.asarray(pos, dtype=np.float64).ravel(), np.asarray(neg, dtype=np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        raise InputError("AUROC needs at least one positive and one negative score")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise InputError("scores contain NaN or Inf")
    return pos, neg


def auroc(pos_scores, neg_scores) -> float:
    """Area under the ROC curve with ``pos_scores`` as the positive class (higher = positive)."""
    pos, neg = _check(pos_scores, neg_scores)
    ranks = average_ranks(np.concatenate([pos, neg]))
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def fpr_at_tpr(pos_scores, neg_scores, tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold whose true-positive rate is ≥ ``tpr``."""
    pos, neg = _check(pos_scores, neg_scores)
    k = max(1, math.ceil(tpr * len(pos) - 1e-9))  # positives that must be accepted
    threshold = np.sort(pos)[::-1][k - 1]
    return float((neg >= threshold).mean())


def energies(energy_fn: Callable[[torch.Tensor], torch.Tensor], x01: torch.Tensor, device,
             batch: int = 256) -> torch.Tensor:
    """Energies [N] of [0,1] images, in batches, without gradients."""
    out = []
    with torch.no_grad():
        for part in torch.split(x01, batch):
            out.append(energy_fn(part.to(device)).detach().float().cpu())
    e = torch.cat(out) if out else torch.zeros(0)
    if not torch.isfinite(e).all():
        raise InputError("the model gives NaN/Inf energies on these images")
    return e


def ood_metrics(energy_in: torch.Tensor, energy_out: torch.Tensor) -> dict:
    """AUROC and FPR@95%TPR with in-distribution positive and score = −energy."""
    s_in, s_out = (-energy_in).numpy(), (-energy_out).numpy()
    return {"auroc": round(auroc(s_in, s_out), 4),
            "fpr_at_95_tpr": round(fpr_at_tpr(s_in, s_out, 0.95), 4),
            "energy_mean": round(float(energy_out.mean()), 6),
            "energy_std": round(float(energy_out.std()) if len(energy_out) > 1 else 0.0, 6),
            "n": int(len(energy_out))}


def parse_set(spec: str) -> tuple[str, str]:
    """``NAME`` or ``NAME=ROOT`` → (name, root)."""
    name, _, root = spec.partition("=")
    name = name.strip()
    if not name:
        raise InputError(f"bad OOD set {spec!r}; use NAME or NAME=ROOT")
    return name, root.strip()


def evaluation_split(bundle):
    """Held-out images: the test split, else validation (never training images)."""
    for split in (bundle.test, bundle.val):
        if len(split):
            return split
    raise InputError(f"dataset {bundle.name!r} has no test or validation images")


def _rounded(e: torch.Tensor) -> list[float]:
    return [float(f"{v:.7g}") for v in e.tolist()]


def run_ood(settings: OODSettings, model_path, device, out,
            sets: list[str] | None = None) -> dict:
    """Energies of held-out in-distribution images (the profile's dataset, default: the model's
    training set) and of each OOD set (``sets``, default ``ood.sets``), resized to the model's
    input; AUROC, FPR@95%TPR, JSON report and an energy histogram PNG.

    Raises:
        InputError: no OOD set, a bad set spec, a set without held-out images, or NaN/Inf
            energies.
    """
    from pathlib import Path

    from ebmctl.artifacts import atomic_write_json
    from ebmctl.console import progress_bar
    from ebmctl.context import environment
    from ebmctl.data_utils import pick_subset
    from ebmctl.evaluate.plots import save_histograms
    from ebmctl.models import load_energy_model

    out = Path(out)
    model = load_energy_model(model_path, device)
    ood = settings.ood
    n = ood.n_images
    specs = [parse_set(s) for s in (sets if sets is not None else ood.sets)]
    if not specs:
        raise InputError("no out-of-distribution sets given (--ood NAME or ood.sets)")
    fit = {"image_size": model.image_size, "channels": model.channels, "max_train": n}
    # Load everything before scoring so a bad set fails fast.
    in_bundle = settings.load_data(**fit)
    in_x = pick_subset(evaluation_split(in_bundle), n).x
    ood_x = {}
    for name, root in specs:
        label = name if name not in ood_x else f"{name}={root}"
        bundle = settings.load_data(**fit, dataset=name, root=root)
        ood_x[label] = pick_subset(evaluation_split(bundle), n).x
    with progress_bar(1 + len(ood_x), "ood energies") as bar:
        e_in = energies(model.energy01, in_x, device)
        bar.advance(1)
        e_out = {}
        for label, x in ood_x.items():
            e_out[label] = energies(model.energy01, x, device)
            bar.advance(1, label)
    temperature = model.temperature
    report = {
        "command": "ood", "model": str(model_path),
        "model_kind": model.kind,
        "score": "energy U(x) = U_net(x)/T evaluated on the image (no sampling); "
                 "in-distribution is the positive class with score -U(x)",
        "temperature": temperature,
        "in_distribution": {"dataset": in_bundle.name, "n": int(len(e_in)),
                            "energy_mean": round(float(e_in.mean()), 6),
                            "energy_std": round(float(e_in.std()) if len(e_in) > 1 else 0.0, 6),
                            "energies": _rounded(e_in)},
        # per-image energies: the HTML page's histograms and ROC curves are drawn from them
        "out_of_distribution": {k: {**ood_metrics(e_in, v), "energies": _rounded(v)}
                                for k, v in e_out.items()},
        "config": settings.record.to_dict(),
        "environment": environment(device, seed=settings.seed),
    }
    save_histograms(out.with_suffix(".png"),
                    {f"{in_bundle.name} (in)": e_in.numpy(),
                     **{f"{k} (AUROC {report['out_of_distribution'][k]['auroc']:.3f})": v.numpy()
                        for k, v in e_out.items()}},
                    f"energy U(x) (T = {temperature:g})",
                    f"OOD by energy: {Path(str(model_path)).name}")
    atomic_write_json(out, report)
    return report
