"""Attack losses, selectable by ``attack.loss`` for every gradient attack (APGD included).

* ``ce``: the task's own attack loss (cross-entropy for classification; the segmentation
  plugin's SegPGD-style loss for segmentation).
* ``margin``: Carlini & Wagner (2017), max_{j≠y} z_j − z_y (positive ⇔ misclassified).
* ``dlr``: difference of logits ratio, Croce & Hein (2020, Eq. 6), shift- and scale-invariant.

Every loss maps outputs [B,C] (classification logits, EOT-averaged) and targets [B] to a
per-example loss [B] that the attacker *maximises*.
"""

from __future__ import annotations

from typing import Callable

import torch

from ebmctl.errors import ConfigError
from ebmctl.contracts import Task

LOSSES = ("ce", "margin", "dlr")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def margin_loss(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j≠y} z_j − z_y per example [B] of logits [B,C] (Carlini & Wagner 2017)."""
    zy = outputs.gather(1, y.view(-1, 1)).squeeze(1)
    other = outputs.clone()
    other.scatter_(1, y.view(-1, 1), float("-inf"))
    return other.max(1).values - zy


def dlr_loss(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020), to be maximised:
    −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3). Needs ≥ 3 classes.

    Raises:
        ConfigError: outputs are not [B,C] logits with C ≥ 3.
    """
    if outputs.dim() != 2 or outputs.shape[1] < 3:
        raise ConfigError("attack.loss = 'dlr' needs classification outputs with at least 3 "
                          "classes")
    srt = outputs.sort(1, descending=True).values
    return margin_loss(outputs, y) / (srt[:, 0] - srt[:, 2] + 1e-12)


def resolve_loss(name: str, task: Task) -> LossFn:
    """The per-example loss called ``name`` (one of :data:`LOSSES`) for ``task``.

    Raises:
        ConfigError: unknown name.
    """
    if name == "ce":
        return task.attack_loss
    if name == "margin":
        return _classification_only("margin", margin_loss)
    if name == "dlr":
        return dlr_loss
    raise ConfigError(f"unknown attack.loss {name!r}; choose from {', '.join(LOSSES)}")


def _classification_only(name: str, fn: LossFn) -> LossFn:
    def loss(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if outputs.dim() != 2:
            raise ConfigError(f"attack.loss = {name!r} needs classification outputs [B,C]; "
                              "use attack.loss = 'ce' for this task")
        return fn(outputs, y)

    return loss
