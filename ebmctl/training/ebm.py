"""Convergent EBM learning (SPEC §1.4, Alg. 2): persistent bank of noise chains never reset,
data noise, K Langevin steps per update, Adam then an SGD switch.

All randomness of update j is derived from (seed, j), so a resumed run reproduces an
uninterrupted one exactly.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from ebmctl.artifacts import model_tensors, save_artifact
from ebmctl.console import info, progress_bar
from ebmctl.errors import ConfigError, NumericalError
from ebmctl.evaluate.plots import save_grid
from ebmctl.plugins import get_registries
from ebmctl.profiles import Config
from ebmctl.protocols import DatasetBundle
from ebmctl.sampling import LangevinSettings, energy_and_grad, langevin
from ebmctl.seeds import derive_seed, make_generator
from ebmctl.training.checkpoint import (
    finish_energy_run,
    checkpoint_path,
    grads_finite,
    load_checkpoint,
    numerical_stop,
    restore_optimizer,
    save_checkpoint,
)
from ebmctl.units import to_internal, to_public


def ebm_arch_args(cfg: Config, bundle: DatasetBundle) -> tuple[str, dict]:
    arch = cfg["ebm.arch"]
    spec = get_registries().models.get(arch)
    if spec.kind != "ebm":
        raise ConfigError(f"ebm.arch {arch!r} is a {spec.kind!r} architecture, not an EBM")
    if arch == "sngan-ebm":
        from ebmctl.training.midrun import ebm_arch_args as any_ebm_args

        return any_ebm_args(cfg, bundle)
    return arch, {"in_channels": bundle.channels, "image_size": bundle.image_size,
                  "channels": cfg["ebm.channels"], "activation": cfg["ebm.activation"],
                  "leak": cfg["ebm.leak"]}


def init_bank(kind: str, n: int, shape: tuple, data: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if kind == "uniform":
        return torch.rand((n, *shape), generator=gen) * 2 - 1
    if kind == "gaussian":
        return torch.randn((n, *shape), generator=gen)
    idx = torch.randint(0, len(data), (n,), generator=gen)
    return data[idx].clone()


def _make_optimizer(net, cfg: Config, step: int) -> torch.optim.Optimizer:
    switch = cfg["train.sgd_switch_step"]
    if switch and step >= switch:
        return torch.optim.SGD(net.parameters(), lr=cfg["train.lr_sgd"])
    return torch.optim.Adam(net.parameters(), lr=cfg["train.lr_adam"],
                            betas=(cfg["train.adam_beta1"], cfg["train.adam_beta2"]))


def ebm_data_meta(bundle: DatasetBundle, dataset: str) -> dict:
    return {"range": "[-1,1]", "image_size": bundle.image_size, "channels": bundle.channels,
            "dataset": dataset}


def train_ebm(cfg: Config, bundle: DatasetBundle, out: Path, device: torch.device,
              resume: bool = False) -> Path:
    out = Path(out)
    ckpt_file = checkpoint_path(out)
    arch, args = ebm_arch_args(cfg, bundle)
    seed = cfg["run.seed"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "ebm-init"))  # initial weights depend on the seed only
        net = get_registries().models.get(arch).build(**args).to(device)
    data = to_internal(bundle.train.x).to(device)
    shape = tuple(data.shape[1:])
    bank_size = cfg["train.bank_size"] or len(data)
    steps, k_mcmc, batch = cfg["train.steps"], cfg["train.mcmc_steps"], cfg["train.batch_size"]
    settings = LangevinSettings(cfg["langevin.tau"], cfg["langevin.temperature"], 1.0,
                                "fp32", cfg["langevin.channels_last"])
    from ebmctl.device import resolve_precision

    settings.precision = resolve_precision(cfg["langevin.precision"], device)
    start, history = 0, []
    bank = init_bank(cfg["train.bank_init"], bank_size, shape, data.cpu(),
                     make_generator("cpu", seed, "bank-init")).to(device)
    opt = _make_optimizer(net, cfg, 0)
    if resume and ckpt_file.exists():
        ck = load_checkpoint(ckpt_file, "ebm")
        net.load_state_dict(ck["model"])
        start = ck["step"]
        opt = _make_optimizer(net, cfg, start)
        if type(opt).__name__ == (ck["opt_meta"] or {}).get("class"):
            restore_optimizer(opt, ck)
        bank = ck["tensors"]["bank"].to(device)
        history = ck["state"].get("history", [])
        info(f"resumed from {ckpt_file} at update {start}")
    elif resume:
        info(f"no checkpoint at {ckpt_file}; starting from scratch")
    every = cfg["train.checkpoint_every"]
    grid_every = cfg["output.grid_every"] or every
    t0 = time.time()
    with progress_bar(steps - start, f"train ebm ({out.name})") as bar:
        for step in range(start, steps):
            if cfg["train.sgd_switch_step"] and step == cfg["train.sgd_switch_step"]:
                opt = _make_optimizer(net, cfg, step)
            gen = make_generator(device, seed, "ebm-train", step)
            pos_idx = torch.randint(0, len(data), (batch,), generator=gen, device=device)
            pos = data[pos_idx] + cfg["train.data_noise"] * torch.randn(
                (batch, *shape), generator=gen, device=device)
            bank_idx = torch.randperm(bank_size, generator=gen, device=device)[:batch]
            try:
                neg = langevin(net, bank[bank_idx], k_mcmc, settings, gen)
            except NumericalError as exc:
                raise numerical_stop(f"{exc.message} (update {step})", ckpt_file) from None
            bank[bank_idx] = neg
            net.train()
            e_pos, e_neg = net(pos).mean(), net(neg).mean()
            loss = e_pos - e_neg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if not math.isfinite(loss.item()) or not grads_finite(net):
                raise numerical_stop(f"EBM loss or gradient became NaN/Inf (loss {loss.item()}) "
                                     f"at update {step}", ckpt_file)
            opt.step()
            if (step + 1) % cfg["train.log_every"] == 0 or step + 1 == steps:
                _, g = energy_and_grad(net, neg, "fp32")
                rec = {"step": step + 1, "energy_gap": loss.item(), "energy_pos": e_pos.item(),
                       "energy_neg": e_neg.item(),
                       "langevin_grad_norm": g.flatten(1).norm(dim=1).mean().item(),
                       "optimizer": type(opt).__name__, "seconds": round(time.time() - t0, 2)}
                history.append(rec)
            bar.advance(1, f"gap {loss.item():+.3g}")
            if (step + 1) % every == 0 and step + 1 < steps:
                save_checkpoint(ckpt_file, target="ebm", step=step + 1, model=net, optimizer=opt,
                                tensors={"bank": bank}, state={"history": history},
                                config=cfg, arch=arch, arch_args=args)
            if (step + 1) % grid_every == 0 or step + 1 == steps:
                save_grid(to_public(bank[:64]), out.with_name(out.stem + f".samples-{step + 1:06d}.png"))
    extra = {"tau": cfg["langevin.tau"], "temperature": cfg["langevin.temperature"],
             "training": {"updates": steps, "seconds": round(time.time() - t0, 1),
                          "final": history[-1] if history else {}}}
    if cfg["train.longrun_steps"]:
        extra["longrun"] = longrun_check(net, data, settings, cfg["train.longrun_steps"], seed,
                                         out, device)
    save_artifact(out, model_tensors(net), kind="ebm", arch=arch, arch_args=args,
                  task=cfg["task.name"], data=ebm_data_meta(bundle, cfg["data.dataset"]),
                  config=cfg, step=steps, extra=extra)
    finish_energy_run(out, ckpt_file, history, extra, cfg, device, "U", "EBM training")
    return out


def longrun_check(net, data, settings, steps, seed, out: Path, device) -> dict:
    """Samples after many more steps than training used, from data: do they stay in range?"""
    gen = make_generator(device, seed, "longrun")
    x0 = data[torch.randperm(len(data), generator=gen, device=device)[:64]]
    x = langevin(net, x0, steps, settings, gen)
    save_grid(to_public(x), out.with_name(out.stem + f".longrun-{steps}.png"))
    outside = (x.abs() > 1.0).float().mean().item()
    return {"steps": steps, "fraction_outside_range": round(outside, 4),
            "mean_abs_change": round((x - x0).abs().mean().item(), 4),
            "convergent_hint": json.dumps(outside < 0.05)}
