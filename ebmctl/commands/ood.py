"""`ebmctl ood`: out-of-distribution detection by energy; AUROC, FPR@95%TPR, JSON + PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ebmctl.commands.common import (
    ForceOpt,
    command,
    ebm_option,
    make_config,
    n_images_option,
    out_option,
)

app = typer.Typer()


@app.command("ood", cls=command(aliases={"--model": "--ebm", "-m": "--ebm"}))
def ood_cmd(
    ctx: typer.Context,
    ebm: Path = ebm_option(..., "whose energy scores the images (or ebm-defense:ebm@FILE)"),
    ood_sets: Optional[list[str]] = typer.Option(None, "--ood", help="OOD dataset NAME or "
                                                 "NAME=ROOT (repeatable; default ood.sets)"),
    n_images: Optional[int] = n_images_option(None, "per set (ood.n_images)"),
    out: Optional[Path] = out_option(None, "for the report JSON (default: "
                                     "run.out_dir/ood-<ebm>.json; PNG and HTML beside it)"),
    force: ForceOpt = False,
):
    """Score held-out in-distribution images and OOD sets by energy; report AUROC and FPR@95
    (JSON at --out, histogram PNG and an HTML page with the ROC curves next to it; existing
    files are replaced only with --force)."""
    from ebmctl.artifacts import claim_output
    from ebmctl.console import info, out_console
    from ebmctl.context import RunConfig, setup_device
    from ebmctl.evaluate.tables import ood_table
    from ebmctl.ood import run_ood

    cfg = make_config(ctx, {"ood.n_images": n_images})
    dev = setup_device(cfg)
    out_dir = cfg.section(RunConfig).out_dir
    out = out or Path(out_dir) / f"ood-{ebm.stem}.json"
    for path in (out, out.with_suffix(".png"), out.with_suffix(".html")):
        claim_output(path, force=force)
    from ebmctl.commands.model_argument import resolve_model_argument

    ebm = resolve_model_argument(ebm, out_dir)  # ebm-defense:ebm@FILE
    report = run_ood(ood_settings(cfg, ebm), ebm, dev, out, ood_sets)
    out_console().print(ood_table(report))
    from ebmctl.evaluate.html import write_html

    info(f"wrote {out}, {out.with_suffix('.png')} and {write_html(out)}")


def ood_settings(cfg, model_path: Path):
    """The :class:`~ebmctl.ood.OODSettings` of the profile ``cfg`` for the EBM at
    ``model_path`` (its training set unless the profile or the command line chose one)."""
    from ebmctl.context import RunConfig, config_for_model, dataset_loader
    from ebmctl.ood import OODConfig, OODSettings

    cfg = config_for_model(cfg, model_path)
    return OODSettings(ood=cfg.section(OODConfig), load_data=dataset_loader(cfg, "ood"),
                       seed=cfg.section(RunConfig).seed, record=cfg.record())
