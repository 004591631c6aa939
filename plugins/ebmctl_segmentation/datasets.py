"""Segmentation datasets: embedded synthetic shapes, Oxford-IIIT Pet and image+mask folders.

Targets are integer label maps [N,H,W] (0 = background). Nothing here downloads.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ebmctl.api import (
    IMAGE_EXTENSIONS,
    DataRequest,
    DatasetSpec,
    InputError,
    announce_image_notes,
    make_bundle,
    read_image01,
    read_label_map,
)

SHAPES = ("disc", "square", "triangle")
#: Oxford-IIIT Pet trimap values: 1 = pet, 2 = background, 3 = border (undecided).
#: ``pet+void`` makes the border void (data.ignore_index), as the VOC convention does.
TRIMAP_MODES = ("pet+border", "pet", "trimap", "pet+void")


# --- synthetic shapes ---------------------------------------------------------------------------

def _texture(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """n random textures [n,3,H,W] in [0,1]: a colour gradient plus oriented stripes and noise."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.rand(n, 3, 1, 1, generator=g)
    tint = (torch.rand(n, 3, 1, 1, generator=g) - 0.5) * 0.5
    angle = torch.rand(n, 1, 1, 1, generator=g) * math.pi
    freq = 2 + torch.rand(n, 1, 1, 1, generator=g) * 6
    phase = torch.rand(n, 1, 1, 1, generator=g) * 2 * math.pi
    along = xx * torch.cos(angle) + yy * torch.sin(angle)
    stripes = torch.sin(2 * math.pi * freq * along + phase)
    amp = 0.08 + torch.rand(n, 3, 1, 1, generator=g) * 0.15
    noise = torch.rand(n, 3, size, size, generator=g) * 0.12 - 0.06
    return (base + tint * (xx - 0.5) + amp * stripes + noise).clamp(0, 1)


def make_shapes(n: int, size: int = 32, seed: int = 0, multiclass: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic textured shapes (disc, square, triangle) on textured backgrounds.

    Returns images [n,3,size,size] in [0,1] and masks [n,size,size]: 1 = shape (binary) or
    1 + shape index (``multiclass``). The shape's texture always differs from the background's
    mean colour by a margin, so the task is learnable but not trivial.
    """
    g = torch.Generator().manual_seed(int(seed) + 20240517)
    bg, fg = _texture(n, size, g), _texture(n, size, g)
    # Push the foreground's mean colour away from the background's (at least 0.25 in one channel).
    shift = torch.where(bg.mean((2, 3), keepdim=True) > 0.5, -0.3, 0.3)
    pick = torch.randint(0, 3, (n,), generator=g)
    fg[torch.arange(n), pick] = (fg[torch.arange(n), pick] * 0.5 + 0.5 * (
        bg[torch.arange(n), pick].mean((1, 2), keepdim=True) + shift[torch.arange(n), pick])
    ).clamp(0, 1)
    kind = torch.randint(0, len(SHAPES), (n,), generator=g)
    radius = (0.18 + 0.17 * torch.rand(n, generator=g)) * size
    cx = radius + torch.rand(n, generator=g) * (size - 2 * radius)
    cy = radius + torch.rand(n, generator=g) * (size - 2 * radius)
    rot = torch.rand(n, generator=g) * 2 * math.pi
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    c, s = torch.cos(rot)[:, None, None], torch.sin(rot)[:, None, None]
    u, v = c * dx + s * dy, -s * dx + c * dy
    r = radius[:, None, None]
    disc = dx ** 2 + dy ** 2 <= r ** 2
    square = (u.abs() <= 0.8 * r) & (v.abs() <= 0.8 * r)
    # Equilateral triangle inscribed in the circle of radius r: three half-planes.
    tri = torch.ones_like(disc)
    for k in range(3):
        a = rot[:, None, None] + k * 2 * math.pi / 3
        tri &= (dx * torch.cos(a) + dy * torch.sin(a)) <= 0.5 * r
    inside = torch.stack([disc, square, tri], 1)[torch.arange(n), kind]
    x = torch.where(inside[:, None], fg, bg)
    y = inside.long() * ((kind[:, None, None] + 1) if multiclass else 1)
    return x.contiguous(), y


def load_shapes_bundle(req: DataRequest):
    size = req.image_size or 32
    n = int(req.options.get("synthetic_images", 0) or 600)
    multiclass = req.options.get("synthetic_classes", "binary") == "shape"
    x, y = make_shapes(n, size, 0, multiclass)
    names = ["background"] + (list(SHAPES) if multiclass else ["shape"])
    req_native = DataRequest(**{**req.__dict__, "image_size": 0})
    return make_bundle("shapes", x, y, req_native, len(names), names,
                       info={"source": "ebmctl synthetic textured shapes (generated, no files)",
                             "size": size, "classes": names})


# --- reading masks ------------------------------------------------------------------------------

def _read_pair(img: Path, mask: Path, size: int, notes: list[str]):
    """An image [3,H,W] in [0,1] and its label map [H,W], read the way every ebmctl reader
    reads files (first frame, EXIF orientation, 16-bit by mode); the mask keeps its values and
    turns with its image."""
    return (read_image01(img, 3, size=size, notes=notes),
            read_label_map(mask, img, size=size, notes=notes))


def _stack(images: list[torch.Tensor], masks: list[np.ndarray], where: Path):
    shapes = {tuple(t.shape[-2:]) for t in images} | {m.shape for m in masks}
    if len(shapes) > 1:
        raise InputError(f"images/masks under {where} have different sizes; set data.image_size")
    return torch.stack(images), torch.from_numpy(np.stack(masks))


def trimap_to_mask(trimap: np.ndarray, mode: str, ignore_index: int = -1) -> np.ndarray:
    """Oxford-IIIT Pet trimap (1 pet, 2 background, 3 border) to a label map."""
    if mode == "pet+void":
        if ignore_index < 0:
            raise InputError("data.trimap = pet+void needs data.ignore_index (e.g. 255): the "
                             "value the border pixels get")
        return np.select([trimap == 1, trimap == 3], [1, ignore_index], 0).astype(np.int64)
    if mode == "pet+border":
        return ((trimap == 1) | (trimap == 3)).astype(np.int64)
    if mode == "pet":
        return (trimap == 1).astype(np.int64)
    if mode == "trimap":  # 0 background, 1 pet, 2 border
        return np.select([trimap == 1, trimap == 3], [1, 2], 0).astype(np.int64)
    raise InputError(f"unknown data.trimap {mode!r}; choose from {', '.join(TRIMAP_MODES)}")


def _require_root(req: DataRequest, name: str) -> Path:
    if not req.root:
        raise InputError(f"dataset {name!r} needs data.root (a local folder; nothing is downloaded)")
    root = Path(req.root).expanduser()
    if not root.is_dir():
        raise InputError(f"dataset root not found: {root}")
    return root


def load_pets_bundle(req: DataRequest):
    """Oxford-IIIT Pet in torchvision's layout: root[/oxford-iiit-pet]/images/*.jpg and
    annotations/trimaps/*.png, with annotations/trainval.txt and test.txt as the split."""
    root = _require_root(req, "pets")
    if (root / "oxford-iiit-pet").is_dir():
        root = root / "oxford-iiit-pet"
    images, trimaps = root / "images", root / "annotations" / "trimaps"
    if not images.is_dir() or not trimaps.is_dir():
        raise InputError(f"Oxford-IIIT Pet expects {images} and {trimaps} (torchvision's layout)")
    size = req.image_size or 64
    mode = req.options.get("trimap", "pet+border")
    ignore = int(req.options.get("ignore_index", -1))
    per_split = int(req.options.get("max_per_split", 0) or 0)

    def names_of(list_file: Path) -> list[str]:
        lines = list_file.read_text().split("\n")
        return [ln.split()[0] for ln in lines if ln.strip() and not ln.startswith("#")]

    def read(names: list[str]):
        if per_split:
            names = names[:per_split]
        xs, ys, notes = [], [], []
        for stem in names:
            img = images / f"{stem}.jpg"
            tri = trimaps / f"{stem}.png"
            if not img.exists() or not tri.exists():
                raise InputError(f"Oxford-IIIT Pet: missing {img.name} or its trimap {tri.name}")
            x, t = _read_pair(img, tri, size, notes)
            xs.append(x)
            ys.append(trimap_to_mask(t, mode, ignore))
        announce_image_notes(notes, root)
        if not xs:
            raise InputError(f"no Oxford-IIIT Pet images found under {root}")
        return _stack(xs, ys, root)

    ann = root / "annotations"
    if (ann / "trainval.txt").exists() and (ann / "test.txt").exists():
        x, y = read(names_of(ann / "trainval.txt"))
        test = read(names_of(ann / "test.txt"))
    else:  # no official split files: split the folder deterministically
        x, y = read(sorted(p.stem for p in images.glob("*.jpg")))
        test = None
    names = ["background", "pet", "border"] if mode == "trimap" else ["background", "pet"]
    req_native = DataRequest(**{**req.__dict__, "image_size": 0})
    return make_bundle("pets", x, y, req_native, len(names), names, test=test,
                       info={"root": str(root), "layout": "torchvision OxfordIIITPet",
                             "trimap": mode, "size": size, "ignore_index": ignore})


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    img_dir, mask_dir = folder / "images", folder / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise InputError(f"expected {img_dir} and {mask_dir} (image + mask folder layout)")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    pairs = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
        if img.stem not in masks:
            raise InputError(f"image {img} has no mask {mask_dir}/{img.stem}.*")
        pairs.append((img, masks[img.stem]))
    if not pairs:
        raise InputError(f"no images found in {img_dir}")
    return pairs


def load_maskfolder_bundle(req: DataRequest):
    """root/images/<name>.<ext> with root/masks/<name>.png (integer class ids; a 0/255 mask is
    read as 0/1; pixels equal to data.ignore_index are void and stay so), or root/train/... and
    root/test/... in the same layout."""
    root = _require_root(req, "maskfolder")
    size = req.image_size

    def read(folder: Path):
        xs, ys, notes = [], [], []
        for img, mask in _pairs(folder):
            x, m = _read_pair(img, mask, size, notes)
            xs.append(x)
            ys.append(m)
        announce_image_notes(notes, folder)
        return _stack(xs, ys, folder)

    train_dir = root / "train" if (root / "train").is_dir() else root
    x, y = read(train_dir)
    test = read(root / "test") if train_dir != root and (root / "test").is_dir() else None
    masks = [y] + ([test[1]] if test else [])
    ignore = int(req.options.get("ignore_index", -1))
    values = set(torch.unique(torch.cat([m.flatten() for m in masks])).tolist())
    labels = values - {ignore}
    if labels and labels <= {0, 255}:
        # A 0/255 mask is a binary mask saved for viewing; void pixels stay void.
        masks = [torch.where(m == ignore, m, (m > 0).long()) for m in masks]
        y = masks[0]
        test = (test[0], masks[1]) if test else None
        labels = {int(v > 0) for v in labels}
    elif labels and (min(labels) < 0 or max(labels) > 255):
        raise InputError(f"masks under {root} hold values outside 0..255")
    elif ignore < 0 and 255 in labels and max(labels - {255}, default=0) < 254:
        # 255 far above every class id is the VOC void label, not a 256th class.
        raise InputError(f"masks under {root} hold 255 next to class ids up to "
                         f"{max(labels - {255}, default=0)}; if 255 marks void pixels, set "
                         "data.ignore_index=255")
    num_classes = max(2, int(max(labels, default=0)) + 1)
    req_native = DataRequest(**{**req.__dict__, "image_size": 0})
    return make_bundle("maskfolder", x, y, req_native, num_classes, test=test,
                       info={"root": str(root), "layout": "images/ + masks/",
                             "ignore_index": ignore})


DATASETS = [
    DatasetSpec("shapes", load_shapes_bundle, "segmentation",
                "synthetic textured shapes on textured backgrounds (embedded, generated)"),
    DatasetSpec("pets", load_pets_bundle, "segmentation",
                "Oxford-IIIT Pet segmentation (torchvision layout, trimaps to masks)",
                needs_root=True),
    DatasetSpec("maskfolder", load_maskfolder_bundle, "segmentation",
                "root/images + root/masks (optionally under train/ and test/)", needs_root=True),
]
