"""`ebmctl plugins`, `ebmctl profiles`, `ebmctl inspect`: what is installed and what a file is."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ebmctl.commands.common import SetOpt

profiles_app = typer.Typer(help="List bundled profiles or show one resolved.",
                           invoke_without_command=True)


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


@profiles_app.callback()
def profiles_list(ctx: typer.Context):
    """List bundled profiles (from ebmctl and plugins)."""
    if ctx.invoked_subcommand:
        return
    from ebmctl.console import out_console
    from ebmctl.profiles import available_profiles, profile_description
    from rich.table import Table

    table = Table(title="profiles")
    table.add_column("name")
    table.add_column("description", overflow="fold")
    table.add_column("file", overflow="fold")
    for name, path in available_profiles().items():
        table.add_row(name, profile_description(path), str(path))
    out_console().print(table)


@profiles_app.command("show")
def profiles_show(name: str = typer.Argument(..., help="profile name or path"),
                  set_: SetOpt = None,
                  as_json: bool = typer.Option(False, "--json"),
                  provenance: bool = typer.Option(False, "--provenance",
                                                  help="show where each value came from")):
    """Print the resolved settings of a profile (defaults < profile < --set)."""
    from ebmctl.profiles import resolve

    cfg = resolve(name, set_ or [])
    if as_json:
        print(json.dumps(cfg.to_dict(), indent=2))
        return
    for section, keys in cfg.to_dict().items():
        print(f"[{section}]")
        for k, v in keys.items():
            src = f"  # {cfg.provenance.get(f'{section}.{k}', '')}" if provenance else ""
            print(f"{k} = {json.dumps(v)}{src}")
        print()


def inspect_cmd(file: Path = typer.Argument(..., help="a .safetensors artifact"),
                as_json: bool = typer.Option(False, "--json")):
    """Show an artifact's header (metadata and tensor table) without loading its weights."""
    from ebmctl.artifacts import read_header

    meta, tensors = read_header(file)
    decoded = {}
    for k, v in meta.items():
        try:
            decoded[k] = json.loads(v) if v[:1] in "[{" else v
        except json.JSONDecodeError:
            decoded[k] = v
    n_params = 0
    for info in tensors.values():
        count = 1
        for d in info.get("shape", []):
            count *= int(d)
        n_params += count
    summary = {"file": str(file), "metadata": decoded, "tensors": len(tensors),
               "parameters": n_params}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(f"file: {file}")
    if "ebmctl.kind" not in meta:
        print("note: no ebmctl metadata (not an ebmctl artifact)")
    for k, v in decoded.items():
        if k == "ebmctl.config":
            print(f"{k}: ({len(v) if isinstance(v, dict) else '?'} sections; --json shows it)")
        else:
            print(f"{k}: {json.dumps(v) if not isinstance(v, str) else v}")
    print(f"tensors: {len(tensors)}  values: {n_params:,}")
