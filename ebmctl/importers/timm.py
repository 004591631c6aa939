"""The ``timm:<name>`` source: a timm architecture built with ``pretrained=False``, its weights
from ``--weights FILE``. Needs the optional ``timm`` package."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ebmctl.errors import ConfigError, NotAvailableError
from ebmctl.importers.classifier import Normalized, import_classifier
from ebmctl.importers.request import ImportRequest


def timm_classifier(name: str, num_classes: int = 1000, mean: list | None = None,
                    std: list | None = None) -> nn.Module:
    """A timm architecture with random weights (``pretrained=False``); needs ``timm``."""
    try:
        import timm
    except ImportError:
        raise NotAvailableError("timm:<name> needs timm: pip install timm") from None
    try:
        net = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ConfigError(f"timm: {exc}") from None
    return Normalized(net, mean, std)


def import_timm(name: str, out: str | Path, request: ImportRequest) -> Path:
    """``timm:<name>`` as a classifier artifact at ``out`` (arch ``timm``)."""
    return import_classifier(request, out, "timm", lambda classes: (
        {"name": name, "num_classes": classes},
        timm_classifier(name, classes, request.mean, request.std)))
