"""``mosaic-cnn``: a small all-convolutional tagger, one logit per label."""

from __future__ import annotations

from torch import nn

from ebmctl.api import ModelConfig


class MosaicCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_labels: int = 10, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            # max-pooling over positions: a digit counts wherever it sits in the grid
            nn.AdaptiveMaxPool2d(1),
        )
        self.head = nn.Linear(2 * w, num_labels)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def mosaic_cnn(**arch_args) -> MosaicCNN:
    return MosaicCNN(**arch_args)


def mosaic_cnn_args(profile, bundle) -> dict:
    """The architecture reads its own arguments (ModelSpec.args_from["task"]): one logit per
    label, width ``model.width``."""
    return {"in_channels": bundle.channels, "num_labels": bundle.num_classes,
            "width": profile.section(ModelConfig).width}
