"""Mid-run ("life-cycle") EBM training (thesis Ch. 3, Alg. 4; docs/algorithms.md#mid-run-training).

Short-run updates (K Langevin steps each) on a persistent bank whose states are rejuvenated with
probability p = K / K_def after each update, from data or from a frozen generator artifact, so a
chain lives K_def Langevin steps on average; Adam with step-wise learning-rate annealing makes the
K-step pieces of a chain approximate one long chain of the late model (thesis §3.2.1).

All randomness of update j is derived from (seed, "midrun", j), so a resumed run reproduces an
uninterrupted one exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ebmctl.architectures import build_model
from ebmctl.artifacts import load_model, model_tensors, save_artifact
from ebmctl.console import info, progress_bar
from ebmctl.device import resolve_precision
from ebmctl.errors import ConfigError, NumericalError
from ebmctl.evaluate.plots import save_grid
from ebmctl.nn.sngan import project_to_sphere
from ebmctl.config import Config
from ebmctl.contracts import DatasetBundle
from ebmctl.sampling.langevin import LangevinSettings, energy_and_grad, langevin
from ebmctl.seeds import keeps_global_rng, make_generator
from ebmctl.training.convergent import ebm_data_meta
from ebmctl.training.checkpoint import (
    ResumeGuard,
    finish_energy_run,
    checkpoint_path,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from ebmctl.training.health import (
    load_health_classifier,
    parameter_grad_norm,
    run_health_check,
)
from ebmctl.units import to_internal, to_public

RECIPES = ("convergent", "midrun")


def rejuvenation_probability(cfg: Config) -> float:
    """train.rejuv_prob when set, else p = K / K_def (thesis §3.2.1)."""
    p = cfg["train.rejuv_prob"]
    if p <= 0:
        p = cfg["train.mcmc_steps"] / cfg["train.target_horizon"]
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


def make_source(cfg: Config, data: torch.Tensor, device) -> RejuvenationSource:
    kind = cfg["train.rejuv_source"]
    if kind == "data":
        return data_source(data)
    path = cfg["train.rejuv_generator"]
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


@keeps_global_rng
def train_midrun(cfg: Config, bundle: DatasetBundle, out: Path, device: torch.device,
                 resume: bool = False, force_resume: bool = False) -> Path:
    out = Path(out)
    ckpt_file = checkpoint_path(out)
    net, arch, args = build_model("ebm", cfg, bundle, (cfg["run.seed"], "midrun-init"))
    net = net.to(device)
    seed = cfg["run.seed"]
    health_model = load_health_classifier(cfg, device)  # a bad path fails before training
    data = to_internal(bundle.train.x).to(device)
    shape = tuple(data.shape[1:])
    steps, k_mcmc, batch = cfg["train.steps"], cfg["train.mcmc_steps"], cfg["train.batch_size"]
    bank_size = cfg["train.bank_size"] or len(data)
    if batch > bank_size:
        raise ConfigError(f"train.batch_size {batch} exceeds train.bank_size {bank_size}")
    p = rejuvenation_probability(cfg)
    source = make_source(cfg, data, device)
    drops, factor = sorted(cfg["train.lr_drops"]), cfg["train.lr_drop_factor"]
    settings = LangevinSettings(cfg["langevin.tau"], cfg["langevin.temperature"], 1.0,
                                resolve_precision(cfg["langevin.precision"], device),
                                cfg["langevin.channels_last"])
    opt = torch.optim.Adam(net.parameters(), lr=cfg["train.lr_adam"],
                           betas=(cfg["train.adam_beta1"], cfg["train.adam_beta2"]))
    # Alg. 4: the bank starts from the rejuvenation source.
    bank = source.draw(bank_size, make_generator(device, seed, "midrun-bank-init")).to(device)
    start, history = 0, []
    counts = {"rejuvenated": 0, "updated": 0}
    elapsed = 0.0  # training seconds of earlier (resumed-from) processes
    generator_file = cfg["train.rejuv_source"] == "generator" and cfg["train.rejuv_generator"]
    guard = ResumeGuard.for_run(cfg, "ebm-midrun", {"train.rejuv_generator": generator_file})
    if (resume or force_resume) and ckpt_file.exists():
        ck = load_checkpoint(ckpt_file, "ebm-midrun")
        guard.check(ck, force_resume, ckpt_file)
        net.load_state_dict(ck["model"])
        restore_optimizer(opt, ck)
        bank = ck["tensors"]["bank"].to(device)
        start = ck["step"]
        history = ck["state"].get("history", [])
        counts = ck["state"].get("counts", counts)
        elapsed = float(ck["state"].get("seconds", 0.0))
        info(f"resumed from {ckpt_file} at update {start}")
    elif resume or force_resume:
        info(f"no checkpoint at {ckpt_file}; starting from scratch")
    every, log_every = cfg["train.checkpoint_every"], cfg["train.log_every"]
    grid_every = cfg["output.grid_every"] or every
    t0 = time.time() - elapsed
    window = {"rejuvenated": 0, "updated": 0}
    with progress_bar(steps - start, f"train ebm midrun ({out.name})") as bar:
        for step in range(start, steps):
            lr = lr_at(step, cfg["train.lr_adam"], drops, factor)
            for g in opt.param_groups:
                g["lr"] = lr
            gen = make_generator(device, seed, "midrun", step)
            pos_idx = torch.randint(0, len(data), (batch,), generator=gen, device=device)
            pos = data[pos_idx] + cfg["train.data_noise"] * torch.randn(
                (batch, *shape), generator=gen, device=device)
            bank_idx = torch.randperm(bank_size, generator=gen, device=device)[:batch]
            net.eval()  # no batch-stat or power-iteration side effects while sampling
            neg = langevin(net, bank[bank_idx], k_mcmc, settings, gen)
            net.train()
            e_pos, e_neg = net(pos).mean(), net(neg).mean()
            loss = e_pos - e_neg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if not math.isfinite(loss.item()):
                raise NumericalError(f"EBM loss became {loss.item()} at update {step}; the last "
                                     f"good checkpoint is {ckpt_file}")
            grad_norm = parameter_grad_norm(net)
            opt.step()
            neg, mask = rejuvenate(neg, p, source, gen)
            bank[bank_idx] = neg
            n_rejuv = int(mask.sum())
            for c in (counts, window):
                c["rejuvenated"] += n_rejuv
                c["updated"] += batch
            if (step + 1) % log_every == 0 or step + 1 == steps:
                _, g = energy_and_grad(net, neg, "fp32")
                history.append({
                    "step": step + 1, "energy_gap": loss.item(), "energy_pos": e_pos.item(),
                    "energy_neg": e_neg.item(), "param_grad_norm": grad_norm,
                    "langevin_grad_norm": g.flatten(1).norm(dim=1).mean().item(), "lr": lr,
                    "rejuv_rate": window["rejuvenated"] / max(1, window["updated"]),
                    "seconds": round(time.time() - t0, 2)})
                window = {"rejuvenated": 0, "updated": 0}
            bar.advance(1, f"gap {loss.item():+.3g}")
            if (step + 1) % every == 0 and step + 1 < steps:
                save_checkpoint(ckpt_file, target="ebm-midrun", step=step + 1, model=net,
                                optimizer=opt, tensors={"bank": bank},
                                state={"history": history, "counts": counts,
                                       "seconds": time.time() - t0},
                                config=cfg, arch=arch, arch_args=args, guard=guard)
            if (step + 1) % grid_every == 0 or step + 1 == steps:
                save_grid(to_public(bank[:64]),
                          out.with_name(out.stem + f".samples-{step + 1:06d}.png"))
    net.eval()
    seconds = round(time.time() - t0, 1)
    extra = {
        "tau": cfg["langevin.tau"], "temperature": cfg["langevin.temperature"],
        "recipe": "midrun",
        "training": {"updates": steps, "seconds": seconds, "rejuv_prob": p,
                     "rejuv_source": source.name,
                     "rejuv_rate": counts["rejuvenated"] / max(1, counts["updated"]),
                     "final": history[-1] if history else {}, "history": history},
    }
    health = run_health_check(net, cfg, bundle, settings, device, out, health_model)
    if health is not None:
        extra["health"] = health
    extra.update(guard.artifact_extra())
    save_artifact(out, model_tensors(net), kind="ebm", arch=arch, arch_args=args,
                  task=cfg["task.name"], data=ebm_data_meta(bundle, cfg["data.dataset"]),
                  config=cfg, step=steps, extra=extra)
    finish_energy_run(out, ckpt_file, history, extra, cfg, device, "U", "mid-run EBM training")
    return out
