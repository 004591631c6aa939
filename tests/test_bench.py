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


def test_tuned_settings_follow_the_device():
    cpu = bench.tuned_settings(torch.device("cpu"))
    assert cpu.compile is False and cpu.channels_last is False
    assert cpu.precision == ("bf16" if bench.cpu_has_native_bf16() else "fp32")
    cuda = bench.tuned_settings(torch.device("cuda"))
    assert cuda.precision == "bf16" and cuda.channels_last and cuda.compile


def test_sampler_bench_reports_throughput_ratios_and_step_agreement():
    row = bench.sampler_bench(torch.device("cpu"), 6, steps=1, repeats=2,
                              variants=bench.sampler_variants(torch.device("cpu")), **TINY)
    assert row["batch"] == 6 and row["naive_image_steps_per_s"] > 0
    assert {"tuned", "fp32-frozen-whole-batch", "fp32-channels_last"} <= set(row["variants"])
    for name, v in row["variants"].items():
        assert v["image_steps_per_s"] > 0 and v["speedup"] > 0 and v["cpu_speedup"] > 0
        # fp32 variants give the same drift; bf16 ones (on a CPU with native bf16, where the
        # tuned setting is bf16 too) agree to bf16's ~3 significant digits
        fp32 = name.startswith("fp32") or (name == "tuned" and not bench.cpu_has_native_bf16())
        assert v["drift_cosine_min"] > (0.9999 if fp32 else 0.99), name
    assert len(row["raw_seconds"]["naive"]["wall"]) == 2


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
    table = run_cli(args)
    assert table.exit_code == 0 and "speedup" in table.stdout and "tuned" in table.stdout


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
