"""`ebmctl bench`: the naive reference is the authors' purification loop, the report's ratios are
keyed "speedup", bad input is one line, attack timings and memory are reported."""

from __future__ import annotations

import json

import pytest
import torch

from ebmctl import bench
from ebmctl.sampling.langevin import LangevinSettings, langevin
from ebmctl.testing import run_cli

TINY = dict(image_size=8, channels=1, width=4)


def test_naive_reference_computes_the_same_chain_as_the_sampler():
    net = bench.lightweight_net(8, 1, 4, torch.device("cpu"))
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    s = LangevinSettings(bench.TAU, bench.TEMPERATURE, compile=False)
    want = langevin(net, x, 4, s, torch.Generator().manual_seed(7))
    got = bench.naive_langevin(net, x, 4, s.drift, bench.TAU, torch.Generator().manual_seed(7))
    assert torch.allclose(got, want, atol=1e-6)
    assert all(p.requires_grad for p in net.parameters())  # restored after the naive loop


def test_tuned_settings_leave_every_choice_to_the_autotuner():
    cpu = bench.tuned_settings(torch.device("cpu"))
    assert (cpu.precision, cpu.channels_last, cpu.block_rows) == ("auto", "auto", "auto")
    assert cpu.compile is None  # the process default (langevin.compile): never compiled on CPU
    assert bench.tuned_settings(torch.device("cuda")).compile == "auto"


def test_flops_per_image_step_of_the_cifar10_ebm():
    """The shipped EBM's shape (lightweight, n_f = 32, 32x32x3): 104.2 MFLOP per image-step
    (forward plus input gradient)."""
    net = bench.lightweight_net(32, 3, 32, torch.device("cpu"))
    assert bench.flops_per_image_step(net, (3, 32, 32), torch.device("cpu")) == pytest.approx(
        104.2e6, rel=1e-3)


def test_sampler_bench_reports_throughput_ratios_gflops_and_step_agreement():
    net = bench.lightweight_net(8, 1, 4, torch.device("cpu"))
    x = bench.bench_batch(6, 1, 8, 0, torch.device("cpu"))
    row = bench.sampler_bench(torch.device("cpu"), 6, steps=1, repeats=2, gemm_size=64,
                              variants=bench.sampler_variants(torch.device("cpu"), net, x),
                              **TINY)
    assert row["batch"] == 6 and row["naive_image_steps_per_s"] > 0
    assert {"auto", "fp32-nchw-autograd-whole", "fp32-cl-autograd-whole",
            "fp32-cl-explicit-whole"} <= set(row["variants"])
    assert row["flops_per_image_step"] > 0 and row["gemm"]["fp32"]["gflops"] > 0
    for name, v in row["variants"].items():
        assert v["image_steps_per_s"] > 0 and v["speedup"] > 0 and v["cpu_speedup"] > 0
        assert v["gflops"] >= 0 and v["peak_fraction"] > 0 and v["variant"]
        # fp32 variants give the same drift; bf16 ones (on a CPU with native bf16) agree to
        # bf16's ~3 significant digits
        assert v["drift_cosine_min"] > (0.9999 if v["precision"] == "fp32" else 0.99), name
    assert len(row["raw_seconds"]["naive"]["wall"]) == 2
    assert len(row["raw_seconds"]["gemm-fp32"]["wall"]) == 2  # interleaved with the sampler


def test_training_update_bench_reports_its_rate():
    t = bench.training_bench(torch.device("cpu"), batch=8, mcmc_steps=2, repeats=1,
                             gemm_size=64, **TINY)
    assert t["seconds_per_update"] > 0 and t["flops_per_update"] > 8 * 2 * 1e3
    assert t["gflops"] >= 0 and t["peak_fraction"] > 0 and t["variant"]


@pytest.mark.slow  # ~30 s on the loaded machine (plugin loading, double-backward kernels)
def test_attack_bench_times_bpda_and_checkpointed_full_gradient_steps():
    full = bench.attack_bench(torch.device("cpu"), mode="full", n_images=2, reps=2, steps=4,
                              repeats=1, **TINY)
    bpda = bench.attack_bench(torch.device("cpu"), mode="bpda", n_images=2, reps=2, steps=4,
                              repeats=1, **TINY)
    assert full["seconds_per_attack_step"] > 0 and bpda["attack_steps_per_s"] > 0
    assert full["segment"] == 2  # √K segments
    assert full["stored_states_mb"] == pytest.approx(2 * 4 * 64 * 4 / 2 ** 20, abs=0.01)
    assert full["peak_memory_mb"] >= 0 and "segment" not in bpda
    assert bpda["gflops"] >= 0 and bpda["peak_fraction"] >= 0 and "gflops" not in full


def test_bench_cli_json_table_and_files(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--batch", "4,8", "--image-size", "8", "--channels", "1", "--width", "4",
            "--langevin-steps", "1", "--repeats", "1", "--no-attack", "--no-child-naive"]
    res = run_cli(args + ["--json", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [r["batch"] for r in report["sampler"]] == [4, 8]
    speedups = {k: v for k, v in report["summary"].items() if "speedup" in k}
    assert set(speedups) >= {"batch_4_speedup", "batch_8_speedup"}
    assert all(v > 0 for v in speedups.values())
    assert json.loads(out.read_text())["summary"] == report["summary"]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # rounded to 3 digits: a 4-wide EBM's rate is a tiny fraction of a 2048² GEMM's
    assert all(r["variants"]["auto"]["peak_fraction"] >= 0 for r in report["sampler"])
    table = run_cli(args)
    assert table.exit_code == 0 and "speedup" in table.stdout and "auto" in table.stdout


@pytest.mark.parametrize("extra,needle", [
    (["--batch", "0"], "--batch"), (["--batch", "a,b"], "--batch"),
    (["--repeats", "0"], "--repeats"), (["--out", "x.txt"], "--out"),
    (["--image-size", "2"], "--image-size")])
def test_bench_bad_input_is_one_line(extra, needle, tmp_path):
    res = run_cli(["bench", "--no-attack"] + extra)
    assert res.exit_code != 0
    assert "Traceback" not in res.output and needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # starts a fresh python process (importing torch takes ~13 s when loaded)
def test_naive_child_runs_with_openmp_default_policy(monkeypatch):
    from ebmctl import openmp_policy

    monkeypatch.setattr(openmp_policy, "SET_BY_EBMCTL", True)
    env = bench.naive_child_env()
    assert "OMP_WAIT_POLICY" not in env
    assert env["OMP_NUM_THREADS"] == str(torch.get_num_threads())
    wall, cpu = bench.naive_in_child(4, 8, 1, 4, 2)
    assert wall > 0 and cpu >= 0
