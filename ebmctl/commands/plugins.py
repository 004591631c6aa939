"""`ebmctl plugins`: the loaded plugins, their distribution and version, what each registered,
and the purifiers with their declarations and settings."""

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
    purifiers = [{"name": n, "plugin": reg.purifiers.owner(n),
                  "description": reg.purifiers.get(n).description,
                  "stochastic": _declared(reg.purifiers.get(n), "stochastic"),
                  "differentiable": _declared(reg.purifiers.get(n), "differentiable"),
                  "settings": {k: t.__name__ for k, t in
                               reg.purifiers.get(n).option_types().items()}}
                 for n in reg.purifiers]
    if as_json:
        print(json.dumps({"plugins": rows, "purifiers": purifiers, "failures": reg.failures},
                         indent=2))
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
    if purifiers:
        ptable = Table(title="purifiers (--purifier NAME[:key=value,...])")
        for col in ("purifier", "plugin", "stochastic", "differentiable", "settings",
                    "description"):
            ptable.add_column(col, overflow="fold")
        for p in purifiers:
            ptable.add_row(p["name"], p["plugin"], _yes_no(p["stochastic"]),
                           _yes_no(p["differentiable"]),
                           ", ".join(f"{k} ({t})" for k, t in p["settings"].items()) or "-",
                           p["description"])
        out_console().print(ptable)
    for f in reg.failures:
        out_console().print(f"[yellow]warning:[/yellow] {f}")


def _declared(cls, attr: str):
    """A purifier class's declaration: True/False, or "depends" where it is decided per
    instance (the EBM purifier is stochastic only with K > 0 steps)."""
    value = getattr(cls, attr, False)
    return value if isinstance(value, bool) else "depends"


def _yes_no(value) -> str:
    return {True: "yes", False: "no"}.get(value, str(value))
