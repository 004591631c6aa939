"""Mid-run ("life-cycle") EBM training (thesis Ch. 3, Alg. 4; docs/algorithms.md#mid-run-training).

Short-run updates (K Langevin steps each) on a persistent bank whose states are rejuvenated with
probability p = K / K_def after each update, from data or from a frozen generator artifact, so a
chain lives K_def Langevin steps on average; Adam with step-wise learning-rate annealing makes the
K-step pieces of a chain approximate one long chain of the late model (thesis §3.2.1).

What differs from the convergent recipe lives in :class:`MidRun`: the bank starts from the
rejuvenation source, the learning rate drops at ``train.lr_drops``, chains are sampled with the
network in eval mode, and each update ends with rejuvenation. The loop, resume, checkpoints and
numerical stops are :class:`ebmctl.training.trainer.EnergyTrainer`'s.

All randomness of update j is derived from (seed, "midrun", j), so a resumed run reproduces an
uninterrupted one exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ebmctl.artifacts import load_model
from ebmctl.config import RunRecord
from ebmctl.contracts import DatasetBundle
from ebmctl.errors import ConfigError
from ebmctl.nn.sngan import project_to_sphere
from ebmctl.sampling.langevin import energy_and_grad, langevin
from ebmctl.seeds import make_generator
from ebmctl.training.checkpoint import restore_optimizer
from ebmctl.training.health import parameter_grad_norm
from ebmctl.training.trainer import (
    EnergyRecipe,
    EnergyTrainer,
    EnergyTrainingSections,
    TrainConfig,
    langevin_settings,
)


def rejuvenation_probability(train: TrainConfig) -> float:
    """train.rejuv_prob when set, else p = K / K_def (thesis §3.2.1).

    Raises:
        ConfigError: p is not in (0, 1] (``train.target_horizon`` below ``train.mcmc_steps``).
    """
    p = train.rejuv_prob
    if p <= 0:
        p = train.mcmc_steps / train.target_horizon
    if not 0 < p <= 1:
        raise ConfigError(f"rejuvenation probability K/K_def = {p:.4g} is not in (0, 1]; "
                          "train.target_horizon must be at least train.mcmc_steps")
    return p


def lr_at(step: int, base: float, drops: list[int], factor: float) -> float:
    """Step-wise annealing: base · factor^(number of drop points at or before ``step``)."""
    return base * factor ** sum(step >= d for d in drops)


@dataclass
class RejuvenationSource:
    """Fresh in-distribution states: ``draw(n, generator)`` → [n, C, H, W] in [-1, 1]."""

    name: str
    draw: Callable[[int, torch.Generator], torch.Tensor]


def data_source(data: torch.Tensor) -> RejuvenationSource:
    """Training images themselves (internal units), drawn uniformly with replacement."""

    def draw(n: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(data), (n,), generator=gen, device=data.device)
        return data[idx].clone()

    return RejuvenationSource("data", draw)


def generator_source(path: str | Path, shape: tuple, device) -> RejuvenationSource:
    """A frozen generator artifact: z ~ N(0, I) → g(z), evaluated in eval mode without grads."""
    net, art = load_model(path, "generator")
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    latent = int(art.arch_args.get("latent_dim", getattr(net, "latent_dim", 0)) or 0)
    if latent <= 0:
        raise ConfigError(f"{path}: generator artifact does not record its latent_dim")
    sphere = art.extra.get("latent_prior") == "sphere"
    with torch.no_grad():
        probe = net(torch.zeros(1, latent, device=device))
    if tuple(probe.shape[1:]) != tuple(shape):
        raise ConfigError(f"rejuvenation generator {path} makes images of shape "
                          f"{tuple(probe.shape[1:])}, the data has {tuple(shape)}")

    def draw(n: int, gen: torch.Generator) -> torch.Tensor:
        z = torch.randn((n, latent), generator=gen, device=device)
        if sphere:  # an autoencoder decoder was trained on latents on the sphere of radius √m
            z = project_to_sphere(z)
        with torch.no_grad():
            return net(z).float()

    return RejuvenationSource(f"generator:{Path(path).name}", draw)


def make_source(train: TrainConfig, data: torch.Tensor, device) -> RejuvenationSource:
    """The rejuvenation source ``train.rejuv_source`` names: the training ``data`` [N, C, H, W]
    (internal units) or the generator artifact ``train.rejuv_generator``.

    Raises:
        ConfigError: ``generator`` without ``train.rejuv_generator``, or a generator whose
            images do not have the data's shape.
    """
    if train.rejuv_source == "data":
        return data_source(data)
    path = train.rejuv_generator
    if not path:
        raise ConfigError("train.rejuv_source = 'generator' needs train.rejuv_generator (a "
                          "generator artifact, e.g. from `ebmctl train autoencoder`)")
    return generator_source(path, tuple(data.shape[1:]), device)


def rejuvenate(states: torch.Tensor, p: float, source: RejuvenationSource,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each row of ``states`` by a fresh source draw with probability ``p``.
    Returns (new states, boolean mask of replaced rows)."""
    mask = torch.rand(states.shape[0], generator=gen, device=states.device) < p
    out = states.clone()
    n = int(mask.sum())
    if n:
        out[mask] = source.draw(n, gen).to(out.dtype)
    return out, mask


class MidRun(EnergyRecipe):
    """The mid-run recipe (Alg. 4): Adam with step-wise annealing, rejuvenation after each
    update, bank initialised from the rejuvenation source."""

    target, label, title = "ebm-midrun", "train ebm midrun", "mid-run EBM training"

    @property
    def trained_horizon(self) -> int:
        """``train.target_horizon``: the K_def the mid-run chains are trained to last."""
        return self.train.target_horizon

    def guard_files(self) -> dict:
        train = self.train
        return {"train.rejuv_generator":
                train.rejuv_source == "generator" and train.rejuv_generator}

    def setup(self) -> None:
        train = self.train
        net, self.arch, self.arch_args = self.build_model("midrun-init")
        self.net = net.to(self.device)
        self.load_data()
        self.batch, self.bank_size = train.batch_size, train.bank_size or len(self.data)
        if self.batch > self.bank_size:
            raise ConfigError(f"train.batch_size {self.batch} exceeds train.bank_size "
                              f"{self.bank_size}")
        self.p = rejuvenation_probability(train)
        self.source = make_source(train, self.data, self.device)
        self.settings = langevin_settings(self.langevin, self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=train.lr_adam,
                                    betas=(train.adam_beta1, train.adam_beta2))
        # Alg. 4: the bank starts from the rejuvenation source.
        self.bank = self.source.draw(self.bank_size, make_generator(
            self.device, self.seed, "midrun-bank-init")).to(self.device)
        self.counts = {"rejuvenated": 0, "updated": 0}
        self.window = {"rejuvenated": 0, "updated": 0}  # since the last log record

    def restore(self, ck: dict) -> None:
        restore_optimizer(self.opt, ck)
        self.bank = ck["tensors"]["bank"].to(self.device)
        self.counts = ck["state"].get("counts", self.counts)

    def schedule(self, step: int) -> None:
        self.lr = lr_at(step, self.train.lr_adam, sorted(self.train.lr_drops),
                        self.train.lr_drop_factor)
        for g in self.opt.param_groups:
            g["lr"] = self.lr

    def gradients(self, step: int) -> dict[str, float]:
        self.gen = make_generator(self.device, self.seed, "midrun", step)
        pos = self.positives(self.batch, self.gen)
        self.bank_idx = torch.randperm(self.bank_size, generator=self.gen,
                                       device=self.device)[:self.batch]
        self.net.eval()  # no batch-stat or power-iteration side effects while sampling
        self.neg = langevin(self.net, self.bank[self.bank_idx], self.train.mcmc_steps,
                            self.settings, self.gen)
        self.net.train()
        e_pos, e_neg = self.net(pos).mean(), self.net(self.neg).mean()
        loss = e_pos - e_neg
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        return {"energy_gap": loss.item(), "energy_pos": e_pos.item(), "energy_neg": e_neg.item()}

    def apply(self, step: int, terms: dict) -> None:
        terms["param_grad_norm"] = parameter_grad_norm(self.net)
        self.opt.step()
        self.neg, mask = rejuvenate(self.neg, self.p, self.source, self.gen)
        self.bank[self.bank_idx] = self.neg
        n_rejuvenated = int(mask.sum())
        for c in (self.counts, self.window):
            c["rejuvenated"] += n_rejuvenated
            c["updated"] += self.batch

    def record(self, terms: dict) -> dict:
        _, g = energy_and_grad(self.net, self.neg, "fp32")
        rate = self.window["rejuvenated"] / max(1, self.window["updated"])
        self.window = {"rejuvenated": 0, "updated": 0}
        return {**super().record(terms), "param_grad_norm": terms["param_grad_norm"],
                "langevin_grad_norm": g.flatten(1).norm(dim=1).mean().item(), "lr": self.lr,
                "rejuv_rate": rate}

    def checkpoint_state(self) -> tuple[torch.optim.Optimizer, dict, dict]:
        return self.opt, {"bank": self.bank}, {"counts": self.counts}

    def samples(self) -> torch.Tensor:
        return self.bank

    def finish(self) -> None:
        self.net.eval()

    def artifact_extra(self) -> dict:
        return {**super().artifact_extra(), "recipe": "midrun"}

    def training_extra(self, history: list[dict]) -> dict:
        return {"rejuv_prob": self.p, "rejuv_source": self.source.name,
                "rejuv_rate": self.counts["rejuvenated"] / max(1, self.counts["updated"]),
                "history": history}


def train_midrun(sections: EnergyTrainingSections, record: RunRecord, bundle: DatasetBundle,
                 out: Path, device: torch.device, resume: bool = False,
                 force_resume: bool = False) -> Path:
    """Mid-run EBM training (:class:`MidRun`) with the typed ``sections`` (built with the
    bundle, so they name the ``ebm`` model) to the artifact ``out``, writing ``record`` beside
    it; ``resume`` continues from ``out``'s checkpoint (a ConfigError if its settings differ;
    ``force_resume`` allows the safe ones). Raises NumericalError on NaN/Inf, keeping the last
    checkpoint."""
    return EnergyTrainer(MidRun(sections, record, bundle, device), out).run(resume,
                                                                         force_resume)
