"""A generator without a GAN (thesis §6.5.2; docs/algorithms.md#autoencoder-generator):
encoder I + SNGAN-style decoder G trained with scale·MSE ‖X − G(I(X))‖², the encoder output
projected onto the sphere of radius √m.

The decoder is saved as a ``generator`` artifact (usable for mid-run rejuvenation and the
retrofit Hat EBM); the encoder next to it as ``<out>.encoder.safetensors``. Its latents live on
the sphere, so sampling projects z ~ N(0, I) there too (``extra.latent_prior = "sphere"``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ebmctl.artifacts import atomic_write_json, model_tensors, save_artifact
from ebmctl.console import info, progress_bar
from ebmctl.data_utils import pick_subset
from ebmctl.errors import ConfigError, NumericalError
from ebmctl.evaluate.plots import save_curves, save_grid
from ebmctl.nn.sngan import Encoder, SNGANGenerator, project_to_sphere
from ebmctl.config import Config
from ebmctl.contracts import DatasetBundle
from ebmctl.seeds import keeps_global_rng, make_generator, seed_global_rng
from ebmctl.units import to_internal, to_public


#: Held-out images of the reconstruction figure.
HELD_OUT_IMAGES = 512


def encoder_path(out: Path) -> Path:
    return out.with_name(out.name.replace(".safetensors", "") + ".encoder.safetensors")


def reconstruction_mse(enc, dec, x: torch.Tensor, batch: int = 256) -> float:
    enc.eval()
    dec.eval()
    errs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            errs.append((dec(enc(xb)) - xb).pow(2).mean(dim=(1, 2, 3)))
    return torch.cat(errs).mean().item() if errs else float("nan")


@keeps_global_rng
def train_autoencoder(cfg: Config, bundle: DatasetBundle, out: Path, device: torch.device) -> Path:
    out = Path(out)
    size, ch = bundle.image_size, bundle.channels
    m = cfg["autoencoder.latent_dim"]
    dec_args = {"latent_dim": m, "image_size": size, "channels": ch,
                "width": cfg["autoencoder.width"], "bn_fixed": False}
    enc_args = {"in_channels": ch, "image_size": size, "latent_dim": m,
                "width": cfg["autoencoder.encoder_width"], "sphere": True}
    seed_global_rng(cfg["run.seed"], "autoencoder-init")  # initial weights: the seed only
    try:
        dec, enc = SNGANGenerator(**dec_args).to(device), Encoder(**enc_args).to(device)
    except ValueError as exc:
        raise ConfigError(f"cannot build the autoencoder for {size}x{size} images: {exc}") from None
    data = to_internal(bundle.train.x).to(device)
    held_split = bundle.val if len(bundle.val) else bundle.test
    held = to_internal(pick_subset(held_split, HELD_OUT_IMAGES).x).to(device)
    steps, batch, scale = (cfg["autoencoder.steps"], cfg["autoencoder.batch_size"],
                           cfg["autoencoder.mse_scale"])
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=cfg["autoencoder.lr"],
                           betas=(0.5, 0.999))
    seed, history, t0 = cfg["run.seed"], [], time.time()
    every = max(1, cfg["train.log_every"])
    with progress_bar(steps, f"train autoencoder ({out.name})") as bar:
        for step in range(steps):
            gen = make_generator(device, seed, "autoencoder", step)
            xb = data[torch.randint(0, len(data), (batch,), generator=gen, device=device)]
            enc.train()
            dec.train()
            mse = (dec(enc(xb)) - xb).pow(2).mean()
            loss = scale * mse
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if not math.isfinite(loss.item()):
                raise NumericalError(f"autoencoder loss became {loss.item()} at update {step}")
            opt.step()
            if (step + 1) % every == 0 or step + 1 == steps:
                history.append({"step": step + 1, "train_mse": mse.item(),
                                "seconds": round(time.time() - t0, 2)})
            bar.advance(1, f"mse {mse.item():.4f}")
    val_mse = reconstruction_mse(enc, dec, held)
    with torch.no_grad():
        z = project_to_sphere(torch.randn((64, m), generator=make_generator(device, seed, "ae-sample"),
                                          device=device))
        samples = dec(z)
        recon = dec(enc(held[:32]))
    save_grid(to_public(samples), out.with_name(out.stem + ".samples.png"))
    save_grid(to_public(torch.cat([held[:32], recon])), out.with_name(out.stem + ".recon.png"))
    extra = {"latent_prior": "sphere", "val_mse": val_mse, "history": history,
             "encoder": encoder_path(out).name, "seconds": round(time.time() - t0, 1)}
    data_meta = {"range": "[-1,1]", "image_size": size, "channels": ch,
                 "dataset": cfg["data.dataset"]}
    save_artifact(encoder_path(out), model_tensors(enc), kind="encoder", arch="encoder",
                  arch_args=enc_args, data=data_meta, config=cfg, step=steps,
                  extra={"latent_prior": "sphere", "val_mse": val_mse})
    save_artifact(out, model_tensors(dec), kind="generator", arch="sngan-generator",
                  arch_args=dec_args, data=data_meta, config=cfg, step=steps, extra=extra)
    from ebmctl.context import environment

    atomic_write_json(out.with_suffix(".log.json"), {"history": history, "extra": extra,
                                                     "config": cfg.to_dict(),
                                                     "environment": environment(cfg, device)})
    if history:
        save_curves(out.with_suffix(".mse.png"),
                    {"train MSE": ([h["step"] for h in history], [h["train_mse"] for h in history])},
                    "update", "MSE (internal units)", "autoencoder", hline=val_mse)
    info(f"autoencoder held-out MSE {val_mse:.4f} (internal [-1,1] units)")
    return out
