"""`ebmctl fix`: train the fixer network (docs/algorithms.md#fixer) and apply it to image files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ebmctl.commands.common import (
    ForceOpt,
    command,
    ebm_option,
    make_config,
    model_option,
    out_dir_option,
    out_option,
)

app = typer.Typer(name="fix",
                  help="Train and apply the fixer that restores purified images (thesis Ch. 5; "
                       "docs/algorithms.md#fixer).",
                  no_args_is_help=True)


@app.command("train", cls=command())
def fix_train_cmd(
    ctx: typer.Context,
    ebm: Path = ebm_option(..., "whose purification the fixer learns to undo (frozen)"),
    model: Optional[Path] = model_option(None, "(optional): the perceptual-loss network when "
                                         "fix.feature_net = classifier, and validation accuracy"),
    stage1_epochs: Optional[int] = typer.Option(None, "--stage1-epochs",
                                                help="override fix.stage1_epochs (MSE)"),
    stage2_epochs: Optional[int] = typer.Option(None, "--stage2-epochs",
                                                help="override fix.stage2_epochs (perceptual)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the run's checkpoint (an "
                                "error if it was trained with other settings or another EBM)"),
    force_resume: bool = typer.Option(False, "--force-resume", help="resume even though the "
                                      "stage-2 epochs, patience or purification batch changed; "
                                      "the artifact records the changes"),
    out: Optional[Path] = out_option(None, "for the fixer artifact (default: "
                                     "run.out_dir/<dataset>-fixer.safetensors)"),
    force: ForceOpt = False,
):
    """Train a fixer with the EBM frozen: MSE stage, then perceptual stage with early stopping."""
    from ebmctl.artifacts import claim_output
    from ebmctl.console import info
    from ebmctl.commands.train import default_out
    from ebmctl.context import RunConfig, get_task, load_dataset, setup_device
    from ebmctl.models import EnergyModel, TaskModel
    from ebmctl.training.fixer import FixerRun, FixerSections, train_fixer

    cfg = make_config(ctx, {"fix.stage1_epochs": stage1_epochs,
                            "fix.stage2_epochs": stage2_epochs})
    out_dir = cfg.section(RunConfig).out_dir
    out = claim_output(out or default_out(cfg, "fixer"), force=force, resume=resume)
    dev = setup_device(cfg)
    from ebmctl.commands.model_argument import resolve_model_argument

    # SOURCE[@WEIGHTS] as `ebmctl import-model` takes (e.g. torchvision:resnet18@rn.pt)
    ebm = resolve_model_argument(ebm, out_dir)
    model = resolve_model_argument(model, out_dir) if model else None
    energy = EnergyModel.load(ebm, dev)
    task = get_task(cfg)
    task_model = TaskModel.load(model, dev) if model else None
    if task_model is not None:
        task_model.check_task(task.name)
    bundle = load_dataset(cfg)
    path = train_fixer(FixerSections.from_config(cfg, bundle), cfg.record(),
                       FixerRun(energy, bundle, task if task_model else None, task_model),
                       out, dev, resume, force_resume=force_resume)
    info(f"wrote {path}")


@app.command("apply", cls=command(takes=("device",)))
def fix_apply_cmd(
    ctx: typer.Context,
    images: list[Path] = typer.Argument(..., help="image files (already purified) to fix"),
    fixer: Path = typer.Option(..., "--fixer", help="fixer artifact"),
    out_dir: Optional[Path] = out_dir_option(None, "(default: next to each input)"),
    force: ForceOpt = False,
):
    """Apply a fixer to image files and write <name>.fixed.png in the input's size and mode
    (use `purify --fixer` to purify and fix in one go). Inputs with the same name get -2, -3,
    ... in one call; an existing output is replaced only with --force."""
    from ebmctl.artifacts import claim_output, output_stems
    from ebmctl.console import info
    from ebmctl.context import setup_device
    from ebmctl.models import fix_images, load_fixer
    from ebmctl.images import output_mode, read_image_like, save_image_like

    cfg = make_config(ctx)
    dev = setup_device(cfg)
    net = load_fixer(fixer, dev)
    channels = net.channels or 3
    # Read everything and claim every output first, so that a bad file or an existing output
    # fails before anything is written.
    loaded = [(p, *read_image_like(p)) for p in images]
    folders = [Path(out_dir or p.parent) for p in images]
    stems = output_stems([(f, p.stem) for f, p in zip(folders, images)])
    targets = [claim_output(f / (s + ".fixed.png"), force=force, option="--out-dir")
               for f, s in zip(folders, stems)]
    for (path, img, meta), target in zip(loaded, targets):
        if img.shape[0] != channels:
            info(f"note: {path.name}: {meta.mode} image converted to "
                 f"{'L' if channels == 1 else 'RGB'} for the fixer and back to {output_mode(meta)}")
        fixed = fix_images(net, img.unsqueeze(0).to(dev))[0]
        save_image_like(fixed, target, meta)
        info(f"wrote {target} from {path}")
