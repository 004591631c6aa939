"""The WideResNet of the thesis authors' PyTorch code (point0bar1/ebm-defense, ``nets.py``), in
its own key layout, so that ``ebmctl import-model ebm-defense:wrn`` loads the released state
dict with ``strict=True``. It differs from the classification plugin's ``wrn``: biased
convolutions, the stride on each block's second convolution, and the shortcut on the raw input.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ebmctl.errors import ConfigError


class _AuthorsWideBlock(nn.Module):
    """Pre-activation wide block in the key layout of the authors' ``wide_basic``."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=True)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=True))

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class EbmDefenseWRN(nn.Module):
    """The WideResNet of the thesis authors' code (input [B,3,32,32] in [-1,1]; the stride sits
    on each block's second convolution, the shortcut takes the raw input)."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10):
        super().__init__()
        if (depth - 4) % 6:
            raise ConfigError("WRN depth must be 6n+4")
        n, k = (depth - 4) // 6, widen_factor
        widths = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=True)
        cin = widths[0]
        for i, stride in enumerate((1, 2, 2)):
            blocks = []
            for j in range(n):
                blocks.append(_AuthorsWideBlock(cin, widths[i + 1], stride if j == 0 else 1))
                cin = widths[i + 1]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn1 = nn.BatchNorm2d(cin, momentum=0.9)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def ebm_defense_wrn(**kw) -> nn.Module:
    """:class:`EbmDefenseWRN` (the builder the registry entry ``ebm-defense-wrn`` names)."""
    return EbmDefenseWRN(**kw)
