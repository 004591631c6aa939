"""Convergent EBM learning (thesis Alg. 2; docs/algorithms.md#convergent-training):
persistent bank of noise chains never reset, data noise, K Langevin steps per update, Adam then
an SGD switch.

All randomness of update j is derived from (seed, j), so a resumed run reproduces an
uninterrupted one exactly.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ebmctl.architectures import build_model
from ebmctl.artifacts import model_tensors, save_artifact
from ebmctl.console import info, progress_bar
from ebmctl.errors import ConfigError, NumericalError
from ebmctl.evaluate.plots import save_grid
from ebmctl.config import Config
from ebmctl.contracts import DatasetBundle
from ebmctl.sampling.langevin import LangevinSettings, energy_and_grad, langevin
from ebmctl.seeds import make_generator
from ebmctl.training.checkpoint import (
    ResumeGuard,
    finish_energy_run,
    checkpoint_path,
    grads_finite,
    load_checkpoint,
    numerical_stop,
    restore_optimizer,
    save_checkpoint,
)
from ebmctl.training.health import load_health_classifier, run_health_check
from ebmctl.units import to_internal, to_public


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
              resume: bool = False, force_resume: bool = False) -> Path:
    """Convergent EBM training. With ``train.shards`` = S > 1 the bank is split into S contiguous
    blocks and every update's batch into S parts of batch/S; part s draws its data, noise, bank
    rows and Langevin noise from a generator keyed (seed, update, s) and the loss is the mean of
    the S part losses. Under torchrun (see :mod:`ebmctl.distributed`) rank r holds shard r of
    the bank and DistributedDataParallel averages the gradients; one process runs the S parts in
    turn and reaches the same weights."""
    from ebmctl import distributed as D

    ctx = D.current()
    shards = D.train_shards(cfg["train.shards"], ctx)
    if shards != cfg["train.shards"]:
        cfg = cfg.with_overrides({"train.shards": shards}, "torchrun world size")
    device = D.rank_device(ctx, torch.device(device))
    out = Path(out)
    ckpt_file = checkpoint_path(out)
    seed = cfg["run.seed"]
    net, arch, args = build_model("ebm", cfg, bundle, (seed, "ebm-init"))
    net = net.to(device)
    health_model = load_health_classifier(cfg, device) if ctx.is_main else None  # fail early
    data = to_internal(bundle.train.x).to(device)
    shape = tuple(data.shape[1:])
    bank_size = cfg["train.bank_size"] or len(data)
    steps, k_mcmc, batch = cfg["train.steps"], cfg["train.mcmc_steps"], cfg["train.batch_size"]
    part = batch // shards
    if shards > 1 and (batch % shards or bank_size // shards < part):
        raise ConfigError(f"train.shards = {shards} needs train.batch_size divisible by it and "
                          f"at least batch_size/shards = {part} bank rows per shard "
                          f"(batch_size {batch}, bank {bank_size})")
    mine = [ctx.rank] if ctx.active else list(range(shards))  # the shards this process runs
    settings = LangevinSettings(cfg["langevin.tau"], cfg["langevin.temperature"], 1.0,
                                "fp32", cfg["langevin.channels_last"])
    from ebmctl.device import resolve_precision

    settings.precision = resolve_precision(cfg["langevin.precision"], device)
    start, history = 0, []
    bank = init_bank(cfg["train.bank_init"], bank_size, shape, data.cpu(),
                     make_generator("cpu", seed, "bank-init"))
    opt = _make_optimizer(net, cfg, 0)
    guard = ResumeGuard.for_run(cfg, "ebm")
    if (resume or force_resume) and ckpt_file.exists():
        ck = load_checkpoint(ckpt_file, "ebm")
        guard.check(ck, force_resume, ckpt_file)
        net.load_state_dict(ck["model"])
        start = ck["step"]
        opt = _make_optimizer(net, cfg, start)
        if type(opt).__name__ == (ck["opt_meta"] or {}).get("class"):
            restore_optimizer(opt, ck)
        bank = ck["tensors"]["bank"]
        history = ck["state"].get("history", [])
        info(f"resumed from {ckpt_file} at update {start}")
        if ck["state"].get("shards", 1) != shards:
            info(f"the checkpoint was written with train.shards = {ck['state'].get('shards', 1)}"
                 f"; continuing with {shards} (a different random stream from here on)")
    elif resume or force_resume:
        info(f"no checkpoint at {ckpt_file}; starting from scratch")
    if shards == 1:
        banks = {0: bank.to(device)}
    else:  # each process keeps only its own shards
        banks = {s: bank[slice(*D.shard_bounds(bank_size, shards, s))].clone().to(device)
                 for s in mine}
    del bank
    model = D.data_parallel(net, ctx, device)  # what the loss runs through; Langevin uses net

    def whole_bank() -> torch.Tensor:  # all shards, in bank order (collective under torchrun)
        if shards == 1:
            return banks[0]
        parts = D.gather_objects({s: b.cpu() for s, b in banks.items()}, ctx)
        merged = {s: b for p in parts for s, b in p.items()}
        return torch.cat([merged[s] for s in range(shards)])

    every = cfg["train.checkpoint_every"]
    grid_every = cfg["output.grid_every"] or every
    t0 = time.time()
    with progress_bar(steps - start, f"train ebm ({out.name})") as bar:
        for step in range(start, steps):
            if cfg["train.sgd_switch_step"] and step == cfg["train.sgd_switch_step"]:
                opt = _make_optimizer(net, cfg, step)
            opt.zero_grad(set_to_none=True)
            totals, negs = [0.0, 0.0, 0.0], []
            for s in mine:
                key = ("ebm-train", step) if shards == 1 else ("ebm-train", step, s)
                gen = make_generator(device, seed, *key)
                pos_idx = torch.randint(0, len(data), (part,), generator=gen, device=device)
                pos = data[pos_idx] + cfg["train.data_noise"] * torch.randn(
                    (part, *shape), generator=gen, device=device)
                bank_idx = torch.randperm(len(banks[s]), generator=gen, device=device)[:part]
                try:
                    neg, failed = langevin(net, banks[s][bank_idx], k_mcmc, settings, gen), ""
                except NumericalError as exc:
                    neg, failed = None, exc.message
                if ctx.active and D.sum_over_ranks([float(bool(failed))], ctx, device)[0]:
                    failed = failed or "a Langevin chain of another process produced NaN/Inf"
                if failed:
                    raise numerical_stop(f"{failed} (update {step})", ckpt_file) from None
                banks[s][bank_idx] = neg
                negs.append(neg)
                model.train()
                e_pos, e_neg = model(pos).mean(), model(neg).mean()
                loss = e_pos - e_neg
                # one process: mean over the shards by accumulation; torchrun: DDP averages
                (loss / len(mine) if len(mine) > 1 else loss).backward()
                totals = [t + v.item() for t, v in zip(totals, (loss, e_pos, e_neg))]
            gap, mean_pos, mean_neg = (t / shards for t in D.sum_over_ranks(totals, ctx, device))
            if not math.isfinite(gap) or not grads_finite(net):
                raise numerical_stop(f"EBM loss or gradient became NaN/Inf (loss {gap}) "
                                     f"at update {step}", ckpt_file)
            opt.step()
            if (step + 1) % cfg["train.log_every"] == 0 or step + 1 == steps:
                norms = [energy_and_grad(net, neg, "fp32")[1].flatten(1).norm(dim=1).mean().item()
                         for neg in negs]
                rec = {"step": step + 1, "energy_gap": gap, "energy_pos": mean_pos,
                       "energy_neg": mean_neg,
                       "langevin_grad_norm": D.sum_over_ranks([sum(norms)], ctx, device)[0]
                       / shards,
                       "optimizer": type(opt).__name__, "seconds": round(time.time() - t0, 2)}
                history.append(rec)
            bar.advance(1, f"gap {gap:+.3g}")
            if (step + 1) % every == 0 and step + 1 < steps:
                full = whole_bank()
                if ctx.is_main:
                    save_checkpoint(ckpt_file, target="ebm", step=step + 1, model=net,
                                    optimizer=opt, tensors={"bank": full},
                                    state={"history": history, "shards": shards}, config=cfg,
                                    arch=arch, arch_args=args, guard=guard)
            if ctx.is_main and ((step + 1) % grid_every == 0 or step + 1 == steps):
                save_grid(to_public(banks[0][:64]),
                          out.with_name(out.stem + f".samples-{step + 1:06d}.png"))
    extra = {"tau": cfg["langevin.tau"], "temperature": cfg["langevin.temperature"],
             "training": {"updates": steps, "seconds": round(time.time() - t0, 1),
                          "final": history[-1] if history else {}}}
    if shards > 1:
        extra["training"].update(shards=shards, world_size=ctx.world_size)
    extra.update(guard.artifact_extra())
    if ctx.is_main:
        health = run_health_check(net, cfg, bundle, settings, device, out, health_model)
        if health is not None:
            extra["health"] = health
        save_artifact(out, model_tensors(net), kind="ebm", arch=arch, arch_args=args,
                      task=cfg["task.name"], data=ebm_data_meta(bundle, cfg["data.dataset"]),
                      config=cfg, step=steps, extra=extra)
        finish_energy_run(out, ckpt_file, history, extra, cfg, device, "U", "EBM training")
    D.barrier(ctx)  # the other ranks return once rank 0 has written the artifact
    return out
