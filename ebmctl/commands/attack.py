"""`ebmctl attack`: natural and adversarial figures of the undefended and defended model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ebmctl.commands.common import DeviceOpt, OutOpt, ProfileOpt, SeedOpt, SetOpt, make_config


def attack_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="task model artifact"),
    ebm: Optional[Path] = typer.Option(None, "--ebm", help="EBM artifact for the defense"),
    method: Optional[str] = typer.Option(None, "--method", help="attack on the defended model"),
    norm: Optional[str] = typer.Option(None, "--norm", help="linf | l2"),
    eps: Optional[str] = typer.Option(None, "--eps", help="radius in [0,1] units, e.g. 8/255"),
    n_images: Optional[int] = typer.Option(None, "--n-images", help="test images"),
    undefended_only: bool = typer.Option(False, "--undefended-only"),
    defended_only: bool = typer.Option(False, "--defended-only"),
    profile: ProfileOpt = None, set_: SetOpt = None, device: DeviceOpt = None, seed: SeedOpt = None,
    out: OutOpt = None,
):
    """Attack the undefended model (PGD) and the EBM-defended one (BPDA+EOT), report JSON + PNG."""
    from ebmctl.console import info, out_console
    from ebmctl.context import setup_device
    from ebmctl.errors import ConfigError
    from ebmctl.evaluate.report import format_table, run_evaluation

    extra = []
    if norm:
        extra.append(f"attack.norm={norm}")
    if eps:
        key = "attack.eps_l2" if (norm or "") == "l2" else "attack.eps"
        extra.append(f"{key}={eps}")
    if n_images:
        extra.append(f"attack.n_images={n_images}")
    if method:
        extra.append(f"attack.method={method}")
    cfg = make_config(profile, (set_ or []) + extra, device, seed)
    if undefended_only and defended_only:
        raise ConfigError("--undefended-only and --defended-only exclude each other")
    defended = not undefended_only
    if defended and ebm is None:
        raise ConfigError("give --ebm FILE for the defended evaluation (or --undefended-only)")
    dev = setup_device(cfg)
    out = out or Path(cfg["run.out_dir"]) / "attack-report.json"
    report = run_evaluation(cfg, model, ebm, dev, out, undefended=not defended_only,
                            defended=defended)
    from rich.table import Table

    table = Table(title=f"{report['dataset']} ({report['n_images']} test images), "
                        f"{report['threat']['norm']} eps={report['threat']['eps']:.4g}")
    for col in ("model", "attack", f"natural {report['metric']}", f"adversarial {report['metric']}"):
        table.add_column(col)
    for row in format_table(report):
        table.add_row(*row)
    out_console().print(table)
    info(f"wrote {out} and {out.with_suffix('.png')}")
