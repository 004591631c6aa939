"""Mid-run EBM training (docs/algorithms.md#mid-run-training): rejuvenation rate and source,
annealing, health, CLI."""

import json

import pytest
import torch

from ebmctl.artifacts import load_artifact, model_tensors, save_artifact
from ebmctl.nn.sngan import SNGANGenerator
from ebmctl.profiles import resolve
from profile_runs import train_midrun
from ebmctl.testing import run_cli, tiny_bundle
from ebmctl.training.health import assess_convergence
from ebmctl.training.midrun import (
    data_source,
    generator_source,
    lr_at,
    rejuvenate,
    rejuvenation_probability,
)
from ebmctl.training.trainer import TrainConfig


def test_rejuvenation_probability_is_k_over_kdef():
    cfg = resolve(None, ["train.mcmc_steps=100", "train.target_horizon=2000"])
    assert rejuvenation_probability(cfg.section(TrainConfig)) == pytest.approx(0.05)
    cfg = resolve(None, ["train.rejuv_prob=0.2"])
    assert rejuvenation_probability(cfg.section(TrainConfig)) == pytest.approx(0.2)


def test_rejuvenation_probability_rejects_short_horizon():
    from ebmctl.errors import ConfigError

    cfg = resolve(None, ["train.mcmc_steps=100", "train.target_horizon=50"])
    with pytest.raises(ConfigError, match="target_horizon"):
        rejuvenation_probability(cfg.section(TrainConfig))


def test_rejuvenated_rows_come_from_data_at_rate_p():
    data = torch.rand(50, 1, 4, 4) * 2 - 1
    states = torch.full((4000, 1, 4, 4), 5.0)  # far outside the data: replaced rows stand out
    gen = torch.Generator().manual_seed(0)
    out, mask = rejuvenate(states, 0.1, data_source(data), gen)
    # Binomial(4000, 0.1): sd ≈ 19, so ±60 is a 3-sigma tolerance.
    assert abs(int(mask.sum()) - 400) < 60
    assert torch.equal(out[~mask], states[~mask])
    flat = data.flatten(1)
    for row in out[mask].flatten(1):
        assert (flat == row).all(dim=1).any()  # each rejuvenated row is a data image


def test_rejuvenation_from_generator_artifact(tmp_path):
    g = SNGANGenerator(latent_dim=4, image_size=8, channels=1, width=8)
    with torch.no_grad():  # a recognisable generator: every output pixel is tanh(0.5)
        g.out.weight.zero_()
        g.out.bias.fill_(0.5)
    g.eval()
    args = {"latent_dim": 4, "image_size": 8, "channels": 1, "width": 8}
    path = save_artifact(tmp_path / "g.safetensors", model_tensors(g), kind="generator",
                         arch="sngan-generator", arch_args=args)
    source = generator_source(path, (1, 8, 8), "cpu")
    assert source.name == "generator:g.safetensors"
    states = torch.full((200, 1, 8, 8), -3.0)
    out, mask = rejuvenate(states, 0.5, source, torch.Generator().manual_seed(1))
    assert 0 < int(mask.sum()) < 200
    assert torch.allclose(out[mask], torch.full_like(out[mask], float(torch.tanh(torch.tensor(0.5)))))
    with pytest.raises(Exception, match="shape"):
        generator_source(path, (3, 8, 8), "cpu")


def test_lr_annealing_steps_down():
    drops = [10, 20]
    assert lr_at(0, 1e-4, drops, 0.1) == pytest.approx(1e-4)
    assert lr_at(10, 1e-4, drops, 0.1) == pytest.approx(1e-5)
    assert lr_at(25, 1e-4, drops, 0.1) == pytest.approx(1e-6)


def test_assess_convergence_flags_oversaturation_and_energy_drop():
    ok = {"data_mean_energy": 0.0, "data_energy_sd": 1.0,
          "long": {"steps": 100, "fraction_outside_range": 0.0, "mean_energy": -0.5}}
    assert assess_convergence(ok)["convergent"]
    bad = {"data_mean_energy": 0.0, "data_energy_sd": 1.0,
           "long": {"steps": 100, "fraction_outside_range": 0.3, "mean_energy": -10.0}}
    verdict = assess_convergence(bad)
    assert not verdict["convergent"] and len(verdict["reasons"]) == 2


def _tiny_cfg(extra=()):
    return resolve(None, ["train.recipe=midrun", "train.steps=6", "train.mcmc_steps=4",
                          "train.target_horizon=16", "train.batch_size=16", "train.bank_size=40",
                          "train.log_every=2", "train.checkpoint_every=3", "ebm.channels=4",
                          "train.health_chains=8", "train.lr_drops=[3]", *extra])


def test_midrun_training_logs_rate_and_health(tmp_path):
    bundle = tiny_bundle(n=60, channels=1, size=8)
    out = train_midrun(_tiny_cfg(), bundle, tmp_path / "e.safetensors", torch.device("cpu"))
    art = load_artifact(out, "ebm")
    training = art.extra["training"]
    assert training["rejuv_prob"] == pytest.approx(0.25)
    # 6 updates x 16 states = 96 Bernoulli(0.25) draws: sd ≈ 4.2 -> ±0.14 in rate is 3 sigma.
    assert abs(training["rejuv_rate"] - 0.25) < 0.14
    assert training["rejuv_source"] == "data"
    assert [h["lr"] for h in training["history"]] == pytest.approx([1e-4, 1e-5, 1e-5])
    health = art.extra["health"]
    # the verdict is decided at K_def = defense.steps (1500 by default), not at 10·K = 40
    assert health["short"]["steps"] == 4 and health["long"]["steps"] == 1500
    assert health["decided_at"] == 1500 and "at 1500 Langevin steps" in health["verdict"]
    assert isinstance(health["convergent"], bool)
    for key in ("short", "long"):
        assert (tmp_path / health[key]["grid"]).exists()
    log = json.loads((tmp_path / "e.log.json").read_text())
    assert {"energy_gap", "param_grad_norm", "langevin_grad_norm", "rejuv_rate"} <= set(log["history"][0])


def test_cli_rejects_unknown_recipe_and_missing_generator(tmp_path):
    r = run_cli(["train", "ebm", "--recipe", "bogus", "--out", str(tmp_path / "x.safetensors")])
    assert r.exit_code != 0 and "train.recipe" in r.output and "Traceback" not in r.output
    r = run_cli(["train", "ebm", "--recipe", "midrun", "--set", "train.rejuv_source=generator",
                 "--out", str(tmp_path / "x.safetensors")])
    assert r.exit_code != 0 and "rejuv_generator" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.safetensors").exists()
