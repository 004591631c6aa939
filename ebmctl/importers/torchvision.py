"""The ``torchvision:<name>`` source: a torchvision architecture built with ``weights=None``
(never a download), its weights from ``--weights FILE``."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ebmctl.errors import ConfigError
from ebmctl.importers.classifier import Normalized, import_classifier
from ebmctl.importers.request import ImportRequest


def torchvision_classifier(name: str, num_classes: int = 1000, mean: list | None = None,
                           std: list | None = None) -> nn.Module:
    """A torchvision architecture with random weights (``weights=None``: never downloads)."""
    import torchvision

    try:
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except ValueError:
        known = torchvision.models.list_models()
        from ebmctl.registry import did_you_mean

        raise ConfigError(f"unknown torchvision model {name!r}{did_you_mean(name, known)}") from None
    return Normalized(net, mean, std)


def import_torchvision(name: str, out: str | Path, request: ImportRequest) -> Path:
    """``torchvision:<name>`` as a classifier artifact at ``out`` (arch ``torchvision``)."""
    return import_classifier(request, out, "torchvision", lambda classes: (
        {"name": name, "num_classes": classes},
        torchvision_classifier(name, classes, request.mean, request.std)))
