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


#: EBMs shipped inside the package, by the name ``--ebm NAME`` and ``ebmctl.defend(model, NAME)``
#: accept
SHIPPED_EBM_NAMES = ("cifar10",)


def ebm_path(value: str | Path) -> Path:
    """The EBM file ``--ebm VALUE`` names: the shipped EBM for a shipped name (``cifar10``)
    unless a file of that name exists, else ``VALUE`` as a path.

    Raises:
        InputError: a shipped name, but this build ships no EBM.
    """
    text = str(value)
    if text in SHIPPED_EBM_NAMES and not Path(text).exists():
        return default_ebm()
    return Path(text)
