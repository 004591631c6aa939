"""`ebmctl plugins`: the loaded plugins, their distribution and version, and what each
registered."""

from __future__ import annotations

import json

import typer

app = typer.Typer()


@app.command("plugins")
def plugins_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """List loaded plugins, their distribution and version, and what each registered."""
    from ebmctl.console import out_console
    from ebmctl.plugins import get_registries

    reg = get_registries()
    rows = []
    for name, p in reg.plugins.items():
        rows.append({"plugin": name, "distribution": p.distribution, "version": p.version,
                     "builtin": p.builtin, "registered": p.registered, "error": p.error})
    if as_json:
        print(json.dumps({"plugins": rows, "failures": reg.failures}, indent=2))
        return
    from rich.table import Table

    table = Table(title="ebmctl plugins")
    for col in ("plugin", "distribution", "version", "registered"):
        table.add_column(col, overflow="fold")
    for r in rows:
        reg_text = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["registered"].items())
        if r["error"]:
            reg_text = f"[red]FAILED: {r['error']}[/red]"
        table.add_row(r["plugin"], r["distribution"], r["version"], reg_text or "-")
    out_console().print(table)
    for f in reg.failures:
        out_console().print(f"[yellow]warning:[/yellow] {f}")
