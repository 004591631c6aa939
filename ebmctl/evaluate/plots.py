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
                hline: float | None = None, integer_x: bool = False) -> None:
    """Line plot of ``curves`` ({label: (xs, ys)}) as a PNG at ``path``; ``integer_x``: the x
    axis counts whole things (attack steps), so its ticks are integers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, (xs, ys) in curves.items():
        ax.plot(list(xs), list(ys), marker="o", markersize=3, label=label)
    if logx:
        ax.set_xscale("log")
    if integer_x:
        integer_ticks(ax)
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


def integer_ticks(ax) -> None:
    """Whole-number ticks on the x axis of ``ax`` (a step axis: a 2-step attack has no step
    0.5)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def gallery_indices(y: torch.Tensor | None, n: int) -> list[int]:
    """Up to ``n`` indices of images to show, spread over the classes of the labels ``y``
    [B]: the first image of each class (classes in order of first appearance), then the
    second of each, and so on, so the gallery is not all one class when the evaluated images
    come sorted. Without class labels (None, or per-pixel targets) the first ``n``."""
    if y is None or y.dim() != 1 or y.is_floating_point():
        return list(range(n if y is None else min(n, len(y))))
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(y.tolist()):
        by_class.setdefault(int(label), []).append(i)
    picked: list[int] = []
    for rank in range(max((len(v) for v in by_class.values()), default=0)):
        picked += [v[rank] for v in by_class.values() if rank < len(v)]
        if len(picked) >= n:
            break
    return sorted(picked[:n])


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


def _tile_array(x: torch.Tensor) -> np.ndarray:
    """[C,H,W] in [0,1] (C = 1 or 3) → [H,W] or [H,W,3] float array for ``imshow``."""
    x = x.detach().float().cpu().clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x[:3].permute(1, 2, 0).numpy()


def _show(ax, tile: torch.Tensor) -> None:
    arr = _tile_array(tile)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def save_tiles(path: str | Path, tiles: Sequence[torch.Tensor], titles: Sequence[str],
               title: str = "") -> list[str]:
    """One row of titled image tiles in one PNG (e.g. a segmentation panel).

    Args:
        tiles: [C,H,W] tensors in [0,1], C = 1 (drawn gray) or 3.
        titles: one per tile (wrapped to the tile's width).
        title: the figure's title (e.g. the sample and the threat model).

    Returns:
        The tile titles as drawn, read back from the figure (line breaks as spaces).
    """
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(tiles) != len(titles):
        raise ValueError(f"{len(tiles)} tiles but {len(titles)} titles")
    fig, axes = plt.subplots(1, len(tiles), figsize=(1.7 * len(tiles), 2.6), dpi=100,
                             squeeze=False)
    for ax, tile, text in zip(axes[0], tiles, titles):
        _show(ax, tile)
        ax.set_title(textwrap.fill(text, 20), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93) if title else None)
    drawn = [ax.get_title().replace("\n", " ") for ax in axes[0]]
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return drawn


def magnify_perturbation(x: torch.Tensor, x_adv: torch.Tensor, norm: str, eps: float
                         ) -> tuple[torch.Tensor, str]:
    """The perturbation δ = x_adv − x of [B,C,H,W] images as a viewable image in [0,1], and how
    it was scaled. ℓ∞: δ/(2ε) + 0.5, so −ε is black, 0 mid-gray and +ε white; ℓ2 (whose
    per-pixel values are far below ε): each image's δ divided by 2·max|δ| instead."""
    delta = (x_adv.float() - x.float()).cpu()
    if norm == "linf" and eps > 0:
        return (delta / (2 * eps) + 0.5).clamp(0, 1), "(x_adv - x)/(2 eps) + 0.5"
    peak = delta.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * (delta.dim() - 1))
    return (delta / (2 * peak) + 0.5).clamp(0, 1), "(x_adv - x)/(2 max|x_adv - x|) + 0.5"


def save_gallery(path: str | Path, x: torch.Tensor, x_adv: torch.Tensor, *, norm: str,
                 eps: float, purified: torch.Tensor | None = None,
                 purified_label: str = "purified adversarial", title: str = "") -> list[str]:
    """Clean / adversarial / magnified perturbation (/ purified adversarial) of the same images,
    one column per image, one row each, in one PNG.

    Args:
        x, x_adv: [B,C,H,W] in [0,1] (C = 1 or 3), the clean and the adversarial images.
        norm, eps: the threat model (``"linf"`` | ``"l2"``; ε in [0,1] pixel units); see
            :func:`magnify_perturbation` for how δ is scaled.
        purified: [B,C,H,W] one purified copy of each adversarial image, or None (undefended).

    Returns:
        The row labels as drawn, top to bottom.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ebmctl.units import format_radius

    delta, scale = magnify_perturbation(x, x_adv, norm, eps)
    rows = [("clean", x), (f"adversarial ({norm} eps = {format_radius(eps)})", x_adv),
            (f"perturbation, magnified: {scale}", delta)]
    if purified is not None:
        rows.append((purified_label, purified))
    n = len(x)
    # fixed margins, not tight_layout: a row label is wider than its first tile and may run on
    # over the row, which tight_layout would pay for by shrinking every image
    width, height = max(5.5, 1.05 * n + 0.3), 1.3 * len(rows) + 0.55
    fig, axes = plt.subplots(len(rows), max(n, 1), figsize=(width, height), dpi=100,
                             squeeze=False)
    fig.subplots_adjust(left=0.15 / width, right=1 - 0.15 / width, bottom=0.1 / height,
                        top=1 - 0.55 / height, wspace=0.08, hspace=0.3 / 1.0)
    for r, (label, imgs) in enumerate(rows):
        for i in range(n):
            _show(axes[r][i], imgs[i])
        axes[r][0].set_title(label, fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.12 / height, va="top")
    drawn = [axes[r][0].get_title(loc="left") for r in range(len(rows))]
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return drawn


def curve_axis_label(metric: str) -> str:
    """The y label of an accuracy-vs-step curve: the metric itself for accuracy; for a task
    scored by a rule (segmentation's Dice ratio) the curve is the fraction of images the rule
    still counts as not broken, which is not the metric."""
    if metric == "accuracy":
        return "robust accuracy"
    return f"fraction of images not broken (the {metric.capitalize()}-ratio rule)"


#: images per model label in the attack gallery
GALLERY_IMAGES = 8


def write_gallery(path: str | Path, label: str, x, x_adv, defense, threat: dict, key: tuple,
                  n: int = GALLERY_IMAGES, labels: torch.Tensor | None = None) -> list[str]:
    """The attack page's gallery PNG for one model label: ``n`` evaluated images clean,
    adversarial (per-image worst case), their perturbation magnified, and (defended labels)
    one purified copy of each adversarial image, through the fixer if the defense has one.
    With class ``labels`` the images are a few of each class (:func:`gallery_indices`), else
    the first ``n``.

    Args:
        x, x_adv: [B,C,H,W] clean and adversarial images in [0,1].
        labels: [B] class labels of ``x`` (None, or per-pixel targets: the first ``n``).
        defense: the :class:`ebmctl.defense.Defense` the label was attacked through.
        threat: {"norm", "eps"} (ε in [0,1] pixel units).
        key: the seed key of the purification noise.

    Returns:
        The gallery's row labels, top to bottom.
    """
    by_class = labels is not None and labels.dim() == 1 and not labels.is_floating_point()
    pick = gallery_indices(labels, n) if by_class else list(range(min(n, len(x))))
    n = len(pick)
    xs, advs = x[pick].detach().float().cpu(), x_adv[pick].detach().float().cpu()
    purified, row = None, "purified adversarial (1 replicate)"
    if defense.purifies:
        dev = next((p.device for p in defense.model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            purified = defense.transform(advs.to(dev), key).float().cpu()
        if defense.fixer is not None:
            row = "purified and fixed adversarial (1 replicate)"
    return save_gallery(path, xs, advs, norm=threat["norm"], eps=float(threat["eps"]),
                        purified=purified, purified_label=row, title=f"{label}: {n} evaluated images"
                        + (" across the classes" if by_class else "")
                        + " (adversarial = per-image worst case)")
