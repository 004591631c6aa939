"""`ebmctl train autoencoder` (docs/algorithms.md#autoencoder-generator) and its decoder as a
rejuvenation generator."""

import pytest
import torch

from ebmctl.artifacts import build_model, load_artifact
from ebmctl.profiles import resolve
from profile_runs import train_autoencoder
from ebmctl.testing import run_cli, tiny_bundle
from ebmctl.training.autoencoder import encoder_path, reconstruction_mse
from ebmctl.training.midrun import generator_source, rejuvenate


@pytest.mark.slow
def test_autoencoder_learns_and_decoder_rejuvenates(tmp_path):
    bundle = tiny_bundle(n=60, channels=1, size=8)
    cfg = resolve(None, ["autoencoder.steps=60", "autoencoder.latent_dim=8",
                         "autoencoder.width=16", "autoencoder.encoder_width=8",
                         "autoencoder.batch_size=32", "autoencoder.lr=2e-3", "train.log_every=20"])
    out = train_autoencoder(cfg, bundle, tmp_path / "g.safetensors", torch.device("cpu"))
    gen_art = load_artifact(out, "generator")
    enc_art = load_artifact(encoder_path(out), "encoder")
    assert gen_art.arch == "sngan-generator" and gen_art.extra["latent_prior"] == "sphere"
    dec, enc = build_model(gen_art), build_model(enc_art)
    x = bundle.val.x * 2 - 1
    # Trained reconstructions beat the trivial predictor (the mean image) on held-out data.
    baseline = (x - bundle.train.x.mean(0) * 2 + 1).pow(2).mean().item()
    assert reconstruction_mse(enc, dec, x) < 0.8 * baseline
    assert gen_art.extra["val_mse"] < 0.8 * baseline
    source = generator_source(out, (1, 8, 8), "cpu")
    states = torch.full((64, 1, 8, 8), 9.0)
    new, mask = rejuvenate(states, 1.0, source, torch.Generator().manual_seed(0))
    assert mask.all() and new.abs().max() <= 1.0


def test_autoencoder_cli_bad_size_is_one_line_error(tmp_path):
    r = run_cli(["train", "autoencoder", "--updates", "1", "--set", "data.image_size=12",
                 "--out", str(tmp_path / "g.safetensors")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert not (tmp_path / "g.safetensors").exists()
