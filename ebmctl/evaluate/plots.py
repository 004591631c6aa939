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


def save_panels(path: str | Path, panels: Sequence[dict], title: str = "") -> None:
    """Side-by-side panels in one PNG. Each panel is a dict with ``curves`` ({label: (xs, ys)}),
    and optional ``errors`` ({label: ys_err}, drawn as a band), ``xlabel``, ``ylabel``,
    ``title``, ``xscale`` ("linear" | "log" | "symlog"), ``hline`` (a y value) and ``vlines``
    ({label: x}, dotted vertical markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), dpi=100,
                             squeeze=False)
    for ax, panel in zip(axes[0], panels):
        errors = panel.get("errors") or {}
        for label, (xs, ys) in panel["curves"].items():
            xs, ys = np.asarray(list(xs), float), np.asarray(list(ys), float)
            line, = ax.plot(xs, ys, marker="o", markersize=3, label=label)
            if label in errors:
                err = np.asarray(list(errors[label]), float)
                ax.fill_between(xs, ys - err, ys + err, color=line.get_color(), alpha=0.2)
        scale = panel.get("xscale", "linear")
        if scale == "symlog":
            ax.set_xscale("symlog", linthresh=1.0)
        elif scale != "linear":
            ax.set_xscale(scale)
        if panel.get("hline") is not None:
            ax.axhline(panel["hline"], color="gray", lw=0.8, ls="--")
        for label, x in (panel.get("vlines") or {}).items():
            ax.axvline(x, color="black", lw=1.0, ls=":", label=label)
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        if panel.get("title"):
            ax.set_title(panel["title"], fontsize=10)
        ax.grid(alpha=0.3)
        if len(panel["curves"]) > 1 or panel.get("vlines"):
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def save_histograms(path: str | Path, groups: dict[str, Sequence[float]], xlabel: str,
                    title: str = "", bins: int = 50) -> None:
    """Overlaid density histograms of several value groups on shared bins (e.g. energies)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arrays = {k: np.asarray(list(v), float) for k, v in groups.items()}
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays.values()] or [np.zeros(1)])
    lo, hi = (float(np.percentile(finite, 0.5)), float(np.percentile(finite, 99.5))) \
        if finite.size else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=100)
    for label, a in arrays.items():
        ax.hist(np.clip(a, edges[0], edges[-1]), bins=edges, density=True, alpha=0.45,
                label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
