"""`ebmctl lyapunov` end to end: a plugin's EBM, the closed form through the CLI, bad input."""

from __future__ import annotations

import json
import math
import types

import pytest
import torch
from torch import nn

from ebmctl.artifacts import model_tensors, save_artifact
from ebmctl.hookspecs import hookimpl
from ebmctl.contracts import ModelSpec
from ebmctl.testing import plugin_registered, run_cli

TAU, TEMPERATURE = 0.1, 0.025  # drift τ²/(2T) = 0.2


class PluginQuadraticEBM(nn.Module):
    """U_net(x) = ½ Σ a·x² on 1×8×8 images: a = 0.5 on the top half, 3 on the bottom half
    (a large slow subspace, so a random initial direction starts well aligned with it)."""

    def __init__(self, size: int = 8):
        super().__init__()
        a = torch.full((1, 1, size, size), 3.0)
        a[..., : size // 2, :] = 0.5
        self.a = nn.Parameter(a)

    def forward(self, x):
        return 0.5 * (self.a * x * x).flatten(1).sum(1)


def _plugin():
    @hookimpl
    def ebmctl_register_models(register):
        register(ModelSpec("test-quadratic-ebm", "ebm", PluginQuadraticEBM, "quadratic energy"))

    return types.SimpleNamespace(ebmctl_register_models=ebmctl_register_models)


@pytest.fixture
def quadratic_ebm(tmp_path):
    plugin = _plugin()
    path = tmp_path / "quad.safetensors"
    with plugin_registered(plugin, "test-quadratic"):
        save_artifact(path, model_tensors(PluginQuadraticEBM()), kind="ebm",
                      arch="test-quadratic-ebm", arch_args={"size": 8},
                      data={"image_size": 8, "channels": 1, "range": "[-1,1]"},
                      extra={"tau": TAU, "temperature": TEMPERATURE})
        yield path


def test_plugin_ebm_exponent_matches_closed_form_through_the_cli(quadratic_ebm, tmp_path):
    out = tmp_path / "ly.json"
    res = run_cli(["lyapunov", "--ebm", quadratic_ebm, "--etas", "0.01,1,10", "--n-images", "3",
                   "--set", "lyapunov.burn_in=2", "--set", "lyapunov.steps=150",
                   "--set", "lyapunov.seeds=0,1", "--set", "lyapunov.separation_factors=10",
                   "--out", out])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    expected = math.log(abs(1 - 0.2 * 0.5))
    assert report["drift"] == pytest.approx(0.2)
    assert [r["eta"] for r in report["per_eta"]] == [0.01, 1.0, 10.0]
    for r in report["per_eta"]:
        assert r["mean"] == pytest.approx(expected, abs=0.01)
        assert r["std"] >= 0 and r["se"] <= r["std"]
    assert len(report["runs"]) == 2 and report["runs"][1]["separation"] == pytest.approx(1e-2)
    assert len(report["runs"][0]["per_sample"][0]) == 6  # 3 images × 2 seeds
    assert report["zero_crossing"] is None and report["eta_star"] is None
    assert report["config"]["lyapunov"]["steps"] == 150
    for suffix in (".png", ".samples.png"):
        assert out.with_name("ly" + suffix).stat().st_size > 0
    assert "zero crossing" in res.stdout


def test_checks_need_a_task_model(quadratic_ebm, tmp_path):
    out = tmp_path / "ly.json"
    res = run_cli(["lyapunov", "--ebm", quadratic_ebm, "--checks", "--out", out])
    assert res.exit_code != 0
    assert res.stderr.startswith("Error:") and "--model" in res.stderr
    assert "Traceback" not in res.output and not list(tmp_path.glob("ly*"))


@pytest.mark.parametrize("args, needle", [
    (["--etas", "0,1"], "lyapunov.etas"),
    (["--set", "lyapunov.steps=0"], "lyapunov.steps"),
    (["--set", "lyapunov.precision=half"], "lyapunov.precision"),
    (["--no-exponent"], "nothing to do"),
    (["--out", "report.txt"], ".json"),
])
def test_bad_input_is_one_line_error(quadratic_ebm, tmp_path, args, needle):
    outputs = tmp_path / "outputs"
    res = run_cli(["lyapunov", "--ebm", quadratic_ebm, "--set", f"run.out_dir={outputs}", *args])
    assert res.exit_code != 0
    assert needle in res.stderr and "Traceback" not in res.output
    assert not outputs.exists()


def test_missing_or_wrong_artifact(tmp_path):
    res = run_cli(["lyapunov", "--ebm", tmp_path / "nope.safetensors"])
    assert res.exit_code != 0 and "not found" in res.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    res = run_cli(["lyapunov", "--ebm", bad])
    assert res.exit_code != 0 and res.stderr.startswith("Error:")


@pytest.mark.slow
def test_checks_with_a_lightweight_ebm_and_classifier(tmp_path):
    """Forgetting curves end to end on digits with untrained (random) networks."""
    from builders import random_classifier, random_ebm

    ebm = random_ebm(tmp_path / "ebm.safetensors", channels=8)
    clf = random_classifier(tmp_path / "clf.safetensors", width=8)
    out = tmp_path / "ly.json"
    res = run_cli(["lyapunov", "--ebm", ebm, "--model", clf, "--checks", "--no-exponent",
                   "--set", "lyapunov.memory_images=8", "--set", "lyapunov.memory_steps=0,2,5",
                   "--set", "attack.steps=3", "--set", "attack.restarts=1", "--out", out])
    assert res.exit_code == 0, res.output
    mem = json.loads(out.with_name("ly.memory.json").read_text())
    assert [r["k"] for r in mem["curves"]] == [0, 2, 5]
    first = mem["curves"][0]
    # an untrained classifier may leave every image unbroken (then x_adv = x, gap 0)
    assert first["memory"] == pytest.approx(1.0 if mem["start_gap"] > 0 else 0.0)
    assert first["dist_clean_copies"] == 0.0
    assert first["dist_common"] == pytest.approx(mem["start_gap"], rel=1e-5)
    assert mem["energy_gap"]["noise"]["mean"] != mem["energy_gap"]["natural"]["mean"]
    assert out.with_name("ly.memory.png").stat().st_size > 0
