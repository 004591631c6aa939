"""PNG outputs: sample grids and simple curves, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ebmctl.artifacts import atomic_path


def save_image01(x: torch.Tensor, path: str | Path) -> None:
    """Save one [C,H,W] image in [0,1] as PNG (values clamped for display only)."""
    from PIL import Image

    arr = (x.detach().float().clamp(0, 1).mul(255).round().byte().cpu())
    arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")


def save_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None, upscale: int = 0) -> None:
    from torchvision.utils import make_grid

    x = x.detach().float().cpu().clamp(0, 1)
    if upscale == 0:
        upscale = max(1, 32 // max(1, x.shape[-1]))
    if upscale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=upscale, mode="nearest")
    nrow = nrow or int(np.ceil(np.sqrt(len(x))))
    grid = make_grid(x, nrow=nrow, padding=2, pad_value=1.0)
    save_image01(grid, path)


def save_curves(path: str | Path, curves: dict[str, tuple[Sequence[float], Sequence[float]]],
                xlabel: str, ylabel: str, title: str = "", logx: bool = False,
                hline: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, (xs, ys) in curves.items():
        ax.plot(list(xs), list(ys), marker="o", markersize=3, label=label)
    if logx:
        ax.set_xscale("log")
    if hline is not None:
        ax.axhline(hline, color="gray", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
