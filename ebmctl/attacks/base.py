"""The attack interface: a small class per attack, registered through the attack hook."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ebmctl.defense import Defense
from ebmctl.protocols import Task


@dataclass
class AttackOutcome:
    """Per-image results of one attack run over a batch (all tensors on CPU)."""

    natural_ok: torch.Tensor  # bool [B]
    robust_ok: torch.Tensor  # bool [B]: survived every step of every restart
    clean_score: torch.Tensor  # float [B]
    x_adv: torch.Tensor  # [B,...] the breaking image (or the last iterate)
    ok_by_step: torch.Tensor  # bool [R, N+1, B]: still unbroken after evaluation point n
    info: dict[str, Any] = field(default_factory=dict)


class Attack:
    """Base class. Subclasses set ``name`` and implement :meth:`run`.

    An attack receives the defense (task model + optional purifier), the task (losses and success
    rule), a batch of [0,1] images and targets, and a seed key from which it derives every random
    draw. It must honour the threat model ``norm``/``eps`` and report per-image outcomes.
    """

    name = ""
    description = ""
    needs_defense = False  # True if it only makes sense against a stochastic defense

    def __init__(self, *, norm: str = "linf", eps: float = 8 / 255, step_size: float = 2 / 255,
                 steps: int = 50, restarts: int = 1, eot_reps: int = 1, verify_reps: int = 1,
                 random_start: bool = True, **options: Any):
        self.norm, self.eps, self.step_size, self.steps = norm, eps, step_size, steps
        self.restarts, self.eot_reps, self.verify_reps = restarts, eot_reps, verify_reps
        self.random_start = random_start
        self.options = options

    def run(self, defense: Defense, task: Task, x: torch.Tensor, y: torch.Tensor, key: tuple,
            progress: Callable[[int], None] | None = None) -> AttackOutcome:
        raise NotImplementedError
