"""One energy-training loop for every recipe (docs/algorithms.md#convergent-training,
#mid-run-training, #hat-ebm-training).

Every recipe of the thesis repeats the same skeleton: per update j, positives are training images
plus data noise, negatives come from K Langevin steps of persistent (or fresh) chains, and the
energy network takes a step on mean E(x⁺) − mean E(x⁻). :class:`EnergyTrainer` owns what the
recipes share: resume from a checkpoint (refused when the run's settings changed, see
:class:`ebmctl.training.checkpoint.ResumeGuard`), checkpoints, the numerical stop (NaN/Inf in
the sampler, the loss or the gradients keeps the last good checkpoint), the training log, sample
grids, progress, the end-of-run health check and the artifact. An :class:`EnergyRecipe` holds
only what the thesis says differs between recipes: how the bank starts, the optimiser schedule,
how negatives are drawn, and what happens after the energy step (rejuvenation, a generator
update).

All randomness of update j is derived from (seed, label, j), so a resumed run reproduces an
uninterrupted one exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ebmctl.architectures import ModelChoice, choose_model
from ebmctl.artifacts import model_tensors, save_artifact
from ebmctl.config import Config, RunRecord, setting
from ebmctl.console import info, progress_bar
from ebmctl.context import DataConfig, RunConfig, TaskConfig
from ebmctl.contracts import DatasetBundle
from ebmctl.defense import DefenseConfig
from ebmctl.device import resolve_precision
from ebmctl.distributed import DistContext, barrier
from ebmctl.errors import NumericalError
from ebmctl.evaluate.plots import save_grid
from ebmctl.sampling.langevin import LangevinConfig, LangevinSettings
from ebmctl.seeds import keeps_global_rng
from ebmctl.training.checkpoint import (
    ResumeGuard,
    checkpoint_path,
    finish_energy_run,
    grads_finite,
    load_checkpoint,
    numerical_stop,
    save_checkpoint,
)
from ebmctl.training.health import HealthHorizons, load_health_classifier, run_health_check
from ebmctl.units import to_internal, to_public


@dataclass(frozen=True)
class TrainConfig:
    """The profile section ``[train]``: the energy-training run every recipe shares (updates J,
    Langevin steps K, batch, persistent bank, data noise, Adam/SGD, checkpoints, logs, shards),
    the recipe and the mid-run recipe's own settings (:mod:`ebmctl.training.midrun`: target
    horizon, rejuvenation, lr drops), and the end-of-run health check
    (:mod:`ebmctl.training.health`). One section, as one run reads it whole."""

    section: ClassVar[str] = "train"

    steps: int = setting(150000, "parameter updates J", minimum=0)
    mcmc_steps: int = setting(100, "Langevin steps K per update", minimum=1)
    batch_size: int = setting(100, "positives / negatives per update", minimum=1)
    bank_size: int = setting(0, "persistent bank size (0 = training-set size)", minimum=0)
    bank_init: str = setting("uniform", "uniform | gaussian | data",
                             choices=("uniform", "gaussian", "data"))
    data_noise: float = setting(0.02, "τ_data", minimum=0)
    lr_adam: float = setting(0.0001, "Adam learning rate", minimum=0)
    lr_sgd: float = setting(5e-05, "SGD learning rate after the switch", minimum=0)
    sgd_switch_step: int = setting(50000, "update at which Adam becomes SGD (0 = never)",
                                   minimum=0)
    adam_beta1: float = setting(0.9, "Adam β1", minimum=0, maximum=1)
    adam_beta2: float = setting(0.999, "Adam β2", minimum=0, maximum=1)
    checkpoint_every: int = setting(1000, "updates between checkpoints", minimum=1)
    log_every: int = setting(50, "updates between log lines", minimum=1)
    longrun_steps: int = setting(0, "older name of train.health_horizon (used when that is 0)",
                                 minimum=0)
    shards: int = setting(1, "data-parallel shards of convergent EBM training: the bank splits "
                          "into this many contiguous blocks and each update's batch into as many "
                          "parts, each with its own random stream and the loss averaged; under "
                          "torchrun one shard per process (1 = as many as processes); in one "
                          "process the shards run in turn", minimum=1)
    # its choices are the names of ebmctl.training.RECIPES (given where the section is added:
    # the recipes import this module)
    recipe: str = setting("convergent", "EBM training recipe: convergent (thesis Alg. 2) | midrun "
                          "(thesis Alg. 4)")
    target_horizon: int = setting(2000, "K_def the mid-run chains should stay realistic for",
                                  minimum=1)
    rejuv_prob: float = setting(0.0, "rejuvenation probability per update (0 = K/K_def)",
                                minimum=0, maximum=1)
    rejuv_source: str = setting("data", "where rejuvenated states come from: data | generator",
                                choices=("data", "generator"))
    rejuv_generator: str = setting("", "frozen generator artifact for rejuvenation")
    lr_drops: tuple[int, ...] = setting((), "updates at which the mid-run Adam lr is multiplied "
                                        "by train.lr_drop_factor (the thesis authors' code: "
                                        "[50000, 75000, 100000, 125000])")
    lr_drop_factor: float = setting(0.1, "lr factor at each of train.lr_drops",
                                    minimum=0, maximum=1)
    health_chains: int = setting(64, "held-out images the end-of-run health check starts chains "
                                 "from (0 = skip the check)", minimum=0)
    health_horizon: int = setting(0, "long-run horizon L (Langevin steps) at which the end-of-run "
                                  "health verdict is decided; chains also stop at K and K_def = "
                                  "defense.steps (0 = the longest of 10·K, defense.steps and, for "
                                  "the mid-run recipe, train.target_horizon)", minimum=0)
    health_classifier: str = setting("", "classifier artifact for label survival in the health "
                                     "check (share of chains keeping their start image's label at "
                                     "K, K_def and L); empty = not measured")
    health_every: int = setting(0, "also run the health check every this many updates during "
                                "training (0 = only at the end); each check is a row of the "
                                "log's health_history and a point of <out>.health-history.png",
                                minimum=0)


@dataclass(frozen=True)
class OutputConfig:
    """The profile section ``[output]``: how often training writes a sample grid."""

    section: ClassVar[str] = "output"

    grid_every: int = setting(0, "write a sample grid every N updates (0 = per checkpoint)",
                              minimum=0)


def ebm_data_meta(bundle: DatasetBundle, dataset: str) -> dict:
    """The ``data`` record of an energy artifact: internal range, image size, channels, dataset."""
    return {"range": "[-1,1]", "image_size": bundle.image_size, "channels": bundle.channels,
            "dataset": dataset}


def langevin_settings(langevin: LangevinConfig, device) -> LangevinSettings:
    """The ``[langevin]`` settings training chains run with (precision resolved for ``device``)."""
    return LangevinSettings(langevin.tau, langevin.temperature, 1.0,
                            resolve_precision(langevin.precision, device), langevin.channels_last)


@dataclass(frozen=True)
class EnergyTrainingSections:
    """What an energy recipe and :class:`EnergyTrainer` read from the profile, as typed
    sections, built once by the command (:meth:`from_config`): the run (``[train]``), the
    chains (``[langevin]``), the seed (``[run]``), the grid cadence (``[output]``), K_def
    (``defense.steps``, a health-check horizon), the dataset and task names the artifact
    records, and the ``ebm`` model to build (None for a recipe that builds its own, the Hat
    EBM)."""

    train: TrainConfig
    langevin: LangevinConfig
    run: RunConfig
    output: OutputConfig
    defense_steps: int
    dataset: str
    task: str
    model: ModelChoice | None = None

    @classmethod
    def from_config(cls, cfg: Config, bundle: DatasetBundle | None = None
                    ) -> "EnergyTrainingSections":
        """The sections of ``cfg``; with ``bundle``, the ``ebm`` model it asks for at the
        data's channels and size (the architecture reads its own keys; ConfigError naming
        ``ebm.arch`` when it is not an EBM)."""
        return cls(cfg.section(TrainConfig), cfg.section(LangevinConfig), cfg.section(RunConfig),
                   cfg.section(OutputConfig), cfg.section(DefenseConfig).steps,
                   cfg.section(DataConfig).dataset, cfg.section(TaskConfig).name,
                   choose_model("ebm", cfg, bundle) if bundle is not None else None)


class EnergyRecipe:
    """What one training recipe adds to :class:`EnergyTrainer`'s loop.

    The trainer calls, in order: :meth:`setup` (fresh state), :meth:`restore` (only when
    resuming), :meth:`begin`, then per update :meth:`schedule`, :meth:`gradients`, its own
    finiteness check, :meth:`apply` and (on logging updates) :meth:`record`; at the end
    :meth:`finish` and :meth:`artifact_extra`. ``net`` is the network saved in checkpoints and
    the artifact (``arch``/``arch_args`` recorded with it), ``trained`` the one whose gradients
    the numerical stop checks.

    A recipe reads its settings from the typed sections the command built once
    (``sections``: :class:`EnergyTrainingSections`, unpacked here as ``self.train``,
    ``self.langevin``, ``self.run``; a recipe with a section of its own takes it as a further
    argument) and builds its network from ``sections.model``. ``record`` is the run's profile
    as a :class:`~ebmctl.config.RunRecord`, only written into checkpoints, the artifact and
    the log and fingerprinted for resume (``self.run_record``).
    """

    #: checkpoint target, artifact kind, progress label, gap-plot title, energy symbol, noun
    target, kind, label, title, energy_symbol, noun = "ebm", "ebm", "train", "", "U", "EBM"
    #: run the end-of-run health check (Langevin chains of ``net`` from held-out data)
    health_check = True
    #: can split its work into ``train.shards`` and run data-parallel under torchrun
    data_parallel = False

    def __init__(self, sections: EnergyTrainingSections, record: RunRecord,
                 bundle: DatasetBundle, device):
        self.sections, self.run_record = sections, record
        self.bundle, self.device = bundle, torch.device(device)
        self.train, self.langevin, self.run = sections.train, sections.langevin, sections.run
        self.defense_steps, self.seed = sections.defense_steps, self.run.seed
        self.ctx = DistContext()  # one process unless a recipe runs under torchrun
        self.net: torch.nn.Module
        self.arch, self.arch_args = "", {}
        self.settings: Any = None

    @property
    def trained(self) -> torch.nn.Module:
        return self.net

    def build_model(self, label: str) -> tuple[torch.nn.Module, str, dict[str, Any]]:
        """(network on the CPU, arch, arch_args) of ``sections.model``, its initial weights
        keyed by (seed, ``label``)."""
        model = self.sections.model
        if model is None:
            raise TypeError(f"{type(self).__name__} builds the ebm model: give it "
                            "EnergyTrainingSections.from_config(cfg, bundle)")
        return model.build((self.seed, label)), model.arch, model.args

    @property
    def trained_horizon(self) -> int:
        """The chain length (Langevin steps) the recipe trains its chains to stay realistic
        for, which the health check's long-run horizon must reach (0: only K)."""
        return 0

    def load_data(self) -> None:
        """The training images in internal units [-1, 1] on the run's device."""
        self.data = to_internal(self.bundle.train.x).to(self.device)
        self.shape = tuple(self.data.shape[1:])

    def positives(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """X⁺: ``n`` training images drawn with replacement plus N(0, data_noise²) noise."""
        idx = torch.randint(0, len(self.data), (n,), generator=gen, device=self.device)
        return self.data[idx] + self.train.data_noise * torch.randn(
            (n, *self.shape), generator=gen, device=self.device)

    def guard_files(self) -> dict[str, Any]:
        """Files the run trains against, compared by content on resume (name → path)."""
        return {}

    def setup(self) -> None:
        raise NotImplementedError

    def restore(self, ck: dict) -> None:
        """Optimiser and recipe state from checkpoint ``ck`` (the network is already loaded)."""
        raise NotImplementedError

    def begin(self) -> None:
        """Called once before the first update, fresh or resumed."""

    def schedule(self, step: int) -> None:
        """The optimiser schedule at the start of update ``step``."""

    def gradients(self, step: int) -> dict[str, float]:
        """Negatives, the energy loss and its backward pass; returns ``energy_gap``,
        ``energy_pos``, ``energy_neg`` (more for :meth:`record`). May raise NumericalError."""
        raise NotImplementedError

    def apply(self, step: int, terms: dict) -> None:
        """The optimiser step(s) and the state updates after them."""
        raise NotImplementedError

    def record(self, terms: dict) -> dict[str, Any]:
        """The log fields of a logging update (after ``step``, before ``seconds``)."""
        return {k: terms[k] for k in ("energy_gap", "energy_pos", "energy_neg")}

    def checkpoint_state(self) -> tuple[torch.optim.Optimizer, dict, dict]:
        """(optimizer, extra tensors, JSON state) of a checkpoint."""
        raise NotImplementedError

    def samples(self) -> torch.Tensor:
        """What the sample grid shows (internal units)."""
        raise NotImplementedError

    def finish(self) -> None:
        """After the last update, before the health check and the artifact."""

    def artifact_extra(self) -> dict[str, Any]:
        """The artifact's ``extra`` besides ``training``, ``health`` and ``resumed``."""
        return {"tau": self.langevin.tau, "temperature": self.langevin.temperature}

    def training_extra(self, history: list[dict]) -> dict[str, Any]:
        """More of ``extra.training`` besides updates, seconds and the final log record
        (``history``: the run's log records)."""
        return {}


class EnergyTrainer:
    """Runs an :class:`EnergyRecipe` for ``train.steps`` updates and writes ``out`` (the
    artifact), ``<out>.log.json``, ``<out>.gap.png``, sample grids every ``output.grid_every``
    updates and a checkpoint every ``train.checkpoint_every`` (removed at the end)."""

    def __init__(self, recipe: EnergyRecipe, out: Path):
        self.recipe, self.out = recipe, Path(out)
        self.ckpt_file = checkpoint_path(self.out)
        self.run_record, self.train = recipe.run_record, recipe.train
        self.steps = self.train.steps
        self.grid_every = (recipe.sections.output.grid_every
                           or self.train.checkpoint_every)
        self.history: list[dict] = []
        #: one row per periodic health check (``train.health_every``) and the final one
        self.health_history: list[dict] = []
        self.health_model = None
        self.elapsed = 0.0  # training seconds of earlier (resumed-from) processes

    @keeps_global_rng
    def run(self, resume: bool = False, force_resume: bool = False) -> Path:
        r = self.recipe
        # a bad classifier path fails before training rather than after it
        health_model = (load_health_classifier(self.train.health_classifier, r.device)
                        if r.health_check and r.ctx.is_main else None)
        self.health_model = health_model
        r.setup()
        self.guard = ResumeGuard.for_run(self.run_record, r.target, r.guard_files())
        start = self._resume(resume, force_resume)
        r.begin()
        self.t0 = time.time() - self.elapsed
        with progress_bar(self.steps - start, f"{r.label} ({self.out.name})") as bar:
            for step in range(start, self.steps):
                terms = self._update(step)
                self._after_update(step, terms)
                bar.advance(1, f"gap {terms['energy_gap']:+.3g}")
        self._finish()
        barrier(r.ctx)  # the other ranks return once rank 0 has written the artifact
        return self.out

    def _resume(self, resume: bool, force_resume: bool) -> int:
        """The update to start from: the checkpoint's (its settings checked by the guard) when
        resuming and it exists, else 0."""
        if not (resume or force_resume):
            return 0
        if not self.ckpt_file.exists():
            info(f"no checkpoint at {self.ckpt_file}; starting from scratch")
            return 0
        ck = load_checkpoint(self.ckpt_file, self.recipe.target)
        self.guard.check(ck, force_resume, self.ckpt_file)
        self.recipe.net.load_state_dict(ck["model"])
        self.recipe.restore(ck)
        self.history = ck["state"].get("history", [])
        self.health_history = ck["state"].get("health_history", [])
        self.elapsed = float(ck["state"].get("seconds", 0.0))
        info(f"resumed from {self.ckpt_file} at update {ck['step']}")
        return ck["step"]

    def _update(self, step: int) -> dict:
        """One update; NaN/Inf in the sampler, the loss or the gradients stops the run with the
        last good checkpoint kept (checkpoints are written from finite models only)."""
        r = self.recipe
        r.schedule(step)
        try:
            terms = r.gradients(step)
        except NumericalError as exc:
            raise numerical_stop(f"{exc.message} (update {step})", self.ckpt_file) from None
        gap = terms["energy_gap"]
        if not math.isfinite(gap) or not grads_finite(r.trained):
            raise numerical_stop(f"{r.noun} loss or gradient became NaN/Inf (loss {gap}) at "
                                 f"update {step}", self.ckpt_file)
        r.apply(step, terms)
        return terms

    def _after_update(self, step: int, terms: dict) -> None:
        """Logging, checkpoint and sample-grid cadence after update ``step``."""
        done, r = step + 1, self.recipe
        if done % self.train.log_every == 0 or done == self.steps:
            self.history.append({"step": done, **r.record(terms),
                                 "seconds": round(time.time() - self.t0, 2)})
        every = self.train.health_every
        if every and done % every == 0 and done < self.steps and r.health_check and \
                r.ctx.is_main:
            self.health_history.append(self._health_row(done, self._health(None)))
        if done % self.train.checkpoint_every == 0 and done < self.steps:
            opt, tensors, state = r.checkpoint_state()  # collective under torchrun
            if r.ctx.is_main:
                save_checkpoint(self.ckpt_file, target=r.target, step=done, model=r.net,
                                optimizer=opt, tensors=tensors,
                                state={**state, "history": self.history,
                                       "health_history": self.health_history,
                                       "seconds": time.time() - self.t0},
                                config=self.run_record, arch=r.arch, arch_args=r.arch_args,
                                guard=self.guard)
        if r.ctx.is_main and (done % self.grid_every == 0 or done == self.steps):
            save_grid(to_public(r.samples()[:64]),
                      self.out.with_name(self.out.stem + f".samples-{done:06d}.png"))

    def _health(self, out: Path | None) -> dict | None:
        """The health check of the network as it is now (:func:`run_health_check`; grids
        beside ``out`` unless None). Its chains draw from their own seeded generator, so a
        check during training leaves the training's random draws unchanged."""
        r = self.recipe
        horizons = HealthHorizons.of(r.train, r.defense_steps, r.trained_horizon)
        return run_health_check(r.net, r.bundle, r.settings, r.device, out, horizons,
                                chains=r.train.health_chains, seed=r.seed,
                                classifier=self.health_model,
                                classifier_path=r.train.health_classifier)

    def _health_row(self, step: int, health: dict | None) -> dict:
        """One row of the health history: per horizon (K, K_def, L) its Langevin steps, the
        share of pixels out of range and, with a classifier, the label survival; the energy
        gap of the last logged update; the verdict."""
        row: dict[str, Any] = {"step": step, "convergent": bool(health and health["convergent"])}
        for role in ("short", "defense", "long"):
            h = (health or {}).get(role)
            if h is not None:
                row[role] = {k: h[k] for k in ("steps", "fraction_outside_range", "label_kept")
                             if k in h}
        if self.history:
            row["energy_gap"] = self.history[-1].get("energy_gap")
        return row

    def _finish(self) -> None:
        """The artifact (with the health verdict), the JSON log and the gap curve; the
        checkpoint is removed."""
        r, run = self.recipe, self.recipe.sections
        r.finish()
        training = {"updates": self.steps, "seconds": round(time.time() - self.t0, 1),
                    "final": self.history[-1] if self.history else {},
                    **r.training_extra(self.history)}
        extra = {**r.artifact_extra(), "training": training, **self.guard.artifact_extra()}
        if not r.ctx.is_main:
            return
        if r.health_check:
            health = self._health(self.out)
            if health is not None:
                extra["health"] = health
                if self.health_history:
                    self.health_history.append(self._health_row(self.steps, health))
                    extra["health_history"] = self.health_history
                    save_health_history(self.out, self.health_history)
        save_artifact(self.out, model_tensors(r.net), kind=r.kind, arch=r.arch,
                      arch_args=r.arch_args, task=run.task,
                      data=ebm_data_meta(r.bundle, run.dataset), config=self.run_record,
                      step=self.steps, extra=extra)
        finish_energy_run(self.out, self.ckpt_file, self.history, extra, self.run_record, r.seed,
                          r.device, r.energy_symbol, r.title)


def save_health_history(out: Path, rows: list[dict]) -> None:
    """``<out>.health-history.png``: label survival (else the share of pixels out of range)
    at each health-check horizon against the training update."""
    from ebmctl.evaluate.plots import save_curves

    labelled = any("label_kept" in r.get("defense", r.get("long", {})) for r in rows)
    metric = "label_kept" if labelled else "fraction_outside_range"
    curves = {}
    for role in ("short", "defense", "long"):
        pts = [(r["step"], r[role][metric]) for r in rows if metric in r.get(role, {})]
        if pts:
            steps = rows[-1][role]["steps"]
            curves[f"after {steps} Langevin steps"] = ([p[0] for p in pts], [p[1] for p in pts])
    ylabel = ("share of chains keeping their label" if labelled
              else "share of pixels outside [-1, 1]")
    save_curves(out.with_name(out.stem + ".health-history.png"), curves, "update", ylabel,
                "health during training", integer_x=True)
