"""`ebmctl profiles [show NAME]`: the bundled profiles, or one resolved."""

from __future__ import annotations

import json

import typer

from ebmctl.commands.common import GlobalOptions, command

app = typer.Typer(name="profiles", help="List bundled profiles or show one resolved.",
                  invoke_without_command=True)


@app.callback()
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


@app.command("show", cls=command(takes=("set_",)))
def profiles_show(ctx: typer.Context,
                  name: str = typer.Argument(..., help="profile name or path"),
                  as_json: bool = typer.Option(False, "--json"),
                  provenance: bool = typer.Option(False, "--provenance",
                                                  help="show where each value came from")):
    """Print the resolved settings of a profile (defaults < profile < --set)."""
    from ebmctl.profiles import resolve

    sets = (ctx.find_object(GlobalOptions) or GlobalOptions()).sets  # ebmctl's and show's --set
    cfg = resolve(name, list(sets))
    if as_json:
        print(json.dumps(cfg.to_dict(), indent=2))
        return
    for section, keys in cfg.to_dict().items():
        print(f"[{section}]")
        for k, v in keys.items():
            src = f"  # {cfg.provenance.get(f'{section}.{k}', '')}" if provenance else ""
            print(f"{k} = {json.dumps(v)}{src}")
        print()
