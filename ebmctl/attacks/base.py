"""The attack interface: a small class per attack, registered through the attack hook."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ebmctl.defense import Defense
from ebmctl.errors import ConfigError
from ebmctl.contracts import Task


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

    Args:
        norm: ``linf`` | ``l2``.
        eps: radius ε in [0,1] pixel units.
        step_size: α in [0,1] pixel units (ℓ2: the length of one normalised step).
        steps: N attack steps (N+1 evaluation points).
        restarts: R restarts; an image is broken if any restart breaks it.
        eot_reps: H_adv, replicates of the gradient and the screening.
        verify_reps: H_def, fresh replicates of the natural check and of each verification.
        random_start: start each restart at a uniform point of the ε-ball.

    Raises:
        ConfigError: an invalid norm, negative radius/step/steps or < 1 restart/replicate.
    """

    name = ""
    description = ""
    needs_defense = False  # True if it only makes sense against a stochastic defense

    def __init__(self, *, norm: str = "linf", eps: float = 8 / 255, step_size: float = 2 / 255,
                 steps: int = 50, restarts: int = 1, eot_reps: int = 1, verify_reps: int = 1,
                 random_start: bool = True):
        if norm not in ("linf", "l2"):
            raise ConfigError(f"unknown attack.norm {norm!r}; choose from linf, l2")
        if eps < 0 or step_size < 0 or steps < 0 or restarts < 1 or eot_reps < 1 \
                or verify_reps < 1:
            raise ConfigError(f"attack {self.name!r}: eps, step size and steps must be >= 0, "
                              "restarts and replicates >= 1")
        self.norm, self.eps, self.step_size, self.steps = norm, float(eps), float(step_size), steps
        self.restarts, self.eot_reps, self.verify_reps = restarts, eot_reps, verify_reps
        self.random_start = random_start

    def run(self, defense: Defense, task: Task, x: torch.Tensor, y: torch.Tensor, key: tuple,
            progress: Callable[[int], None] | None = None) -> AttackOutcome:
        raise NotImplementedError
