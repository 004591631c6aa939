"""Dataset ``digit-mosaic``: 16x16 images holding one to three 8x8 digits in a 2x2 grid; the
target is the multi-hot set of digits present (10 labels).

The split is custom: the *source* digits (scikit-learn's 1,797 embedded 8x8 digits) are split
into train / val / test pools first, and each split's mosaics are composed only from its own
pool, so no handwritten digit seen in training reappears in a test mosaic. Everything is
derived from ``data.split_seed``; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import torch

from ebmctl.api import DataRequest, DatasetBundle, InputError, Split, adapt_images, split_indices

NUM_LABELS = 10
CELL = 8  # source digit size; the mosaic is a 2x2 grid of cells
MAX_DIGITS = 3


def compose_mosaics(digits: np.ndarray, labels: np.ndarray, count: int,
                    rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` mosaics [count,1,16,16] in [0,1] and multi-hot targets [count,10] (float)."""
    if count and len(digits) == 0:
        raise InputError("digit-mosaic: a split's source pool is empty; lower data.val_fraction "
                         "or data.test_fraction")
    x = np.zeros((count, 1, 2 * CELL, 2 * CELL), dtype=np.float32)
    y = np.zeros((count, NUM_LABELS), dtype=np.float32)
    for i in range(count):
        k = int(rng.integers(1, MAX_DIGITS + 1))
        cells = rng.choice(4, size=k, replace=False)
        picks = rng.integers(0, len(digits), size=k)
        for cell, pick in zip(cells, picks):
            r, c = divmod(int(cell), 2)
            x[i, 0, r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = digits[pick]
            y[i, labels[pick]] = 1.0
    return torch.from_numpy(x), torch.from_numpy(y)


def load_digit_mosaic(req: DataRequest) -> DatasetBundle:
    from sklearn.datasets import load_digits

    # Plugin keys of the [data] section arrive in ``req.options`` (the whole section).
    n_train = int(req.options.get("mosaic_train", 3000))
    n_eval = int(req.options.get("mosaic_eval", 500))
    if req.max_train:
        n_train = min(n_train, req.max_train)
    d = load_digits()
    digits = (d.images / 16.0).astype(np.float32)
    labels = d.target.astype(np.int64)
    pools = split_indices(len(digits), req.val_fraction, req.test_fraction, req.split_seed,
                          stratify=labels)
    splits = []
    for part, (pool, count) in enumerate(zip(pools, (n_train, n_eval, n_eval))):
        rng = np.random.default_rng([req.split_seed, part])
        x, y = compose_mosaics(digits[pool], labels[pool], count, rng)
        splits.append(Split(adapt_images(x, req.image_size, req.channels).contiguous(), y))
    return DatasetBundle(
        "digit-mosaic", *splits, num_classes=NUM_LABELS,
        class_names=[str(i) for i in range(NUM_LABELS)],
        info={"source": "scikit-learn load_digits composed into 2x2 mosaics",
              "targets": "multi-hot [N,10]", "split": "by source digit (no digit is shared)",
              "pool_sizes": [len(p) for p in pools]},
    )
