"""Classification datasets: embedded digits, ImageFolder roots, CIFAR-10/100 and SVHN folders.

Nothing here downloads, and nothing is unpickled: CIFAR's python batches are pickles (they can
run code when read), so a root holding them is refused with the way out (an ImageFolder copy).
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
        where = "" if root.is_absolute() else f" (relative to {Path.cwd()})"
        raise InputError(f"dataset root not found: {root}{where}; point data.root at the "
                         f"{name} folder, e.g. --set data.root=DIR")
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


def load_cifar_bundle(req: DataRequest, name: str = "cifar10"):
    root = _require_root(req, name)
    batches = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    if batches.is_dir():
        raise InputError(f"{batches} holds CIFAR python batches, which are pickles and can run "
                         "code when read; ebmctl never unpickles data: point data.root at an "
                         "ImageFolder copy (one folder of PNG/JPEG files per class)")
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


IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal",
                         "shirt", "sneaker", "bag", "ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format; ``.gz`` or raw): magic 0x0000TTNN with type TT and NN
    dimensions, big-endian uint32 sizes, then the data."""
    import gzip

    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise InputError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise InputError(f"{path} is not an IDX file (bad header)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    count = int(np.prod(shape))
    if len(raw) - header != count * dtype.itemsize:
        raise InputError(f"{path} is truncated or corrupt: header says {shape}, "
                         f"{len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)


def _idx_pair(root: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    def find(stem: str) -> Path | None:
        for name in (stem, stem + ".gz"):
            if (root / name).is_file():
                return root / name
        return None

    images, labels = find(f"{prefix}-images-idx3-ubyte"), find(f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        return None
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise InputError(f"{images.name} / {labels.name} do not hold matching images and labels")
    return (torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1),
            torch.from_numpy(y.astype(np.int64)))


def load_idx_bundle(req: DataRequest, name: str = "fashion-mnist", default_root: str = ""):
    """MNIST-format IDX files (train-* and t10k-*) in a local folder; t10k is the test split."""
    if not req.root and default_root:
        req = DataRequest(**{**req.__dict__, "root": default_root})
    root = _require_root(req, name)
    train = _idx_pair(root, "train")
    if train is None:
        raise InputError(f"{root} has no train-images-idx3-ubyte[.gz] / "
                         "train-labels-idx1-ubyte[.gz]")
    names = FASHION_MNIST_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    return make_bundle(name, *train, req, 10, names, test=_idx_pair(root, "t10k"),
                       info={"root": str(root), "layout": "IDX"})


def load_noise_bundle(req: DataRequest, kind: str = "uniform", count: int = 5000):
    """Synthetic noise images (an OOD set): uniform in [0,1], or Gaussian N(0.5, 0.25²) clipped
    to [0,1]. Size and channels follow the request (default 32×32 RGB); fixed by split_seed."""
    size, ch = req.image_size or 32, req.channels or 3
    g = torch.Generator().manual_seed(req.split_seed + (0 if kind == "uniform" else 1))
    if kind == "uniform":
        x = torch.rand((count, ch, size, size), generator=g)
    else:
        x = (0.5 + 0.25 * torch.randn((count, ch, size, size), generator=g)).clamp(0, 1)
    return make_bundle(f"{kind}-noise", x, torch.zeros(count, dtype=torch.long), req, 1,
                       ["noise"], info={"source": f"synthetic {kind} noise"})


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
    DatasetSpec("fashion-mnist", lambda r: load_idx_bundle(r, "fashion-mnist", FASHION_MNIST_ROOT),
                "classification", "Fashion-MNIST IDX files (default root: Debian's "
                "dataset-fashion-mnist package)"),
    DatasetSpec("mnist", lambda r: load_idx_bundle(r, "mnist"), "classification",
                "MNIST IDX files in a local root", needs_root=True),
    DatasetSpec("uniform-noise", lambda r: load_noise_bundle(r, "uniform"), "classification",
                "synthetic uniform-noise images (an OOD set)"),
    DatasetSpec("gaussian-noise", lambda r: load_noise_bundle(r, "gaussian"), "classification",
                "synthetic Gaussian-noise images (an OOD set)"),
]
