"""`ebmctl inspect FILE`: an artifact's header without loading its weights."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer()


@app.command("inspect")
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
