"""`ebmctl ood`: out-of-distribution detection by energy; AUROC, FPR@95%TPR, JSON + PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ebmctl.commands.common import (
    DeviceOpt,
    ForceOpt,
    OutOpt,
    ProfileOpt,
    SeedOpt,
    SetOpt,
    make_config,
)


def ood_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="EBM or Hat EBM artifact "
                               "(or ebm-defense:ebm@FILE)"),
    ood_sets: Optional[list[str]] = typer.Option(None, "--ood", help="OOD dataset NAME or "
                                                 "NAME=ROOT (repeatable; default ood.sets)"),
    n_images: Optional[int] = typer.Option(None, "--n-images", help="images per set"),
    profile: ProfileOpt = None, set_: SetOpt = None, device: DeviceOpt = None, seed: SeedOpt = None,
    out: OutOpt = None, force: ForceOpt = False,
):
    """Score held-out in-distribution images and OOD sets by energy; report AUROC and FPR@95
    (JSON at --out, histogram PNG and an HTML page with the ROC curves next to it; existing
    files are replaced only with --force)."""
    from rich.table import Table

    from ebmctl.artifacts import claim_output
    from ebmctl.console import info, out_console
    from ebmctl.context import setup_device
    from ebmctl.ood import run_ood

    extra = [f"ood.n_images={n_images}"] if n_images is not None else []
    cfg = make_config(profile, (set_ or []) + extra, device, seed)
    dev = setup_device(cfg)
    out = out or Path(cfg["run.out_dir"]) / f"ood-{model.stem}.json"
    for path in (out, out.with_suffix(".png"), out.with_suffix(".html")):
        claim_output(path, force=force)
    from ebmctl.importers import resolve_model_argument

    model = resolve_model_argument(model, cfg["run.out_dir"])  # ebm-defense:ebm@FILE
    report = run_ood(cfg, model, dev, out, ood_sets)
    ind = report["in_distribution"]
    table = Table(title=f"in-distribution: {ind['dataset']} ({ind['n']} held-out images), "
                        f"mean energy {ind['energy_mean']:.4g}")
    for col in ("OOD set", "n", "mean energy", "AUROC", "FPR@95%TPR"):
        table.add_column(col)
    for name, row in report["out_of_distribution"].items():
        table.add_row(name, str(row["n"]), f"{row['energy_mean']:.4g}", f"{row['auroc']:.4f}",
                      f"{row['fpr_at_95_tpr']:.4f}")
    out_console().print(table)
    from ebmctl.evaluate.html import write_html

    info(f"wrote {out}, {out.with_suffix('.png')} and {write_html(out)}")
