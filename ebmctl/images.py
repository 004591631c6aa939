"""Reading (and writing back) user image files: one-line errors, and every adjustment announced.

Every reader in ebmctl (``purify``, ``fix apply``, ImageFolder and segmentation datasets) opens
files through :func:`open_image`, so they all see an image the same way: the first frame of an
animation, EXIF orientation applied, and 16-bit images scaled by their *mode* (a dark 16-bit
image stays dark). Masks go through :func:`read_label_map`, which keeps label values as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ebmctl.console import info
from ebmctl.errors import InputError

MAX_PIXELS = 40_000_000
#: Integer modes holding more than 8 bits. Pillow opens 16-bit gray PNGs as I;16; mode I is
#: 32-bit, but image files that hold it (PNG, TIFF) store 16-bit samples, so it scales alike.
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: Where :func:`open_image` records the EXIF orientation it applied (1 = none).
ORIENTATION = "ebmctl.orientation"
_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
              6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}


@dataclass(frozen=True)
class ImageMeta:
    """What an output needs to look like its input: size (W, H) and mode after reading."""

    size: tuple[int, int]
    mode: str
    channels: int  # 1 (gray modes) or 3
    alpha: np.ndarray | None = None  # the input's alpha channel, uint8 [H,W], if it had one


def _orient(im, orientation: int):
    from PIL import Image

    method = _TRANSPOSE.get(orientation)
    return im.transpose(getattr(Image.Transpose, method)) if method else im


def open_image(path: str | Path, notes: list[str] | None = None):
    """Open and load one image file as a PIL image, or raise a one-line :class:`InputError`.

    Animated files give their first frame; an EXIF orientation is applied (phone photos are
    stored sideways with a tag saying so). Each adjustment is appended to ``notes``."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise InputError(f"image not found: {p}")
    if p.is_dir():
        raise InputError(f"expected an image file, got a folder: {p}")
    if p.stat().st_size == 0:
        raise InputError(f"image file is empty: {p}")
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    notes = notes if notes is not None else []
    try:
        with Image.open(p) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise InputError(f"image {p} has {w}x{h} pixels, above the limit of {MAX_PIXELS}")
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                im.seek(0)
                notes.append(f"{p.name}: animated ({frames} frames); using the first frame")
            im.load()
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            out = im.copy()  # detached from the file (and from later frames)
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"image {p} is too large (pixel limit {MAX_PIXELS})") from None
    except UnidentifiedImageError:
        raise InputError(f"not a readable image: {p}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"corrupt or truncated image {p}: {exc}") from None
    if orientation in _TRANSPOSE:
        out = _orient(out, orientation)
        notes.append(f"{p.name}: EXIF orientation {orientation} applied")
    else:
        orientation = 1
    out.info[ORIENTATION] = orientation
    return out


def image_array(im, channels: int, name: str = "", notes: list[str] | None = None,
                exact: bool = False) -> np.ndarray:
    """[H,W,C] pixels of an opened image with ``channels`` (1 or 3) channels: uint8, or with
    ``exact`` float32 in [0,1] at the file's own precision. Alpha is composited over white."""
    from PIL import Image

    notes = notes if notes is not None else []
    mode = im.mode
    target = "L" if channels == 1 else "RGB"
    if mode in WIDE_MODES:
        # Scale by the mode, never by the content: all pixels 200 of 65535 is nearly black.
        arr = np.clip(np.asarray(im, dtype=np.float64) / 65535.0, 0.0, 1.0)
        notes.append(f"{name}: {mode} image converted to {'' if exact else '8-bit '}{target}")
        arr = np.repeat(arr[..., None], channels, axis=-1)
        return arr.astype(np.float32) if exact else (arr * 255 + 0.5).astype(np.uint8)
    if mode != target:
        # Every conversion is announced, even the lossless gray -> RGB one, so a user who fed
        # the wrong file sees it.
        notes.append(f"{name}: {mode} image converted to {target}")
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        im = im.convert(target)
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return arr.astype(np.float32) / 255.0 if exact else arr


def _show(notes: list[str]) -> None:
    for n in notes:
        info(f"note: {n}")


def announce_image_notes(notes: list[str], where: str | Path) -> None:
    """Print one line per kind of adjustment made while reading many files (a dataset)."""
    kinds: dict[str, list[str]] = {}
    for n in notes:
        name, _, what = n.partition(": ")
        kinds.setdefault(what, []).append(name)
    for what, names in kinds.items():
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        info(f"note: under {where}: {what} ({names[0]}{more})")


def read_image01(path: str | Path, channels: int, *, size: int = 0,
                notes: list[str] | None = None) -> torch.Tensor:
    """Read an image file as a [C,H,W] float tensor in [0,1] with ``channels`` channels
    (resized to ``size``×``size`` when given). Adjustments are printed as notes, or appended to
    ``notes`` when a list is given (a dataset announces them once with
    :func:`announce_image_notes`)."""
    from PIL import Image

    p = Path(path)
    mine: list[str] = []
    im = open_image(p, mine)
    wide = im.mode in WIDE_MODES
    arr = image_array(im, channels, p.name, mine, exact=wide)
    if size and not wide and arr.shape[:2] != (size, size):
        # PIL's bilinear filter on the 8-bit image: what the dataset readers always did.
        small = Image.fromarray(arr[..., 0] if channels == 1 else arr).resize((size, size),
                                                                             Image.BILINEAR)
        arr = np.asarray(small, dtype=np.uint8).reshape(size, size, channels)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    t = t.float() if wide else t.float() / 255.0
    if size and tuple(t.shape[-2:]) != (size, size):
        from ebmctl.units import adapt_images

        t = adapt_images(t[None], size, 0)[0]
    if notes is None:
        _show(mine)
    else:
        notes += mine
    return t


def read_image_like(path: str | Path) -> tuple[torch.Tensor, ImageMeta]:
    """Read an image at its own channel count (gray: 1, else 3) as [C,H,W] in [0,1], with what
    :func:`save_image_like` needs to write a result back in the same size and mode."""
    p = Path(path)
    notes: list[str] = []
    im = open_image(p, notes)
    gray = im.mode in ("L", "LA", "1", "I", "F") or im.mode.startswith("I;16")
    alpha = None
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        alpha = np.asarray(im.convert("RGBA"), dtype=np.uint8)[..., 3].copy()
    channels = 1 if gray else 3
    arr = image_array(im, channels, p.name, notes, exact=True)
    _show(notes)
    meta = ImageMeta(im.size, im.mode, channels, alpha)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1), meta


def output_mode(meta: ImageMeta) -> str:
    """The mode an output written like ``meta`` gets: the input's own where PNG can hold the
    purified values (L, RGB, RGBA, LA, 16-bit gray), else the nearest such mode."""
    if meta.mode in WIDE_MODES:
        return "I;16"
    if meta.mode in ("L", "RGB", "RGBA", "LA"):
        return meta.mode
    if meta.alpha is not None:
        return "LA" if meta.channels == 1 else "RGBA"
    return "L" if meta.channels == 1 else "RGB"


def save_image_like(x01: torch.Tensor, path: str | Path, meta: ImageMeta) -> str:
    """Write a [C,H,W] image in [0,1] as PNG in the input's size and (see :func:`output_mode`)
    mode, atomically; the input's alpha channel is put back. Returns the mode written."""
    from PIL import Image

    from ebmctl.artifacts import atomic_path

    x = x01.detach().float().cpu().clamp(0, 1)
    if tuple(x.shape[-2:]) != (meta.size[1], meta.size[0]):
        raise InputError(f"internal size mismatch writing {path}: {tuple(x.shape[-2:])} vs "
                         f"{meta.size[1]}x{meta.size[0]}")
    mode = output_mode(meta)
    if mode == "I;16":
        arr = x[0].mul(65535).round().numpy().astype(np.uint16)
        im = Image.fromarray(arr)
    else:
        arr = x.mul(255).round().byte()
        arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()
        im = Image.fromarray(np.ascontiguousarray(arr), "L" if arr.ndim == 2 else "RGB")
        if mode in ("RGBA", "LA") and meta.alpha is not None:
            im = im.convert(mode)
            im.putalpha(Image.fromarray(meta.alpha, "L"))
    with atomic_path(path, suffix=".png") as tmp:
        im.save(tmp, format="PNG")
    return mode


def read_label_map(path: str | Path, image: str | Path | None = None, *, size: int = 0,
                   notes: list[str] | None = None) -> np.ndarray:
    """Read a segmentation mask as an int64 label map [H,W], values as stored (never scaled;
    resized with nearest neighbours to ``size``×``size`` when given).

    ``image`` is the file the mask belongs to: when it carries an EXIF orientation and the mask
    (without one of its own) has the image's stored size, the mask was drawn on the stored
    pixels and is turned the same way, so the two stay aligned."""
    from PIL import Image

    p = Path(path)
    try:
        im = open_image(p, notes)
    except InputError as exc:
        raise InputError(exc.message.replace("image", "mask", 1)) from None
    turn, stored = 1, None
    if image is not None and im.info.get(ORIENTATION, 1) == 1:
        with Image.open(image) as ref:  # the header only
            turn, stored = int(ref.getexif().get(0x0112, 1) or 1), ref.size
    if turn in _TRANSPOSE and im.size == stored:
        im = _orient(im, turn)
    if im.mode not in ("L", "P", "1") and im.mode not in WIDE_MODES:
        im = im.convert("L")
    if size and im.size != (size, size):
        im = im.resize((size, size), Image.NEAREST)  # labels: never interpolate
    return np.asarray(im).astype(np.int64)
