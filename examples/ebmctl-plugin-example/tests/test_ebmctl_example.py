"""Tests of the example plugin, written the way a plugin author would: with ebmctl.testing and
the plugin registered at run time (no install needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ebmctl_example
from ebmctl.api import DataRequest, split_indices
from ebmctl.testing import plugin_registered, run_cli
from ebmctl_example.mosaic import CELL, load_digit_mosaic
from ebmctl_example.task import MultiLabelTask, example_f1


def test_example_f1_hand_computed():
    targets = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]]).float()
    logits = torch.tensor([[5., 5, -5, -5],    # exact: F1 1
                           [5., 5, -5, -5],    # one extra label: 2*1/(2+1)
                           [-5., -5, -5, -5],  # both empty: 1
                           [-5., 5, -5, 5]])   # one right, one wrong each way: 2*1/(2+2)
    assert example_f1(logits, targets).tolist() == pytest.approx([1.0, 2 / 3, 1.0, 0.5])
    # a stricter probability threshold drops the label at p = sigmoid(1) ~ 0.73
    assert example_f1(torch.tensor([[1.0, -5.0]]), torch.tensor([[1.0, 0.0]]), 0.8).item() == 0.0


def test_success_criterion_follows_the_profile():
    with plugin_registered(ebmctl_example, "example"):
        r = run_cli(["profiles", "show", "digit-mosaic", "--json",
                     "--set", "multilabel.min_f1=0.5"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["multilabel"]["min_f1"] == 0.5
    strict, lenient = MultiLabelTask(min_f1=1.0), MultiLabelTask(min_f1=0.5)
    scores = torch.tensor([1.0, 2 / 3, 0.4])
    assert strict.robust_ok(scores, scores).tolist() == [True, False, False]
    assert lenient.robust_ok(scores, scores).tolist() == [True, True, False]


def test_mosaics_are_deterministic_and_split_by_source_digit():
    from sklearn.datasets import load_digits

    req = DataRequest(split_seed=3, options={"mosaic_train": 200, "mosaic_eval": 60})
    a, b = load_digit_mosaic(req), load_digit_mosaic(req)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert a.train.x.shape == (200, 1, 16, 16) and a.test.y.shape == (60, 10)
    counts = a.train.y.sum(1)
    assert counts.min() >= 1 and counts.max() <= 3
    # every non-empty test cell is a test-pool digit, and none is a training-pool digit
    d = load_digits()
    digits = (d.images / 16.0).astype(np.float32)
    train_pool, _, test_pool = split_indices(len(digits), 0.1, 0.2, 3, stratify=d.target)
    train_set = {digits[i].tobytes() for i in train_pool}
    test_set = {digits[i].tobytes() for i in test_pool}
    cells = a.test.x.unfold(2, CELL, CELL).unfold(3, CELL, CELL).reshape(-1, CELL, CELL)
    cells = [c.numpy().astype(np.float32) for c in cells if c.abs().sum() > 0]
    assert cells and all(c.tobytes() in test_set for c in cells)
    assert not any(c.tobytes() in train_set - test_set for c in cells)


def test_train_and_refusals(tmp_path):
    tiny = ["--profile", "digit-mosaic", "--set", "data.mosaic_train=64",
            "--set", "data.mosaic_eval=16", "--set", "model.epochs=1", "--set", "model.width=8",
            "--set", "run.threads=1"]
    out = tmp_path / "tagger.safetensors"
    with plugin_registered(ebmctl_example, "example"):
        r = run_cli(["train", "model", *tiny, "--out", out])
        assert r.exit_code == 0, r.output
        meta = json.loads(run_cli(["inspect", out, "--json"]).stdout)["metadata"]
        assert meta["ebmctl.kind"] == "tagger" and meta["ebmctl.task"] == "multilabel"
        # softmax averaging would mix independent labels: refused in one line
        r = run_cli(["attack", *tiny, "--model", out, "--undefended-only",
                     "--set", "defense.average=softmax"])
        assert r.exit_code != 0 and "defense.average" in r.stderr
        assert "Traceback" not in r.output
    # without the plugin, the artifact's architecture is unknown: a clear error, no traceback
    r = run_cli(["attack", "--model", out, "--undefended-only", "--n-images", "4"])
    assert r.exit_code != 0 and "Traceback" not in r.output
