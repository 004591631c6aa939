"""Crash safety: a run killed with SIGKILL mid-way resumes with --resume and ends with exactly
what an uninterrupted run with the same seed produces (training tensors, attack figures and
adversarial images). Also: a NaN stops training with a clear message and keeps the last good
checkpoint; the same --seed gives bit-identical runs on CPU; reports record how to reproduce.

The killed runs are real ``ebmctl`` processes (a fresh interpreter each) that SIGKILL themselves
at a chosen call (update, epoch, chunk), so they are deterministic but slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
MIDRUN_SETS = ["train.steps=8", "train.target_horizon=60", "train.health_chains=4",
               "train.health_horizon=20", "train.lr_drops=[3]"]
HAT_SETS = ["run.threads=1", "data.max_train=64", "train.steps=8", "train.checkpoint_every=2",
            "hat.width=8", "hat.generator_width=8", "hat.latent_dim=8", "train.batch_size=8",
            "train.mcmc_steps=5", "hat.bank_size=16", "train.log_every=1",
            "output.grid_every=1000"]
FIX_SETS = ["run.threads=1", "fix.width=8", "fix.blocks=1", "fix.purify_steps=2",
            "fix.max_images=48", "fix.val_images=24", "fix.repurify_every=1", "fix.patience=5",
            "langevin.precision=fp32", "fix.batch_size=16"]
ATTACK_SETS = ["run.threads=1", "attack.n_images=12", "attack.batch_size=2", "attack.steps=3",
               "attack.eot_reps=2", "defense.steps=3", "defense.eot_reps=2",
               "attack.sanity=false", "langevin.precision=fp32", "attack.seeds=[5]"]


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


# A fresh interpreter that SIGKILLs itself on the n-th call of MODULE.FUNCTION (before the
# call, or just after it returns; n = 0: never): a kill at a chosen update/epoch/chunk rather
# than after a timer, so the killed state is the same on a loaded machine as on a quiet one.
# The global RNG is seeded first: trainers that still draw their initial weights from it would
# otherwise start the uninterrupted and the killed run from different weights, and what these
# tests check is the resume, not the seeding (see the same-seed tests for that).
_KILLER = r"""
import importlib, os, signal, sys
import torch
torch.manual_seed(0)
module, name, n, when = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
mod = importlib.import_module(module)
real, calls = getattr(mod, name), [0]
def dying(*args, **kwargs):
    calls[0] += 1
    if calls[0] == n and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    out = real(*args, **kwargs)
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(mod, name, dying)
from ebmctl.cli import run
sys.exit(run(sys.argv[5:]))
"""


def _env() -> dict:
    return {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}


def run_killed_at(argv: list[str], target: str, n: int, cwd: Path, after: bool = False,
                  timeout: float = 300.0) -> None:
    """Run ``ebmctl argv`` in a fresh interpreter that is SIGKILLed on the ``n``-th call of
    ``target`` ("package.module:function"), before the call (or right after it with ``after``)."""
    module, name = target.split(":")
    proc = subprocess.run([sys.executable, "-c", _KILLER, module, name, str(n),
                           "after" if after else "before", *map(str, argv)],
                          cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == -signal.SIGKILL, (
        f"expected a SIGKILL at call {n} of {target}; rc {proc.returncode}: {proc.stderr}")


def run_fresh(argv: list[str], cwd: Path, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """``ebmctl argv`` in a fresh interpreter set up as the killed one is (never killed)."""
    proc = subprocess.run([sys.executable, "-c", _KILLER, "ebmctl.cli", "run", "0", "before",
                           *map(str, argv)], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc


def _same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_artifact(a).tensors, load_artifact(b).tensors
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


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
    # killed inside update 7 (the 7th Langevin call): the last checkpoint is at update 6
    run_killed_at(argv, "ebmctl.training.convergent:langevin", 7, tmp_path)
    assert not out.exists(), "a killed run must not leave a final artifact"
    assert int(load_artifact(ckpt, "checkpoint").meta["ebmctl.step"]) == 6

    r = run_cli(argv + ["--resume"])
    assert r.exit_code == 0, r.output
    assert f"resumed from {ckpt} at update 6" in r.stderr
    assert not ckpt.exists()
    _same_tensors(full, out)


@pytest.mark.slow
def test_train_ebm_midrun_killed_and_resumed_matches_uninterrupted(tmp_path):
    argv = ["--seed", "7", "train", "ebm", "--profile", "quick", "--recipe", "midrun",
            *_sets(EBM_SETS + MIDRUN_SETS)]
    full = tmp_path / "full.safetensors"
    run_fresh(argv + ["--out", full], tmp_path)
    out = tmp_path / "killed.safetensors"
    ckpt = tmp_path / "killed.ckpt.safetensors"
    # killed inside update 5: the checkpoint of update 4 holds the model, Adam, bank and counts
    run_killed_at(argv + ["--out", out], "ebmctl.training.midrun:langevin", 5, tmp_path)
    assert not out.exists()
    assert int(load_artifact(ckpt, "checkpoint").meta["ebmctl.step"]) == 4
    r = run_fresh(argv + ["--out", out, "--resume"], tmp_path)
    assert f"resumed from {ckpt} at update 4" in r.stderr
    assert not ckpt.exists()
    _same_tensors(full, out)
    a, b = (load_artifact(p, "ebm").extra["training"] for p in (full, out))
    assert a["rejuv_rate"] == b["rejuv_rate"]  # the rejuvenation counts survived the kill


@pytest.mark.slow
def test_train_hat_killed_and_resumed_matches_uninterrupted(tmp_path):
    argv = ["--seed", "7", "train", "hat", "--profile", "hat-quick", *_sets(HAT_SETS)]
    full = tmp_path / "full.safetensors"
    run_fresh(argv + ["--out", full], tmp_path)
    out = tmp_path / "killed.safetensors"
    ckpt = tmp_path / "killed.ckpt.safetensors"
    # killed in update 5 between the EBM step and the generator step (the 5th generator
    # update): the checkpoint of update 4 holds H, G, both optimisers and the (X, Z) bank
    run_killed_at(argv + ["--out", out], "ebmctl.training.hat:generator_update", 5, tmp_path)
    assert not out.exists()
    assert int(load_artifact(ckpt, "checkpoint").meta["ebmctl.step"]) == 4
    r = run_fresh(argv + ["--out", out, "--resume"], tmp_path)
    assert f"resumed from {ckpt} at update 4" in r.stderr
    assert not ckpt.exists()
    _same_tensors(full, out)


@pytest.mark.slow
def test_fix_train_killed_and_resumed_matches_uninterrupted(tmp_path):
    valid = save_valid(tmp_path / "artifacts")
    argv = ["--seed", "7", "fix", "train", "--ebm", valid["ebm"], "-m", valid["classifier"],
            "--stage1-epochs", "2", "--stage2-epochs", "2", *_sets(FIX_SETS)]
    full = tmp_path / "full.safetensors"
    run_fresh(argv + ["--out", full], tmp_path)
    out = tmp_path / "killed.safetensors"
    ckpt = tmp_path / "killed.ckpt.safetensors"
    # evaluate_losses runs once before training and once per epoch: its 5th call ends epoch 4
    # (the second perceptual epoch), so the kill lands after that epoch's training, before its
    # checkpoint; the checkpoint of epoch 3 (Adam moments, best weights so far) is the one left
    run_killed_at(argv + ["--out", out], "ebmctl.training.fixer:evaluate_losses", 5, tmp_path)
    assert not out.exists()
    assert int(load_artifact(ckpt, "checkpoint").meta["ebmctl.step"]) == 3
    r = run_fresh(argv + ["--out", out, "--resume"], tmp_path)
    assert f"resumed from {ckpt} after epoch 3" in r.stderr
    assert not ckpt.exists()
    _same_tensors(full, out)


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
    # 6 undefended + 6 defended chunks; killed just after the 7th chunk is on disk
    run_killed_at(common + ["--out", str(out)], "ebmctl.evaluate.attack_eval:_save_part", 7,
                  tmp_path, after=True)
    assert not out.exists()
    done = len(list(parts.glob("*.safetensors")))
    assert done == 7 and len(list(parts.glob("defended.*"))) == 1

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
    drop = {"seconds", "chunks_reused", "environment", "adversarials_file", "model", "memory"}

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
            "langevin.precision=fp32", "train.log_every=1", "output.grid_every=1000",
            "train.health_chains=8"]


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
    import ebmctl.training.convergent as tr

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
    from ebmctl.sampling.langevin import LangevinSettings, langevin

    class Exploding(torch.nn.Module):
        def forward(self, x):
            return (x * float("inf")).flatten(1).sum(1)

    with pytest.raises(NumericalError, match="NaN"):
        langevin(Exploding(), torch.rand(2, 1, 4, 4), 3, LangevinSettings(0.01, 1.0, 1.0),
                 torch.Generator().manual_seed(0))


def test_synthesize_and_training_reports_record_environment_and_profile(tmp_path):
    valid = save_valid(tmp_path / "artifacts")
    r = run_cli(["--seed", "11", "synthesize", "--ebm", valid["ebm"], "--n-images", "2", "-k",
                 "1", "--out-dir", tmp_path / "synth", "--set", "run.threads=1"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "synth" / "report.json").read_text())
    assert report["environment"]["seed"] == 11 == report["config"]["run"]["seed"]
    for key in ("ebmctl", "torch", "python", "numpy", "safetensors", "device", "plugins"):
        assert key in report["environment"], key
