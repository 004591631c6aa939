"""Segmentation figures for `ebmctl attack`: mean Dice clean / attacked, mIoU, the fraction of
images broken under the Dice-ratio rule, and one PNG panel per sample."""

from __future__ import annotations

from pathlib import Path

import torch

from ebmctl.api import format_radius, save_tiles
from ebmctl_segmentation.metrics import confusion_matrix, dice_score, mean_iou

#: Mask colours: background black, then distinct colours per class.
PALETTE = torch.tensor([[0, 0, 0], [255, 200, 0], [0, 160, 255], [230, 40, 40], [60, 200, 80],
                        [200, 80, 220], [255, 255, 255]], dtype=torch.float32) / 255
#: A panel's tiles, left to right (the undefended ones only with an undefended run, the
#: defended ones only with a defended run); "{eps}" becomes the radius, e.g. "8/255".
PANEL_COLUMNS = ["image", "true mask", "clean prediction (undefended)",
                 "adversarial, eps = {eps} (vs undefended)", "its prediction (undefended)",
                 "adversarial, eps = {eps} (vs defended)",
                 "purified adversarial (1 replicate)", "defended prediction (mean of H)"]


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
        purified = None
        if label == "defended" and task.panels > 0:
            # what the segmenter saw: one purified copy of each adversarial image shown
            n = min(task.panels, len(x_adv))
            purified = defense.purify(x_adv[:n].to(dev), (*key, label, "panel")).cpu()
        preds[label] = (p_clean, p_adv, x_adv.cpu(), purified)
    threat = next((r["threat"] for r in runs.values() if r.get("threat")), None)
    files, columns = write_panels(x, y, preds, out, task.panels, threat)
    rows = [[label, f"{r['mean_dice_clean']:.3f}", f"{r['mean_dice_attacked']:.3f}",
             f"{r['miou_clean']:.3f}", f"{r['miou_attacked']:.3f}",
             f"{r['fraction_not_broken']:.3f}", str(r["n_excluded_zero_clean_dice"])]
            for label, r in results.items()]
    return {
        "results": results,
        "files": files,
        "panel_columns": columns,
        "table": {"title": f"segmentation (Dice ratio >= {task.threshold} = not broken)",
                  "columns": ["model", "Dice clean", "Dice attacked", "mIoU clean",
                              "mIoU attacked", "not broken", "excluded (clean Dice 0)"],
                  "rows": rows},
    }


def panel_titles(preds: dict, threat: dict | None) -> list[str]:
    """The titles of a panel's tiles for the runs in ``preds`` (PANEL_COLUMNS order), the
    radius printed as k/255 when it is a whole number of 255ths."""
    eps = "?" if not threat else (
        format_radius(threat["eps"]) + ("" if threat.get("norm") == "linf"
                                        else f" ({threat.get('norm')})"))
    titles = []
    for column in PANEL_COLUMNS:
        if "(undefended)" in column or "(vs undefended)" in column:
            if "undefended" not in preds:
                continue
        elif column not in PANEL_COLUMNS[:2] and "defended" not in preds:
            continue
        titles.append(column.format(eps=eps))
    return titles


def write_panels(x, y, preds: dict, out: Path, n: int, threat: dict | None = None
                 ) -> tuple[list[str], list[str]]:
    """One titled PNG per sample (``<out stem>.panel-NNN.png``): image, true mask, then per run
    the adversarial image and the predictions (tiles and titles in PANEL_COLUMNS order).

    Args:
        x: [B,C,H,W] images in [0,1]; y: [B,H,W] label maps.
        preds: run label ("undefended" / "defended") → (clean prediction [B,H,W], attacked
            prediction [B,H,W], adversarial images [B,C,H,W], one purified copy of the first
            adversarial images [≥n,C,H,W] or None).
        threat: {"norm", "eps"} of the attack (ε in [0,1] pixel units), for the titles.

    Returns:
        (files written, the tile titles as drawn).
    """
    files, titles = [], panel_titles(preds, threat)
    n = min(n, len(x))
    for i in range(n):
        tiles = [_rgb(x[i:i + 1].cpu()), colour_masks(y[i:i + 1])]
        if "undefended" in preds:
            p_clean, p_adv, xa, _ = preds["undefended"]
            tiles += [colour_masks(p_clean[i:i + 1]), _rgb(xa[i:i + 1]),
                      colour_masks(p_adv[i:i + 1])]
        if "defended" in preds:
            _, p_adv, xa, purified = preds["defended"]
            # without the purified copy (no EBM steps) the defended input is the adversarial
            pur = purified[i:i + 1] if purified is not None else xa[i:i + 1]
            tiles += [_rgb(xa[i:i + 1]), _rgb(pur), colour_masks(p_adv[i:i + 1])]
        path = out.with_name(f"{out.stem}.panel-{i:03d}.png")
        drawn = save_tiles(path, [t[0].float() for t in tiles], titles,
                           title=f"{out.stem}: evaluated image {i}")
        files.append(str(path))
    return files, (drawn if n else titles)
