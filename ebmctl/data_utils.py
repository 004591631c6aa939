"""Helpers for dataset plugins: deterministic splits, resizing, image-folder reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ebmctl.units import adapt_images
from ebmctl.errors import InputError
from ebmctl.contracts import DataRequest, DatasetBundle, Split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int,
                  stratify: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic train/val/test indices (stratified by label when given)."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if stratify is None else [np.flatnonzero(stratify == c)
                                                      for c in np.unique(stratify)]
    tr, va, te = [], [], []
    for g in groups:
        g = g[rng.permutation(len(g))]
        n_te = int(round(len(g) * test_fraction))
        n_va = int(round(len(g) * val_fraction))
        te.append(g[:n_te])
        va.append(g[n_te:n_te + n_va])
        tr.append(g[n_te + n_va:])
    return tuple(np.sort(np.concatenate(p)) for p in (tr, va, te))  # type: ignore[return-value]


#: Seed of every held-out and capped selection: fixed, so that two commands (and two runs with
#: different run seeds) see the same images and their figures can be compared.
SUBSET_SEED = 0


def pick_subset(split: Split, n: int, seed: int = SUBSET_SEED) -> Split:
    """``n`` images of ``split`` (all of it when ``n`` is 0 or at least its size): a seeded
    random choice kept in split order. Splits come back sorted, and folder datasets are sorted
    by class, so a prefix would hold one or two classes only."""
    if n <= 0 or n >= len(split):
        return split
    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    return split.subset(pick.sort().values)


def make_bundle(name: str, x: torch.Tensor, y: torch.Tensor, request: DataRequest,
                num_classes: int, class_names: list[str] | None = None,
                test: tuple[torch.Tensor, torch.Tensor] | None = None,
                info: dict | None = None) -> DatasetBundle:
    """Split (x, y) deterministically (x float [N,C,H,W] in [0,1]), apply the request's size and
    channels, and cap the training part. A given ``test`` pair is used as the test split."""
    stratify = y.numpy() if y.dim() == 1 else None
    test_frac = 0.0 if test is not None else request.test_fraction
    tr, va, te = split_indices(len(x), request.val_fraction, test_frac, request.split_seed,
                               stratify)
    if request.max_train and len(tr) > request.max_train:
        # A seeded random subset: the indices are sorted, so a plain prefix of a class-ordered
        # set (an ImageFolder) would keep only the first few classes.
        keep = np.random.default_rng([request.split_seed, 1]).permutation(len(tr))
        tr = np.sort(tr[keep[:request.max_train]])
    train, val = Split(x[tr], y[tr]), Split(x[va], y[va])
    test_split = Split(*test) if test is not None else Split(x[te], y[te])

    def fit(s: Split) -> Split:
        return Split(adapt_images(s.x, request.image_size, request.channels).contiguous(), s.y)

    return DatasetBundle(name, fit(train), fit(val), fit(test_split), num_classes,
                         class_names or [str(i) for i in range(num_classes)], info or {})


def load_image_folder(root: str | Path, max_per_class: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read ``root/<class>/<image>`` into uint8-derived float tensors in [0,1] (through
    :mod:`ebmctl.images`, like every image reader: first frame, EXIF orientation, 16-bit
    scaled by mode)."""
    from ebmctl.images import announce_image_notes, image_array, open_image

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset root not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise InputError(f"no class folders in {root} (expected root/<class>/<image>)")
    arrays, labels, notes = [], [], []
    for ci, c in enumerate(classes):
        files = sorted(p for p in (root / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if max_per_class:
            files = files[:max_per_class]
        for f in files:
            arrays.append(image_array(open_image(f, notes), 3, f.name, notes))
            labels.append(ci)
    # RGB files need no conversion; anything else is summarised once per kind.
    announce_image_notes(notes, root)
    if not arrays:
        raise InputError(f"no images found under {root}")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"images under {root} have different sizes {sorted(shapes)[:3]}; "
                         "set data.image_size")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
    return x, torch.tensor(labels, dtype=torch.long), classes
