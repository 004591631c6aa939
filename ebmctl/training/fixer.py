"""Training the Fixer (thesis Ch. 5; docs/algorithms.md#fixer): an image-to-image network G applied
after Langevin purification.

G is trained with the EBM frozen, in two stages on pairs (x̂, x) with x̂ ~ T(x):
stage 1 minimises ‖G(x̂) − x‖² (MSE warm-up), stage 2 a perceptual (feature-reconstruction)
loss on a frozen feature network, with early stopping on the validation split. The defense then
averages f(G(T_h(x))) over replicates; :class:`ebmctl.models.Fixer` maps [0,1] images to
[0,1]-unit images so it slots into :class:`ebmctl.defense.Defense` unchanged and stays
differentiable for attacks. The network is :mod:`ebmctl.nn.fixer`, the losses
:mod:`ebmctl.training.perceptual`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ebmctl.architectures import ModelChoice, choose_model
from ebmctl.artifacts import atomic_write_json, model_tensors, save_artifact
from ebmctl.console import info, progress_bar
from ebmctl.contracts import DatasetBundle, Task
from ebmctl.context import DataConfig, RunConfig, TaskConfig
from ebmctl.data_utils import pick_subset
from ebmctl.defense import DefenseConfig
from ebmctl.errors import ConfigError, NumericalError
from ebmctl.evaluate.plots import save_curves, save_grid
from ebmctl.models import EnergyModel, Fixer, TaskModel
from ebmctl.config import Config, RunRecord, setting
from ebmctl.sampling.langevin import LangevinConfig
from ebmctl.seeds import keeps_global_rng, make_generator
from ebmctl.training.checkpoint import (
    ResumeGuard,
    checkpoint_path,
    module_digest,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from ebmctl.training.perceptual import build_feature_net, mse_loss, perceptual_loss


# --- settings ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FixConfig:
    """The profile section ``[fix]``: the fixer's two training stages and the purified inputs
    they learn from (docs/algorithms.md#fixer); the network's own keys are
    :class:`ebmctl.nn.fixer.FixerNetConfig`'s."""

    section: ClassVar[str] = "fix"

    stage1_epochs: int = setting(40, "stage 1 (MSE) epochs", minimum=0)
    stage2_epochs: int = setting(100, "stage 2 (perceptual) epochs, early-stopped", minimum=0)
    stage1_input: str = setting("purified", "stage 1 inputs: purified (Eq. 5.3) | natural",
                                choices=("purified", "natural"))
    feature_net: str = setting("classifier", "perceptual-loss network: vgg16 (needs "
                               "fix.vgg_weights) | classifier (the task model, no download)",
                               choices=("vgg16", "classifier"))
    vgg_weights: str = setting("", "local VGG-16 weights (torchvision state dict, .safetensors)")
    vgg_layers: tuple[str, ...] = setting(("relu2_2",), "VGG-16 layers of the perceptual loss")
    classifier_layers: tuple[str, ...] = setting((), "task-model module names for the perceptual "
                                                 "loss ('output' = logits); empty = every "
                                                 "activation module")
    lr: float = setting(1e-4, "fixer Adam learning rate", minimum=0)
    batch_size: int = setting(64, "fixer batch size", minimum=1)
    patience: int = setting(10, "stage 2 early-stopping patience (epochs)", minimum=1)
    min_delta: float = setting(0.0, "smallest validation improvement that counts", minimum=0)
    purify_steps: int = setting(0, "Langevin steps making the inputs (0 = defense.steps)",
                                minimum=0)
    purify_batch: int = setting(512, "images purified together", minimum=1)
    repurify_every: int = setting(1, "epochs between fresh purified copies of the training "
                                  "set (0 = purify once)", minimum=0)
    max_images: int = setting(0, "cap on training images (0 = all)", minimum=0)
    val_images: int = setting(0, "cap on validation images (0 = all)", minimum=0)


@dataclass(frozen=True)
class FixerSections:
    """What a fixer run reads from the profile, built once by the command
    (:meth:`from_config`): its ``[fix]`` section, the run seed, the purification it learns to
    undo (``[defense]``: K_def, clamp; ``[langevin]``: precision, chunk size), the dataset and
    task names the artifact records, and the fixer network to build (``fix.arch``)."""

    fix: FixConfig
    seed: int
    defense: DefenseConfig
    langevin: LangevinConfig
    dataset: str
    task: str
    network: ModelChoice

    @classmethod
    def from_config(cls, cfg: Config, bundle: DatasetBundle) -> "FixerSections":
        """The sections of ``cfg``, the fixer built for ``bundle``'s channels and size.
        Raises ConfigError when ``fix.arch`` is not a fixer architecture."""
        return cls(cfg.section(FixConfig), cfg.section(RunConfig).seed, cfg.section(DefenseConfig),
                   cfg.section(LangevinConfig), cfg.section(DataConfig).dataset,
                   cfg.section(TaskConfig).name, choose_model("fixer", cfg, bundle))


# --- training ---------------------------------------------------------------------------------

@dataclass
class FixerRun:
    """What a training run needs besides its settings: frozen networks and the data."""

    energy: EnergyModel
    bundle: DatasetBundle
    task: Task | None = None
    task_model: TaskModel | None = None


def purify_images(energy: EnergyModel, x: torch.Tensor, steps: int, key: tuple, *,
                  batch: int, precision: str, chunk_size: int, clamp: bool, device,
                  bar=None) -> torch.Tensor:
    """Purify ``x`` (CPU, [0,1]) in fixed batches keyed by (key, batch start): reproducible
    for any batch size of the caller. Returns CPU tensors."""
    out = []
    for start in range(0, len(x), batch):
        xb = x[start:start + batch].to(device)
        out.append(energy.purify01(xb, steps, (*key, start), precision=precision,
                                   chunk_size=chunk_size, clamp=clamp).cpu())
        if bar is not None:
            bar.advance(len(xb), "purifying")
    return torch.cat(out) if out else x.clone()


def evaluate_losses(fixer: Fixer, features: nn.Module, purified: torch.Tensor,
                    natural: torch.Tensor, device, batch: int) -> dict[str, float]:
    """Validation MSE and perceptual loss (image-weighted means), the fixer in eval mode."""
    fixer.eval()
    tot_mse = tot_feat = 0.0
    with torch.no_grad():
        for start in range(0, len(natural), batch):
            xh = purified[start:start + batch].to(device)
            x = natural[start:start + batch].to(device)
            g = fixer(xh)
            tot_mse += mse_loss(g, x).item() * len(x)
            tot_feat += perceptual_loss(features, g, x).item() * len(x)
    n = max(1, len(natural))
    return {"val_mse": tot_mse / n, "val_perceptual": tot_feat / n}


def _accuracies(run: FixerRun, fixer: Fixer, natural, purified, y, device, batch) -> dict:
    """Single-replicate task metric on natural, purified and fixed validation images."""
    if run.task is None or run.task_model is None:
        return {}
    fixer.eval()
    scores = {"natural": [], "purified": [], "fixed": []}
    with torch.no_grad():
        for start in range(0, len(natural), batch):
            x, xh = natural[start:start + batch].to(device), purified[start:start + batch].to(device)
            yb = y[start:start + batch].to(device)
            for name, imgs in (("natural", x), ("purified", xh), ("fixed", fixer(xh))):
                scores[name].append(run.task.score(run.task_model(imgs), yb).float().cpu())
    return {k: torch.cat(v).mean().item() for k, v in scores.items()}


def _schedule(fix: FixConfig) -> list[tuple[int, int]]:
    """(stage, epoch within stage) for every epoch of the run, in order."""
    return ([(1, e) for e in range(fix.stage1_epochs)]
            + [(2, e) for e in range(fix.stage2_epochs)])


def _optimizer(fixer: Fixer, fix: FixConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(fixer.parameters(), lr=fix.lr)


@keeps_global_rng
def train_fixer(sections: FixerSections, record: RunRecord, run: FixerRun, out: Path,
                device: torch.device, resume: bool = False, stop_after: int | None = None,
                force_resume: bool = False) -> Path:
    """Train a fixer for ``run.energy`` (frozen) in two stages; write the artifact (recording
    ``record``), a JSON log, loss-curve PNGs and a natural|purified|fixed grid. A checkpoint after every epoch makes
    the run resumable; all randomness is keyed by (seed, epoch), so a resumed run equals an
    uninterrupted one. ``stop_after`` ends this call after that many epochs (checkpoint kept)
    and returns the checkpoint's path instead of the artifact's.

    Raises:
        ConfigError: no training or validation images, no epochs, or a bad feature network.
        NumericalError: the loss became NaN/Inf (the last checkpoint is kept).
    """
    job = _FixerTraining(sections, record, run, Path(out), device)
    if resume or force_resume:
        job.restore(force_resume)
    with progress_bar(job.work(), f"train fixer ({job.out.name})") as bar:
        finished = job.train(bar, stop_after)
    return job.finish() if finished else job.ckpt_file


class _FixerTraining:
    """One fixer run: the networks, the data, the epoch schedule, and the progress a
    checkpoint keeps (epochs done, history, early-stopping state, best weights)."""

    def __init__(self, sections: FixerSections, record: RunRecord, run: FixerRun, out: Path,
                 device: torch.device):
        from ebmctl.device import resolve_precision

        self.sections, self.record = sections, record
        self.run, self.out, self.device = run, out, device
        self.fix = fix = sections.fix
        self.seed = sections.seed
        self.ckpt_file = checkpoint_path(out)
        net = sections.network.build((self.seed, "fix-init"))
        self.arch, self.args = sections.network.arch, sections.network.args
        self.fixer = Fixer(net, run.bundle.channels).to(device)
        self.features = build_feature_net(fix.feature_net, fix.vgg_weights, fix.vgg_layers,
                                          fix.classifier_layers, run.task_model, device)
        defense, langevin = sections.defense, sections.langevin
        self.steps = fix.purify_steps or defense.steps
        self.purify_kw = dict(batch=fix.purify_batch,
                              precision=resolve_precision(langevin.precision, device),
                              chunk_size=langevin.chunk_size, clamp=defense.clamp, device=device)
        self.train_x = pick_subset(run.bundle.train, fix.max_images).x
        val = pick_subset(run.bundle.val, fix.val_images)
        self.val_x, self.val_y = val.x, val.y
        if len(self.train_x) == 0 or len(self.val_x) == 0:
            raise ConfigError(f"dataset {run.bundle.name!r} needs training and validation images "
                              "to train a fixer (check data.val_fraction)")
        self.schedule = _schedule(fix)
        if not self.schedule:
            raise ConfigError("fix.stage1_epochs and fix.stage2_epochs are both 0: nothing to "
                              "train")
        self.opt = _optimizer(self.fixer, fix)
        self.done, self.history = 0, []
        self.best = {"val": math.inf, "epoch": 0, "bad": 0, "stopped": False}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.val_hat: torch.Tensor | None = None
        self.t0 = time.time()
        energy = run.energy
        # The frozen networks shape every epoch: their contents are part of the fingerprint.
        self.guard = ResumeGuard.for_run(record, "fixer", {
            "--ebm": (energy.path if energy.path and Path(energy.path).is_file() else
                      {"sha256": module_digest(energy.net) + f":{energy.tau}:{energy.temperature}"}),
            "--model": run.task_model is not None and {"sha256": module_digest(run.task_model)},
            "fix.vgg_weights": fix.feature_net == "vgg16" and fix.vgg_weights})

    @property
    def batch(self) -> int:
        return self.fix.batch_size

    @property
    def steps_per_epoch(self) -> int:
        return (len(self.train_x) + self.batch - 1) // self.batch

    def restore(self, force_resume: bool) -> None:
        """Continue from the run's checkpoint, if there is one and it fits (ResumeGuard)."""
        if not self.ckpt_file.exists():
            info(f"no checkpoint at {self.ckpt_file}; starting from scratch")
            return
        ck = load_checkpoint(self.ckpt_file, "fixer")
        self.guard.check(ck, force_resume, self.ckpt_file)
        self.fixer.net.load_state_dict(ck["model"])
        self.done = ck["step"]
        self.history, self.best = ck["state"]["history"], ck["state"]["best"]
        restore_optimizer(self.opt, ck)  # train() starts a fresh one where stage 2 begins
        saved_best = {k[5:]: v for k, v in ck["tensors"].items() if k.startswith("best.")}
        self.best_state = saved_best or None
        info(f"resumed from {self.ckpt_file} after epoch {self.done}")

    def work(self) -> int:
        """Progress-bar units left: images to purify plus training batches."""
        n_purify, prev = len(self.val_x), None
        for i in range(self.done, len(self.schedule)):
            rnd = _purify_round(i, self.fix.repurify_every)
            if _needs_purified(self.fix, self.schedule[i][0]) and rnd != prev:
                n_purify, prev = n_purify + len(self.train_x), rnd
        return n_purify + self.steps_per_epoch * (len(self.schedule) - self.done)

    def purify(self, x: torch.Tensor, key: tuple, bar) -> torch.Tensor:
        """T(x) for the fixer's inputs, keyed by (seed, "fix", *key)."""
        return purify_images(self.run.energy, x, self.steps, (self.seed, "fix", *key), bar=bar,
                             **self.purify_kw)

    def validate(self) -> dict[str, float]:
        return evaluate_losses(self.fixer, self.features, self.val_hat, self.val_x, self.device,
                               self.batch)

    def accuracies(self) -> dict[str, float]:
        return _accuracies(self.run, self.fixer, self.val_x, self.val_hat, self.val_y,
                           self.device, self.batch)

    def train(self, bar, stop_after: int | None) -> bool:
        """The remaining epochs; False when ``stop_after`` ended the call early."""
        self.val_hat = self.purify(self.val_x, ("val",), bar)
        if not self.history:
            self.history.append({"stage": 0, "epoch": 0, **self.validate(),
                                 **_prefixed(self.accuracies())})
        cached: tuple[int, torch.Tensor] | None = None
        for i in range(self.done, len(self.schedule)):
            stage, stage_epoch = self.schedule[i]
            if self.best["stopped"] and stage == 2:
                break
            if stage == 2 and stage_epoch == 0:
                self.opt = _optimizer(self.fixer, self.fix)  # a new loss: fresh Adam moments
            inputs = self.train_x
            if _needs_purified(self.fix, stage):
                rnd = _purify_round(i, self.fix.repurify_every)
                if cached is None or cached[0] != rnd:
                    cached = (rnd, self.purify(self.train_x, ("train", rnd), bar))
                inputs = cached[1]
            loss = self.train_epoch(i, stage, inputs, bar)
            val = self.validate()
            if stage == 2:
                self.early_stop(i, val)
            self.history.append({"stage": stage, "epoch": i + 1, "train_loss": loss, **val,
                                 "seconds": round(time.time() - self.t0, 1)})
            last = i + 1 == len(self.schedule) or self.best["stopped"]
            if not last:
                self.checkpoint(i + 1)
            if stop_after is not None and i + 1 - self.done >= stop_after and not last:
                info(f"stopped after {stop_after} epoch(s); resume with --resume")
                return False
        return True

    def train_epoch(self, i: int, stage: int, inputs: torch.Tensor, bar) -> float:
        """One pass over the training set in an order keyed by (seed, epoch ``i``): stage 1
        fits G(x̂) to x by MSE, stage 2 by the perceptual loss. Returns the mean loss."""
        bs, x_all = self.batch, self.train_x
        perm = torch.randperm(len(x_all), generator=make_generator("cpu", self.seed,
                                                                    "fix-epoch", i))
        self.fixer.train()
        total = 0.0
        for b in range(self.steps_per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            xh, x = inputs[idx].to(self.device), x_all[idx].to(self.device)
            g = self.fixer(xh)
            loss = mse_loss(g, x) if stage == 1 else perceptual_loss(self.features, g, x)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if not math.isfinite(loss.item()):
                raise NumericalError(f"fixer loss became {loss.item()} in epoch {i + 1}; the "
                                     f"last good checkpoint is {self.ckpt_file}")
            self.opt.step()
            total += loss.item() * len(idx)
            bar.advance(1, f"stage {stage} loss {loss.item():.4g}")
        return total / len(x_all)

    def early_stop(self, i: int, val: dict[str, float]) -> None:
        """Early stopping on the validation perceptual loss; the best weights are kept."""
        best = self.best
        if val["val_perceptual"] < best["val"] - self.fix.min_delta:
            best.update(val=val["val_perceptual"], epoch=i + 1, bad=0)
            self.best_state = {k: v.detach().cpu().clone()
                               for k, v in self.fixer.net.state_dict().items()}
            return
        best["bad"] += 1
        if best["bad"] >= self.fix.patience:
            best["stopped"] = True
            info(f"early stop after epoch {i + 1}: no validation improvement for "
                 f"{self.fix.patience} epochs (best epoch {best['epoch']})")

    def checkpoint(self, step: int) -> None:
        save_checkpoint(self.ckpt_file, target="fixer", step=step, model=self.fixer.net,
                        optimizer=self.opt,
                        tensors={f"best.{k}": v for k, v in (self.best_state or {}).items()},
                        state={"history": self.history, "best": self.best}, config=self.record,
                        arch=self.arch, arch_args=self.args, guard=self.guard)

    def finish(self) -> Path:
        """Keep the best weights; write the artifact, its log and plots; drop the checkpoint."""
        from ebmctl.context import environment

        fix, history, out = self.fix, self.history, self.out
        if self.best_state is not None:
            self.fixer.net.load_state_dict(self.best_state)
        final, acc = self.validate(), self.accuracies()
        extra = {"ebm": self.run.energy.path, "purify_steps": self.steps,
                 "stage1_input": fix.stage1_input, "feature_net": fix.feature_net,
                 "feature_layers": getattr(self.features, "layers", list(fix.vgg_layers)),
                 "epochs_run": len(history) - 1,
                 "best_epoch": self.best["epoch"] or len(history) - 1,
                 "early_stopped": self.best["stopped"], "final": {**final, **_prefixed(acc)},
                 "initial": history[0], "seconds": round(time.time() - self.t0, 1),
                 **self.guard.artifact_extra()}
        bundle = self.run.bundle
        data = {"range": "[-1,1]", "image_size": bundle.image_size, "channels": bundle.channels,
                "dataset": self.sections.dataset}
        save_artifact(out, model_tensors(self.fixer.net), kind="fixer", arch=self.arch,
                      arch_args=self.args, task=self.sections.task, data=data,
                      config=self.record,
                      step=len(history) - 1, extra={**extra, "history": history})
        atomic_write_json(out.with_suffix(".log.json"),
                          {"history": history, **extra, "config": self.record.to_dict(),
                           "environment": environment(self.device, seed=self.seed)})
        _write_plots(out, history, self.fixer, self.val_x, self.val_hat, self.device)
        self.ckpt_file.unlink(missing_ok=True)
        if acc:
            info(f"validation {self.run.task.metric_name} (1 replicate): natural "
                 f"{acc['natural']:.4f}, purified {acc['purified']:.4f}, purified+fixer "
                 f"{acc['fixed']:.4f}")
        return out


def _needs_purified(fix: FixConfig, stage: int) -> bool:
    return stage == 2 or fix.stage1_input == "purified"


def _purify_round(epoch_index: int, repurify_every: int) -> int:
    """Which purified copy of the training set epoch ``epoch_index`` uses (0 = one copy)."""
    return epoch_index // repurify_every if repurify_every else 0


def _prefixed(acc: dict) -> dict:
    return {f"val_{k}_score": v for k, v in acc.items()}


def _write_plots(out: Path, history: list[dict], fixer: Fixer, val_x, val_hat, device) -> None:
    epochs = [h["epoch"] for h in history]
    save_curves(out.with_suffix(".val-mse.png"),
                {"validation MSE": (epochs, [h["val_mse"] for h in history])},
                "epoch", "MSE([0,1] units)", "fixer: validation MSE (stage 1 then 2)")
    s2 = [h for h in history if h["stage"] == 2]
    curves = {"validation perceptual": (epochs, [h["val_perceptual"] for h in history])}
    if s2:
        curves["training perceptual (stage 2)"] = ([h["epoch"] for h in s2],
                                                   [h["train_loss"] for h in s2])
    save_curves(out.with_suffix(".val-perceptual.png"), curves, "epoch", "perceptual loss",
                "fixer: perceptual loss")
    n = min(16, len(val_x))
    fixer.eval()
    with torch.no_grad():
        fixed = fixer(val_hat[:n].to(device)).cpu()
    save_grid(torch.cat([val_x[:n], val_hat[:n].clamp(0, 1), fixed]),
              out.with_suffix(".samples.png"), nrow=n)
