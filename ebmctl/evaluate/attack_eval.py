"""Run an attack over a set of images in fixed batches and summarise it."""

from __future__ import annotations

from typing import Callable

import torch

from ebmctl.attacks.base import Attack, AttackOutcome
from ebmctl.defense import Defense
from ebmctl.protocols import Task


def evaluate_attack(attack: Attack, defense: Defense, task: Task, x: torch.Tensor,
                    y: torch.Tensor, *, seed: int, batch_size: int, device: torch.device,
                    label: str, progress: Callable[[int], None] | None = None) -> dict:
    """Attack ``x`` in fixed chunks (chunk i covers images [i*batch, (i+1)*batch)), each keyed by
    (seed, label, chunk start), so any subset of chunks reproduces the full run's figures."""
    outcomes: list[AttackOutcome] = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].to(device)
        yb = y[start:start + batch_size].to(device)
        outcomes.append(attack.run(defense, task, xb, yb, (seed, label, start), progress))
    return summarise(outcomes)


def summarise(outcomes: list[AttackOutcome]) -> dict:
    nat = torch.cat([o.natural_ok for o in outcomes])
    rob = torch.cat([o.robust_ok for o in outcomes])
    by_step = torch.cat([o.ok_by_step for o in outcomes], dim=2)  # [R, N+1, M]
    n = len(nat)
    return {
        "n_images": n,
        "natural": nat.float().mean().item(),
        "adversarial": rob.float().mean().item(),
        "robust_by_step": [by_step[r].float().mean(1).tolist() for r in range(by_step.shape[0])],
        "natural_ok": nat.tolist(),
        "robust_ok": rob.tolist(),
        "_x_adv": torch.cat([o.x_adv for o in outcomes]),
    }
