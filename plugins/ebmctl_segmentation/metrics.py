"""Segmentation metrics: per-image Dice (thesis Eq. 4.2), dataset mIoU, the Dice-ratio rule
(docs/algorithms.md#segmentation-and-the-dice-rule).

Masks are integer label maps [B,H,W] (0 = background); predictions are label maps too (the
argmax of the per-pixel logits). Mask pixels equal to ``ignore_index`` (``data.ignore_index``,
e.g. 255 in VOC-style masks; -1 = none) are void: neither a class nor foreground, and whatever
is predicted there counts nowhere.
"""

from __future__ import annotations

import torch

#: The thesis' ε in Dice = 2TP / (2TP + FP + FN + ε): keeps 0/0 (both masks empty) at 0.
DICE_EPS = 1e-9
DICE_MODES = ("foreground", "mean")


def void_mask(target: torch.Tensor, ignore_index: int = -1) -> torch.Tensor | None:
    """Bool [B,H,W] of the void pixels of label maps, or None when nothing is ignored."""
    return target == ignore_index if ignore_index >= 0 else None


def _counts(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image TP, FP, FN [B] of boolean maps [B,H,W], over the ``valid`` pixels only."""
    if valid is not None:
        pred, target = pred & valid, target & valid
    p, t = pred.flatten(1), target.flatten(1)
    tp = (p & t).sum(1).double()
    fp = (p & ~t).sum(1).double()
    fn = (~p & t).sum(1).double()
    return tp, fp, fn


def dice_binary(pred: torch.Tensor, target: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image Dice [B] of boolean maps: 2TP / (2TP + FP + FN + 1e-9), over ``valid``."""
    tp, fp, fn = _counts(pred.bool(), target.bool(), valid)
    return (2 * tp / (2 * tp + fp + fn + DICE_EPS)).float()


def dice_score(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
               mode: str = "foreground", ignore_index: int = -1) -> torch.Tensor:
    """Per-image Dice [B] of label maps.

    ``foreground``: every non-background class counts as foreground (for a binary mask this is
    the pet/object class, the spec default). ``mean``: the mean over the foreground classes that
    occur in the prediction or the mask of that image (an image where neither has any
    foreground scores 0, like the foreground mode). Void pixels are left out.
    """
    void = void_mask(target, ignore_index)
    valid = None if void is None else ~void
    if valid is not None:
        target = target.masked_fill(void, 0)
    if mode == "foreground":
        return dice_binary(pred > 0, target > 0, valid)
    if mode != "mean":
        raise ValueError(f"unknown Dice mode {mode!r}; choose from {', '.join(DICE_MODES)}")
    total = torch.zeros(pred.shape[0], dtype=torch.float64, device=pred.device)
    present = torch.zeros_like(total)
    for c in range(1, max(2, num_classes)):
        p, t = pred == c, target == c
        if valid is not None:
            p, t = p & valid, t & valid
        here = (p.flatten(1).any(1) | t.flatten(1).any(1)).double()
        total += dice_binary(p, t).double() * here
        present += here
    return (total / present.clamp_min(1)).float()


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = -1) -> torch.Tensor:
    """Pixel confusion counts [C,C] (rows: mask class, columns: predicted class); void pixels
    are not counted."""
    k = max(2, num_classes)
    keep = target.flatten() != ignore_index if ignore_index >= 0 else slice(None)
    idx = target.flatten()[keep].long() * k + pred.flatten()[keep].long()
    return torch.bincount(idx.cpu(), minlength=k * k).view(k, k)


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes that occur in the masks or the predictions."""
    conf = confusion.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    seen = union > 0
    if not seen.any():
        return float("nan")
    return (tp[seen] / union[seen]).mean().item()


def dice_ratio_ok(adv_dice: torch.Tensor, clean_dice: torch.Tensor,
                  threshold: float = 0.5) -> torch.Tensor:
    """Thesis Eq. 4.3: not broken while Dice(x̂) / Dice(x) >= threshold.

    Images whose clean Dice is 0 have no ratio; they are never counted as correct here (the
    report leaves them out of the fraction and counts them separately).
    """
    clean = clean_dice.double()
    ratio = adv_dice.double() / clean.clamp_min(DICE_EPS)
    return (clean > 0) & (ratio >= threshold)
