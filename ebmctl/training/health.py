"""Training health of an EBM run: is learning convergent?

A convergent EBM keeps samples realistic far beyond the trajectory length used in training; a
non-convergent one oversaturates (pixels leave [-1,1]) or sinks into states with far lower energy
than data. We run chains from held-out data for K and for L ≫ K steps, save both grids, and judge.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ebmctl.evaluate.plots import save_grid
from ebmctl.sampling import LangevinSettings, energy_and_grad, langevin
from ebmctl.units import to_public

# A chain is "oversaturated" when more than this share of its pixels leaves [-1, 1] by more than
# OUTSIDE_MARGIN: sampler noise alone moves saturated data pixels (black digit backgrounds, white
# skies) just past the boundary, which is not oversaturation.
MAX_OUTSIDE_FRACTION = 0.05
OUTSIDE_MARGIN = 0.1
# Long-run samples whose mean energy is more than this many data-energy standard deviations below
# the data's mean energy have drifted into low-energy states the data never visits.
MAX_ENERGY_DROP_SDS = 3.0


def parameter_grad_norm(net: torch.nn.Module) -> float:
    """L2 norm of all parameter gradients after ``backward`` (the update's size before lr)."""
    sq = [p.grad.detach().float().pow(2).sum() for p in net.parameters() if p.grad is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


def _stats(net, x: torch.Tensor, x0: torch.Tensor, precision: str) -> dict:
    energy, grad = energy_and_grad(net, x, precision)
    return {"mean_energy": round(energy.mean().item(), 6),
            "fraction_outside_range": round((x.abs() > 1.0 + OUTSIDE_MARGIN).float().mean().item(), 4),
            "mean_abs_change": round((x - x0).abs().mean().item(), 4),
            "langevin_grad_norm": round(grad.flatten(1).norm(dim=1).mean().item(), 6)}


def longrun_health(net, starts: torch.Tensor, short_steps: int, long_steps: int,
                   settings: LangevinSettings, gen: torch.Generator, out: Path | None) -> dict:
    """Chains from ``starts`` (held-out data, internal units): statistics after ``short_steps``
    (what training used) and after ``long_steps``; grids ``<out>.health-K<k>.png``."""
    was_training = net.training
    net.eval()
    try:
        data_energy, _ = energy_and_grad(net, starts, settings.precision)
        x_short = langevin(net, starts, short_steps, settings, gen)
        x_long = langevin(net, x_short, max(0, long_steps - short_steps), settings, gen)
    finally:
        net.train(was_training)
    report = {
        "start": "held-out data",
        "n_chains": int(starts.shape[0]),
        "data_mean_energy": round(data_energy.mean().item(), 6),
        "data_energy_sd": round(data_energy.std().item() if len(data_energy) > 1 else 0.0, 6),
        "short": {"steps": short_steps, **_stats(net, x_short, starts, settings.precision)},
        "long": {"steps": long_steps, **_stats(net, x_long, starts, settings.precision)},
    }
    if out is not None:
        out = Path(out)
        for key, x in (("short", x_short), ("long", x_long)):
            png = out.with_name(f"{out.stem}.health-K{report[key]['steps']}.png")
            save_grid(to_public(x[:64]), png)
            report[key]["grid"] = png.name
    report.update(assess_convergence(report))
    return report


def assess_convergence(report: dict) -> dict:
    """{"convergent": bool, "reasons": [...]} from a :func:`longrun_health` report."""
    reasons = []
    long = report["long"]
    if long["fraction_outside_range"] > MAX_OUTSIDE_FRACTION:
        reasons.append(f"{long['fraction_outside_range']:.1%} of pixels left [-1,1] (by more than "
                       f"{OUTSIDE_MARGIN}) after "
                       f"{long['steps']} steps (oversaturation)")
    sd = max(report["data_energy_sd"], 1e-8)
    drop = (report["data_mean_energy"] - long["mean_energy"]) / sd
    if drop > MAX_ENERGY_DROP_SDS:
        reasons.append(f"long-run energy is {drop:.1f} data-SDs below the data's energy")
    return {"convergent": not reasons, "reasons": reasons}
