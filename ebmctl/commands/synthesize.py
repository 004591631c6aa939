"""`ebmctl synthesize`: sample images from a plain EBM or a Hat EBM; grid PNG, images, JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ebmctl.commands.common import (
    ForceOpt,
    command,
    ebm_option,
    langevin_steps_option,
    make_config,
    n_images_option,
    out_dir_option,
)

app = typer.Typer()

#: Spellings before the flags meant the same in every command (kept for one release).
OLD_SPELLINGS = {"--model": "--ebm", "-m": "--ebm", "--n": "--n-images",
                 "--steps": "--langevin-steps", "-o": "--out-dir"}


@app.command("synthesize", cls=command(aliases=OLD_SPELLINGS))
def synthesize_cmd(
    ctx: typer.Context,
    ebm: Path = ebm_option(..., "to sample from"),
    n: Optional[int] = n_images_option(None, "to sample (synth.n)"),
    steps: Optional[int] = langevin_steps_option(None, "(synth.steps; default: the model's "
                                                 "training K)"),
    init: Optional[str] = typer.Option(None, "--init", help="plain EBM: noise | data"),
    mode: Optional[str] = typer.Option(None, "--mode", help="Hat EBM: conditional | joint "
                                       "(default: the mode it was trained in)"),
    classifier: Optional[Path] = typer.Option(None, "--classifier", help="classifier artifact "
                                              "whose features give the proxy quality score"),
    fid_features: Optional[Path] = typer.Option(None, "--fid-features", help="local Inception-v3 "
                                                "safetensors state dict for FID"),
    out_dir: Optional[Path] = out_dir_option(None, "(default: run.out_dir/synthesize-<ebm>)"),
    force: ForceOpt = False,
):
    """Sample images (K Langevin steps from noise/data, or Hat EBM chains) and score them.
    A folder that already holds a synthesis (report.json, grid.png or images/) is replaced only
    with --force."""
    from ebmctl.artifacts import claim_output
    from ebmctl.console import info
    from ebmctl.context import RunConfig, setup_device
    from ebmctl.errors import ConfigError
    from ebmctl.synthesis import run_synthesis

    if steps is not None and steps < 1:
        raise ConfigError("--langevin-steps must be >= 1")
    if mode is not None and mode not in ("conditional", "joint"):
        raise ConfigError(f"--mode must be conditional or joint, got {mode!r}")
    cfg = make_config(ctx, {"synth.n": n, "synth.steps": steps, "synth.init": init,
                            "quality.fid_features": fid_features})
    dev = setup_device(cfg)
    out_dir = out_dir or Path(cfg.section(RunConfig).out_dir) / f"synthesize-{ebm.stem}"
    earlier = sorted((out_dir / "images").glob("*.png"))[:1]
    for path in [out_dir / "report.json", out_dir / "grid.png", *earlier]:
        claim_output(path, force=force, option="--out-dir")
    report = run_synthesis(synthesis_settings(cfg, ebm), ebm, out_dir, dev, mode=mode,
                           classifier=classifier)
    for name, row in report.get("quality", {}).items():
        info(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))


def synthesis_settings(cfg, model_path: Path):
    """The :class:`~ebmctl.synthesis.SynthesisSettings` of the profile ``cfg`` for the EBM at
    ``model_path`` (its training set unless the profile or the command line chose one)."""
    from ebmctl.context import RunConfig, config_for_model, dataset_loader
    from ebmctl.evaluate.quality import QualityConfig
    from ebmctl.sampling.langevin import LangevinConfig
    from ebmctl.synthesis import SynthConfig, SynthesisSettings
    from ebmctl.training.trainer import TrainConfig

    cfg = config_for_model(cfg, model_path)
    return SynthesisSettings(synth=cfg.section(SynthConfig), langevin=cfg.section(LangevinConfig),
                             quality=cfg.section(QualityConfig),
                             train_steps=cfg.section(TrainConfig).mcmc_steps,
                             seed=cfg.section(RunConfig).seed,
                             load_data=dataset_loader(cfg, "synthesize"), record=cfg.record())
