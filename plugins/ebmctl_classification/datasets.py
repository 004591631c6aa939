"""Classification datasets: embedded digits, ImageFolder roots, CIFAR-10/100 and SVHN folders.

Nothing here downloads. CIFAR's python batches are pickles and are read only with
``data.allow_pickle = true``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ebmctl.api import DataRequest, DatasetSpec, InputError, load_image_folder, make_bundle

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def load_digits_bundle(req: DataRequest):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return make_bundle("digits", x, y, req, 10, [str(i) for i in range(10)],
                       info={"source": "scikit-learn load_digits (UCI optdigits)",
                             "license": "CC BY 4.0", "native_size": 8})


def _require_root(req: DataRequest, name: str) -> Path:
    if not req.root:
        raise InputError(f"dataset {name!r} needs data.root (a local folder; nothing is downloaded)")
    root = Path(req.root).expanduser()
    if not root.exists():
        raise InputError(f"dataset root not found: {root}")
    return root


def load_imagefolder_bundle(req: DataRequest, name: str = "imagefolder"):
    root = _require_root(req, name)
    per_class = int(req.options.get("max_per_class", 0) or 0)
    train_dir = root / "train" if (root / "train").is_dir() else root
    x, y, classes = load_image_folder(train_dir, per_class)
    test = None
    for cand in ("test", "val"):
        if (root / cand).is_dir() and train_dir != root:
            xt, yt, ct = load_image_folder(root / cand, per_class)
            if ct != classes:
                raise InputError(f"{root / cand} has different classes from {train_dir}")
            test = (xt, yt)
            break
    return make_bundle(name, x, y, req, len(classes), classes, test=test,
                       info={"root": str(root), "layout": "ImageFolder"})


def _unpickle_cifar(path: Path):
    import pickle  # only behind data.allow_pickle: CIFAR's python batches are pickles

    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="latin1")


def load_cifar_bundle(req: DataRequest, name: str = "cifar10"):
    root = _require_root(req, name)
    batches = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    if batches.is_dir():
        if not req.allow_pickle:
            raise InputError(f"{batches} holds CIFAR python batches, which are pickles and can run "
                             "code; set data.allow_pickle = true to read them, or use an "
                             "ImageFolder copy")
        if name == "cifar10":
            parts = [_unpickle_cifar(batches / f"data_batch_{i}") for i in range(1, 6)]
            test_part = _unpickle_cifar(batches / "test_batch")
            key, names = "labels", CIFAR10_CLASSES
        else:
            parts = [_unpickle_cifar(batches / "train")]
            test_part = _unpickle_cifar(batches / "test")
            key, names = "fine_labels", [str(i) for i in range(100)]

        def arr(d):
            x = torch.from_numpy(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            return x.float() / 255, torch.tensor(d[key], dtype=torch.long)

        xs, ys = zip(*(arr(p) for p in parts))
        return make_bundle(name, torch.cat(xs), torch.cat(ys), req, len(names), names,
                           test=arr(test_part), info={"root": str(root), "layout": "python"})
    return load_imagefolder_bundle(req, name)


def load_svhn_bundle(req: DataRequest):
    from scipy.io import loadmat

    root = _require_root(req, "svhn")
    train_file = root / "train_32x32.mat"
    if not train_file.exists():
        raise InputError(f"SVHN expects {train_file} (torchvision's format)")

    def read(f: Path):
        try:
            m = loadmat(str(f))
        except Exception as exc:
            raise InputError(f"cannot read {f}: {exc}") from None
        x = torch.from_numpy(np.transpose(m["X"], (3, 2, 0, 1)).copy()).float() / 255
        y = torch.from_numpy(m["y"].astype(np.int64).reshape(-1) % 10)
        return x, y

    x, y = read(train_file)
    test = read(root / "test_32x32.mat") if (root / "test_32x32.mat").exists() else None
    return make_bundle("svhn", x, y, req, 10, [str(i) for i in range(10)], test=test,
                       info={"root": str(root), "layout": "torchvision SVHN .mat"})


DATASETS = [
    DatasetSpec("digits", load_digits_bundle, "classification",
                "scikit-learn's 8x8 handwritten digits (embedded, no download)"),
    DatasetSpec("imagefolder", load_imagefolder_bundle, "classification",
                "root/<class>/<image> (or root/train + root/test)", needs_root=True),
    DatasetSpec("cifar10", lambda r: load_cifar_bundle(r, "cifar10"), "classification",
                "CIFAR-10 from an ImageFolder root or (opt-in) python batches", needs_root=True),
    DatasetSpec("cifar100", lambda r: load_cifar_bundle(r, "cifar100"), "classification",
                "CIFAR-100 from an ImageFolder root or (opt-in) python batches", needs_root=True),
    DatasetSpec("svhn", load_svhn_bundle, "classification",
                "SVHN from torchvision's .mat files in a local root", needs_root=True),
]
