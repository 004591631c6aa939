"""`ebmctl compare A.json B.json ...`: several attack evaluations on one page, robust accuracy
against ε."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ebmctl.commands.common import ForceOpt, out_option

app = typer.Typer()


@app.command("compare")
def compare_cmd(
    reports: list[Path] = typer.Argument(..., help="report JSONs of `ebmctl attack --sweep "
                                         "attack.eps=...` (attack.eps_l2 under l2) or of "
                                         "single `ebmctl attack` runs"),
    names: Optional[str] = typer.Option(None, "--names", help="comma-separated model names, "
                                        "one per report (default: the model files' stems)"),
    out: Path = out_option(Path("compare.html"), "for the HTML page; the JSON and the PNG "
                           "are written beside it"),
    force: ForceOpt = False,
):
    """Overlay robust accuracy against eps for several evaluations: one line per model x
    defense x attack with 95% bands (plotted: each run's per-image worst case), and one table
    (rows: model x defense x attack; columns: eps). Writes HTML, JSON and PNG; prints the
    table. Reports of different tasks or norms are refused."""
    from ebmctl.artifacts import claim_output
    from ebmctl.console import info, out_console
    from ebmctl.errors import ConfigError
    from ebmctl.evaluate.compare import comparison_notes, comparison_table, write_comparison

    targets = [out, out.with_suffix(".json"), out.with_suffix(".png")]
    inputs = {r.resolve() for r in reports}
    clash = [t for t in targets if t.resolve() in inputs]
    if out.suffix != ".html" or clash:
        raise ConfigError(f"--out must be an .html path whose .json and .png do not replace an "
                          f"input report (got {out})")
    for t in targets:
        claim_output(t, force=force)
    name_list = [n.strip() for n in names.split(",")] if names else None
    comparison = write_comparison(list(reports), out, name_list)
    out_console().print(comparison_table(comparison))
    for note in comparison_notes(comparison):
        info(note)
    info(f"wrote {out}, {out.with_suffix('.json')} and {out.with_suffix('.png')}")
