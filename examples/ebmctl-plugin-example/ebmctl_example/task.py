"""Task ``multilabel``: which digits are in the image? Independent per-label logits.

Metric: example-based F1 between the predicted label set (probability above
``multilabel.threshold``) and the true set (1 when both are empty). Success criterion: an example
is handled correctly when its F1 is at least ``multilabel.min_f1``; the default 1.0 means the
whole label set must be right, so an attack breaks an image by adding or removing one label.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from ebmctl.api import ConfigError, DefenseConfig, Task
from ebmctl_example.sections import MultiLabelConfig


def example_f1(logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-example F1 [B] of the label sets ``sigmoid(logits) > threshold`` and ``targets > 0.5``."""
    cut = math.log(threshold / (1 - threshold))
    pred = logits > cut
    true = targets > 0.5
    tp = (pred & true).sum(1).float()
    size = pred.sum(1).float() + true.sum(1).float()
    return torch.where(size > 0, 2 * tp / size.clamp_min(1), torch.ones_like(size))


class MultiLabelTask(Task):
    name = "multilabel"
    model_kind = "tagger"  # a new kind: artifacts of this task load only as taggers
    default_dataset = "digit-mosaic"
    default_arch = "mosaic-cnn"
    metric_name = "F1"
    description = "multi-label tagging: BCE loss, example F1, broken = F1 below multilabel.min_f1"

    def __init__(self, threshold: float = 0.5, min_f1: float = 1.0):
        self.threshold, self.min_f1 = threshold, min_f1

    def configured(self, config):
        # The registered instance is shared; return a copy carrying this run's profile values.
        if config.section(DefenseConfig).average != "logits":
            raise ConfigError("task 'multilabel' averages per-label logits over replicates; "
                              "set defense.average = logits (softmax mixes the labels)")
        task = copy.copy(self)
        rule = config.section(MultiLabelConfig)
        task.threshold, task.min_f1 = rule.threshold, rule.min_f1
        return task

    def train_loss(self, outputs, targets):
        return F.binary_cross_entropy_with_logits(outputs, targets.float())

    def train_loss_per_example(self, outputs, targets):
        return F.binary_cross_entropy_with_logits(outputs, targets.float(),
                                                  reduction="none").sum(1)

    def score(self, outputs, targets):
        return example_f1(outputs, targets, self.threshold)

    def natural_ok(self, clean_score):
        return clean_score >= self.min_f1 - 1e-6

    def robust_ok(self, adv_score, clean_score):
        return adv_score >= self.min_f1 - 1e-6
