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
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ebmctl.artifacts import atomic_write_json, model_tensors, save_artifact
from ebmctl.console import info, progress_bar
from ebmctl.data_utils import pick_subset
from ebmctl.errors import ConfigError, NumericalError
from ebmctl.evaluate.plots import save_curves, save_grid
from ebmctl.nn.sngan import Encoder, SNGANGenerator, project_to_sphere
from ebmctl.config import Config, RunRecord, setting
from ebmctl.contracts import DatasetBundle
from ebmctl.seeds import keeps_global_rng, make_generator, seed_global_rng
from ebmctl.units import to_internal, to_public


#: Held-out images of the reconstruction figure.
HELD_OUT_IMAGES = 512


@dataclass(frozen=True)
class AutoencoderConfig:
    """The profile section ``[autoencoder]``: the encoder I and decoder G of the autoencoder of
    thesis §6.5.2 (latent on the sphere of radius √m) and how long they train."""

    section: ClassVar[str] = "autoencoder"

    latent_dim: int = setting(128, "latent size m (projected to the sphere of radius √m)",
                              minimum=1)
    width: int = setting(64, "decoder (SNGAN generator) width", minimum=1)
    encoder_width: int = setting(32, "encoder base width", minimum=1)
    steps: int = setting(2000, "autoencoder updates", minimum=0)
    batch_size: int = setting(64, "autoencoder batch size", minimum=1)
    lr: float = setting(0.0002, "autoencoder Adam learning rate", minimum=0)
    mse_scale: float = setting(1000.0, "loss = scale · MSE (thesis §6.5.2)", minimum=0)


@dataclass(frozen=True)
class AutoencoderSections:
    """What :func:`train_autoencoder` reads from the profile: its ``[autoencoder]`` section,
    the run seed, the log cadence (``train.log_every``) and the dataset name the artifacts
    record."""

    autoencoder: AutoencoderConfig
    seed: int
    log_every: int
    dataset: str

    @classmethod
    def from_config(cls, cfg: Config) -> "AutoencoderSections":
        from ebmctl.context import DataConfig, RunConfig
        from ebmctl.training.trainer import TrainConfig

        return cls(cfg.section(AutoencoderConfig), cfg.section(RunConfig).seed,
                   cfg.section(TrainConfig).log_every, cfg.section(DataConfig).dataset)


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
def train_autoencoder(sections: AutoencoderSections, record: RunRecord, bundle: DatasetBundle,
                      out: Path, device: torch.device) -> Path:
    """Train encoder I and decoder G for ``autoencoder.steps`` updates of scale·MSE on
    ``bundle``'s training images ([-1,1] internal units, batches keyed by (seed, update)); write
    the decoder as a ``generator`` artifact at ``out``, the encoder beside it (both recording
    ``record``), a JSON log, sample and reconstruction grids and the loss curve.

    Raises:
        ConfigError: the networks cannot be built for the data's image size.
        NumericalError: the loss became NaN/Inf.
    """
    out = Path(out)
    ae, seed = sections.autoencoder, sections.seed
    enc, dec, enc_args, dec_args = _build(ae, seed, bundle, device)
    held_split = bundle.val if len(bundle.val) else bundle.test
    held = to_internal(pick_subset(held_split, HELD_OUT_IMAGES).x).to(device)
    t0 = time.time()
    history = _fit(ae, seed, sections.log_every, enc, dec,
                   to_internal(bundle.train.x).to(device), out, device, t0)
    val_mse = reconstruction_mse(enc, dec, held)
    _save_grids(ae.latent_dim, seed, enc, dec, held, out, device)
    extra = {"latent_prior": "sphere", "val_mse": val_mse, "history": history,
             "encoder": encoder_path(out).name, "seconds": round(time.time() - t0, 1)}
    data_meta = {"range": "[-1,1]", "image_size": bundle.image_size,
                 "channels": bundle.channels, "dataset": sections.dataset}
    steps = ae.steps
    save_artifact(encoder_path(out), model_tensors(enc), kind="encoder", arch="encoder",
                  arch_args=enc_args, data=data_meta, config=record, step=steps,
                  extra={"latent_prior": "sphere", "val_mse": val_mse})
    save_artifact(out, model_tensors(dec), kind="generator", arch="sngan-generator",
                  arch_args=dec_args, data=data_meta, config=record, step=steps, extra=extra)
    from ebmctl.context import environment

    atomic_write_json(out.with_suffix(".log.json"), {"history": history, "extra": extra,
                                                     "config": record.to_dict(),
                                                     "environment": environment(device, seed=seed)})
    if history:
        save_curves(out.with_suffix(".mse.png"),
                    {"train MSE": ([h["step"] for h in history], [h["train_mse"] for h in history])},
                    "update", "MSE (internal units)", "autoencoder", hline=val_mse)
    info(f"autoencoder held-out MSE {val_mse:.4f} (internal [-1,1] units)")
    return out


def _build(ae: AutoencoderConfig, seed: int, bundle: DatasetBundle,
           device) -> tuple[Encoder, SNGANGenerator, dict, dict]:
    """(encoder, decoder, their constructor arguments), initial weights from ``seed`` only."""
    size, ch, m = bundle.image_size, bundle.channels, ae.latent_dim
    dec_args = {"latent_dim": m, "image_size": size, "channels": ch, "width": ae.width,
                "bn_fixed": False}
    enc_args = {"in_channels": ch, "image_size": size, "latent_dim": m,
                "width": ae.encoder_width, "sphere": True}
    seed_global_rng(seed, "autoencoder-init")
    try:
        dec, enc = SNGANGenerator(**dec_args).to(device), Encoder(**enc_args).to(device)
    except ValueError as exc:
        raise ConfigError(f"cannot build the autoencoder for {size}x{size} images: {exc}") from None
    return enc, dec, enc_args, dec_args


def _fit(ae: AutoencoderConfig, seed: int, log_every: int, enc: Encoder, dec: SNGANGenerator,
         data: torch.Tensor, out: Path, device, t0: float) -> list[dict]:
    """The Adam updates on batches of ``data`` (internal units) drawn with replacement, keyed
    by (seed, update). Returns the history logged every ``log_every`` (``train.log_every``)
    updates."""
    steps, batch, scale = ae.steps, ae.batch_size, ae.mse_scale
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=ae.lr, betas=(0.5, 0.999))
    history: list[dict] = []
    every = max(1, log_every)
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
    return history


def _save_grids(m: int, seed: int, enc: Encoder, dec: SNGANGenerator, held: torch.Tensor,
                out: Path, device) -> None:
    """64 decoded samples from latents on the sphere of dimension ``m``, and 32 held-out images
    over their reconstructions."""
    with torch.no_grad():
        gen = make_generator(device, seed, "ae-sample")
        z = project_to_sphere(torch.randn((64, m), generator=gen, device=device))
        samples = dec(z)
        recon = dec(enc(held[:32]))
    save_grid(to_public(samples), out.with_name(out.stem + ".samples.png"))
    save_grid(to_public(torch.cat([held[:32], recon])), out.with_name(out.stem + ".recon.png"))
