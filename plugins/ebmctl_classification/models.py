"""Classifier architectures: a small CNN for quick runs, a reduced ResNet-9, and WRN-28-10."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ebmctl.api import ModelConfig
from ebmctl_classification.sections import WideResNetConfig


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32,
                 image_size: int = 8):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(8 * w, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def _conv_bn(cin, cout, pool=False):
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c, c), _conv_bn(c, c))

    def forward(self, x):
        return x + self.body(x)


class ResNet9(nn.Module):
    """ResNet-9 (DAWNBench style) with a width parameter; width 64 is the original."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            _conv_bn(in_channels, w), _conv_bn(w, 2 * w, pool=True), _Residual(2 * w),
            _conv_bn(2 * w, 4 * w, pool=True), _conv_bn(4 * w, 8 * w, pool=True), _Residual(8 * w),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8 * w, num_classes),
        )

    def forward(self, x):
        return self.net(x) * 0.125


class _WideBlock(nn.Module):
    def __init__(self, cin, cout, stride, dropout):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride,
                                                                              bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.dropout:
            y = F.dropout(y, self.dropout, self.training)
        y = self.conv2(y)
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis); WRN-28-10 is the thesis' CIFAR classifier."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, depth: int = 28,
                 widen_factor: int = 10, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n+4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        layers = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
        cin = widths[0]
        for i, stride in enumerate((1, 2, 2)):
            for j in range(n):
                layers.append(_WideBlock(cin, widths[i + 1], stride if j == 0 else 1, dropout))
                cin = widths[i + 1]
        self.features = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.features(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def small_cnn(**kw):
    return SmallCNN(**kw)


def resnet9(**kw):
    return ResNet9(**kw)


def wide_resnet(**kw):
    return WideResNet(**kw)


# What each classifier reads from the profile as the task model (ModelSpec.args_from["task"]).
def _classifier_io(bundle) -> dict:
    return {"in_channels": bundle.channels, "num_classes": bundle.num_classes}


def small_cnn_args(profile, bundle) -> dict:
    """``model.width`` at the data's channels, classes and image size."""
    return {**_classifier_io(bundle), "width": profile.section(ModelConfig).width,
            "image_size": bundle.image_size}


def resnet9_args(profile, bundle) -> dict:
    """``model.width`` at the data's channels and classes."""
    return {**_classifier_io(bundle), "width": profile.section(ModelConfig).width}


def wide_resnet_args(profile, bundle) -> dict:
    """``model.depth``, ``model.widen_factor`` and ``model.dropout`` (WRN-depth-k)."""
    wrn = profile.section(WideResNetConfig)
    return {**_classifier_io(bundle), "depth": wrn.depth, "widen_factor": wrn.widen_factor,
            "dropout": wrn.dropout}


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


__all__ = ["SmallCNN", "ResNet9", "WideResNet", "small_cnn", "resnet9", "wide_resnet",
           "small_cnn_args", "resnet9_args", "wide_resnet_args", "count_parameters"]
