"""The end-of-run health verdict: decided at the horizon the defense uses
(K_def and the long-run horizon, not 10·K), named in the verdict, with label survival there
when a classifier is given and "not measured" otherwise; one check for both trainers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ebmctl.artifacts import load_artifact
from ebmctl.profiles import resolve
from ebmctl.contracts import DatasetBundle, Split
from ebmctl.sampling.langevin import LangevinSettings
from ebmctl.testing import run_cli
from ebmctl.training.health import (
    LABELS_NOT_MEASURED,
    HealthHorizons,
    health_horizon,
    run_health_check,
)
from ebmctl.training.trainer import TrainConfig


class Tilted(nn.Module):
    """U(x) = −α·Σx: every Langevin step (drift τ²/(2T) = 1 below) adds α to each pixel, so
    chains stay in range for tens of steps and leave [-1, 1] over a thousand."""

    def __init__(self, alpha: float = 0.002):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(alpha))

    def forward(self, x):
        return -self.alpha * x.flatten(1).sum(1)


class Brightness(nn.Module):
    """A 'classifier' of [0,1] images: class 1 iff the mean pixel exceeds 0.5."""

    def forward(self, x01):
        bright = x01.flatten(1).mean(1) > 0.5
        return torch.stack([(~bright).float(), bright.float()], 1)


def _bundle(n=16):
    g = torch.Generator().manual_seed(0)
    # dark images (mean < 0.45: class 0) whose brightness varies, so the data's energy has a
    # spread to measure drift against
    base = 0.1 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)
    x = base + 0.05 * torch.rand(n, 1, 8, 8, generator=g)
    split = Split(x, torch.zeros(n, dtype=torch.long))
    return DatasetBundle("flat", split, split, split, 2, ["dark", "bright"], {})


SETTINGS = LangevinSettings(0.01, 5e-5)  # drift τ²/(2T) = 1, noise τ = 0.01


def _cfg(*sets):
    return resolve(None, ["train.mcmc_steps=2", "train.health_chains=16", "defense.steps=10",
                          *sets])


def _horizon(cfg, trained_horizon: int = 0) -> int:
    return health_horizon(cfg.section(TrainConfig), cfg["defense.steps"], trained_horizon)


def _check(net, cfg, bundle, **kw):
    """The trainer's call of the health check for the run ``cfg`` describes."""
    train = cfg.section(TrainConfig)
    return run_health_check(net, bundle, SETTINGS, "cpu", None,
                            HealthHorizons.of(train, cfg["defense.steps"]),
                            chains=train.health_chains, seed=cfg["run.seed"], **kw)


def test_verdict_names_its_horizon_and_a_longer_horizon_withdraws_convergent():
    net, bundle = Tilted(), _bundle()
    at_10k = _check(net, _cfg("train.health_horizon=20"), bundle)
    assert at_10k["convergent"] and at_10k["decided_at"] == 20
    assert at_10k["verdict"].startswith("convergent at 20 Langevin steps")
    assert LABELS_NOT_MEASURED in at_10k["verdict"]  # no classifier: no claim about labels
    # the defense's horizon K_def = 1500: the same EBM is no longer called convergent
    cfg = _cfg("defense.steps=1500")
    assert _horizon(cfg) == 1500  # max(10·K, K_def)
    at_kdef = _check(net, cfg, bundle)
    assert not at_kdef["convergent"] and at_kdef["decided_at"] == 1500
    assert at_kdef["verdict"].startswith("non-convergent at 1500 Langevin steps")
    assert at_kdef["short"]["steps"] == 2 and at_kdef["defense"]["steps"] == 1500
    assert at_kdef["horizons"] == {"training_K": 2, "defense_K_def": 1500, "long_run": 1500}


def test_horizon_defaults_cover_k_def_and_the_midrun_target():
    from ebmctl.training import RECIPES
    from ebmctl.training.trainer import EnergyTrainingSections

    assert _horizon(_cfg("train.mcmc_steps=100", "defense.steps=200")) == 1000  # 10·K
    assert _horizon(_cfg("train.mcmc_steps=20", "defense.steps=100")) == 200
    midrun = _cfg("train.recipe=midrun", "train.mcmc_steps=20", "defense.steps=100",
                  "train.target_horizon=2000")
    # the shipped EBM's recipe: the K_def its chains were trained for, which the recipe names
    sections, record = EnergyTrainingSections.from_config(midrun, _bundle()), midrun.record()
    trained = RECIPES["midrun"](sections, record, _bundle(), "cpu").trained_horizon
    assert trained == 2000 and _horizon(midrun, trained) == 2000
    assert RECIPES["convergent"](sections, record, _bundle(), "cpu").trained_horizon == 0
    assert _horizon(_cfg("train.health_horizon=1500", "defense.steps=100")) == 1500
    assert _horizon(_cfg("train.longrun_steps=300")) == 300  # the older key still works


def test_label_survival_is_reported_at_each_horizon_with_a_classifier():
    net, bundle = Tilted(), _bundle()
    cfg = _cfg("train.health_horizon=1500", "defense.steps=20")
    report = _check(net, cfg, bundle, classifier=Brightness())
    assert report["start_accuracy"] == 1.0
    assert report["short"]["label_kept"] == 1.0 and report["defense"]["label_kept"] == 1.0
    assert report["long"]["label_kept"] == 0.0 and report["long"]["accuracy"] == 0.0
    assert report["labels"] == "label kept on 0.00 of chains after 1500 steps (1.00 after K_def = 20)"


def test_convergent_trainer_runs_the_same_check_and_checks_the_classifier_path_first(tmp_path):
    sets = ["run.threads=1", "data.max_train=48", "train.steps=1", "train.mcmc_steps=2",
            "train.batch_size=8", "train.bank_size=16", "ebm.channels=4", "train.log_every=1",
            "langevin.precision=fp32", "output.grid_every=1000", "train.health_chains=8",
            "defense.steps=30", "train.health_horizon=0"]  # 0: the default, max(10·K, K_def)
    argv = ["train", "ebm", "--profile", "quick", *[a for s in sets for a in ("--set", s)]]
    out = tmp_path / "e.safetensors"
    r = run_cli(argv + ["--out", out])
    assert r.exit_code == 0, r.output
    health = load_artifact(out, "ebm").extra["health"]
    assert health["decided_at"] == 30 and "at 30 Langevin steps" in health["verdict"]
    assert "training health: " in r.stderr and health["labels"] == LABELS_NOT_MEASURED
    assert (tmp_path / "e.health-K30.png").exists()
    bad = tmp_path / "bad.safetensors"
    r = run_cli(argv + ["--set", f"train.health_classifier={tmp_path / 'none.safetensors'}",
                        "--out", bad])
    assert r.exit_code != 0 and "Traceback" not in r.output and "none.safetensors" in r.stderr
    assert "train ebm" not in r.stderr  # refused before any training
    assert not bad.exists()


@pytest.mark.parametrize("chains", [0])
def test_health_chains_zero_skips_the_check(chains):
    assert _check(Tilted(), _cfg(f"train.health_chains={chains}"), _bundle()) is None
