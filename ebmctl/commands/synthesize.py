"""`ebmctl synthesize`: sample images from a plain EBM or a Hat EBM; grid PNG, images, JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ebmctl.commands.common import DeviceOpt, ForceOpt, ProfileOpt, SeedOpt, SetOpt, make_config


def synthesize_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="EBM or Hat EBM artifact"),
    n: Optional[int] = typer.Option(None, "--n", help="images to sample (synth.n)"),
    steps: Optional[int] = typer.Option(None, "--steps", "-k",
                                        help="Langevin steps (default: the model's training K)"),
    init: Optional[str] = typer.Option(None, "--init", help="plain EBM: noise | data"),
    mode: Optional[str] = typer.Option(None, "--mode", help="Hat EBM: conditional | joint "
                                       "(default: the mode it was trained in)"),
    classifier: Optional[Path] = typer.Option(None, "--classifier", help="classifier artifact "
                                              "whose features give the proxy quality score"),
    fid_features: Optional[Path] = typer.Option(None, "--fid-features", help="local Inception-v3 "
                                                "safetensors state dict for FID"),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", "-o", help="output folder "
                                           "(default: run.out_dir/synthesize-<model>)"),
    force: ForceOpt = False,
    profile: ProfileOpt = None, set_: SetOpt = None, device: DeviceOpt = None, seed: SeedOpt = None,
):
    """Sample images (K Langevin steps from noise/data, or Hat EBM chains) and score them.
    A folder that already holds a synthesis (report.json, grid.png or images/) is replaced only
    with --force."""
    from ebmctl.artifacts import claim_output
    from ebmctl.console import info
    from ebmctl.context import setup_device
    from ebmctl.errors import ConfigError
    from ebmctl.synthesis import run_synthesis

    extra = []
    if n is not None:
        extra.append(f"synth.n={n}")
    if steps is not None:
        if steps < 1:
            raise ConfigError("--steps must be >= 1")
        extra.append(f"synth.steps={steps}")
    if init is not None:
        extra.append(f"synth.init={init}")
    if fid_features is not None:
        extra.append(f"quality.fid_features={fid_features}")
    if mode is not None and mode not in ("conditional", "joint"):
        raise ConfigError(f"--mode must be conditional or joint, got {mode!r}")
    cfg = make_config(profile, (set_ or []) + extra, device, seed)
    dev = setup_device(cfg)
    out_dir = out_dir or Path(cfg["run.out_dir"]) / f"synthesize-{model.stem}"
    earlier = sorted((out_dir / "images").glob("*.png"))[:1]
    for path in [out_dir / "report.json", out_dir / "grid.png", *earlier]:
        claim_output(path, force=force, option="--out-dir")
    report = run_synthesis(cfg, model, out_dir, dev, mode=mode, classifier=classifier)
    for name, row in report.get("quality", {}).items():
        info(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
