"""The segmentation task: per-pixel cross-entropy, per-image Dice, broken = Dice ratio < 0.5.

Thesis §4.4 (docs/algorithms.md#segmentation-and-the-dice-rule): the defended prediction averages
the segmenter's per-pixel logits over replicates (the core Defense does that for any output shape);
an attacked image is broken when Dice(attacked) / Dice(clean) falls below
``task.dice_ratio_threshold``, where the clean Dice is measured through the same pipeline (purified
when defended).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ebmctl.api import ModelConfig, Task
from ebmctl_segmentation.metrics import dice_ratio_ok, dice_score
from ebmctl_segmentation.sections import (
    DiceRuleConfig,
    SegmentationConfig,
    SegmentationDataConfig,
)


def _valid(targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """1.0 where a pixel has a label, 0.0 on void pixels (``ignore_index``; -1 = none)."""
    if ignore_index < 0:
        return torch.ones(targets.shape, device=targets.device)
    return (targets != ignore_index).float()


def pixel_ce(outputs: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel cross-entropy [B,H,W] (0 on void pixels) and the valid-pixel weights."""
    valid = _valid(targets, ignore_index)
    safe = targets.long().masked_fill(valid == 0, 0)  # any class: its loss is masked out
    return F.cross_entropy(outputs, safe, reduction="none") * valid, valid


def soft_dice_loss(outputs: torch.Tensor, targets: torch.Tensor,
                   ignore_index: int = -1) -> torch.Tensor:
    """Per-image 1 − soft Dice [B] of the foreground probability (1 − p(background)) over the
    pixels that are not void."""
    valid = _valid(targets, ignore_index)
    fg = (1.0 - outputs.float().softmax(1)[:, 0]) * valid
    t = ((targets > 0).float() * valid)
    inter = (fg * t).flatten(1).sum(1)
    denom = fg.flatten(1).sum(1) + t.flatten(1).sum(1)
    return 1.0 - 2.0 * inter / (denom + 1.0)


def segpgd_loss(outputs: torch.Tensor, targets: torch.Tensor,
                ignore_index: int = -1) -> torch.Tensor:
    """Per-image SegPGD loss [B] (Gu et al., 2022): cross-entropy of the still-correct pixels
    weighted 1 − λ and of the already-wrong ones λ. SegPGD grows λ with the attack step; the
    attack loop does not pass the step, so λ is half the fraction of pixels already wrong: the
    attacker first pushes on correct pixels (where plain CE is dominated by a few wrong,
    high-loss pixels) and balances as the prediction flips."""
    if ignore_index < 0:
        ce = F.cross_entropy(outputs, targets.long(), reduction="none").flatten(1)
        wrong = (outputs.argmax(1) != targets.long()).flatten(1).float()
        lam = 0.5 * wrong.mean(1, keepdim=True)
        return ((1 - lam) * (1 - wrong) * ce + lam * wrong * ce).mean(1)
    ce, valid = pixel_ce(outputs, targets, ignore_index)
    ce, valid = ce.flatten(1), valid.flatten(1)
    n = valid.sum(1, keepdim=True).clamp_min(1)
    wrong = (outputs.argmax(1) != targets.long()).flatten(1).float() * valid
    lam = 0.5 * wrong.sum(1, keepdim=True) / n
    right = valid - wrong
    return (((1 - lam) * right * ce + lam * wrong * ce).sum(1, keepdim=True) / n).squeeze(1)


class SegmentationTask(Task):
    name = "segmentation"
    model_kind = "segmenter"
    default_dataset = "shapes"
    default_arch = "unet-lite"
    metric_name = "dice"
    panels = 8
    description = ("semantic segmentation: per-pixel cross-entropy, per-image Dice, "
                   "broken = Dice ratio below task.dice_ratio_threshold")

    def __init__(self, dice_mode: str = "foreground", threshold: float = 0.5,
                 attack_loss: str = "ce", ignore_index: int = -1):
        self.dice_mode, self.threshold, self.attack_loss_name = dice_mode, threshold, attack_loss
        self.ignore_index = ignore_index

    def configured(self, config) -> "SegmentationTask":
        task = copy.copy(self)  # the schema checked task.dice_mode against DICE_MODES
        dice, seg = config.section(DiceRuleConfig), config.section(SegmentationConfig)
        task.dice_mode = dice.dice_mode
        task.threshold = float(dice.dice_ratio_threshold)
        task.attack_loss_name = seg.attack_loss
        task.panels = seg.panels
        task.ignore_index = config.section(SegmentationDataConfig).ignore_index
        return task

    # --- model -------------------------------------------------------------------------------
    def prepare_model(self, net, config) -> None:
        from ebmctl_segmentation.models import load_encoder_weights

        load_encoder_weights(net, config.section(SegmentationConfig).encoder_weights)

    # --- losses ------------------------------------------------------------------------------
    # Void pixels (data.ignore_index) are left out of every loss: the mean runs over the
    # labelled pixels only, so a mostly-void image is not a weak one.
    def train_loss(self, outputs, targets):
        if self.ignore_index < 0:
            return F.cross_entropy(outputs, targets.long())
        ce, valid = pixel_ce(outputs, targets, self.ignore_index)
        return ce.sum() / valid.sum().clamp_min(1)

    def train_loss_per_example(self, outputs, targets):
        if self.ignore_index < 0:
            return F.cross_entropy(outputs, targets.long(), reduction="none").flatten(1).mean(1)
        ce, valid = pixel_ce(outputs, targets, self.ignore_index)
        return ce.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)

    def attack_loss(self, outputs, targets):
        """Per-image loss [B] the attacker maximises (``segmentation.attack_loss``)."""
        if self.attack_loss_name == "ce":
            return self.train_loss_per_example(outputs, targets)
        ii = self.ignore_index
        if self.attack_loss_name == "dice":
            return soft_dice_loss(outputs, targets, ii)
        if self.attack_loss_name == "segpgd":
            return segpgd_loss(outputs, targets, ii)
        return self.train_loss_per_example(outputs, targets) + soft_dice_loss(outputs, targets, ii)

    # --- scores and the success rule ---------------------------------------------------------
    def score(self, outputs, targets):
        return dice_score(outputs.argmax(1), targets, outputs.shape[1], self.dice_mode,
                          self.ignore_index)

    def natural_ok(self, clean_score):
        # An image whose clean Dice is 0 has no Dice ratio; it is left out (and counted).
        return clean_score > 0

    def robust_ok(self, adv_score, clean_score):
        return dice_ratio_ok(adv_score, clean_score, self.threshold)

    def augment(self, x, y, generator, config, flip=None):
        # Only horizontal flips: crops and shifts would need the mask moved with the image.
        model = config.section(ModelConfig)
        if not (model.augment and model.flip):
            return x, y
        if flip is None:  # no plan from the training loop (model.flip_mode = random)
            flip = torch.rand(x.shape[0], generator=generator) < 0.5
        x, y = x.clone(), y.clone()
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        return x, y

    # --- report ------------------------------------------------------------------------------
    def evaluation_extras(self, x, y, runs, out, key):
        from ebmctl_segmentation.report import segmentation_extras

        return segmentation_extras(self, x, y, runs, out, key)
