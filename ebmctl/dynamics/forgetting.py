"""Memorylessness of the Langevin purifier (docs/algorithms.md#memorylessness-checks), pure maths:
chains from clean and adversarial starts with common and independent noise, the statistics read
along them, and the energy gap between natural, adversarial and noise images.

:mod:`ebmctl.dynamics.report` wires these functions to artifacts, an attack and a profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ebmctl.units import adapt_images
from ebmctl.dynamics.benettin import Progress, row_norms
from ebmctl.errors import ConfigError
from ebmctl.sampling.langevin import LangevinSettings, frozen, langevin
from ebmctl.units import to_public


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
