"""One energy-training loop: the convergent, mid-run and Hat recipes run in the same trainer
(ebmctl/training/trainer.py), so what it owns behaves the same for each of them: a resume with
other settings is refused, a resume with the checkpoint's settings ends where an uninterrupted
run ends, and NaN in the sampler stops the run with one line naming the last good checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

import ebmctl.training.trainer as loop
import profile_runs as runs
from ebmctl.artifacts import load_artifact
from ebmctl.errors import ConfigError, NumericalError
from ebmctl.profiles import resolve
from ebmctl.testing import tiny_bundle

CPU = torch.device("cpu")
TINY = ["train.steps=4", "train.checkpoint_every=2", "train.mcmc_steps=2", "train.batch_size=8",
        "train.log_every=1", "output.grid_every=1000", "train.health_chains=0", "run.threads=1",
        "langevin.precision=fp32"]
EBM = TINY + ["train.bank_size=16", "ebm.channels=4"]
HAT = TINY + ["hat.width=8", "hat.generator_width=8", "hat.latent_dim=8", "hat.bank_size=16"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(name: str):
    """(train function, its resolved profile, module and name of its sampler, NaN-ing wrapper)."""
    if name == "convergent":
        import ebmctl.training.convergent as mod

        return runs.train_ebm, resolve("quick", EBM), mod, "langevin", lambda out: out * float("nan")
    if name == "midrun":
        import ebmctl.training.midrun as mod

        cfg = resolve("quick", EBM + ["train.recipe=midrun", "train.target_horizon=4"])
        return runs.train_midrun, cfg, mod, "langevin", lambda out: out * float("nan")
    import ebmctl.training.hat as mod

    return (runs.train_hat, resolve(None, HAT), mod, "hat_langevin",
            lambda out: (out[0] * float("nan"), out[1]))


RECIPES = ["convergent", "midrun", "hat"]


def test_the_recipes_are_small_classes_of_the_one_trainer():
    from ebmctl.training.convergent import Convergent
    from ebmctl.training.hat import HatRecipe
    from ebmctl.training.midrun import MidRun

    for recipe in (Convergent, MidRun, HatRecipe):
        assert issubclass(recipe, loop.EnergyRecipe)
        # the loop, resume, checkpoints and the numerical stop are the trainer's alone
        assert not {"run", "_resume", "_update", "_after_update", "_finish"} & set(vars(recipe))


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_refuses_a_resume_with_other_settings_and_resumes_exactly(
        name, tmp_path, monkeypatch):
    train, cfg, *_ = _recipe(name)
    bundle = tiny_bundle(n=48)
    full = train(cfg, bundle, tmp_path / "full.safetensors", CPU)
    out = tmp_path / "part.safetensors"
    real = loop.save_checkpoint

    def save_then_die(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, bundle, out, CPU)
    monkeypatch.setattr(loop, "save_checkpoint", real)
    with pytest.raises(ConfigError, match=r"train\.data_noise") as err:
        train(cfg.with_overrides({"train.data_noise": 0.5}), bundle, out, CPU, resume=True)
    assert "\n" not in str(err.value) and not out.exists()
    train(cfg, bundle, out, CPU, resume=True)
    a, b = load_artifact(full).tensors, load_artifact(out).tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not out.with_name("part.ckpt.safetensors").exists()


@pytest.mark.parametrize("name", RECIPES)
def test_nan_in_each_recipes_sampler_stops_with_the_last_good_checkpoint(
        name, tmp_path, monkeypatch):
    train, cfg, module, sampler, nan = _recipe(name)
    real, calls = getattr(module, sampler), {"n": 0}

    def diverging(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return nan(out) if calls["n"] == 3 else out  # update 3, after the checkpoint of update 2

    monkeypatch.setattr(module, sampler, diverging)
    out = tmp_path / "e.safetensors"
    with pytest.raises(NumericalError) as err:
        train(cfg, tiny_bundle(n=48), out, CPU)
    msg, ckpt = str(err.value), tmp_path / "e.ckpt.safetensors"
    assert "NaN" in msg and str(ckpt) in msg and "step 2" in msg and "--resume" in msg, msg
    assert "\n" not in msg and not out.exists()
    assert load_artifact(ckpt, "checkpoint").meta["ebmctl.step"] == "2"


def test_a_run_killed_between_checkpoints_resumes_exactly(tmp_path, crash_on_call):
    import ebmctl.training.convergent as tr

    bundle = tiny_bundle(n=48)
    cfg = resolve("quick", ["train.steps=4", "train.checkpoint_every=2", "train.mcmc_steps=3",
                            "train.batch_size=8", "train.bank_size=16", "ebm.channels=4",
                            "langevin.precision=fp32", "train.log_every=1"])
    full = runs.train_ebm(cfg, bundle, tmp_path / "full.safetensors", torch.device("cpu"))
    restore = crash_on_call(tr, "langevin", 4)
    out = tmp_path / "resumed.safetensors"
    with pytest.raises(KeyboardInterrupt):
        runs.train_ebm(cfg, bundle, out, torch.device("cpu"))
    assert not out.exists() and (tmp_path / "resumed.ckpt.safetensors").exists()
    restore()
    runs.train_ebm(cfg, bundle, out, torch.device("cpu"), resume=True)
    a, b = load_artifact(full), load_artifact(out)
    assert a.tensors.keys() == b.tensors.keys()
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k


def test_the_artifact_log_and_checkpoint_record_the_profile_as_it_resolved(tmp_path,
                                                                          monkeypatch):
    """The recipes write the run's RunRecord: the same nested profile ``Config.to_dict()``
    gives, in the artifact, the JSON log and every checkpoint."""
    cfg = resolve("quick", EBM)
    checkpoints = []
    real = loop.save_checkpoint

    def keep(path, **kw):
        real(path, **kw)
        checkpoints.append(load_artifact(path, "checkpoint").config)

    monkeypatch.setattr(loop, "save_checkpoint", keep)
    out = runs.train_ebm(cfg, tiny_bundle(n=48), tmp_path / "e.safetensors", CPU)
    expected = cfg.to_dict()
    assert load_artifact(out).config == expected and checkpoints == [expected]
    assert json.loads(out.with_suffix(".log.json").read_text())["config"] == expected
