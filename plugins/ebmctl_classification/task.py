"""The classification task: cross-entropy, accuracy, misclassification = broken."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ebmctl.api import ConfigError, ModelConfig, Task
from ebmctl_classification.sections import ClassificationLossConfig


class ClassificationTask(Task):
    name = "classification"
    model_kind = "classifier"
    default_dataset = "digits"
    default_arch = "small-cnn"
    metric_name = "accuracy"
    description = "image classification: cross-entropy loss, accuracy, broken = misclassified"
    #: ``model.label_smoothing``: the training loss's smoothing s (Szegedy et al. 2016, "Rethinking
    #: the Inception Architecture", §7); the attacker's loss and the score never smooth.
    label_smoothing: float = 0.0

    def configured(self, config) -> "ClassificationTask":
        task = copy.copy(self)
        task.label_smoothing = float(config.section(ClassificationLossConfig).label_smoothing)
        return task

    def train_loss(self, outputs, targets):
        """Mean cross-entropy [scalar] of logits [B, K] against labels [B], the one-hot target
        smoothed to (1 − s)·onehot + s/K."""
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def train_loss_per_example(self, outputs, targets):
        return F.cross_entropy(outputs, targets, reduction="none")

    def score(self, outputs, targets):
        return (outputs.argmax(1) == targets).float()

    def natural_ok(self, clean_score):
        return clean_score > 0.5

    def robust_ok(self, adv_score, clean_score):
        return adv_score > 0.5

    def augment(self, x, y, generator, config, flip=None):
        model = config.section(ModelConfig)
        if not model.augment:
            return x, y
        b, _, h, w = x.shape
        t = model.translate  # random shift of up to t pixels, reflected borders
        if t >= min(h, w):
            raise ConfigError(f"model.translate = {t} needs images larger than {t} pixels; "
                              f"these are {h}x{w}")
        padded = F.pad(x, (t, t, t, t), mode="reflect") if t else x
        dx = torch.randint(0, 2 * t + 1, (b,), generator=generator)
        dy = torch.randint(0, 2 * t + 1, (b,), generator=generator)
        rows = (dy.view(b, 1) + torch.arange(h).view(1, h)).to(x.device)
        cols = (dx.view(b, 1) + torch.arange(w).view(1, w)).to(x.device)
        out = padded[torch.arange(b).view(b, 1, 1), :, rows.view(b, h, 1), cols.view(b, 1, w)]
        out = out.permute(0, 3, 1, 2)
        if model.flip:
            # the training loop's plan (alternating flip), else a fresh draw per image
            flip = (torch.rand(b, generator=generator) < 0.5) if flip is None else flip
            out = torch.where(flip.to(x.device).view(b, 1, 1, 1), out.flip(3), out)
        return out.contiguous(), y
