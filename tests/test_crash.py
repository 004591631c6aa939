"""Crash safety: a run killed with SIGKILL mid-way resumes with --resume and ends with exactly
what an uninterrupted run with the same seed produces (training tensors, attack figures and
adversarial images). Also: a NaN stops training with a clear message and keeps the last good
checkpoint; the same --seed gives bit-identical runs on CPU; reports record how to reproduce.

The killed runs are real ``ebmctl`` processes (a fresh interpreter each), so they are slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ebmctl.artifacts import load_artifact
from ebmctl.testing import run_cli

sys.path.insert(0, str(Path(__file__).parent / "corpus"))
from make_corpus import save_valid  # noqa: E402

EBM_SETS = ["run.threads=1", "data.max_train=64", "train.steps=12", "train.checkpoint_every=2",
            "train.mcmc_steps=15", "train.batch_size=16", "train.bank_size=32", "ebm.channels=8",
            "langevin.precision=fp32", "train.log_every=1", "output.grid_every=1000"]
ATTACK_SETS = ["run.threads=1", "attack.n_images=12", "attack.batch_size=2", "attack.steps=3",
               "attack.eot_reps=2", "defense.steps=3", "defense.eot_reps=2",
               "attack.sanity=false", "langevin.precision=fp32", "attack.seeds=[5]"]


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def _ebmctl() -> list[str]:
    exe = Path(sys.executable).with_name("ebmctl")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ebmctl.cli"]


def run_and_kill(argv: list[str], ready, cwd: Path, timeout: float = 240.0) -> None:
    """Start ``ebmctl argv`` and SIGKILL it as soon as ``ready()`` is true (mid-run)."""
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_ebmctl() + argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    t0 = time.time()
    try:
        while not ready():
            if proc.poll() is not None:
                err = proc.stderr.read().decode()
                pytest.fail(f"run ended (rc {proc.returncode}) before it could be killed: {err}")
            if time.time() - t0 > timeout:
                pytest.fail("run never reached the kill point")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_train_ebm_killed_and_resumed_matches_uninterrupted(tmp_path):
    full = tmp_path / "full.safetensors"
    r = run_cli(["--seed", "7", "train", "ebm", "--profile", "quick", *_sets(EBM_SETS),
                 "--out", full])
    assert r.exit_code == 0, r.output

    out = tmp_path / "killed.safetensors"
    ckpt = tmp_path / "killed.ckpt.safetensors"
    argv = ["--seed", "7", "train", "ebm", "--profile", "quick", *_sets(EBM_SETS),
            "--out", str(out)]
    run_and_kill(argv, ckpt.exists, tmp_path)
    assert not out.exists(), "a killed run must not leave a final artifact"
    step = int(load_artifact(ckpt, "checkpoint").meta["ebmctl.step"])
    assert 2 <= step < 12

    r = run_cli(argv + ["--resume"])
    assert r.exit_code == 0, r.output
    assert f"resumed from {ckpt} at update" in r.stderr
    assert not ckpt.exists()
    a, b = load_artifact(full), load_artifact(out)
    assert a.tensors.keys() == b.tensors.keys()
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k


@pytest.mark.slow
def test_attack_killed_and_resumed_matches_uninterrupted(tmp_path):
    valid = save_valid(tmp_path / "artifacts")
    common = ["attack", "--model", str(valid["classifier"]), "--ebm", str(valid["ebm"]),
              "--profile", "quick", "--save-adversarials", *_sets(ATTACK_SETS)]
    full = tmp_path / "full.json"
    r = run_cli(common + ["--out", str(full)])
    assert r.exit_code == 0, r.output

    out = tmp_path / "killed.json"
    parts = tmp_path / "killed.parts"
    run_and_kill(common + ["--out", str(out)],
                 lambda: parts.exists() and len(list(parts.glob("defended.*"))) >= 1, tmp_path)
    assert not out.exists()
    done = len(list(parts.glob("*.safetensors")))
    assert 0 < done < 12, done  # 6 undefended + 6 defended chunks; killed part-way

    r = run_cli(common + ["--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    assert not parts.exists()
    a, b = json.loads(full.read_text()), json.loads(out.read_text())
    assert _figures(a) == _figures(b)
    reused = sum(s["chunks_reused"] for r in b["results"].values()
                 for at in r["attacks"].values() for s in at["per_seed"])
    assert reused == done
    ta = load_file(full.with_suffix(".adv.safetensors"))
    tb = load_file(out.with_suffix(".adv.safetensors"))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    _assert_reproducible_report(b)


def _figures(report: dict) -> dict:
    """The report without wall times and resume bookkeeping."""
    drop = {"seconds", "chunks_reused", "environment", "adversarials_file", "model"}

    def clean(o):
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items() if k not in drop}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    return clean(report)


def _assert_reproducible_report(report: dict) -> None:
    env = report["environment"]
    for key in ("ebmctl", "torch", "python", "numpy", "device", "seed", "plugins"):
        assert key in env, key
    assert "classification" in env["plugins"]
    cfg = report["config"]
    assert cfg["run"]["seed"] == env["seed"] and "attack" in cfg and "defense" in cfg


# --- fast, in-process checks -----------------------------------------------------------------

TINY_EBM = ["run.threads=1", "data.max_train=48", "train.steps=4", "train.checkpoint_every=2",
            "train.mcmc_steps=3", "train.batch_size=8", "train.bank_size=16", "ebm.channels=4",
            "langevin.precision=fp32", "train.log_every=1", "output.grid_every=1000"]


def test_same_seed_is_bit_identical_and_another_seed_differs(tmp_path):
    outs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        outs[name] = tmp_path / f"{name}.safetensors"
        r = run_cli(["--seed", str(seed), "train", "ebm", "--profile", "quick",
                     *_sets(TINY_EBM), "--out", outs[name]])
        assert r.exit_code == 0, r.output
    a, b, c = (load_artifact(outs[n]).tensors for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    log = json.loads(outs["a"].with_suffix(".log.json").read_text())
    assert log["config"]["run"]["seed"] == 3
    assert log["environment"]["seed"] == 3 and "torch" in log["environment"]


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import ebmctl.training.ebm as tr

    real, calls = tr.langevin, {"n": 0}

    def diverging(net, x, *a, **k):
        calls["n"] += 1
        out = real(net, x, *a, **k)
        return out * float("nan") if calls["n"] == 3 else out  # update 3, after a checkpoint

    monkeypatch.setattr(tr, "langevin", diverging)
    out = tmp_path / "ebm.safetensors"
    r = run_cli(["train", "ebm", "--profile", "quick", *_sets(TINY_EBM), "--out", out])
    assert r.exit_code == 7, r.output
    assert "Traceback" not in r.output
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    ckpt = tmp_path / "ebm.ckpt.safetensors"
    assert "NaN" in line and str(ckpt) in line and "step 2" in line and "--resume" in line
    assert not out.exists()
    art = load_artifact(ckpt, "checkpoint")
    assert art.meta["ebmctl.step"] == "2"
    assert all(torch.isfinite(v).all() for k, v in art.tensors.items() if v.is_floating_point())


def test_a_diverged_model_never_overwrites_a_checkpoint(tmp_path):
    from ebmctl.errors import NumericalError
    from ebmctl.training.checkpoint import save_checkpoint

    net = torch.nn.Linear(2, 2)
    path = tmp_path / "x.ckpt.safetensors"
    save_checkpoint(path, target="ebm", step=1, model=net)
    good = path.read_bytes()
    with torch.no_grad():
        net.weight[0, 0] = float("inf")
    with pytest.raises(NumericalError, match="weight"):
        save_checkpoint(path, target="ebm", step=2, model=net)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left either


def test_nan_in_the_sampler_is_a_numerical_error():
    from ebmctl.errors import NumericalError
    from ebmctl.sampling import LangevinSettings, langevin

    class Exploding(torch.nn.Module):
        def forward(self, x):
            return (x * float("inf")).flatten(1).sum(1)

    with pytest.raises(NumericalError, match="NaN"):
        langevin(Exploding(), torch.rand(2, 1, 4, 4), 3, LangevinSettings(0.01, 1.0, 1.0),
                 torch.Generator().manual_seed(0))


def test_synthesize_and_training_reports_record_environment_and_profile(tmp_path):
    valid = save_valid(tmp_path / "artifacts")
    r = run_cli(["--seed", "11", "synthesize", "--model", valid["ebm"], "--n", "2", "--steps",
                 "1", "--out-dir", tmp_path / "synth", "--set", "run.threads=1"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "synth" / "report.json").read_text())
    assert report["environment"]["seed"] == 11 == report["config"]["run"]["seed"]
    for key in ("ebmctl", "torch", "python", "numpy", "safetensors", "device", "plugins"):
        assert key in report["environment"], key
