"""Reading user image files safely: one-line errors, mode conversion with a notice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ebmctl.console import info
from ebmctl.errors import InputError

MAX_PIXELS = 40_000_000


def read_image01(path: str | Path, channels: int) -> torch.Tensor:
    """Read an image file as a [C,H,W] float tensor in [0,1] with ``channels`` channels."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise InputError(f"image not found: {p}")
    if p.is_dir():
        raise InputError(f"expected an image file, got a folder: {p}")
    if p.stat().st_size == 0:
        raise InputError(f"image file is empty: {p}")
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(p) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise InputError(f"image {p} has {w}x{h} pixels, above the limit of {MAX_PIXELS}")
            im.load()
            mode = im.mode
            target = "L" if channels == 1 else "RGB"
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = arr / (65535.0 if arr.max() > 255 else 255.0)
                info(f"note: {p.name}: {mode} image converted to 8-bit {target}")
                im = Image.fromarray(np.clip(arr * 255 + 0.5, 0, 255).astype(np.uint8), "L")
                mode = "L"
            if mode != target:
                # Every conversion is announced, even the lossless gray -> RGB one, so a user
                # who fed the wrong file sees it.
                info(f"note: {p.name}: {mode} image converted to {target}")
                if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                    im = im.convert("RGBA")
                    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(bg, im)
                im = im.convert(target)
            arr = np.asarray(im, dtype=np.uint8)
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"image {p} is too large (pixel limit {MAX_PIXELS})") from None
    except UnidentifiedImageError:
        raise InputError(f"not a readable image: {p}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"corrupt or truncated image {p}: {exc}") from None
    t = torch.from_numpy(arr.copy()).float() / 255.0
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
