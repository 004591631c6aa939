"""The one place where public images meet model conventions: [0,1] pixel units against the
models' internal [-1,1] range, and the size and channels a model takes (:func:`adapt_images`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ebmctl.errors import ArtifactError

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


def adapt_images(x: torch.Tensor, size: int | tuple[int, int], channels: int) -> torch.Tensor:
    """Resize to ``size`` (int: square; 0: keep) with bilinear interpolation (antialiased when
    shrinking) and convert channels (gray↔RGB, RGBA→RGB; 0: keep).

    ``x`` is [B,C,H,W] in any range (interpolation is linear, so it keeps the range); the
    result is [B,channels,H',W']. This is the image adapter every model uses.

    Raises:
        ArtifactError: no conversion from C channels to ``channels``.
    """
    if channels and x.shape[1] != channels:
        if channels == 1:
            x = x.mean(1, keepdim=True)
        elif x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif x.shape[1] == 4 and channels == 3:
            x = x[:, :3]
        else:
            raise ArtifactError(f"cannot convert {x.shape[1]}-channel images to {channels}")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if hw[0] and tuple(x.shape[-2:]) != hw:
        shrink = x.shape[-1] > hw[1] or x.shape[-2] > hw[0]
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=shrink)
    return x
