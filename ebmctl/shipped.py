"""Shipped default models (inside the package, under ebmctl/weights/)."""

from __future__ import annotations

from pathlib import Path

from ebmctl.errors import InputError

WEIGHTS = Path(__file__).resolve().parent / "weights"
DEFAULT_EBM = WEIGHTS / "cifar10-ebm.safetensors"
DEFAULT_CLASSIFIER = WEIGHTS / "cifar10-classifier.safetensors"


def default_ebm() -> Path:
    if not DEFAULT_EBM.exists():
        raise InputError("no EBM given and no default EBM is shipped with this build; train one "
                         "with `ebmctl train ebm --profile quick` and pass --ebm FILE")
    return DEFAULT_EBM


def default_classifier() -> Path:
    if not DEFAULT_CLASSIFIER.exists():
        raise InputError("no classifier given and none is shipped with this build; train one "
                         "with `ebmctl train classifier` and pass --model FILE")
    return DEFAULT_CLASSIFIER
