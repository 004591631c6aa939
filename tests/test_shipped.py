"""The shipped CIFAR-10 defaults: metadata and behaviour on held-out images.

The held-out images (tests/data/cifar10-heldout-32.safetensors) come from the validation split
both shipped models' profiles hold out (bench/shipped_cifar10.py --save-heldout).
"""

from pathlib import Path

import pytest
import torch

from ebmctl.artifacts import load_artifact
from ebmctl.models import EnergyModel, TaskModel
from ebmctl.shipped import DEFAULT_CLASSIFIER, DEFAULT_EBM
from ebmctl.testing import run_cli

HELDOUT = Path(__file__).parent / "data" / "cifar10-heldout-32.safetensors"
needs_ebm = pytest.mark.skipif(not DEFAULT_EBM.exists(), reason="this build ships no EBM")
needs_both = pytest.mark.skipif(not (DEFAULT_EBM.exists() and DEFAULT_CLASSIFIER.exists()
                                     and HELDOUT.exists()),
                                reason="this build ships no CIFAR-10 classifier")


def _heldout():
    from safetensors.torch import load_file

    t = load_file(str(HELDOUT))
    return t["x"].float() / 255, t["y"].long()


@needs_ebm
def test_shipped_ebm_metadata():
    ebm = load_artifact(DEFAULT_EBM, "ebm")
    assert ebm.extra["tau"] > 0 and ebm.extra["temperature"] > 0
    assert ebm.data["image_size"] == 32 and ebm.data["channels"] == 3
    assert ebm.config["data"]["dataset"] == "cifar10" and ebm.config["train"]["recipe"] == "midrun"
    history = ebm.extra["training"]["history"]
    assert history and history[-1]["step"] == ebm.config["train"]["steps"]
    assert "health" in ebm.extra and isinstance(ebm.extra["health"]["convergent"], bool)
    assert DEFAULT_EBM.stat().st_size < 8e6


@needs_both
def test_shipped_classifier_metadata():
    ebm = load_artifact(DEFAULT_EBM, "ebm")
    clf = load_artifact(DEFAULT_CLASSIFIER, "classifier")
    assert clf.config["data"]["dataset"] == "cifar10"
    assert clf.extra["history"] and clf.extra["history"][-1]["val_accuracy"] >= 0.80
    assert clf.extra["test_accuracy"] >= 0.80
    # Both models hold out the same validation split.
    for key in ("val_fraction", "test_fraction", "split_seed"):
        assert ebm.config["data"][key] == clf.config["data"][key]
    assert DEFAULT_CLASSIFIER.stat().st_size < 8e6


@needs_both
def test_purifying_heldout_images_keeps_accuracy():
    x, y = _heldout()
    dev = torch.device("cpu")
    clf = TaskModel.load(DEFAULT_CLASSIFIER, dev).eval()
    energy = EnergyModel.load(DEFAULT_EBM, dev)
    with torch.no_grad():
        clean = (clf(x).argmax(1) == y).float().mean().item()
    # The K_def that `ebmctl purify` uses by default (recorded in the EBM's profile).
    recorded = load_artifact(DEFAULT_EBM).config
    k = int(recorded["defense"]["steps"])
    assert k >= int(recorded["train"]["mcmc_steps"])
    purified = energy.purify01(x, k, (0, "test-shipped"))
    with torch.no_grad():
        acc = (clf(purified.clamp(0, 1)).argmax(1) == y).float().mean().item()
    assert clean >= 0.75  # the shipped classifier (validation accuracy 0.85)
    # 32 images, one chain each: allow 4 images' worth of loss below the clean accuracy.
    assert acc >= clean - 4 / 32


@needs_ebm
def test_purify_without_ebm_uses_shipped_default(tmp_path):
    from ebmctl.evaluate.plots import save_image01

    g = torch.Generator().manual_seed(0)
    save_image01(torch.rand(3, 45, 61, generator=g), tmp_path / "photo.png")
    r = run_cli(["purify", str(tmp_path / "photo.png"), "-k", "3", "--out-dir",
                 str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    from PIL import Image

    assert Image.open(tmp_path / "out" / "photo.purified.png").size == (61, 45)
