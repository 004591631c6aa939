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
    if meta.get("ebmctl.kind") == "ebm":
        summary["langevin_autotune"] = _autotune_entries(file)
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
    adv = (decoded.get("ebmctl.extra") or {}).get("adversarial") if isinstance(
        decoded.get("ebmctl.extra"), dict) else None
    if adv:
        print(adversarial_line(adv))
    if "langevin_autotune" in summary:
        entries = summary["langevin_autotune"]
        if not entries:
            print("langevin autotune: not measured on this machine yet "
                  f"(ebmctl bench --ebm {file} --tune, or any run with langevin.* = auto)")
        for e in entries:
            print(f"langevin autotune ({e['device']}): rows {e['row_shape']} "
                  f"(batch <= {e['batch_bucket']}, "
                  f"{e['threads']} threads): {e['variant']}, "
                  f"{e['rows_per_s']} rows/s, tuned {e['tuned_at']}")


def adversarial_line(adv: dict) -> str:
    """One line for an adversarially trained model's ``[adversarial]`` record: method, threat,
    attack steps, the kept (best held-out robust) epoch and its scores."""
    from ebmctl.units import format_radius

    steps = 1 if adv.get("method") == "fgsm-rs" else adv.get("steps")
    metric = adv.get("metric", "score")
    beta = f", beta={adv['beta']:g}" if adv.get("method") == "trades" else ""
    return (f"adversarial training: {adv.get('method')} {adv.get('norm')} "
            f"eps={format_radius(adv.get('eps', 0))}, {steps} step(s) of "
            f"{format_radius(adv.get('alpha') or 0)}{beta}, crafted in "
            f"{adv.get('craft_mode')} mode; kept epoch {adv.get('best_epoch')} (held-out "
            f"robust {metric} {adv.get('val_robust', float('nan')):.4f}, PGD-"
            f"{adv.get('eval_steps')}); test {metric} {adv.get('test', float('nan')):.4f}, "
            f"robust {adv.get('test_robust', float('nan')):.4f}")


def _autotune_entries(file: Path) -> list[dict]:
    """This machine's cached Langevin variants for the EBM's structure (the weights are read
    to build the network; a file that cannot be loaded shows none)."""
    import torch

    from ebmctl.errors import EbmctlError
    from ebmctl.models import EnergyModel
    from ebmctl.sampling import autotune

    cpu = torch.device("cpu")
    try:
        net = EnergyModel.load(file, cpu).net
    except (EbmctlError, OSError, RuntimeError, KeyError, ValueError):
        return []
    out = []
    devices = [cpu] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        for e in autotune.cached_entries(dev, autotune.net_signature(net)):
            out.append({"device": dev.type, "variant": e.get("name"),
                        "row_shape": e.get("row_shape"), "batch_bucket": e.get("batch_bucket"),
                        "threads": e.get("threads"),
                        "rows_per_s": (e.get("measured") or {}).get("rows_per_s"),
                        "tuned_at": e.get("tuned_at"),
                        "cache_file": str(autotune.cache_file(dev))})
    return out
