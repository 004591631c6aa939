"""The one place where public [0,1] pixel units meet the models' internal [-1,1] range."""

from __future__ import annotations

import torch

#: Public images, ε and α are in [0,1] units; EBMs and bundled task models see [-1,1].
INTERNAL_SCALE = 2.0


def to_internal(x01: torch.Tensor) -> torch.Tensor:
    return x01 * INTERNAL_SCALE - 1.0


def to_public(x_internal: torch.Tensor) -> torch.Tensor:
    return (x_internal + 1.0) / INTERNAL_SCALE


def eps_to_internal(eps01: float) -> float:
    return eps01 * INTERNAL_SCALE


def parse_fraction(value) -> float:
    """Accept 0.03, "0.03" or "8/255"."""
    if isinstance(value, bool):
        raise ValueError("expected a number")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def format_radius(eps: float) -> str:
    """A radius as a person reads it: "8/255" when ε is a whole number of 255ths, else "0.1"."""
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:.4g}"
