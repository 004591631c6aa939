"""`ebmctl train`: EBMs (convergent learning) and task models."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ebmctl.commands.common import (
    ForceOpt,
    command,
    make_config,
    out_option,
    updates_option,
)
from ebmctl.console import info

app = typer.Typer(name="train", help="Train EBMs and task models.", no_args_is_help=True)

ResumeOpt = typer.Option(False, "--resume", help="continue from the run's checkpoint (an error "
                         "if it was trained with other settings)")
ForceResumeOpt = typer.Option(False, "--force-resume", help="resume even though the number of "
                              "updates, logging/checkpoint frequency or sharding changed; the "
                              "artifact records the changes (other settings cannot change)")
EpochsOpt = typer.Option(None, "--epochs", help="override model.epochs")
StopAfterOpt = typer.Option(None, "--stop-after", min=1, help="train at most this many epochs "
                            "in this call, then keep the checkpoint and exit; continue with "
                            "--resume (a long run in chunks)")
#: ``--steps`` counted training updates before ``-k/--langevin-steps`` and ``--updates`` split
#: the two meanings (kept for one release).
OLD_STEPS = {"--steps": "--updates"}


def _out(what: str) -> Any:
    return out_option(None, f"for the {what} artifact (default: "
                            f"run.out_dir/<dataset>-{what}.safetensors)")


def default_out(cfg, what: str) -> Path:
    """``run.out_dir/<data.dataset>-<what>.safetensors``."""
    from ebmctl.context import DataConfig, RunConfig

    return (Path(cfg.section(RunConfig).out_dir)
            / f"{cfg.section(DataConfig).dataset}-{what}.safetensors")


def train_energy(recipe_cls, cfg, bundle, out: Path, device, resume: bool = False,
                 force_resume: bool = False) -> Path:
    """Run the energy recipe ``recipe_cls`` (an :class:`ebmctl.training.trainer.EnergyRecipe`
    of :data:`ebmctl.training.RECIPES`) with the typed sections of the profile ``cfg`` (the
    ``ebm`` model sized for ``bundle``), writing ``cfg``'s record beside the artifact ``out``."""
    from ebmctl.training.trainer import EnergyTrainer, EnergyTrainingSections

    recipe = recipe_cls(EnergyTrainingSections.from_config(cfg, bundle), cfg.record(), bundle,
                        device)
    return EnergyTrainer(recipe, out).run(resume, force_resume)


def train_task(cfg, bundle, task, out: Path, device, resume: bool = False,
               force_resume: bool = False, stop_after: int | None = None) -> Path | None:
    """Train ``task``'s model (:func:`ebmctl.training.task_model.train_task_model`) with the
    typed sections of the profile ``cfg``, writing its record beside the artifact ``out``."""
    from ebmctl.training.task_model import TaskTrainingSections, train_task_model

    return train_task_model(TaskTrainingSections.from_config(cfg, bundle, task), cfg.record(),
                            bundle, task, out, device, resume, force_resume=force_resume,
                            stop_after=stop_after)


def claimed_out(out: Path | None, cfg, what: str, force: bool, resume: bool = False) -> Path:
    """The artifact path (--out or run.out_dir/<dataset>-<what>.safetensors), refused when it
    exists unless --force, or a resume that continues the run writing it."""
    from ebmctl.artifacts import claim_output

    return claim_output(out or default_out(cfg, what), force=force, resume=resume)


@app.command("ebm", cls=command(aliases=OLD_STEPS))
def train_ebm_cmd(ctx: typer.Context, out: Optional[Path] = _out("ebm"),
                  resume: bool = ResumeOpt, force_resume: bool = ForceResumeOpt,
                  force: ForceOpt = False,
                  updates: Optional[int] = updates_option(None, "J (train.steps)"),
                  recipe: Optional[str] = typer.Option(None, "--recipe", help="override "
                                                       "train.recipe: convergent | midrun")):
    """Train an EBM: convergent learning (persistent noise bank, Adam then SGD;
    docs/algorithms.md#convergent-training) or mid-run learning (rejuvenated bank, annealed Adam;
    docs/algorithms.md#mid-run-training) per train.recipe. Convergent training runs data-parallel
    under ``torchrun -m ebmctl.distributed`` (train.shards)."""
    from ebmctl.context import load_dataset, setup_device
    from ebmctl.distributed import current, train_shards
    from ebmctl.errors import ConfigError
    from ebmctl.training import RECIPES
    from ebmctl.training.trainer import TrainConfig

    cfg = make_config(ctx, {"train.steps": updates, "train.recipe": recipe})
    train, launch = cfg.section(TrainConfig), current()
    recipe_cls = RECIPES[train.recipe]  # the schema's choices are RECIPES' names
    if not recipe_cls.data_parallel and (train.shards > 1 or launch.active):
        raise ConfigError("train.shards and torchrun launches apply to the convergent recipe "
                          f"only, not {train.recipe!r}")
    shards = train_shards(train.shards, launch)
    if shards != train.shards:  # train.shards = 1 under torchrun: one shard per process
        cfg = cfg.with_overrides({"train.shards": shards}, "torchrun world size")
    out = claimed_out(out, cfg, "ebm", force, resume or force_resume)
    dev = setup_device(cfg)
    bundle = load_dataset(cfg)
    path = train_energy(recipe_cls, cfg, bundle, out, dev, resume, force_resume)
    info(f"wrote {path}")


def _train_task(cfg, out, resume, kind_check: str | None, force_resume: bool = False,
                force: bool = False, stop_after: int | None = None):
    from ebmctl.context import get_task, load_dataset, setup_device
    from ebmctl.errors import ConfigError
    task = get_task(cfg)
    if kind_check and task.model_kind != kind_check:
        raise ConfigError(f"task {task.name!r} trains a {task.model_kind!r}, not a {kind_check!r}; "
                          "use `ebmctl train model`")
    out = claimed_out(out, cfg, task.model_kind, force, resume or force_resume)
    dev = setup_device(cfg)
    bundle = load_dataset(cfg)
    path = train_task(cfg, bundle, task, out, dev, resume, force_resume=force_resume,
                      stop_after=stop_after)
    if path is None:
        info(f"not finished: continue with the same command and --resume (writes {out})")
    else:
        info(f"wrote {path}")


@app.command("classifier", cls=command())
def train_classifier_cmd(ctx: typer.Context, out: Optional[Path] = _out("classifier"),
                         resume: bool = ResumeOpt, force_resume: bool = ForceResumeOpt,
                         force: ForceOpt = False, epochs: Optional[int] = EpochsOpt,
                         stop_after: Optional[int] = StopAfterOpt):
    """Train the classifier of the classification task."""
    _train_task(make_config(ctx, {"model.epochs": epochs}), out, resume, "classifier",
                force_resume, force, stop_after)


@app.command("segmenter", cls=command())
def train_segmenter_cmd(ctx: typer.Context, out: Optional[Path] = _out("segmenter"),
                        resume: bool = ResumeOpt, force_resume: bool = ForceResumeOpt,
                        force: ForceOpt = False, epochs: Optional[int] = EpochsOpt,
                        stop_after: Optional[int] = StopAfterOpt):
    """Train the segmenter of the segmentation task (task.name = segmentation unless the profile
    names another task that trains a segmenter)."""
    cfg = make_config(ctx, {"model.epochs": epochs}, defaults={"task.name": "segmentation"})
    _train_task(cfg, out, resume, "segmenter", force_resume, force, stop_after)


@app.command("autoencoder", cls=command(aliases=OLD_STEPS))
def train_autoencoder_cmd(ctx: typer.Context, out: Optional[Path] = _out("generator"),
                          force: ForceOpt = False,
                          updates: Optional[int] = updates_option(None, "(autoencoder.steps)")):
    """Train an encoder + SNGAN-style decoder with MSE (docs/algorithms.md#autoencoder-generator);
    the decoder is saved as a generator artifact for mid-run rejuvenation and the retrofit Hat
    EBM."""
    from ebmctl.context import load_dataset, setup_device
    from ebmctl.training.autoencoder import AutoencoderSections, encoder_path, train_autoencoder

    cfg = make_config(ctx, {"autoencoder.steps": updates})
    out = claimed_out(out, cfg, "generator", force)
    claimed_out(encoder_path(out), cfg, "encoder", force)
    dev = setup_device(cfg)
    bundle = load_dataset(cfg)
    path = train_autoencoder(AutoencoderSections.from_config(cfg), cfg.record(), bundle, out, dev)
    info(f"wrote {path}")


@app.command("model", cls=command())
def train_model_cmd(ctx: typer.Context,
                    out: Optional[Path] = out_option(None, "for the task model artifact "
                                                     "(default: run.out_dir/<dataset>-<kind>"
                                                     ".safetensors, kind: classifier, "
                                                     "segmenter, ...)"),
                    resume: bool = ResumeOpt, force_resume: bool = ForceResumeOpt,
                    force: ForceOpt = False, epochs: Optional[int] = EpochsOpt,
                    stop_after: Optional[int] = StopAfterOpt):
    """Train the task model of whichever task the profile names (task.name)."""
    _train_task(make_config(ctx, {"model.epochs": epochs}), out, resume, None, force_resume, force,
                stop_after)


@app.command("hat", cls=command(aliases=OLD_STEPS))
def train_hat_cmd(ctx: typer.Context, out: Optional[Path] = _out("hat-ebm"),
                  resume: bool = ResumeOpt, force_resume: bool = ForceResumeOpt,
                  force: ForceOpt = False,
                  updates: Optional[int] = updates_option(None, "(train.steps)"),
                  mode: Optional[str] = typer.Option(None, "--mode", help="override hat.mode: "
                                                     "conditional | joint"),
                  generator: Optional[Path] = typer.Option(None, "--generator", help="pretrained "
                                                           "generator artifact (hat.generator); "
                                                           "kept frozen unless "
                                                           "hat.train_generator = true")):
    """Train a Hat EBM (docs/algorithms.md#hat-ebm-training): hat network H over generator G, tandem
    training of G from a historical bank, or H alone around a pretrained G (refinement /
    retrofit)."""
    from ebmctl.context import load_dataset, setup_device
    from ebmctl.training.hat import HatSections, train_hat
    from ebmctl.training.trainer import EnergyTrainingSections

    cfg = make_config(ctx, {"train.steps": updates, "hat.mode": mode, "hat.generator": generator},
                      implied={"hat.train_generator": False if generator is not None else None})
    out = claimed_out(out, cfg, "hat-ebm", force, resume or force_resume)
    dev = setup_device(cfg)
    bundle = load_dataset(cfg)
    path = train_hat(EnergyTrainingSections.from_config(cfg), HatSections.from_config(cfg, bundle),
                     cfg.record(), bundle, out, dev, resume, force_resume=force_resume)
    info(f"wrote {path}")
