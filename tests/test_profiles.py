"""Profiles resolve into checked, layered settings: defaults, then the profile file, then
``--set`` items (fractions such as ``8/255`` allowed), each value's provenance recorded; an
unknown key or name is refused naming the closest one, a bad value or malformed file naming the
key; the thesis profile holds the thesis' settings."""

from __future__ import annotations

import pytest

from ebmctl.errors import ConfigError
from ebmctl.profiles import resolve
from ebmctl.registry import Registry


def test_unknown_profile_key_names_closest():
    with pytest.raises(ConfigError, match="did you mean 'train.steps'"):
        resolve("quick", ["train.stepz=3"])


def test_bad_value_names_key():
    with pytest.raises(ConfigError, match="train.steps"):
        resolve("quick", ["train.steps=-1"])
    with pytest.raises(ConfigError, match="attack.eps"):
        resolve("quick", ["attack.eps=2"])
    with pytest.raises(ConfigError, match="attack.norm"):
        resolve(None, ["attack.norm=l7"])


def test_profile_layers_and_fraction():
    cfg = resolve("quick", ["attack.eps=8/255", "attack.seeds=1,2,3"])
    assert cfg["attack.eps"] == pytest.approx(8 / 255)
    assert cfg["attack.seeds"] == [1, 2, 3]
    assert cfg["train.steps"] == 600  # from the profile file
    assert cfg.provenance["attack.eps"] == "--set"
    assert cfg.provenance["train.steps"].startswith("profile")
    assert cfg.provenance["model.depth"] == "default"


def test_thesis_profile_matches_spec():
    cfg = resolve("thesis-cifar10")
    assert cfg["train.steps"] == 150000 and cfg["train.sgd_switch_step"] == 50000
    assert cfg["train.lr_adam"] == 1e-4 and cfg["train.lr_sgd"] == 5e-5
    assert cfg["langevin.tau"] == 0.01 and cfg["train.mcmc_steps"] == 100
    assert cfg["defense.steps"] == 1500 and cfg["defense.eot_reps"] == 150
    assert cfg["attack.eps"] == pytest.approx(8 / 255)
    assert cfg["attack.eot_reps"] == 15 and cfg["attack.restarts"] == 5


def test_malformed_profile_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[train\nsteps = 3")
    with pytest.raises(ConfigError, match="malformed TOML"):
        resolve(str(p))
    p.write_text('[train]\nsteps = "many"\n')
    with pytest.raises(ConfigError, match="train.steps"):
        resolve(str(p))


def test_registry_did_you_mean():
    reg = Registry("task")
    reg.register("classification", object(), "core")
    with pytest.raises(ConfigError, match="did you mean 'classification'"):
        reg.get("clasification")


def test_the_layer_that_set_a_key_is_a_set_of_keys_not_its_label(tmp_path):
    """``from_profile``: the profile file set the key and no later layer replaced it, whatever
    the provenance text says; ``chosen``: the command line set it."""
    profile = tmp_path / "p.toml"
    profile.write_text('[attack]\nnorm = "l2"\neps_l2 = 0.7\n')
    cfg = resolve(str(profile), ["attack.norm=linf"])
    assert cfg.from_profile("attack.eps_l2") and not cfg.from_profile("attack.norm")
    assert cfg.chosen("attack.norm") and not cfg.from_profile("attack.steps")
    derived = cfg.with_overrides({"attack.eps_l2": 0.5}, f"profile {cfg.name}")
    assert not derived.from_profile("attack.eps_l2")  # replaced, though labelled alike
