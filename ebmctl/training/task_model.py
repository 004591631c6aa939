"""Train the task model (classifier, segmenter, ...) with the task's own loss."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import torch

from ebmctl.architectures import ModelChoice, choose_model
from ebmctl.artifacts import atomic_write_json, model_tensors, save_artifact
from ebmctl.console import info, progress_bar
from ebmctl.models import TaskModel
from ebmctl.config import Config, RunRecord, setting
from ebmctl.context import DataConfig, RunConfig
from ebmctl.contracts import DatasetBundle, Task
from ebmctl.seeds import keeps_global_rng, make_generator, seed_global_rng
from ebmctl.units import to_internal
from ebmctl.training.adversarial import AdversarialConfig, adversarial_loss, robust_accuracy
from ebmctl.training.checkpoint import (
    ResumeGuard,
    checkpoint_path,
    grads_finite,
    load_checkpoint,
    numerical_stop,
    restore_optimizer,
    save_checkpoint,
)


@dataclass(frozen=True)
class ModelConfig:
    """The profile section ``[model]``: the task model's architecture and width and how it is
    trained (optimizer, schedule, augmentation). An architecture's plugin adds the keys only it
    reads (classification: the WRN's ``model.depth``, ``model.widen_factor``,
    ``model.dropout``)."""

    section: ClassVar[str] = "model"

    arch: str = setting("small-cnn", "task model architecture")
    width: int = setting(32, "base width of the task model", minimum=1)
    epochs: int = setting(30, "task model training epochs", minimum=0)
    batch_size: int = setting(128, "task model batch size", minimum=1)
    optimizer: str = setting("adam", "adam | sgd", choices=("adam", "sgd"))
    lr: float = setting(0.001, "task model learning rate", minimum=0)
    momentum: float = setting(0.9, "SGD momentum", minimum=0, maximum=1)
    weight_decay: float = setting(0.0, "weight decay", minimum=0)
    lr_milestones: tuple[float, ...] = setting((), "fractions of training where lr drops 10x "
                                               "(model.lr_schedule = step)")
    channels_last: bool = setting(False, "train the task model in channels_last memory format "
                                  "(about 1.7x faster for ResNet-9 on CPU)")
    lr_schedule: str = setting("step", "step (drops at model.lr_milestones) | onecycle (linear "
                               "warm-up to model.lr, then linear decay to 0)",
                               choices=("step", "onecycle"))
    warmup_fraction: float = setting(0.25, "fraction of training spent warming up "
                                     "(model.lr_schedule = onecycle)", minimum=0, maximum=1)
    augment: bool = setting(False, "random translation (model.translate) + horizontal flip")
    flip: bool = setting(True, "horizontal flip in augmentation")
    flip_mode: str = setting("random", "random (each image flipped with probability 1/2 every "
                             "epoch) | alternating (a random half flipped in the first epoch, "
                             "every image's flip reversed each epoch after: airbench)",
                             choices=("random", "alternating"))
    translate: int = setting(4, "largest random shift in pixels of the augmentation, borders "
                             "reflected (model.augment)", minimum=0, maximum=16)
    lr_start_factor: float = setting(0.0, "learning rate at the first iteration as a fraction "
                                     "of model.lr (model.lr_schedule = onecycle; airbench: 0.2)",
                                     minimum=0, maximum=1)
    lr_end_factor: float = setting(0.0, "learning rate at the last iteration as a fraction of "
                                   "model.lr (model.lr_schedule = onecycle; airbench: 0.07)",
                                   minimum=0, maximum=1)
    norm_lr_scale: float = setting(1.0, "learning-rate multiplier for normalisation-layer "
                                   "parameters (BatchNorm affine); their weight decay is divided "
                                   "by it, so the decay per step stays model.lr x "
                                   "model.weight_decay (airbench's bias_scaler: 64)", minimum=1e-6)
    lookahead_every: int = setting(0, "every this many iterations pull the weights to an "
                                   "exponential average of themselves and continue from it; "
                                   "the run ends on the average (airbench: 5; 0 = off)",
                                   minimum=0)
    lookahead_decay: float = setting(0.7738, "weight of the old average at a lookahead update, "
                                     "ramped by (iteration / total)^3 (airbench: 0.95^5)",
                                     minimum=0, maximum=1)
    lookahead_start_epoch: int = setting(0, "the lookahead average starts as a copy of the "
                                         "weights at the first lookahead iteration of the epoch "
                                         "after this many (airbench: 3; 0 = from the initial "
                                         "weights)", minimum=0)
    lookahead_epoch_sync: bool = setting(False, "once the lookahead average exists, every "
                                         "epoch ends with the network set to it, so each "
                                         "validation score is the average's (airbench)")


@dataclass(frozen=True)
class TaskTrainingSections:
    """What a task-model run reads from the profile, built once by the command
    (:meth:`from_config`): the ``[model]`` section, the run seed, the dataset name the artifact
    records, the resolved ``[adversarial]`` settings, the task model to build, and the task
    plugin's two training hooks bound to the run's profile.

    The hooks' contract (:meth:`ebmctl.api.Task.prepare_model`, :meth:`ebmctl.api.Task.augment`)
    hands a task the resolved profile so a plugin can read its own keys; the command binds it
    here, so the training loop calls ``prepare_model(net)`` and ``augment(x, y, generator,
    flip=...)`` without holding the profile."""

    model: ModelConfig
    seed: int
    dataset: str
    adversarial: AdversarialConfig
    network: ModelChoice
    prepare_model: Callable[[torch.nn.Module], None]
    augment: Callable[..., tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def from_config(cls, cfg: Config, bundle: DatasetBundle, task: Task
                    ) -> "TaskTrainingSections":
        """The sections of ``cfg`` for training ``task``'s model on ``bundle``.

        Raises:
            ConfigError: ``model.arch`` is not a model of the task's kind, or invalid
                ``[adversarial]`` settings
                (:func:`~ebmctl.training.adversarial.adversarial_settings`).
        """
        network = choose_model("task", cfg, bundle, task)
        return cls(cfg.section(ModelConfig), cfg.section(RunConfig).seed,
                   cfg.section(DataConfig).dataset, AdversarialConfig.from_config(cfg), network,
                   lambda net: task.prepare_model(net, cfg),
                   lambda x, y, generator, **plan: task.augment(x, y, generator, cfg, **plan))


def evaluate_task_model(model: TaskModel, task: Task, x: torch.Tensor, y: torch.Tensor,
                        device, batch: int = 500) -> float:
    model.eval()
    scores = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(x[i:i + batch].to(device))
            scores.append(task.score(out, y[i:i + batch].to(device)).float().cpu())
    return torch.cat(scores).mean().item() if scores else float("nan")


def task_lr(model: ModelConfig, it: int, total: int, milestones: list[int]) -> float:
    """Learning rate at iteration ``it`` of ``total``: step drops, or a one-cycle triangle
    (linear warm-up over ``model.warmup_fraction`` of training from ``model.lr_start_factor``
    × peak, then linear decay towards ``model.lr_end_factor`` × peak; both 0 by default).
    airbench's triangle is start 0.2, peak at 23 %, end 0.07 (Jordan 2024)."""
    peak = model.lr
    if model.lr_schedule == "onecycle":
        start, end = model.lr_start_factor, model.lr_end_factor
        warm = max(1, round(model.warmup_fraction * total))
        if it < warm:
            return peak * (start + (1 - start) * (it + 1) / warm)
        return peak * (end + (1 - end) * max(0.0, (total - it) / max(1, total - warm)))
    return peak * 0.1 ** sum(it >= m for m in milestones)


_NORM_LAYERS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm,
                torch.nn.modules.instancenorm._InstanceNorm)


def param_groups(net: torch.nn.Module, lr: float, weight_decay: float,
                 norm_scale: float) -> list[dict]:
    """The trainable parameters in two groups: normalisation-layer parameters at learning rate
    ``lr × norm_scale`` and weight decay ``weight_decay / norm_scale`` (the same decay per step,
    airbench's ``bias_scaler``), and all others at ``lr``, ``weight_decay``. Each group keeps
    its ``lr_scale`` so :func:`task_lr`'s schedule multiplies both. Frozen parameters (e.g. the
    whitening filters) are left out."""
    norm_ids = {id(p) for m in net.modules() if isinstance(m, _NORM_LAYERS)
                for p in m.parameters(recurse=False)}
    trainable = [p for p in net.parameters() if p.requires_grad]
    norm = [p for p in trainable if id(p) in norm_ids]
    other = [p for p in trainable if id(p) not in norm_ids]
    groups = [{"params": other, "lr": lr, "weight_decay": weight_decay, "lr_scale": 1.0}]
    if norm and norm_scale != 1.0:
        groups.append({"params": norm, "lr": lr * norm_scale,
                       "weight_decay": weight_decay / norm_scale, "lr_scale": norm_scale})
    else:
        groups[0]["params"] = trainable
    return groups


def _optimizer(net: torch.nn.Module, model: ModelConfig) -> torch.optim.Optimizer:
    """``model.optimizer``: Nesterov SGD with momentum, or Adam; both with weight decay, the
    normalisation layers at ``model.norm_lr_scale`` × the learning rate."""
    groups = param_groups(net, model.lr, model.weight_decay, model.norm_lr_scale)
    if model.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=model.lr, momentum=model.momentum, nesterov=True)
    return torch.optim.Adam(groups, lr=model.lr)


class Lookahead:
    """airbench's lookahead (Jordan 2024, ``LookaheadState``; after Zhang et al. 2019,
    "Lookahead Optimizer: k steps forward, 1 step back"): every ``every`` iterations the
    average ``a ← d·a + (1 − d)·w`` of each floating-point tensor of the state dict
    (parameters and BatchNorm statistics) is updated and the network continues from it
    (``w ← a``), with ``d = decay · (it / total)³``: early in training the weights move freely,
    late they are averaged. :meth:`finish` leaves the network on the average.

    With ``start_epoch`` > 0 the average (``None`` until then) begins as a copy of the weights
    at the first lookahead iteration of epoch ``start_epoch`` (0-based; airbench: 3); with
    ``epoch_sync`` :meth:`end_epoch` sets the network to the average after every epoch, as
    airbench does."""

    def __init__(self, net: torch.nn.Module, every: int, decay: float, start_epoch: int = 0,
                 epoch_sync: bool = False):
        self.net, self.every, self.decay = net, every, decay
        self.start_epoch, self.epoch_sync = start_epoch, epoch_sync
        self.average: dict[str, torch.Tensor] | None = (self._copy() if start_epoch == 0
                                                          else None)

    def _copy(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()
                if v.is_floating_point()}

    def step(self, it: int, total: int, epoch: int = 0) -> None:
        """After iteration ``it`` (1-based) of ``total``, in epoch ``epoch`` (0-based)."""
        if it % self.every or epoch < self.start_epoch:
            return
        if self.average is None:
            self.average = self._copy()
        else:
            self._pull(self.decay * (it / total) ** 3)

    def end_epoch(self) -> None:
        """After each epoch: with ``epoch_sync``, the network continues from the average."""
        if self.epoch_sync:
            self.finish()

    @torch.no_grad()
    def _pull(self, d: float) -> None:
        if self.average is None:  # not started yet: nothing to pull to
            return
        state = self.net.state_dict()
        for k, a in self.average.items():
            a.lerp_(state[k].detach(), 1 - d)
            state[k].copy_(a)

    def finish(self) -> None:
        self._pull(1.0)


@keeps_global_rng
def train_task_model(sections: TaskTrainingSections, record: RunRecord, bundle: DatasetBundle,
                     task: Task, out: Path, device: torch.device, resume: bool = False,
                     force_resume: bool = False, stop_after: int | None = None) -> Path | None:
    """Train the task model ``sections.network`` on ``bundle``'s training split with the task's
    own loss and augmentation; write the artifact (with its test score, recording ``record``)
    and a JSON log. A checkpoint
    after every epoch makes the run resumable, and all randomness is keyed by (seed, epoch), so
    a resumed run equals an uninterrupted one.

    With ``adversarial.method`` set (:mod:`ebmctl.training.adversarial`) every batch is
    replaced by the training attack's images (TRADES: joined by them), each epoch is scored by
    a held-out PGD on the validation split, and the artifact keeps the epoch with the best
    held-out robust score (Rice et al. 2020), recording the ``[adversarial]`` settings.

    ``stop_after`` runs at most that many epochs in this call and returns None with the
    checkpoint kept, so a long run goes in chunks (resume it with ``resume=True``).

    Raises:
        ConfigError: invalid ``[adversarial]`` settings, or adversarial training without a
            validation split.
        NumericalError: the loss or a gradient became NaN/Inf (the last checkpoint is kept).
    """
    job = _TaskTraining(sections, record, bundle, task, Path(out), device)
    if (resume or force_resume) and job.ckpt_file.exists():
        job.restore(force_resume)
    if not job.train(stop_after):
        info(f"stopped after epoch {job.history[-1]['epoch'] if job.history else 0} of "
             f"{job.epochs}; checkpoint {job.ckpt_file}")
        return None
    return job.finish()


class _TaskTraining:
    """One task-model run: the network and its optimizer, the iteration schedule, and the
    history a checkpoint keeps."""

    def __init__(self, sections: TaskTrainingSections, record: RunRecord, bundle: DatasetBundle,
                 task: Task, out: Path, device: torch.device):
        self.sections, self.record = sections, record
        self.bundle, self.task, self.out, self.device = bundle, task, out, device
        self.seed = sections.seed
        self.settings = settings = sections.model
        self.ckpt_file = checkpoint_path(out)
        net = sections.network.build((self.seed, "task-init"))
        self.arch, self.args = sections.network.arch, sections.network.args
        sections.prepare_model(net)
        init_from_data = getattr(net, "init_from_data", None)
        if callable(init_from_data):
            # Data-dependent initialisation (airbench's whitening layer): the network asks for
            # ``init_images`` training images, drawn at random (an ImageFolder's split is
            # class-sorted, so a prefix would hold one or two classes) and given in its own
            # [-1,1] units. Deterministic; a resume overwrites it with the checkpoint anyway.
            n = min(int(getattr(net, "init_images", len(bundle.train.x))), len(bundle.train.x))
            pick = torch.randperm(len(bundle.train.x),
                                  generator=make_generator("cpu", self.seed, "task-data-init"))
            init_from_data(to_internal(bundle.train.x[pick[:n]]))
        self.net = net
        self.model = TaskModel(net, "[-1,1]", bundle.image_size, bundle.channels,
                               task.model_kind, task.name).to(device)
        self.memory_format = (torch.channels_last if settings.channels_last
                              else torch.contiguous_format)
        net.to(memory_format=self.memory_format)
        self.epochs, self.batch = settings.epochs, settings.batch_size
        self.opt = _optimizer(net, settings)
        every = settings.lookahead_every
        self.lookahead = (Lookahead(net, every, settings.lookahead_decay,
                                    settings.lookahead_start_epoch,
                                    settings.lookahead_epoch_sync) if every else None)
        # airbench's alternating flip: each image's flip in the first epoch, drawn once
        self.first_flip = (torch.rand(len(bundle.train.x),
                                      generator=make_generator("cpu", self.seed, "task-flip"))
                           < 0.5 if settings.flip_mode == "alternating" else None)
        self.steps_per_epoch = max(1, (len(bundle.train.x) + self.batch - 1) // self.batch)
        self.total = self.epochs * self.steps_per_epoch
        self.milestones = [int(f * self.total) for f in settings.lr_milestones]
        self.start_epoch, self.history = 0, []
        self.guard = ResumeGuard.for_run(record, task.model_kind)
        self.adv = sections.adversarial
        if self.adv.active and len(bundle.val.x) == 0:
            from ebmctl.errors import ConfigError

            raise ConfigError("adversarial training keeps the epoch with the best held-out "
                              "robust score and needs a validation split; set "
                              "data.val_fraction > 0")
        # Rice et al. 2020: the best held-out robust epoch's weights, its epoch and score
        self.best: dict[str, torch.Tensor] | None = None
        self.best_epoch, self.best_robust = 0, float("-inf")

    def restore(self, force_resume: bool) -> None:
        """Continue from the run's checkpoint (checked by the ResumeGuard)."""
        ck = load_checkpoint(self.ckpt_file, self.task.model_kind)
        self.guard.check(ck, force_resume, self.ckpt_file)
        self.net.load_state_dict(ck["model"])
        restore_optimizer(self.opt, ck)
        self.start_epoch, self.history = ck["step"], ck["state"].get("history", [])
        if self.lookahead is not None:
            self.lookahead.average = {k[10:]: v for k, v in ck["tensors"].items()
                                      if k.startswith("lookahead.")} or None
        best = {k[5:]: v for k, v in ck["tensors"].items() if k.startswith("best.")}
        if best:
            self.best = best
            self.best_epoch = ck["state"]["best_epoch"]
            self.best_robust = ck["state"]["best_robust"]
        info(f"resumed from {self.ckpt_file} at epoch {self.start_epoch}")

    def train(self, stop_after: int | None = None) -> bool:
        """The remaining epochs, each followed by a validation score and a checkpoint; with
        ``stop_after``, at most that many. Returns whether training is complete."""
        task, t0 = self.task, time.time()
        with progress_bar(self.total - self.start_epoch * self.steps_per_epoch,
                          f"train {task.model_kind}") as bar:
            for epoch in range(self.start_epoch, self.epochs):
                if stop_after is not None and epoch - self.start_epoch >= stop_after:
                    return False
                t_epoch = time.time()
                loss = self.train_epoch(epoch, bar)
                train_seconds = time.time() - t_epoch  # the training pass alone (throughput)
                if self.lookahead is not None:
                    self.lookahead.end_epoch()
                    if epoch + 1 == self.epochs:
                        self.lookahead.finish()  # the run ends on the average (airbench)
                val = evaluate_task_model(self.model, task, self.bundle.val.x,
                                          self.bundle.val.y, self.device)
                row = {"epoch": epoch + 1, "loss": loss, f"val_{task.metric_name}": val}
                if self.adv.active:
                    row[f"val_robust_{task.metric_name}"] = self.held_out_robust(epoch + 1)
                    info(f"epoch {epoch + 1}: val {task.metric_name} {val:.4f}, held-out "
                         f"robust {row[f'val_robust_{task.metric_name}']:.4f} "
                         f"(PGD-{self.adv.eval_steps})")
                else:
                    info(f"epoch {epoch + 1}: val {task.metric_name} {val:.4f}, train loss "
                         f"{loss:.4f}, {train_seconds:.0f} s")
                self.history.append({**row, "seconds": round(time.time() - t0, 1),
                                     "train_seconds": round(train_seconds, 1)})
                if epoch + 1 < self.epochs:
                    best = ({f"best.{k}": v for k, v in self.best.items()} if self.best
                            else {})
                    if self.lookahead is not None and self.lookahead.average is not None:
                        best.update({f"lookahead.{k}": v
                                     for k, v in self.lookahead.average.items()})
                    save_checkpoint(self.ckpt_file, target=task.model_kind, step=epoch + 1,
                                    model=self.net, optimizer=self.opt,
                                    tensors=best or None,
                                    state={"history": self.history,
                                           "best_epoch": self.best_epoch,
                                           "best_robust": self.best_robust},
                                    config=self.record, arch=self.arch, arch_args=self.args,
                                    guard=self.guard)
        return True

    def held_out_robust(self, epoch: int) -> float:
        """The held-out robust score after ``epoch`` (the first ``adversarial.eval_images``
        validation images, the same PGD start every epoch); keeps the weights when it is the
        best so far (ties keep the earlier epoch)."""
        n = self.adv.eval_images
        robust = robust_accuracy(self.model, self.task, self.bundle.val.x[:n],
                                 self.bundle.val.y[:n], self.adv,
                                 make_generator(self.device, self.seed, "task-robust-eval"),
                                 self.device)
        if robust > self.best_robust:
            self.best_robust, self.best_epoch = robust, epoch
            self.best = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        return robust

    def train_epoch(self, epoch: int, bar) -> float:
        """One pass in an order keyed by (seed, epoch), the learning rate set per iteration by
        :func:`task_lr`. Returns the mean batch loss."""
        task, opt, bs = self.task, self.opt, self.batch
        x, y = self.bundle.train.x, self.bundle.train.y
        gen = make_generator("cpu", self.seed, "task-train", epoch)
        # Dropout draws from the global RNG: keyed by epoch, so a resumed run matches too.
        seed_global_rng(self.seed, "task-dropout", epoch)
        perm = torch.randperm(len(x), generator=gen)
        # the training attack's draws: a stream of their own, so natural training's is unchanged
        adv_gen = make_generator(self.device, self.seed, "task-adversarial", epoch)
        begin_epoch = getattr(self.net, "begin_epoch", None)
        if callable(begin_epoch):  # per-epoch network state (airbench's whitening-bias freeze)
            begin_epoch(epoch)
        self.model.train()
        losses = []
        for i in range(self.steps_per_epoch):
            lr = task_lr(self.settings, epoch * self.steps_per_epoch + i, self.total,
                         self.milestones)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            idx = perm[i * bs:(i + 1) * bs]
            # the alternating flip plan: the first epoch's flips, all reversed in odd epochs
            plan = ({} if self.first_flip is None
                    else {"flip": self.first_flip[idx] ^ bool(epoch % 2)})
            xb, yb = self.sections.augment(x[idx], y[idx], gen, **plan)
            xb = xb.to(self.device).contiguous(memory_format=self.memory_format)
            if self.adv.active:
                loss = adversarial_loss(self.model, task, xb, yb.to(self.device), self.adv,
                                        adv_gen, self.memory_format)
            else:
                loss = task.train_loss(self.model(xb), yb.to(self.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if not torch.isfinite(loss) or not grads_finite(self.net):
                raise numerical_stop(f"task-model loss or gradient became NaN/Inf in epoch "
                                     f"{epoch + 1}", self.ckpt_file)
            opt.step()
            if self.lookahead is not None:
                self.lookahead.step(epoch * self.steps_per_epoch + i + 1, self.total, epoch)
            losses.append(loss.item())
            bar.advance(1, f"loss {loss.item():.3f}")
        return sum(losses) / len(losses)

    def finish(self) -> Path:
        """Score the test split; write the artifact and its log; drop the checkpoint."""
        from ebmctl.context import environment

        task, bundle, out = self.task, self.bundle, self.out
        if self.best is not None:  # the best held-out robust epoch, not the last
            self.net.load_state_dict(self.best)
        self.net.to(memory_format=torch.contiguous_format)  # artifacts store contiguous tensors
        test = evaluate_task_model(self.model, task, bundle.test.x, bundle.test.y, self.device)
        data = {"range": "[-1,1]", "image_size": bundle.image_size, "channels": bundle.channels,
                "num_classes": bundle.num_classes, "class_names": bundle.class_names,
                "dataset": self.sections.dataset}
        extra = {"history": self.history, f"test_{task.metric_name}": test,
                 **self.guard.artifact_extra()}
        if getattr(self.net, "flip_tta", False):
            # a network with test-time augmentation (airbench's flip TTA): its test score on
            # one view too, so a report can say what the augmentation adds
            self.net.flip_tta = False
            extra[f"test_{task.metric_name}_single_view"] = evaluate_task_model(
                self.model, task, bundle.test.x, bundle.test.y, self.device)
            self.net.flip_tta = True
        if self.adv.active:
            extra["adversarial"] = self.adversarial_record(test)
        save_artifact(out, model_tensors(self.net), kind=task.model_kind, arch=self.arch,
                      arch_args=self.args, task=task.name, data=data, config=self.record,
                      step=self.epochs, extra=extra)
        atomic_write_json(out.with_suffix(".log.json"),
                          {"history": self.history, "test": test,
                           **{k: v for k, v in extra.items() if k.endswith("_single_view")},
                           "config": self.record.to_dict(),
                           "environment": environment(self.device, seed=self.seed),
                           **({"adversarial": extra["adversarial"]} if self.adv.active
                              else {})})
        self.ckpt_file.unlink(missing_ok=True)
        info(f"{task.model_kind} test {task.metric_name}: {test:.4f}")
        if self.adv.active:
            rec = extra["adversarial"]
            info(f"kept epoch {rec['best_epoch']} (best held-out robust "
                 f"{task.metric_name} {rec['val_robust']:.4f}); test robust "
                 f"{task.metric_name} {rec['test_robust']:.4f} (PGD-{self.adv.eval_steps})")
        return out

    def adversarial_record(self, test: float) -> dict:
        """What the artifact records of adversarial training: the ``[adversarial]`` settings,
        the kept epoch, its held-out robust score and the test split's clean and PGD scores."""
        test_robust = robust_accuracy(self.model, self.task, self.bundle.test.x,
                                      self.bundle.test.y, self.adv,
                                      make_generator(self.device, self.seed, "task-robust-test"),
                                      self.device)
        return {**self.adv.record(), "best_epoch": self.best_epoch,
                "val_robust": self.best_robust, "test": test, "test_robust": test_robust,
                "metric": self.task.metric_name}
