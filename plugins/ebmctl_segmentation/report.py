"""Segmentation figures for `ebmctl attack`: mean Dice clean / attacked, mIoU, the fraction of
images broken under the Dice-ratio rule, and one PNG panel per sample."""

from __future__ import annotations

from pathlib import Path

import torch

from ebmctl.api import save_grid
from ebmctl_segmentation.metrics import confusion_matrix, dice_score, mean_iou

#: Mask colours: background black, then distinct colours per class.
PALETTE = torch.tensor([[0, 0, 0], [255, 200, 0], [0, 160, 255], [230, 40, 40], [60, 200, 80],
                        [200, 80, 220], [255, 255, 255]], dtype=torch.float32) / 255
PANEL_COLUMNS = ["image", "mask", "prediction clean (undefended)", "attacked image (undefended)",
                 "prediction attacked (undefended)", "attacked image (defended)",
                 "prediction attacked (defended)"]


def colour_masks(labels: torch.Tensor) -> torch.Tensor:
    """Label maps [B,H,W] to RGB images [B,3,H,W] in [0,1]."""
    idx = labels.long().clamp(0, len(PALETTE) - 1)
    return PALETTE[idx].permute(0, 3, 1, 2)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def segmentation_extras(task, x: torch.Tensor, y: torch.Tensor, runs: dict, out: Path,
                        key: tuple) -> dict:
    """Per run label: Dice and mIoU of the clean and the attacked images (re-predicted with the
    defense's own H replicates), and the Dice-ratio verdicts of the attack itself."""
    results, preds = {}, {}
    for label, run in runs.items():
        defense, x_adv, res = run["defense"], run["x_adv"], run["result"]
        dev = next(defense.model.parameters()).device
        clean = defense.predict(x.to(dev), None, (*key, label, "clean")).cpu()
        adv = defense.predict(x_adv.to(dev), None, (*key, label, "attacked")).cpu()
        k = clean.shape[1]
        p_clean, p_adv = clean.argmax(1), adv.argmax(1)
        d_clean = dice_score(p_clean, y, k, task.dice_mode, task.ignore_index)
        d_adv = dice_score(p_adv, y, k, task.dice_mode, task.ignore_index)
        natural = torch.tensor(res["natural_ok"], dtype=torch.bool)
        robust = torch.tensor(res["robust_ok"], dtype=torch.bool)
        n_eval = int(natural.sum())
        not_broken = (robust & natural).sum().item() / n_eval if n_eval else float("nan")
        results[label] = {
            "mean_dice_clean": d_clean.mean().item(),
            "mean_dice_attacked": d_adv.mean().item(),
            "miou_clean": mean_iou(confusion_matrix(p_clean, y, k, task.ignore_index)),
            "miou_attacked": mean_iou(confusion_matrix(p_adv, y, k, task.ignore_index)),
            "n_evaluated": n_eval,
            "n_excluded_zero_clean_dice": len(natural) - n_eval,
            "fraction_not_broken": not_broken,
            "fraction_broken": 1.0 - not_broken if n_eval else float("nan"),
            "dice_ratio_threshold": task.threshold,
            "dice_mode": task.dice_mode,
            "attack_loss": task.attack_loss_name,
            "per_image_dice_clean": d_clean.tolist(),
            "per_image_dice_attacked": d_adv.tolist(),
        }
        preds[label] = (p_clean, p_adv, x_adv.cpu())
    files = write_panels(x, y, preds, out, task.panels)
    rows = [[label, f"{r['mean_dice_clean']:.3f}", f"{r['mean_dice_attacked']:.3f}",
             f"{r['miou_clean']:.3f}", f"{r['miou_attacked']:.3f}",
             f"{r['fraction_not_broken']:.3f}", str(r["n_excluded_zero_clean_dice"])]
            for label, r in results.items()]
    return {
        "results": results,
        "files": files,
        "panel_columns": [c for c in PANEL_COLUMNS if _column_present(c, preds)],
        "table": {"title": f"segmentation (Dice ratio >= {task.threshold} = not broken)",
                  "columns": ["model", "Dice clean", "Dice attacked", "mIoU clean",
                              "mIoU attacked", "not broken", "excluded (clean Dice 0)"],
                  "rows": rows},
    }


def _column_present(column: str, preds: dict) -> bool:
    if "(undefended)" in column:
        return "undefended" in preds
    if "(defended)" in column:
        return "defended" in preds
    return True


def write_panels(x, y, preds: dict, out: Path, n: int) -> list[str]:
    """One PNG per sample: image, mask, then the predictions (columns in PANEL_COLUMNS order)."""
    files = []
    n = min(n, len(x))
    upscale = max(1, 96 // max(1, x.shape[-1]))
    for i in range(n):
        tiles = [_rgb(x[i:i + 1].cpu()), colour_masks(y[i:i + 1])]
        if "undefended" in preds:
            p_clean, p_adv, xa = preds["undefended"]
            tiles += [colour_masks(p_clean[i:i + 1]), _rgb(xa[i:i + 1]),
                      colour_masks(p_adv[i:i + 1])]
        if "defended" in preds:
            _, p_adv, xa = preds["defended"]
            tiles += [_rgb(xa[i:i + 1]), colour_masks(p_adv[i:i + 1])]
        path = out.with_name(f"{out.stem}.panel-{i:03d}.png")
        save_grid(torch.cat(tiles).float(), path, nrow=len(tiles), upscale=upscale)
        files.append(str(path))
    return files
