"""Bundled profiles say what they do and run anywhere: no machine-specific absolute path, the
thesis profile uses the thesis' data (all training images, the official test split), and the
Adam→SGD switch of convergent training happens where train.sgd_switch_step says."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ebmctl.testing import run_cli, tiny_bundle

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def _strings(data, where=""):
    for k, v in data.items():
        if isinstance(v, dict):
            yield from _strings(v, f"{where}{k}.")
        elif isinstance(v, str):
            yield f"{where}{k}", v
        elif isinstance(v, list):
            yield from ((f"{where}{k}", s) for s in v if isinstance(s, str))


def test_no_bundled_profile_holds_an_absolute_path():
    from ebmctl.profiles import available_profiles

    profiles = available_profiles()
    assert {"quick", "thesis-cifar10", "cifar10-attack", "seg-quick"} <= set(profiles)
    bad = [f"{name}: {key} = {value!r}"
           for name, path in profiles.items()
           for key, value in _strings(tomllib.loads(Path(path).read_text(encoding="utf-8")))
           if key != "description" and (Path(value).is_absolute() or value.startswith("~"))]
    assert not bad, "bundled profiles must not name machine-specific paths:\n" + "\n".join(bad)


def test_a_missing_relative_data_root_says_how_to_set_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_cli(["train", "classifier", "--profile", "cifar10-classifier", "--out",
                 tmp_path / "c.safetensors"])
    assert r.exit_code == 3, r.output
    assert "dataset root not found: ../shared/data/cifar10" in r.stderr
    assert "--set data.root=DIR" in r.stderr


def _image_folder(root: Path, per_class: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c in CIFAR10_CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i:04d}.png")
    return root


def test_thesis_profile_trains_on_every_training_image_and_tests_on_the_test_split(tmp_path):
    from ebmctl.context import load_dataset
    from ebmctl.profiles import resolve

    root = _image_folder(tmp_path / "cifar", {"train": 10, "test": 2})
    bundle = load_dataset(resolve("thesis-cifar10", [f"data.root={root}"]))
    # All 100 training images (CIFAR-10: all 50,000), the official test split for evaluation.
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (100, 0, 20)
    only_train = _image_folder(tmp_path / "train-only", {"train": 10})
    bundle = load_dataset(resolve("thesis-cifar10", [f"data.root={only_train}"]))
    assert (len(bundle.train), len(bundle.test)) == (90, 10)  # no test split: hold 10% out


def test_attack_runs_with_the_thesis_profile_on_an_image_folder(tmp_path):
    from builders import random_classifier, random_ebm

    root = _image_folder(tmp_path / "cifar", {"train": 2, "test": 2})
    data = {"range": "[-1,1]", "image_size": 32, "channels": 3, "dataset": "cifar10"}
    random_ebm(tmp_path / "ebm.safetensors", data=data, task="classification")
    random_classifier(tmp_path / "clf.safetensors",
                      data={**data, "num_classes": 10, "class_names": CIFAR10_CLASSES})
    # The thesis' data settings as they are; only the attack's and defense's effort is cut.
    cheap = ["defense.steps=1", "defense.eot_reps=1", "attack.steps=1", "attack.eot_reps=1",
             "attack.restarts=1", "attack.sanity=false", "run.threads=1"]
    r = run_cli(["attack", "--profile", "thesis-cifar10", "--set", f"data.root={root}",
                 "--model", tmp_path / "clf.safetensors", "--ebm", tmp_path / "ebm.safetensors",
                 "--out", tmp_path / "r.json", *[a for s in cheap for a in ("--set", s)]])
    assert r.exit_code == 0, r.output
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n_images"] == 20  # the whole official test split of the tree


@pytest.mark.parametrize("switch", [3])
def test_sgd_switch_happens_at_the_configured_update_without_momentum(tmp_path, monkeypatch,
                                                                       switch):
    """With train.sgd_switch_step = s the first s updates use Adam, and from update s+1 on
    plain SGD (no momentum) at train.lr_sgd; 0 (the quick profile) never switches."""
    import profile_runs
    from ebmctl.profiles import resolve

    seen = []
    real_step = {cls: cls.step for cls in (torch.optim.Adam, torch.optim.SGD)}

    def spy(cls):
        def step(self, *a, **k):
            g = self.param_groups[0]
            seen.append((type(self).__name__, g["lr"], g.get("momentum", None)))
            return real_step[cls](self, *a, **k)
        return step

    for cls in real_step:
        monkeypatch.setattr(cls, "step", spy(cls))
    bundle = tiny_bundle(n=24, size=8)
    sets = ["train.steps=5", "train.mcmc_steps=1", "train.batch_size=4", "train.bank_size=8",
            "train.lr_adam=1e-3", "train.lr_sgd=7e-4", f"train.sgd_switch_step={switch}",
            "train.checkpoint_every=100", "train.log_every=1", "ebm.channels=4",
            "train.longrun_steps=0", "run.threads=1"]
    cfg = resolve("quick", sets)
    profile_runs.train_ebm(cfg, bundle, tmp_path / "ebm.safetensors", torch.device("cpu"))
    assert [s[0] for s in seen] == ["Adam"] * switch + ["SGD"] * (5 - switch), seen
    assert all(lr == 7e-4 and momentum == 0 for name, lr, momentum in seen if name == "SGD")
    assert resolve("quick")["train.sgd_switch_step"] == 0
