"""Health tracked during training (``train.health_every``): the end-of-run health check also
runs every N updates, each check is a row of the artifact's and the log's ``health_history``
(with a plot), a resumed run keeps the rows its checkpoint holds, and the checks leave the
trained weights exactly as a run without them."""

from __future__ import annotations

import json

import pytest
import torch

import profile_runs as runs
from ebmctl.artifacts import load_artifact
from ebmctl.profiles import resolve
from ebmctl.testing import tiny_bundle

CPU = torch.device("cpu")
BASE = ["train.steps=4", "train.checkpoint_every=2", "train.mcmc_steps=2", "train.batch_size=8",
        "train.log_every=1", "output.grid_every=1000", "run.threads=1", "langevin.precision=fp32",
        "train.bank_size=16", "ebm.channels=4", "train.health_chains=4",
        "train.health_horizon=6", "defense.steps=3"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _same_weights(a, b) -> None:
    a, b = load_artifact(a), load_artifact(b)
    assert a.tensors.keys() == b.tensors.keys()
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k


def test_periodic_checks_are_logged_and_leave_the_training_unchanged(tmp_path):
    bundle = tiny_bundle(n=48)
    plain = runs.train_ebm(resolve("quick", BASE), bundle, tmp_path / "plain.safetensors", CPU)
    out = tmp_path / "tracked.safetensors"
    runs.train_ebm(resolve("quick", BASE + ["train.health_every=2"]), bundle, out, CPU)
    _same_weights(plain, out)
    extra = load_artifact(out).json("extra")
    rows = extra["health_history"]
    assert [r["step"] for r in rows] == [2, 4]  # every 2 updates, the last one the final check
    assert [rows[-1][h]["steps"] for h in ("short", "defense", "long")] == [2, 3, 6]
    assert rows[-1]["convergent"] == extra["health"]["convergent"]
    assert all("fraction_outside_range" in r["long"] and "energy_gap" in r for r in rows)
    log = json.loads(out.with_suffix(".log.json").read_text())
    assert log["extra"]["health_history"] == rows
    assert out.with_name("tracked.health-history.png").stat().st_size > 0
    assert "health_history" not in load_artifact(plain).json("extra")  # off by default


def test_a_resumed_run_keeps_the_checks_of_its_checkpoint(tmp_path, crash_on_call):
    import ebmctl.training.convergent as tr

    bundle = tiny_bundle(n=48)
    cfg = resolve("quick", BASE + ["train.health_every=2"])
    full = runs.train_ebm(cfg, bundle, tmp_path / "full.safetensors", CPU)
    restore = crash_on_call(tr, "langevin", 4)  # in update 4, after the checkpoint at 2
    out = tmp_path / "resumed.safetensors"
    with pytest.raises(KeyboardInterrupt):
        runs.train_ebm(cfg, bundle, out, CPU)
    restore()
    runs.train_ebm(cfg, bundle, out, CPU, resume=True)
    _same_weights(full, out)
    assert ([r["step"] for r in load_artifact(out).json("extra")["health_history"]]
            == [r["step"] for r in load_artifact(full).json("extra")["health_history"]] == [2, 4])
