"""Held-out and capped image selections are seeded, class-mixed subsets, not prefixes of a split.

Splits come back sorted (an ImageFolder is sorted by class), so the first n images of a split
are one class. Every command draws its images through :func:`ebmctl.data_utils.pick_subset`;
each test below runs one command's selection on a class-sorted toy dataset whose images encode
their class, and checks that the images it uses cover several classes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ebmctl.context import evaluation_settings
from ebmctl.data_utils import make_bundle, pick_subset
from ebmctl.api import hookimpl
from ebmctl.contracts import DatasetSpec, Split
from ebmctl.testing import plugin_registered, run_cli

sys.path.insert(0, str(Path(__file__).parent / "corpus"))
from make_corpus import save_valid  # noqa: E402
import profile_runs  # noqa: E402

CLASSES, PER_CLASS, N = 5, 40, 8
CPU = torch.device("cpu")


def _sorted_toy(request):
    """Class-sorted like an ImageFolder: every image of class c is the constant (c + 1) / 8."""
    y = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    x = ((y.float() + 1) / 8).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    return make_bundle("sorted-toy", x, y, request, CLASSES)


def classes_of(x: torch.Tensor) -> set[int]:
    return {int(round(v * 8)) - 1 for v in x.flatten(1).mean(1).tolist()}


class SortedToy:
    @hookimpl
    def ebmctl_register_datasets(self, register):
        register(DatasetSpec("sorted-toy", _sorted_toy))


@pytest.fixture
def toy():
    with plugin_registered(SortedToy(), "sorted-toy"):
        yield


@pytest.fixture
def cfg(toy):
    from ebmctl.profiles import resolve

    return resolve("quick", ["data.dataset=sorted-toy", "run.threads=1"])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return save_valid(tmp_path_factory.mktemp("artifacts"))


def test_the_toy_splits_are_class_sorted(cfg):
    from ebmctl.context import load_dataset

    test = load_dataset(cfg).test
    assert classes_of(test.x[:N]) == {0}  # what a prefix would give


def test_pick_subset_is_seeded_class_mixed_and_in_split_order():
    y = torch.arange(4).repeat_interleave(25)
    split = Split(y.float().view(-1, 1), y)
    sub = pick_subset(split, 10)
    assert len(sub) == 10 and len(set(sub.y.tolist())) >= 3
    assert sub.y.tolist() == sorted(sub.y.tolist())  # split order kept
    assert torch.equal(pick_subset(split, 10).x, sub.x)  # seeded
    assert pick_subset(split, 0) is split and pick_subset(split, 100) is split


def test_attack_images_are_unchanged_by_the_shared_helper(cfg):
    """The attack's selection (randperm with generator seed 0, first n, sorted) is the one
    every command now uses, so attack figures do not move."""
    from ebmctl.context import load_dataset
    from ebmctl.evaluate.report import evaluation_images

    cfg = cfg.with_overrides({"attack.n_images": N})
    _, x, y = evaluation_images(evaluation_settings(cfg))
    test = load_dataset(cfg).test
    old = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:N].sort().values
    assert torch.equal(x, test.x[old]) and torch.equal(y, test.y[old])
    assert len(set(y.tolist())) >= 3


def test_ood_scores_class_mixed_held_out_images(cfg, artifacts, monkeypatch, tmp_path):
    import ebmctl.ood as ood

    seen = []
    real = ood.energies

    def recording(fn, x, device, *a, **k):
        seen.append(x.clone())
        return real(fn, x, device, *a, **k)

    monkeypatch.setattr(ood, "energies", recording)
    from ebmctl.commands.ood import ood_settings

    settings = ood_settings(cfg.with_overrides({"ood.n_images": N}, "--set"), artifacts["ebm"])
    ood.run_ood(settings, artifacts["ebm"], CPU, tmp_path / "ood.json", sets=["sorted-toy"])
    assert len(seen) == 2
    for x in seen:  # in-distribution and the (same, sorted) OOD set
        assert len(x) == N and len(classes_of(x)) >= 3


def test_synthesize_quality_reference_and_floor_are_class_mixed(cfg, artifacts, monkeypatch,
                                                                tmp_path):
    import ebmctl.synthesis as synthesis

    seen = {}

    def recording(sets, ref, extractors, device, floor):
        seen.update(ref=ref, floor=floor)
        return {}

    monkeypatch.setattr(synthesis, "quality_report", recording)
    cfg = cfg.with_overrides({"synth.n": 6, "synth.steps": 1, "quality.n_reference": N}, "--set")
    from ebmctl.commands.synthesize import synthesis_settings

    synthesis.run_synthesis(synthesis_settings(cfg, artifacts["ebm"]), artifacts["ebm"],
                            tmp_path / "synth", CPU, classifier=artifacts["classifier"])
    assert len(seen["ref"]) == N and len(classes_of(seen["ref"])) >= 3
    assert len(seen["floor"]) == 6 and len(classes_of(seen["floor"])) >= 3


class _Seen(Exception):
    pass


def test_lyapunov_start_images_are_class_mixed(toy, artifacts, monkeypatch, tmp_path):
    import ebmctl.dynamics.report as ly
    from ebmctl.errors import ConfigError

    seen = {}

    def exponents(run, energy, x01, **k):
        seen["exponent"] = x01.clone()
        raise ConfigError("captured")

    def memory(run, energy, task, model, x01, y, *a, **k):
        seen["memory"] = (x01.clone(), y.clone())
        raise ConfigError("captured")

    monkeypatch.setattr(ly, "exponent_report", exponents)
    monkeypatch.setattr(ly, "memory_report", memory)
    base = ["lyapunov", "--ebm", artifacts["ebm"], "--set", "data.dataset=sorted-toy",
            "--set", f"lyapunov.n_images={N}", "--set", f"lyapunov.memory_images={N}",
            "--out", tmp_path / "l.json"]
    assert "captured" in run_cli(base).stderr
    assert "captured" in run_cli(base + ["--no-exponent", "--checks", "--model",
                                         artifacts["classifier"]]).stderr
    assert len(seen["exponent"]) == N and len(classes_of(seen["exponent"])) >= 3
    x, y = seen["memory"]
    assert len(x) == N and len(set(y.tolist())) >= 3 and classes_of(x) == set(y.tolist())


def test_fixer_training_and_validation_images_are_class_mixed(cfg, artifacts, monkeypatch,
                                                              tmp_path):
    import ebmctl.training.fixer as fixing
    from ebmctl.context import load_dataset
    from ebmctl.models import EnergyModel, TaskModel

    seen = []

    def recording(energy, x, steps, key, **k):
        seen.append(x.clone())
        if len(seen) == 2:
            raise _Seen
        return x.clone()

    monkeypatch.setattr(fixing, "purify_images", recording)
    cfg = cfg.with_overrides({"fix.max_images": N, "fix.val_images": 6, "fix.width": 4,
                              "fix.blocks": 1, "fix.stage1_epochs": 1, "fix.stage2_epochs": 0},
                             "--set")
    run = fixing.FixerRun(EnergyModel.load(artifacts["ebm"], CPU), load_dataset(cfg), None,
                          TaskModel.load(artifacts["classifier"], CPU))
    with pytest.raises(_Seen):
        profile_runs.train_fixer(cfg, run, tmp_path / "f.safetensors", CPU)
    val, train = seen
    assert len(val) == 6 and len(classes_of(val)) >= 3
    assert len(train) == N and len(classes_of(train)) >= 3


def test_autoencoder_held_out_images_are_class_mixed(cfg, monkeypatch, tmp_path):
    import ebmctl.training.autoencoder as ae
    from ebmctl.context import load_dataset

    seen = []

    def recording(enc, dec, x, *a, **k):
        seen.append(x.clone())
        raise _Seen

    monkeypatch.setattr(ae, "HELD_OUT_IMAGES", N)
    monkeypatch.setattr(ae, "reconstruction_mse", recording)
    cfg = cfg.with_overrides({"autoencoder.steps": 0, "autoencoder.width": 8,
                              "autoencoder.encoder_width": 4, "autoencoder.latent_dim": 4})
    bundle = load_dataset(cfg.with_overrides({"data.image_size": 32}))
    with pytest.raises(_Seen):
        profile_runs.train_autoencoder(cfg, bundle, tmp_path / "g.safetensors", CPU)
    assert len(seen[0]) == N and len(classes_of(ae.to_public(seen[0]))) >= 3
