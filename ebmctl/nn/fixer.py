"""The fixer network (thesis Ch. 5; docs/algorithms.md#fixer): a same-resolution residual
image-to-image net applied after Langevin purification. :class:`ebmctl.models.Fixer` wraps it
for [0,1] images; :mod:`ebmctl.training.fixer` trains it.

Constructors take JSON-able keyword arguments only, so artifacts rebuild the net from
``ebmctl.arch_args``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ebmctl.config import setting


@dataclass(frozen=True)
class FixerNetConfig:
    """``[fix]`` keys of the fixer network: its architecture and the arguments of
    ``fixer-resnet`` (:func:`fixer_args` reads them); the training keys are
    :class:`ebmctl.training.fixer.FixConfig`'s."""

    section: ClassVar[str] = "fix"

    arch: str = setting("fixer-resnet", "fixer architecture (a 'fixer' model)")
    width: int = setting(64, "fixer width", minimum=1)
    blocks: int = setting(4, "fixer ResBlocks", minimum=0)


class ResBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-conv3×3 + identity: an SNGAN generator block without upsampling."""

    def __init__(self, width: int):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(width), nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, 1, 1)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.bn1(x)))
        return x + self.conv2(F.relu(self.bn2(h)))


class ImageToImageResNet(nn.Module):
    """conv stem → ``n_blocks`` ResBlocks → BN-ReLU-conv3×3 → tanh. Input and output are images
    of the same size in [-1, 1]; works at any resolution (fully convolutional)."""

    def __init__(self, channels: int = 3, width: int = 64, n_blocks: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(channels, width, 3, 1, 1)
        self.blocks = nn.Sequential(*[ResBlock(width) for _ in range(n_blocks)])
        self.bn = nn.BatchNorm2d(width)
        self.out = nn.Conv2d(width, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return torch.tanh(self.out(F.relu(self.bn(h))))


def fixer_resnet(**kw) -> ImageToImageResNet:
    return ImageToImageResNet(**kw)


def fixer_args(profile, bundle) -> dict:
    """A fixer (role ``fixer``): ``fix.width`` and ``fix.blocks`` at the data's channels."""
    net = profile.section(FixerNetConfig)
    return {"channels": bundle.channels, "width": net.width, "n_blocks": net.blocks}
