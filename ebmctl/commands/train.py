"""`ebmctl train`: EBMs (convergent learning) and task models."""

from __future__ import annotations

from pathlib import Path

import typer

from ebmctl.commands.common import (
    DeviceOpt,
    ForceOpt,
    OutOpt,
    ProfileOpt,
    SeedOpt,
    SetOpt,
    make_config,
)
from ebmctl.console import info

app = typer.Typer(help="Train EBMs and task models.", no_args_is_help=True)

ResumeOpt = typer.Option(False, "--resume", help="continue from the run's checkpoint (an error "
                         "if it was trained with other settings)")
ForceResumeOpt = typer.Option(False, "--force-resume", help="resume even though the number of "
                              "updates, logging/checkpoint frequency or sharding changed; the "
                              "artifact records the changes (other settings cannot change)")


def default_out(cfg, what: str) -> Path:
    return Path(cfg["run.out_dir"]) / f"{cfg['data.dataset']}-{what}.safetensors"


def claimed_out(out: Path | None, cfg, what: str, force: bool, resume: bool = False) -> Path:
    """The artifact path (--out or run.out_dir/<dataset>-<what>.safetensors), refused when it
    exists unless --force, or a resume that continues the run writing it."""
    from ebmctl.artifacts import claim_output

    return claim_output(out or default_out(cfg, what), force=force, resume=resume)


@app.command("ebm")
def train_ebm_cmd(profile: ProfileOpt = None, set_: SetOpt = None, device: DeviceOpt = None,
                  seed: SeedOpt = None, out: OutOpt = None, resume: bool = ResumeOpt,
                  force_resume: bool = ForceResumeOpt, force: ForceOpt = False,
                  steps: int = typer.Option(None, "--steps", help="override train.steps"),
                  recipe: str = typer.Option(None, "--recipe",
                                             help="override train.recipe: convergent | midrun")):
    """Train an EBM: convergent learning (persistent noise bank, Adam then SGD;
    docs/algorithms.md#convergent-training) or mid-run learning (rejuvenated bank, annealed Adam;
    docs/algorithms.md#mid-run-training) per train.recipe. Convergent training runs data-parallel
    under ``torchrun -m ebmctl.distributed`` (train.shards)."""
    from ebmctl.context import load_dataset, setup_device
    from ebmctl.errors import ConfigError
    from ebmctl.training.convergent import train_ebm
    from ebmctl.training.midrun import RECIPES, train_midrun

    extra = ([f"train.steps={steps}"] if steps is not None else []) + (
        [f"train.recipe={recipe}"] if recipe is not None else [])
    cfg = make_config(profile, (set_ or []) + extra, device, seed)
    trainers = {"convergent": train_ebm, "midrun": train_midrun}
    if cfg["train.recipe"] not in trainers:
        raise ConfigError(f"unknown train.recipe {cfg['train.recipe']!r}; choose from "
                          f"{', '.join(RECIPES)}")
    from ebmctl.distributed import current

    if cfg["train.recipe"] != "convergent" and (cfg["train.shards"] > 1 or current().active):
        raise ConfigError("train.shards and torchrun launches apply to the convergent recipe "
                          f"only, not {cfg['train.recipe']!r}")
    out = claimed_out(out, cfg, "ebm", force, resume or force_resume)
    dev = setup_device(cfg)
    bundle = load_dataset(cfg)
    path = trainers[cfg["train.recipe"]](cfg, bundle, out, dev, resume,
                                         force_resume=force_resume)
    info(f"wrote {path}")


def _train_task(profile, set_, device, seed, out, resume, epochs, kind_check: str | None,
                force_resume: bool = False, force: bool = False):
    from ebmctl.context import get_task, load_dataset, setup_device
    from ebmctl.errors import ConfigError
    from ebmctl.training.task_model import train_task_model

    cfg = make_config(profile, (set_ or []) + ([f"model.epochs={epochs}"] if epochs is not None else []),
                      device, seed)
    task = get_task(cfg)
    if kind_check and task.model_kind != kind_check:
        raise ConfigError(f"task {task.name!r} trains a {task.model_kind!r}, not a {kind_check!r}; "
                          "use `ebmctl train model`")
    out = claimed_out(out, cfg, task.model_kind, force, resume or force_resume)
    dev = setup_device(cfg)
    bundle = load_dataset(cfg)
    path = train_task_model(cfg, bundle, task, out, dev, resume,
                            force_resume=force_resume)
    info(f"wrote {path}")


@app.command("classifier")
def train_classifier_cmd(profile: ProfileOpt = None, set_: SetOpt = None, device: DeviceOpt = None,
                         seed: SeedOpt = None, out: OutOpt = None, resume: bool = ResumeOpt,
                         force_resume: bool = ForceResumeOpt, force: ForceOpt = False,
                         epochs: int = typer.Option(None, "--epochs", help="override model.epochs")):
    """Train the classifier of the classification task."""
    _train_task(profile, set_, device, seed, out, resume, epochs, "classifier", force_resume,
                force)


@app.command("segmenter")
def train_segmenter_cmd(profile: ProfileOpt = None, set_: SetOpt = None, device: DeviceOpt = None,
                        seed: SeedOpt = None, out: OutOpt = None, resume: bool = ResumeOpt,
                        force_resume: bool = ForceResumeOpt, force: ForceOpt = False,
                        epochs: int = typer.Option(None, "--epochs", help="override model.epochs")):
    """Train the segmenter of the segmentation task (task.name = segmentation unless the profile
    names another task that trains a segmenter)."""
    cfg_sets = list(set_ or [])
    if make_config(profile, cfg_sets, device, seed).provenance.get("task.name") == "default":
        cfg_sets.append("task.name=segmentation")
    _train_task(profile, cfg_sets, device, seed, out, resume, epochs, "segmenter", force_resume,
                force)


@app.command("autoencoder")
def train_autoencoder_cmd(profile: ProfileOpt = None, set_: SetOpt = None,
                          device: DeviceOpt = None, seed: SeedOpt = None, out: OutOpt = None,
                          force: ForceOpt = False,
                          steps: int = typer.Option(None, "--steps",
                                                    help="override autoencoder.steps")):
    """Train an encoder + SNGAN-style decoder with MSE (docs/algorithms.md#autoencoder-generator);
    the decoder is saved as a generator artifact for mid-run rejuvenation and the retrofit Hat
    EBM."""
    from ebmctl.context import load_dataset, setup_device
    from ebmctl.training.autoencoder import encoder_path, train_autoencoder

    cfg = make_config(profile, (set_ or []) + (
        [f"autoencoder.steps={steps}"] if steps is not None else []), device, seed)
    out = claimed_out(out, cfg, "generator", force)
    claimed_out(encoder_path(out), cfg, "encoder", force)
    dev = setup_device(cfg)
    bundle = load_dataset(cfg)
    path = train_autoencoder(cfg, bundle, out, dev)
    info(f"wrote {path}")


@app.command("model")
def train_model_cmd(profile: ProfileOpt = None, set_: SetOpt = None, device: DeviceOpt = None,
                    seed: SeedOpt = None, out: OutOpt = None, resume: bool = ResumeOpt,
                    force_resume: bool = ForceResumeOpt, force: ForceOpt = False,
                    epochs: int = typer.Option(None, "--epochs", help="override model.epochs")):
    """Train the task model of whichever task the profile names (task.name)."""
    _train_task(profile, set_, device, seed, out, resume, epochs, None, force_resume, force)


@app.command("hat")
def train_hat_cmd(profile: ProfileOpt = None, set_: SetOpt = None, device: DeviceOpt = None,
                  seed: SeedOpt = None, out: OutOpt = None, resume: bool = ResumeOpt,
                  force_resume: bool = ForceResumeOpt, force: ForceOpt = False,
                  steps: int = typer.Option(None, "--steps", help="override train.steps"),
                  mode: str = typer.Option(None, "--mode", help="override hat.mode: "
                                           "conditional | joint"),
                  generator: Path = typer.Option(None, "--generator", help="pretrained generator "
                                                 "artifact (hat.generator); kept frozen unless "
                                                 "hat.train_generator = true")):
    """Train a Hat EBM (docs/algorithms.md#hat-ebm-training): hat network H over generator G, tandem
    training of G from a historical bank, or H alone around a pretrained G (refinement /
    retrofit)."""
    from ebmctl.context import load_dataset, setup_device
    from ebmctl.training.hat import train_hat

    extra = [f"train.steps={steps}"] if steps is not None else []
    if mode is not None:
        extra.append(f"hat.mode={mode}")
    if generator is not None:
        extra += [f"hat.generator={generator}", "hat.train_generator=false"]
    cfg = make_config(profile, extra + (set_ or []), device, seed)
    out = claimed_out(out, cfg, "hat-ebm", force, resume or force_resume)
    dev = setup_device(cfg)
    bundle = load_dataset(cfg)
    path = train_hat(cfg, bundle, out, dev, resume,
                     force_resume=force_resume)
    info(f"wrote {path}")
