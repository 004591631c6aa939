"""torchrun (2 CPU processes, gloo): sharded evaluation merges into the single-process report,
and data-parallel EBM training (train.shards, DDP) reaches the weights of the one-process
emulation; chunk assignment, bank shards and the emulation's resume in one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ebmctl import distributed as D

HERE = Path(__file__).parent


def test_chunks_are_spread_round_robin_and_cover_everything():
    ctxs = [D.DistContext(r, 3) for r in range(3)]
    parts = [D.my_chunks(10, 2, c) for c in ctxs]
    assert parts == [[0, 6], [2, 8], [4]]
    assert sorted(s for p in parts for s in p) == list(range(0, 10, 2))


def test_single_process_context_runs_every_chunk_in_order():
    ctx = D.env_context() if "WORLD_SIZE" not in os.environ else D.DistContext()
    assert not ctx.active and ctx.is_main
    assert D.run_chunks(lambda s: s * 10, 7, 3, ctx) == [0, 30, 60]


def test_sharded_evaluation_in_one_process_equals_evaluate_attack():
    sys.path.insert(0, str(HERE))
    try:
        import distributed_worker as w
    finally:
        sys.path.remove(str(HERE))
    from ebmctl.evaluate.attack_eval import evaluate_attack

    torch.set_num_threads(1)
    attack, defense, task, x, y = w.build()
    plain = evaluate_attack(attack, defense, task, x, y, seed=w.SEED, batch_size=w.CHUNK,
                            device=torch.device("cpu"), label="defended")
    sharded = w.run(D.DistContext())
    assert w.comparable(sharded) == w.comparable(plain)


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


CHILD_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg"}


def test_torchrun_two_gloo_processes_merge_to_the_single_process_report(tmp_path):
    """Sharded evaluation: 2 gloo processes on CPU with the same seeds write the report of one
    process."""
    sys.path.insert(0, str(HERE))
    try:
        import distributed_worker as w
    finally:
        sys.path.remove(str(HERE))
    out = tmp_path / "merged.json"
    env = {**os.environ, **CHILD_ENV}
    proc = subprocess.run(_torchrun() + ["--standalone", "--nproc_per_node", "2",
                                 str(HERE / "distributed_worker.py"), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = json.loads(out.read_text())
    assert merged.pop("world_size") == 2
    single = w.comparable(w.run(D.DistContext()))
    assert merged == json.loads(json.dumps(single))


def test_main_without_torchrun_is_a_plain_cli_run(monkeypatch, capsys):
    from ebmctl.torchrun import main

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert main(["plugins"]) == 0
    assert "classification" in capsys.readouterr().out
    assert not D.current().active


@pytest.mark.parametrize("module", ["ebmctl.torchrun", "ebmctl.distributed"])
def test_both_launcher_names_run_the_cli(module, tmp_path):
    """``-m ebmctl.torchrun`` is the launcher; ``-m ebmctl.distributed``, its documented first
    name, still runs it (outside torchrun: one plain CLI run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", module, "plugins"], capture_output=True,
                          text=True, env={**env, **CHILD_ENV}, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "classification" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", module, "no-such-command"], capture_output=True,
                          text=True, env={**env, **CHILD_ENV}, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr


# ---- data-parallel EBM training (train.shards) ----

TINY_EBM = ["train.steps=4", "train.checkpoint_every=2", "train.mcmc_steps=3",
            "train.batch_size=8", "train.bank_size=16", "ebm.channels=4",
            "langevin.precision=fp32", "train.log_every=1", "output.grid_every=1000",
            "train.bank_init=uniform"]  # the noise bank the shard tests rebuild (quick's is data)


@pytest.mark.parametrize("n,shards", [(16, 2), (17, 3), (1500, 4), (5, 5)])
def test_bank_shards_are_contiguous_disjoint_and_cover_the_bank(n, shards):
    rows = [list(range(*D.shard_bounds(n, shards, s))) for s in range(shards)]
    assert [r for part in rows for r in part] == list(range(n))  # in order, no overlap, no gap
    assert max(map(len, rows)) - min(map(len, rows)) <= 1


def test_train_shards_follow_the_launch():
    from ebmctl.errors import ConfigError

    assert D.train_shards(3, D.DistContext()) == 3  # one process emulates 3 shards
    assert D.train_shards(1, D.DistContext(0, 4)) == 4  # default: one shard per process
    assert D.train_shards(4, D.DistContext(1, 4)) == 4
    with pytest.raises(ConfigError, match="train.shards = 3 but torchrun started 2 processes"):
        D.train_shards(3, D.DistContext(0, 2))


def test_shard_settings_that_cannot_work_are_one_line_errors(tmp_path):
    import profile_runs as runs
    from ebmctl.errors import ConfigError
    from ebmctl.profiles import resolve
    from ebmctl.testing import run_cli, tiny_bundle

    with pytest.raises(ConfigError, match="divisible"):  # batch 8 does not split 3 ways
        runs.train_ebm(resolve("quick", TINY_EBM + ["train.shards=3"]), tiny_bundle(n=48),
                       tmp_path / "x.safetensors", torch.device("cpu"))
    r = run_cli(["train", "ebm", "--recipe", "midrun", "--set", "train.shards=2",
                 "--out", str(tmp_path / "m.safetensors")])
    assert r.exit_code == 2 and "convergent recipe only" in r.stderr
    assert "Traceback" not in r.output


def test_sharded_training_in_one_process_uses_disjoint_bank_blocks_and_resumes(
        tmp_path, monkeypatch, crash_on_call):
    """train.shards=2 in one process: shard s's chains come from bank block s, the artifact
    reloads and records the shards, and a crash + --resume (checkpoint holds every shard) ends
    with the uninterrupted run's weights."""
    import ebmctl.training.convergent as tr
    import profile_runs as runs
    from ebmctl.artifacts import load_artifact
    from ebmctl.profiles import resolve
    from ebmctl.seeds import make_generator
    from ebmctl.testing import tiny_bundle

    torch.set_num_threads(1)
    bundle = tiny_bundle(n=48)
    cfg = resolve("quick", TINY_EBM + ["train.shards=2"])
    real = tr.langevin
    seen: list[torch.Tensor] = []

    def recording(net, x, *a, **k):
        seen.append(x.clone())
        return real(net, x, *a, **k)

    monkeypatch.setattr(tr, "langevin", recording)
    full = runs.train_ebm(cfg, bundle, tmp_path / "full.safetensors", torch.device("cpu"))
    assert len(seen) == 4 * 2  # one Langevin call per shard and update
    bank0 = tr.init_bank("uniform", 16, (1, 8, 8), None, make_generator("cpu", 0, "bank-init"))
    for s, x in enumerate(seen[:2]):  # update 0: chains still at their initial rows
        rows = [int(torch.nonzero((bank0 == r).flatten(1).all(1))[0]) for r in x]
        assert len(set(rows)) == 4 and all(8 * s <= i < 8 * (s + 1) for i in rows), (s, rows)
    art = load_artifact(full)
    assert art.kind == "ebm" and art.config["train"]["shards"] == 2
    assert art.extra["training"]["shards"] == 2 and art.extra["training"]["world_size"] == 1

    monkeypatch.setattr(tr, "langevin", real)
    restore = crash_on_call(tr, "langevin", 6)  # update 2, shard 1: after the checkpoint at 2
    out = tmp_path / "resumed.safetensors"
    with pytest.raises(KeyboardInterrupt):
        runs.train_ebm(cfg, bundle, out, torch.device("cpu"))
    assert not out.exists() and (tmp_path / "resumed.ckpt.safetensors").exists()
    restore()
    runs.train_ebm(cfg, bundle, out, torch.device("cpu"), resume=True)
    a, b = art.tensors, load_artifact(out).tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_two_gloo_processes_train_the_one_process_shard_emulation(tmp_path):
    """Data-parallel training: ``torchrun -m ebmctl.torchrun train ebm`` with 2 gloo
    processes (DDP, one bank shard each, train.shards left at 1 = one per process) gives the
    weights and training log of ``ebmctl train ebm --set train.shards=2`` in one process."""
    from ebmctl.artifacts import load_artifact
    from ebmctl.testing import run_cli

    sets = [a for s in TINY_EBM + ["run.threads=1", "data.max_train=64"] for a in ("--set", s)]
    args = ["--seed", "3", "train", "ebm", "--device", "cpu", "--profile", "quick", *sets]
    ddp, emu = tmp_path / "ddp.safetensors", tmp_path / "emu.safetensors"
    proc = subprocess.run(_torchrun() + ["--standalone", "--nproc_per_node", "2", "-m",
                                         "ebmctl.torchrun", *args, "--out", str(ddp)],
                          capture_output=True, text=True, env={**os.environ, **CHILD_ENV},
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("wrote ") == 1  # only rank 0 speaks
    torch.set_num_threads(1)
    r = run_cli(args + ["--set", "train.shards=2", "--out", str(emu)])
    assert r.exit_code == 0, r.output
    a, b = load_artifact(ddp), load_artifact(emu)
    assert a.config["train"]["shards"] == b.config["train"]["shards"] == 2
    assert a.extra["training"]["world_size"] == 2 and b.extra["training"]["world_size"] == 1
    assert a.tensors.keys() == b.tensors.keys()
    for k in a.tensors:
        assert torch.allclose(a.tensors[k], b.tensors[k], rtol=0, atol=1e-6), k
    logs = [json.loads(p.with_suffix(".log.json").read_text())["history"] for p in (ddp, emu)]
    assert [h["step"] for h in logs[0]] == [1, 2, 3, 4]
    for h, g in zip(*logs):
        for key in ("energy_gap", "energy_pos", "energy_neg", "langevin_grad_norm"):
            assert h[key] == pytest.approx(g[key], abs=1e-6), (h["step"], key)
    assert not (tmp_path / "ddp.ckpt.safetensors").exists()  # removed once the artifact is written
    assert (tmp_path / "ddp.samples-000004.png").exists()
