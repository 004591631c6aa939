"""Task-model training schedules and the choice of evaluation images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ebmctl.context import evaluation_settings
from ebmctl.artifacts import load_artifact
from ebmctl.models import TaskModel
from ebmctl.evaluate.report import evaluation_images
from ebmctl.profiles import resolve
from ebmctl.testing import run_cli
from ebmctl.training.task_model import ModelConfig, task_lr


def test_onecycle_warms_up_then_decays_to_zero():
    cfg = resolve(None, ["model.lr_schedule=onecycle", "model.lr=0.2",
                         "model.warmup_fraction=0.25"])
    lrs = [task_lr(cfg.section(ModelConfig), it, 100, []) for it in range(100)]
    assert lrs[0] > 0 and abs(lrs[24] - 0.2) < 1e-12 and max(lrs) == lrs[24]
    assert all(a < b for a, b in zip(lrs[:24], lrs[1:25]))  # linear warm-up
    assert lrs[25] == lrs[24]  # the decay starts from the peak
    assert all(a > b for a, b in zip(lrs[25:], lrs[26:]))  # then linear decay towards 0
    assert 0 < lrs[-1] < 0.2 / 50
    diffs = np.diff(lrs[25:])
    assert np.allclose(diffs, diffs[0])


def test_step_schedule_drops_tenfold_at_milestones():
    cfg = resolve(None, ["model.lr=0.1"])
    assert [task_lr(cfg.section(ModelConfig), it, 100, [50, 80]) for it in (0, 49, 50, 79, 80)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001])


def test_channels_last_training_writes_a_reloadable_artifact(tmp_path):
    out = tmp_path / "clf.safetensors"
    r = run_cli(["train", "classifier", "--set", "model.arch=resnet9", "--set", "model.width=4",
                 "--set", "model.epochs=1", "--set", "model.channels_last=true",
                 "--set", "model.lr_schedule=onecycle", "--set", "model.optimizer=sgd",
                 "--set", "model.lr=0.05", "--out", str(out)])
    assert r.exit_code == 0, r.output
    art = load_artifact(out, "classifier")
    assert all(t.is_contiguous() for t in art.tensors.values())
    model = TaskModel.load(out, torch.device("cpu")).eval()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def _class_sorted_folder(root, classes=3, per_class=12):
    g = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            pixels = g.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(d / f"{i:03d}.png")


def test_evaluation_images_span_classes_of_a_class_sorted_split(tmp_path):
    _class_sorted_folder(tmp_path)
    sets = ["data.dataset=imagefolder", f"data.root={tmp_path}", "data.test_fraction=0.5",
            "data.val_fraction=0.0"]
    cfg = resolve(None, sets + ["attack.n_images=6"])
    _, x, y = evaluation_images(evaluation_settings(cfg))
    assert len(y) == 6 and len(set(y.tolist())) >= 2  # a prefix would be class 0 only
    _, x2, y2 = evaluation_images(evaluation_settings(cfg))
    assert torch.equal(x, x2) and torch.equal(y, y2)  # seeded: the same images every run
    everything = resolve(None, sets + ["attack.n_images=1000"])
    _, _, y_all = evaluation_images(evaluation_settings(everything))
    assert len(y_all) == 18 and torch.equal(y_all, y_all.sort().values)
