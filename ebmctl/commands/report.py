"""`ebmctl report RUN.json [-o FILE.html]`: a self-contained HTML page for an attack, ood or
lyapunov report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ebmctl.commands.common import ForceOpt, out_option

app = typer.Typer()


@app.command("report")
def report_cmd(
    run: Path = typer.Argument(..., help="report JSON of `ebmctl attack`, `ebmctl ood`, "
                               "`ebmctl lyapunov` (or ebmctl.evaluate)"),
    out: Optional[Path] = out_option(None, "for the HTML page (default: beside the JSON, "
                                     ".html)"),
    force: ForceOpt = False,
):
    """Render a report as one self-contained HTML page (no network: plots and images inlined).
    attack: headline table with 95% intervals, curves, gallery of clean / adversarial /
    perturbation / purified images, sanity checks, config and versions; ood: energy histograms,
    ROC curves and the AUROC table; lyapunov: exponent vs eta and its table (or the forgetting
    curves of --checks). The kind is read from the JSON's "command" field."""
    from ebmctl.artifacts import claim_output
    from ebmctl.console import info
    from ebmctl.evaluate.html import write_html

    target = out or run.with_suffix(".html")
    if target.resolve() == run.resolve():
        from ebmctl.errors import ConfigError

        raise ConfigError("--out would replace the report JSON itself; choose an .html path")
    claim_output(target, force=force)
    info(f"wrote {write_html(run, target)}")
