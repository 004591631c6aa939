"""The classification task: cross-entropy, accuracy, misclassification = broken."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ebmctl.api import Task


class ClassificationTask(Task):
    name = "classification"
    model_kind = "classifier"
    default_dataset = "digits"
    default_arch = "small-cnn"
    metric_name = "accuracy"
    description = "image classification: cross-entropy loss, accuracy, broken = misclassified"

    def train_loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets)

    def train_loss_per_example(self, outputs, targets):
        return F.cross_entropy(outputs, targets, reduction="none")

    def score(self, outputs, targets):
        return (outputs.argmax(1) == targets).float()

    def natural_ok(self, clean_score):
        return clean_score > 0.5

    def robust_ok(self, adv_score, clean_score):
        return adv_score > 0.5

    def augment(self, x, y, generator, config):
        if not config["model.augment"]:
            return x, y
        b, _, h, w = x.shape
        padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
        dx = torch.randint(0, 9, (b,), generator=generator)
        dy = torch.randint(0, 9, (b,), generator=generator)
        rows = (dy.view(b, 1) + torch.arange(h).view(1, h)).to(x.device)
        cols = (dx.view(b, 1) + torch.arange(w).view(1, w)).to(x.device)
        out = padded[torch.arange(b).view(b, 1, 1), :, rows.view(b, h, 1), cols.view(b, 1, w)]
        out = out.permute(0, 3, 1, 2)
        if config["model.flip"]:
            flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
            out = torch.where(flip.view(b, 1, 1, 1), out.flip(3), out)
        return out.contiguous(), y
