"""Hat EBM training (thesis Alg. 5): tandem updates of the hat network H and the generator G
with a historical bank of (X, Z) pairs, or hat-only training around a frozen pretrained
generator (refinement, thesis §6.5.1 / retrofit, §6.5.2). Algorithms:
docs/algorithms.md#hat-ebm-training.

Per update t (randomness derived from (seed, t), so a resumed run reproduces an uninterrupted
one):
  1. X⁺ = data batch + data noise; chains from Z ~ N(0,I), Y = 0, K Langevin steps (Y only in
     conditional mode, Y and Z in joint mode); X⁻ = G(Z) + Y.
  2. θ ← Adam step on mean H(X⁺) − mean H(X⁻) (Eq. 6.8; optional gradient-norm clip).
  3. If G is trained: draw B distinct bank pairs, φ ← Adam step on
     scale · MSE(G(Z_bank), X_bank) (Eq. 6.11/6.12), then overwrite those pairs with the newest
     (X⁻, Z). Learning from history instead of the current samples keeps G diverse (§6.4.5).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ebmctl.architectures import instantiate, model_args
from ebmctl.artifacts import (
    load_model,
    model_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_artifact,
)
from ebmctl.console import info, progress_bar
from ebmctl.errors import ArtifactError, ConfigError, NumericalError
from ebmctl.evaluate.plots import save_grid
from ebmctl.sampling.hat import HatSettings, hat_langevin, initial_state
from ebmctl.nn.hat import HatEBM
from ebmctl.config import Config
from ebmctl.contracts import DatasetBundle
from ebmctl.seeds import make_generator
from ebmctl.training.convergent import ebm_data_meta
from ebmctl.training.checkpoint import (
    ResumeGuard,
    finish_energy_run,
    checkpoint_path,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from ebmctl.units import to_internal, to_public


def build_hat(cfg: Config, bundle: DatasetBundle, device) -> tuple[HatEBM, dict]:
    """Fresh H; G fresh (synthesis) or loaded from ``hat.generator`` (refinement/retrofit)."""
    hat_arch, hat_args = model_args("hat", cfg, bundle)
    if cfg["hat.generator"]:
        gen_net, art = load_model(cfg["hat.generator"], ("generator",))
        gen_arch, gen_args = art.arch, art.arch_args
    else:
        gen_net = None
        gen_arch, gen_args = model_args("generator", cfg, bundle)
    arch_args = {"hat_arch": hat_arch, "hat_args": hat_args, "generator_arch": gen_arch,
                 "generator_args": gen_args}
    net = instantiate("hat-ebm", arch_args, (cfg["run.seed"], "hat-init"), "the Hat EBM")
    if gen_net is not None:
        net.generator.load_state_dict(gen_net.state_dict())
    with torch.no_grad():
        out = net.generate(torch.zeros((1, *net.latent_shape)))
    if tuple(out.shape[1:]) != (bundle.channels, bundle.image_size, bundle.image_size):
        raise ConfigError(f"the generator makes {tuple(out.shape[1:])} images but the data are "
                          f"{(bundle.channels, bundle.image_size, bundle.image_size)}")
    return net.to(device), arch_args


def settings_from(cfg: Config) -> HatSettings:
    return HatSettings(cfg["hat.eps_y"], cfg["hat.eps_z"], cfg["langevin.temperature"],
                       cfg["hat.mode"], cfg["hat.residual"], cfg["hat.residual_prior"])


def hat_update(net: HatEBM, opt_h, pos: torch.Tensor, z0: torch.Tensor, y0: torch.Tensor,
               steps: int, settings: HatSettings, gen: torch.Generator,
               grad_clip: float = 0.0) -> dict:
    """One EBM update (steps 1-2 above). Returns the negatives and the loss terms."""
    z, y = hat_langevin(net, z0, y0, steps, settings, gen)
    with torch.no_grad():
        neg = net.generate(z) + y
    net.hat.train()
    e_pos, e_neg = net.hat(pos).mean(), net.hat(neg).mean()
    loss = e_pos - e_neg
    opt_h.zero_grad(set_to_none=True)
    loss.backward()
    if not math.isfinite(loss.item()):
        raise NumericalError(f"Hat EBM loss became {loss.item()}")
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(net.hat.parameters(), grad_clip)
    opt_h.step()
    return {"neg": neg, "z": z, "y": y, "loss": loss.item(), "energy_pos": e_pos.item(),
            "energy_neg": e_neg.item()}


def generator_update(net: HatEBM, opt_g, zbank: torch.Tensor, xbank: torch.Tensor,
                     idx: torch.Tensor, scale: float) -> float:
    """One generator step towards historical bank targets (Eq. 6.12, one optimiser step)."""
    net.generator.train()
    loss = scale * F.mse_loss(net.generate(zbank[idx]), xbank[idx])
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    net.generator.eval()
    return loss.item()


def _lr(cfg: Config, base: float, step: int) -> float:
    decay = cfg["hat.lr_decay_step"]
    return base * (0.1 if decay and step >= decay else 1.0)


def train_hat(cfg: Config, bundle: DatasetBundle, out: Path, device: torch.device,
              resume: bool = False, force_resume: bool = False) -> Path:
    out = Path(out)
    ckpt_file = checkpoint_path(out)
    settings = settings_from(cfg)
    net, arch_args = build_hat(cfg, bundle, device)
    train_gen = cfg["hat.train_generator"]
    if train_gen and cfg["hat.generator"] and cfg["hat.mode"] == "joint":
        info("note: training a pretrained generator in joint mode; refinement (thesis §6.5.1) "
             "keeps it frozen (hat.train_generator = false)")
    seed, batch, k_mcmc = cfg["run.seed"], cfg["train.batch_size"], cfg["train.mcmc_steps"]
    steps = cfg["train.steps"]
    data = to_internal(bundle.train.x).to(device)
    if len(data) == 0:
        raise ConfigError("the training split is empty")
    opt_h = torch.optim.Adam(net.hat.parameters(), lr=cfg["train.lr_adam"],
                             betas=(cfg["train.adam_beta1"], cfg["train.adam_beta2"]))
    opt_g = torch.optim.Adam(net.generator.parameters(), lr=cfg["hat.lr_generator"],
                             betas=(cfg["train.adam_beta1"], cfg["train.adam_beta2"]))
    bank_size = cfg["hat.bank_size"]
    if train_gen and bank_size < batch:
        raise ConfigError(f"hat.bank_size ({bank_size}) must be at least train.batch_size ({batch})")
    start, history = 0, []
    zbank = xbank = None
    if train_gen:
        gen0 = make_generator(device, seed, "hat-bank-init")
        zbank = torch.randn((bank_size, *net.latent_shape), generator=gen0, device=device)
        with torch.no_grad():  # image bank from the initial generator (Alg. 5)
            xbank = torch.cat([net.generate(p) for p in torch.split(zbank, 512)])
    guard = ResumeGuard.for_run(cfg, "hat-ebm", {"hat.generator": cfg["hat.generator"]})
    if (resume or force_resume) and ckpt_file.exists():
        ck = load_checkpoint(ckpt_file, "hat-ebm")
        guard.check(ck, force_resume, ckpt_file)
        net.load_state_dict(ck["model"])
        restore_optimizer(opt_h, ck)
        gen_t = {k[len("genopt."):]: v for k, v in ck["tensors"].items() if k.startswith("genopt.")}
        if ck["state"].get("genopt"):
            optimizer_from_tensors(opt_g, gen_t, ck["state"]["genopt"])
        if train_gen:
            if "zbank" not in ck["tensors"]:
                raise ArtifactError(f"{ckpt_file} has no historical bank; it is from a run "
                                    "with hat.train_generator = false")
            zbank, xbank = ck["tensors"]["zbank"].to(device), ck["tensors"]["xbank"].to(device)
        start, history = ck["step"], ck["state"].get("history", [])
        info(f"resumed from {ckpt_file} at update {start}")
    elif resume or force_resume:
        info(f"no checkpoint at {ckpt_file}; starting from scratch")
    net.generator.eval()
    every = cfg["train.checkpoint_every"]
    grid_every = cfg["output.grid_every"] or every
    t0 = time.time()
    shape = tuple(data.shape[1:])
    with progress_bar(steps - start, f"train hat ebm ({out.name})") as bar:
        for step in range(start, steps):
            for g in opt_h.param_groups:
                g["lr"] = _lr(cfg, cfg["train.lr_adam"], step)
            for g in opt_g.param_groups:
                g["lr"] = _lr(cfg, cfg["hat.lr_generator"], step)
            gen = make_generator(device, seed, "hat-train", step)
            pos_idx = torch.randint(0, len(data), (batch,), generator=gen, device=device)
            pos = data[pos_idx] + cfg["train.data_noise"] * torch.randn(
                (batch, *shape), generator=gen, device=device)
            z0, y0 = initial_state(net, batch, gen, device)
            res = hat_update(net, opt_h, pos, z0, y0, k_mcmc, settings, gen, cfg["hat.grad_clip"])
            rec = {"step": step + 1, "energy_gap": res["loss"], "energy_pos": res["energy_pos"],
                   "energy_neg": res["energy_neg"],
                   "residual_norm": res["y"].flatten(1).norm(dim=1).mean().item()}
            if train_gen:
                idx = torch.randperm(bank_size, generator=gen, device=device)[:batch]
                rec["generator_loss"] = generator_update(net, opt_g, zbank, xbank, idx,
                                                         cfg["hat.gen_loss_scale"])
                zbank[idx], xbank[idx] = res["z"], res["neg"]  # swap in the newest pairs
            if (step + 1) % cfg["train.log_every"] == 0 or step + 1 == steps:
                rec["seconds"] = round(time.time() - t0, 2)
                history.append(rec)
            bar.advance(1, f"gap {res['loss']:+.3g}")
            if (step + 1) % every == 0 and step + 1 < steps:
                tensors = {}
                if train_gen:
                    tensors.update(zbank=zbank, xbank=xbank)
                gt, gmeta = optimizer_to_tensors(opt_g)
                tensors.update({f"genopt.{k}": v for k, v in gt.items()})
                save_checkpoint(ckpt_file, target="hat-ebm", step=step + 1, model=net,
                                optimizer=opt_h, tensors=tensors,
                                state={"history": history, "genopt": gmeta}, config=cfg,
                                arch="hat-ebm", arch_args=arch_args, guard=guard)
            if (step + 1) % grid_every == 0 or step + 1 == steps:
                save_grid(to_public(res["neg"][:64]),
                          out.with_name(out.stem + f".samples-{step + 1:06d}.png"))
    extra = {"mode": settings.mode, "eps_y": settings.eps_y, "eps_z": settings.eps_z,
             "temperature": settings.temperature, "mcmc_steps": k_mcmc,
             "residual": settings.residual, "residual_prior": settings.residual_prior,
             "latent_shape": list(net.latent_shape), "generator_trained": bool(train_gen),
             "generator_source": str(cfg["hat.generator"] or "trained from scratch"),
             "training": {"updates": steps, "seconds": round(time.time() - t0, 1),
                          "final": history[-1] if history else {}}, **guard.artifact_extra()}
    save_artifact(out, model_tensors(net), kind="hat-ebm", arch="hat-ebm", arch_args=arch_args,
                  task=cfg["task.name"], data=ebm_data_meta(bundle, cfg["data.dataset"]),
                  config=cfg, step=steps, extra=extra)
    finish_energy_run(out, ckpt_file, history, extra, cfg, device, "H", "Hat EBM training")
    return out
