"""Throughput of the Langevin sampler and of attacks (docs/algorithms.md#sampler-throughput),
measured in image-steps/s.

Every sampler figure is a ratio taken *within one run*: the naive reference loop and the tuned
sampler alternate (naive, tuned, naive, tuned, ...) on the same network and batch, so a shared or
throttled machine slows both alike. The naive reference is the purification loop as the authors'
code runs it: fp32, eager, parameters requiring grad, contiguous memory, one ``autograd.grad`` per
step. The tuned sampler is :func:`ebmctl.sampling.langevin.langevin` with the settings chosen for the device.

Besides wall time, CPU time of this process is recorded: on a machine shared with other jobs it
is the steadier measure of work done (it excludes time spent waiting for a core).

Every timed variant also reports its arithmetic rate: ``gflops`` is the FLOPs of one image-step
(the energy's forward pass plus its input gradient, counted once with
``torch.utils.flop_counter.FlopCounterMode``) times image-steps/s, and ``peak_fraction`` divides
it by a 2048² ``torch.mm`` of the same precision timed in the same process, with the same
threads, interleaved with the sampler in every round (the median of per-round ratios). The
``auto`` variant is what the sampler's autotuner (:mod:`ebmctl.sampling.autotune`) chose for
that batch; ``--tune`` re-measures it and prints every candidate.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from ebmctl.context import runtime_environment
from ebmctl.device import cpu_has_native_bf16, peak_memory_mib, peak_memory_start
from ebmctl.nn.ebm import LightweightEBM
from ebmctl.sampling import autotune, fastgrad
from ebmctl.sampling.autotune import AUTO, Variant
from ebmctl.sampling.langevin import (LangevinSettings, energy_and_grad, frozen, langevin,
                                      sampler_gradient)
from ebmctl.seeds import derive_seed, make_generator

# The thesis' Ch. 2 EBM as its authors run it: drift coefficient 1, noise 0.01
# (docs/algorithms.md#langevin-update).
TAU, TEMPERATURE = 0.01, 5e-5


# --- the two samplers under comparison ---------------------------------------------------

def naive_langevin(net: nn.Module, x: torch.Tensor, steps: int, drift: float, scale: float,
                   generator: torch.Generator) -> torch.Tensor:
    """The purification loop as the authors' code runs it (the baseline, deliberately untuned)."""
    flags = [p.requires_grad for p in net.parameters()]
    for p in net.parameters():
        p.requires_grad_(True)  # the authors' loop leaves the EBM's parameters trainable
    try:
        x = x.detach().float().contiguous().requires_grad_()
        for _ in range(steps):
            g = torch.autograd.grad(net(x).sum(), x)[0]
            z = torch.randn(x.shape, generator=generator, device=x.device)
            x = (x - drift * g + scale * z).detach().requires_grad_()
        return x.detach()
    finally:
        for p, f in zip(net.parameters(), flags):
            p.requires_grad_(f)


def tuned_settings(device: torch.device, precision: str = AUTO,
                   channels_last: bool | str = AUTO, compile: bool | str | None = None,
                   tau: float = TAU, temperature: float = TEMPERATURE) -> LangevinSettings:
    """The sampler settings the bench calls ``auto``: every choice left to the autotuner
    (precision, layout, rows per gradient block, gradient method; compile is a candidate on
    CUDA only). ``device`` is accepted for symmetry with the variants; the tuner measures on
    the device of the rows it is given."""
    return LangevinSettings(tau, temperature, 1.0, precision, channels_last,
                            AUTO if compile is None and device.type == "cuda" else compile,
                            block_rows=AUTO)


def sampler_variants(device: torch.device, net: nn.Module | None = None,
                     x: torch.Tensor | None = None) -> dict[str, LangevinSettings]:
    """Named settings to compare with ``--all-variants``: concrete variants (NCHW and
    channels_last, autograd and, for a piecewise-linear EBM, the explicit gradient and on
    small maps its dense lowering, whole batch and the fixed rule's CPU blocks; bf16 where the hardware has it; compile and CUDA graphs on
    CUDA), plus ``auto`` (the tuner's choice)."""
    cuda = device.type == "cuda"
    block = 0 if (x is None or net is None) else autotune.cpu_block_rows(
        x, net, LangevinSettings(TAU, TEMPERATURE))
    explicit = net is not None and fastgrad.supports(net)
    grads = ["autograd"] + (["explicit"] if explicit else [])
    precisions = ["fp32"] + (["bf16"] if cuda or cpu_has_native_bf16() else [])
    found: list[Variant] = []
    dense = explicit and x is not None and fastgrad.dense_applies(net, tuple(x.shape[1:]))
    for p in precisions:
        for cl in (False, True):
            for g in grads + (["dense"] if dense and not cl else []):
                for b in dict.fromkeys((0, block)):
                    found.append(Variant(p, cl, b, g))
    if cuda:
        found += [Variant(p, True, 0, "autograd", compile=True) for p in precisions]
        if explicit:
            found += [Variant(p, True, 0, "explicit", graph=True) for p in precisions]
    out = {v.name: LangevinSettings(TAU, TEMPERATURE, variant=v) for v in found}
    out["auto"] = tuned_settings(device)
    return out


def resolved_variant(net: nn.Module, x: torch.Tensor, settings: LangevinSettings,
                     retune: bool = False) -> Variant:
    """The variant :func:`ebmctl.sampling.langevin.langevin` runs for ``settings`` on ``x``
    (measured and cached now if it is ``auto`` and not cached yet; ``retune``: measured
    afresh)."""
    with frozen(net):
        return autotune.resolve(net, x.detach().float(), settings,
                                lambda v: sampler_gradient(net, v),
                                explicit_ok=fastgrad.supports(net), retune=retune)


# --- FLOPs and the GEMM peak -------------------------------------------------------------

def flops_per_image_step(net: nn.Module, row_shape: tuple[int, ...],
                         device: torch.device) -> float:
    """FLOPs of one image-step: the energy's forward pass and its input gradient (no weight
    gradients), counted by ``FlopCounterMode`` on a 2-row batch and divided by 2. (A
    ``.backward()`` on a leaf input: ``FlopCounterMode``'s module hooks reject
    ``autograd.grad`` on a leaf in this torch release.)"""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((2, *row_shape), device=device, requires_grad=True)
    counter = FlopCounterMode(display=False)
    with frozen(net), counter, torch.enable_grad():
        net(x).sum().backward()
    return counter.get_total_flops() / 2


def _flops_of(fn: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


_GEMM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                "fp64": torch.float64}


def gemm(precision: str, device: torch.device, n: int = 2048) -> tuple[Callable[[], object], float]:
    """(a call of one n×n ``torch.mm`` in ``precision``'s dtype, its FLOPs 2n³): the peak the
    sampler's arithmetic rate is compared with."""
    g = torch.Generator(device="cpu").manual_seed(0)
    dt = _GEMM_DTYPES.get(precision, torch.float32)
    a = torch.randn((n, n), generator=g).to(device, dt)
    b = torch.randn((n, n), generator=g).to(device, dt)
    out = torch.empty((n, n), device=device, dtype=dt)
    return (lambda: torch.mm(a, b, out=out)), 2.0 * n ** 3


def _paired_rate_ratio(work_a: float, wall_a: list[float], work_b: float,
                       wall_b: list[float]) -> float:
    """Median over rounds of (work_a / wall_a) / (work_b / wall_b)."""
    return statistics.median((work_a / a) / (work_b / b)
                             for a, b in zip(wall_a, wall_b) if a > 0 and b > 0)


def _best_rate_ratio(work_a: float, wall_a: list[float], work_b: float,
                     wall_b: list[float]) -> float:
    """(work_a / fastest wall_a) / (work_b / fastest wall_b): each side's best round, the
    steadier figure where other processes share the cores (they only ever slow a round)."""
    return (work_a / min(wall_a)) / (work_b / min(wall_b))


# --- timing ----------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    _sync(device)
    w, c = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - w, time.process_time() - c


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
                ) -> dict[str, dict[str, list[float]]]:
    """Time each function ``repeats`` times, alternating between them within each round."""
    out = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            w, c = timed(fn, device)
            out[k]["wall"].append(w)
            out[k]["cpu"].append(c)
    return out


def _paired_ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-round ratios (rounds are adjacent in time, so load cancels)."""
    return statistics.median(a / b for a, b in zip(num, den) if b > 0)


def lightweight_net(image_size: int, channels: int, width: int, device: torch.device,
                    seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "bench-ebm"))
        net = LightweightEBM(channels, image_size, width)
    return net.to(device).eval()


def bench_net(image_size: int, channels: int, width: int, device: torch.device,
              ebm: str = "", seed: int = 0) -> nn.Module:
    """The EBM network the bench times: the artifact ``ebm`` when given (e.g. the shipped
    CIFAR-10 EBM), else a seeded :func:`lightweight_net` of that geometry."""
    if ebm:
        from ebmctl.models import EnergyModel

        return EnergyModel.load(ebm, device).net.float().eval()
    return lightweight_net(image_size, channels, width, device, seed)


def naive_child_env() -> dict[str, str]:
    """The environment of a plain ``python`` process: OpenMP's default (busy-wait) policy unless
    the user chose one, the same thread count as this process."""
    from ebmctl import openmp_policy

    env = dict(os.environ)
    if openmp_policy.SET_BY_EBMCTL:
        env.pop("OMP_WAIT_POLICY", None)
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    return env


def naive_in_child(batch: int, image_size: int, channels: int, width: int, steps: int,
                   seed: int = 0, timeout: float = 3600, ebm: str = "") -> tuple[float, float]:
    """(wall, CPU) seconds of the naive loop run in a fresh process with OpenMP's default
    settings, i.e. the reference code as a user runs it. Start-up and a one-step warm-up are
    not timed (the child times its own loop)."""
    job = json.dumps({"batch": batch, "image_size": image_size, "channels": channels,
                      "width": width, "steps": steps, "seed": seed, "ebm": ebm})
    proc = subprocess.run([sys.executable, "-m", "ebmctl.bench", job], capture_output=True,
                          text=True, env=naive_child_env(), timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"naive child failed: {proc.stderr.strip()[-300:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return res["wall"], res["cpu"]


def _child_main(job: dict) -> None:
    device = torch.device("cpu")
    net = bench_net(job["image_size"], job["channels"], job["width"], device, job.get("ebm", ""),
                    job["seed"])
    x = bench_batch(job["batch"], job["channels"], job["image_size"], job["seed"], device)
    drift, scale = TAU ** 2 / (2 * TEMPERATURE), TAU
    gen = make_generator(device, job["seed"], "bench-noise", job["batch"])
    naive_langevin(net, x, 1, drift, scale, gen)
    w, c = timed(lambda: naive_langevin(net, x, job["steps"], drift, scale, gen), device)
    print(json.dumps({"wall": w, "cpu": c}))


def bench_batch(batch: int, channels: int, image_size: int, seed: int,
                device: torch.device) -> torch.Tensor:
    return torch.rand((batch, channels, image_size, image_size),
                      generator=make_generator("cpu", seed, "bench-x", batch)).to(device) * 2 - 1


# --- accuracy per step ------------------------------------------------------------------

def step_agreement(net: nn.Module, x: torch.Tensor, settings: LangevinSettings) -> dict:
    """How one step's drift under ``settings`` (its resolved variant) compares with the fp32
    eager step's on the same states: the cosine of the two drifts (per image, min and mean)
    and their relative difference."""
    variant = resolved_variant(net, x, settings)
    xs = x.contiguous(memory_format=torch.channels_last) if (
        variant.channels_last and x.dim() == 4) else x
    with frozen(net):
        _, ref = energy_and_grad(net, x, "fp32")
        got = sampler_gradient(net, variant)(xs)
    ref, got = ref.flatten(1).double(), got.contiguous().flatten(1).double()
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=1)
    rel = ((got - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-30))
    return {"drift_cosine_min": round(cos.min().item(), 6),
            "drift_cosine_mean": round(cos.mean().item(), 6),
            "drift_rel_diff_max": float(f"{rel.max().item():.3g}")}


# --- the benchmarks -----------------------------------------------------------------------

def _naive_and_gemm_rates(times: dict, work: int, flops: float, gemm_work: dict[str, float],
                          gemm_size: int) -> dict:
    """The naive loop's image-steps/s (wall and CPU) and each precision's GEMM GFLOP/s, then
    the naive loop's GFLOP/s and its fraction of the fp32 GEMM's rate (paired by round), in
    the order the bench row lists them; ``variants`` is left empty for the caller."""
    row: dict = {
        "flops_per_image_step": flops,
        "naive_image_steps_per_s": round(work / statistics.median(times["naive"]["wall"]), 1),
        "naive_image_steps_per_cpu_s": round(work / statistics.median(times["naive"]["cpu"]), 1),
        "gemm": {p: {"size": gemm_size,
                     "gflops": round(gemm_work[p] / statistics.median(
                         times[f"gemm-{p}"]["wall"]) / 1e9, 2),
                     "gflops_cpu_s": round(gemm_work[p] / statistics.median(
                         times[f"gemm-{p}"]["cpu"]) / 1e9, 2)}
                 for p in gemm_work},
        "variants": {}}
    row["naive_gflops"] = round(flops * row["naive_image_steps_per_s"] / 1e9, 2)
    if "fp32" in gemm_work:
        row["naive_peak_fraction"] = round(_paired_rate_ratio(
            flops * work, times["naive"]["wall"], gemm_work["fp32"],
            times["gemm-fp32"]["wall"]), 3)
    return row


def _variant_row(s: LangevinSettings, v: Variant, times: dict, name: str, work: int,
                 flops: float, gemm_work: dict[str, float]) -> dict:
    """One sampler variant's rates from the interleaved timings ``times`` (wall and CPU
    seconds per round, keyed by function name): image-steps/s, GFLOP/s, its fraction of the
    same-precision GEMM's rate (paired by round, and best against best) and its speedup over
    the naive loop. ``work`` is image-steps per round, ``flops`` FLOPs per image-step."""
    t, g = times[name], f"gemm-{v.precision}"
    return {
        "variant": v.name, **v.to_dict(),
        "settings": {k: (val.to_dict() if isinstance(val, Variant) else val)
                     for k, val in asdict(s).items() if k not in ("tau", "temperature")},
        "image_steps_per_s": round(work / statistics.median(t["wall"]), 1),
        "image_steps_per_cpu_s": round(work / statistics.median(t["cpu"]), 1),
        "image_steps_per_s_best": round(work / min(t["wall"]), 1),
        "gflops": round(flops * work / statistics.median(t["wall"]) / 1e9, 2),
        "peak_fraction": round(_paired_rate_ratio(flops * work, t["wall"], gemm_work[v.precision],
                                                  times[g]["wall"]), 3),
        "peak_fraction_best": round(_best_rate_ratio(flops * work, t["wall"],
                                                     gemm_work[v.precision],
                                                     times[g]["wall"]), 3),
        "peak_fraction_cpu_s": round(_paired_rate_ratio(flops * work, t["cpu"],
                                                        gemm_work[v.precision],
                                                        times[g]["cpu"]), 3),
        "speedup": round(_paired_ratio(times["naive"]["wall"], t["wall"]), 3),
        "cpu_speedup": round(_paired_ratio(times["naive"]["cpu"], t["cpu"]), 3),
    }


def sampler_bench(device: torch.device, batch: int, *, image_size: int = 32, channels: int = 3,
                  width: int = 32, steps: int = 5, repeats: int = 3,
                  variants: dict[str, LangevinSettings] | None = None, seed: int = 0,
                  child_naive: bool = False, ebm: str = "", gemm_size: int = 2048) -> dict:
    """Image-steps/s of the naive loop and each sampler variant at one batch size, with each
    variant's GFLOP/s and its fraction of a same-precision ``gemm_size``² GEMM's (timed in
    the same rounds).

    ``variants`` defaults to ``{"auto": ...}`` (the autotuner's choice). With ``child_naive``
    (CPU) each round also times the naive loop in a fresh process with OpenMP's default
    settings (:func:`naive_in_child`); ``process_speedup`` compares with that.
    """
    net = bench_net(image_size, channels, width, device, ebm, seed)
    x = bench_batch(batch, channels, image_size, seed, device)
    variants = variants or {"auto": tuned_settings(device)}
    drift, scale = TAU ** 2 / (2 * TEMPERATURE), TAU
    flops = flops_per_image_step(net, tuple(x.shape[1:]), device)

    def gen():
        return make_generator(device, seed, "bench-noise", batch)

    fns: dict[str, Callable[[], object]] = {
        "naive": lambda: naive_langevin(net, x, steps, drift, scale, gen())}
    warmup, chosen, tune_s = {}, {}, {}
    for name, s in variants.items():
        t0 = time.perf_counter()
        chosen[name] = resolved_variant(net, x, s)  # an uncached auto choice is measured here
        tune_s[name] = round(time.perf_counter() - t0, 2)
        fns[name] = (lambda s=s: langevin(net, x, steps, s, gen(), check_every=0))
        # the first call pays for compilation / kernel selection; report it, don't time it
        warmup[name] = round(timed(lambda s=s: langevin(net, x, 1, s, gen()), device)[0], 3)
    gemm_work = {}
    for p in sorted({v.precision for v in chosen.values()}):
        fn, work = gemm(p, device, gemm_size)
        fn()
        fns[f"gemm-{p}"], gemm_work[p] = fn, work
    timed(lambda: naive_langevin(net, x, 1, drift, scale, gen()), device)
    if child_naive:
        child = {"wall": [], "cpu": []}

        def run_child():
            w, c = naive_in_child(batch, image_size, channels, width, steps, seed, ebm=ebm)
            child["wall"].append(w)
            child["cpu"].append(c)
        fns = {"naive-default-openmp": run_child, **fns}
    times = interleaved(fns, repeats, device)
    if child_naive:
        times["naive-default-openmp"] = child  # the child's own loop time, not its start-up
    work = batch * steps
    row: dict = {"batch": batch, "image_size": image_size, "channels": channels, "width": width,
                 "ebm": ebm or None, "steps": steps, "repeats": repeats,
                 **_naive_and_gemm_rates(times, work, flops, gemm_work, gemm_size)}
    for name, s in variants.items():
        row["variants"][name] = {
            **_variant_row(s, chosen[name], times, name, work, flops, gemm_work),
            "warmup_s": warmup[name],
            "resolve_s": tune_s[name],
            **({"process_speedup": round(_paired_ratio(times["naive-default-openmp"]["wall"],
                                                       times[name]["wall"]), 3)}
               if child_naive else {}),
            **step_agreement(net, x[: min(batch, 256)], s),
        }
    tuned = row["variants"].get("auto") or next(iter(row["variants"].values()))
    row["tuned_image_steps_per_s"] = tuned["image_steps_per_s"]
    row["speedup"] = tuned["speedup"]
    row["cpu_speedup"] = tuned["cpu_speedup"]
    row["peak_fraction"] = tuned["peak_fraction"]
    if child_naive:
        row["naive_default_openmp_image_steps_per_s"] = round(
            work / statistics.median(times["naive-default-openmp"]["wall"]), 1)
        row["process_speedup"] = tuned["process_speedup"]
    row["raw_seconds"] = {k: {m: [round(v, 4) for v in vals] for m, vals in t.items()}
                          for k, t in times.items()}
    return row


def tune_table(device: torch.device, batch: int, *, image_size: int = 32, channels: int = 3,
               width: int = 32, seed: int = 0, ebm: str = "", gemm_size: int = 2048) -> dict:
    """Re-measure the autotuner's choice for the bench geometry at ``batch`` rows (written to
    the cache) and return its table: every candidate's rows/s and GFLOP/s, the choice, and an
    fp32 GEMM timed right after (its peak, for a rough ``peak_fraction`` per candidate)."""
    net = bench_net(image_size, channels, width, device, ebm, seed)
    x = bench_batch(batch, channels, image_size, seed, device)
    s = tuned_settings(device)
    v = resolved_variant(net, x, s, retune=True)
    entry = autotune.last_report(net, x, s) or {}
    flops = flops_per_image_step(net, tuple(x.shape[1:]), device)
    peaks = {}
    for p in ("fp32", v.precision):
        fn, work = gemm(p, device, gemm_size)
        fn()
        peaks[p] = work / statistics.median(timed(fn, device)[0] for _ in range(3)) / 1e9
    cands = {}
    for name, c in (entry.get("measured", {}).get("candidates", {})).items():
        c = dict(c)
        if "rows_per_s" in c:
            c["gflops"] = round(c["rows_per_s"] * flops / 1e9, 2)
            prec = name.split("-", 1)[0]
            if prec in peaks:
                c["peak_fraction"] = round(c["gflops"] / peaks[prec], 3)
        cands[name] = c
    return {"batch": batch, "image_size": image_size, "channels": channels, "ebm": ebm or None,
            "chosen": v.name, "cache_file": str(autotune.cache_file(device)),
            "tune_seconds": entry.get("measured", {}).get("tune_seconds"),
            "flops_per_image_step": flops,
            "gemm_gflops": {p: round(g, 2) for p, g in peaks.items()}, "candidates": cands}


def _small_defense(device: torch.device, image_size: int, channels: int, width: int,
                   steps: int, reps: int, settings: LangevinSettings, ebm: str = ""):
    from ebmctl.defense import Defense
    from ebmctl.models import EnergyModel, TaskModel
    from ebmctl.plugins import get_registries

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(0, "bench-classifier"))
        clf = get_registries().models.get("small-cnn").build(
            in_channels=channels, num_classes=10, image_size=image_size)
    model = TaskModel(clf, "[-1,1]", image_size, channels).to(device).eval()
    energy = EnergyModel(bench_net(image_size, channels, width, device, ebm), TAU, TEMPERATURE,
                         image_size, channels)
    return Defense(model, energy, steps=steps, reps=reps, precision=settings.precision,
                   channels_last=settings.channels_last,
                   chunk_size=AUTO if settings.block_rows == AUTO else 2048)


def attack_bench(device: torch.device, *, mode: str = "bpda", n_images: int = 8, reps: int = 4,
                 steps: int = 20, image_size: int = 32, channels: int = 3, width: int = 32,
                 repeats: int = 2, segment: int = 0, ebm: str = "",
                 gemm_size: int = 2048) -> dict:
    """Seconds per attack step (one EOT gradient: H purified replicates of each image through
    the EBM, classifier forward/backward) for a small classifier, and the peak memory.

    ``mode="full"`` differentiates through the K-step chain with segment checkpointing
    (√K segments by default); the peak is then what the checkpointing bounds. On CUDA the peak
    is the allocator's; on CPU (Linux) the peak RSS above the RSS before the timed steps.
    BPDA steps also report ``gflops`` (the chain's FLOPs, H·n·K image-steps, plus the
    classifier's forward and input gradient on the H·n purified rows) and ``peak_fraction``
    against a GEMM of the chain's precision timed in the same rounds."""
    from ebmctl.attacks.gradients import auto_segment, eot_gradient
    from ebmctl.attacks.losses import margin_loss

    settings = tuned_settings(device)
    defense = _small_defense(device, image_size, channels, width, steps, reps, settings, ebm)
    x = torch.rand((n_images, channels, image_size, image_size),
                   generator=make_generator("cpu", 0, "bench-attack")).to(device)
    y = torch.arange(n_images, device=device) % 10
    rows = n_images * reps

    def one_step():
        eot_gradient(defense, x, y, reps, (0, "bench", mode), margin_loss, mode,
                     segment=segment)

    one_step()  # the first call pays one-time costs (tuning, kernel selection, plugin imports)
    fns: dict[str, Callable[[], object]] = {"attack": one_step}
    variant = None
    if mode == "bpda":
        flat = x.repeat(reps, 1, 1, 1) * 2 - 1
        # the settings Defense.purify hands the sampler (chunk_size auto: measured blocks)
        variant = resolved_variant(defense.ebm.net, flat, LangevinSettings(
            TAU, TEMPERATURE, 1.0, defense.precision, defense.channels_last, block_rows=AUTO))
        gemm_fn, gemm_work = gemm(variant.precision, device, gemm_size)
        gemm_fn()
        fns["gemm"] = gemm_fn
    base = peak_memory_start(device)
    times = interleaved(fns, repeats, device)
    peak = peak_memory_mib(device, base)
    sec = statistics.median(times["attack"]["wall"])
    seg = segment or auto_segment(steps)
    state_mb = math.ceil(steps / seg) * rows * channels * image_size ** 2 * 4 / 2 ** 20
    out = {"mode": mode, "n_images": n_images, "eot_reps": reps, "defense_steps": steps,
           "seconds_per_attack_step": round(sec, 4),
           "attack_steps_per_s": round(1.0 / sec, 4),
           "image_attack_steps_per_s": round(n_images / sec, 2),
           "langevin_image_steps_per_s": round(rows * steps * (2 if mode != "bpda" else 1) / sec, 1),
           "peak_memory_mb": peak,
           "peak_memory_kind": "cuda allocator peak" if device.type == "cuda"
           else "peak RSS growth during the attack steps"}
    if mode == "bpda":
        ebm_flops = flops_per_image_step(defense.ebm.net, tuple(x.shape[1:]), device)
        purified = x.repeat(reps, 1, 1, 1).requires_grad_(True)
        with frozen(defense.model):
            clf_flops = _flops_of(lambda: defense.model(purified).sum().backward())
        work = rows * steps * ebm_flops + clf_flops
        out.update(variant=variant.name, flops_per_attack_step=work,
                   gflops=round(work / sec / 1e9, 2),
                   peak_fraction=round(_paired_rate_ratio(work, times["attack"]["wall"],
                                                          gemm_work, times["gemm"]["wall"]), 3),
                   peak_fraction_best=round(_best_rate_ratio(work, times["attack"]["wall"],
                                                             gemm_work, times["gemm"]["wall"]),
                                            3),
                   gemm_gflops=round(gemm_work / statistics.median(times["gemm"]["wall"]) / 1e9,
                                     2))
    if mode != "bpda":
        out.update(segment=seg, stored_states_mb=round(state_mb, 2))
    return out


def training_bench(device: torch.device, *, image_size: int = 32, channels: int = 3,
                   width: int = 32, batch: int = 64, mcmc_steps: int = 5, repeats: int = 2,
                   seed: int = 0, gemm_size: int = 2048) -> dict:
    """Seconds per mid-run training update (Alg. 4: ``mcmc_steps`` Langevin steps on ``batch``
    bank rows, energies of positives and negatives, the parameter gradient, Adam, the bank
    update), on random images of the bench geometry, after 10 warm-up updates; with its
    ``gflops`` (K·batch image-steps plus the forward and weight-gradient FLOPs of the loss,
    counted by ``FlopCounterMode``) and ``peak_fraction`` against an fp32 GEMM timed in the
    same rounds. The chains run with ``langevin.*`` auto, as a profile's defaults do."""
    from ebmctl.contracts import DatasetBundle, Split
    from ebmctl.profiles import resolve
    from ebmctl.training.midrun import MidRun
    from ebmctl.training.trainer import EnergyTrainingSections

    n = max(4 * batch, 256)
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand((n, channels, image_size, image_size), generator=g)
    labels = torch.zeros(n, dtype=torch.long)
    split = Split(imgs, labels)
    bundle = DatasetBundle("bench-random", split, split, split, 1, ["x"], {"source": "random"})
    cfg = resolve(None, [f"train.batch_size={batch}", f"train.mcmc_steps={mcmc_steps}",
                         f"train.bank_size={n}", f"ebm.channels={width}", f"run.seed={seed}",
                         f"run.device={device.type}"])
    recipe = MidRun(EnergyTrainingSections.from_config(cfg, bundle), cfg.record(), bundle, device)
    recipe.setup()
    step = [0]

    def update():
        recipe.schedule(step[0])
        terms = recipe.gradients(step[0])
        recipe.apply(step[0], terms)
        step[0] += 1

    for _ in range(10):  # mid-run: past the first updates (and the sampler's tuning)
        update()
    net = recipe.net
    pos = recipe.positives(batch, torch.Generator(device=device).manual_seed(1))
    neg = recipe.bank[:batch]
    loss_flops = _flops_of(lambda: (net(pos).mean() - net(neg).mean()).backward())
    recipe.opt.zero_grad(set_to_none=True)
    flops = (batch * mcmc_steps * flops_per_image_step(net, tuple(pos.shape[1:]), device)
             + loss_flops)
    variant = resolved_variant(net, recipe.bank[:batch], recipe.settings)
    gemm_fn, gemm_work = gemm(variant.precision, device, gemm_size)
    gemm_fn()
    times = interleaved({"update": update, "gemm": gemm_fn}, repeats, device)
    sec = statistics.median(times["update"]["wall"])
    return {"recipe": "midrun", "batch": batch, "mcmc_steps": mcmc_steps,
            "image_size": image_size, "channels": channels, "width": width,
            "variant": variant.name, "seconds_per_update": round(sec, 4),
            "image_steps_per_s": round(batch * mcmc_steps / sec, 1),
            "flops_per_update": flops, "gflops": round(flops / sec / 1e9, 2),
            "peak_fraction": round(_paired_rate_ratio(flops, times["update"]["wall"],
                                                      gemm_work, times["gemm"]["wall"]), 3),
            "peak_fraction_best": round(_best_rate_ratio(flops, times["update"]["wall"],
                                                         gemm_work, times["gemm"]["wall"]), 3),
            "seconds_per_update_best": round(min(times["update"]["wall"]), 4),
            "gemm_gflops": round(gemm_work / statistics.median(times["gemm"]["wall"]) / 1e9, 2)}


def bench_environment(device: torch.device) -> dict:
    """:func:`ebmctl.context.runtime_environment` plus what sampler speed depends on: native
    bf16, the CPU's vector capability, the machine signature the autotuner's cache is keyed
    by, OpenMP's wait policy, whether autotuning is on, the load average, the CPU count and
    the GPU."""
    env = runtime_environment(device)
    env.update({"cpu_native_bf16": cpu_has_native_bf16(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "machine": autotune.machine_signature(device)})
    env["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
    env["autotune"] = "on" if autotune.autotune_enabled() else "off"
    try:
        env["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    env["cpu_count"] = os.cpu_count()
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


@dataclass
class BenchPlan:
    batches: tuple[int, ...] = (100, 1500)
    image_size: int = 32
    channels: int = 3
    width: int = 32
    steps: int = 0            # 0: by device (CUDA 50, CPU 3)
    repeats: int = 3
    all_variants: bool = False
    attack: bool = True
    attack_steps: int = 0     # K of the attack benches (0: CUDA 1500 for full, CPU 20)
    attack_images: int = 4
    attack_reps: int = 4
    child_naive: bool = True  # CPU: also time the naive loop in a default-OpenMP process
    tune: bool = False        # re-measure the autotuner's choice per batch and print its table
    train: bool = False       # time one mid-run training update
    train_batch: int = 64
    train_steps: int = 0      # K of the training update (0: CUDA 100, CPU 5)
    ebm: str = ""             # time this EBM artifact instead of a seeded lightweight EBM
    gemm_size: int = 2048

    def sampler_steps(self, device: torch.device) -> int:
        return self.steps or (50 if device.type == "cuda" else 3)

    def chain_steps(self, device: torch.device) -> int:
        return self.attack_steps or (1500 if device.type == "cuda" else 20)

    def update_steps(self, device: torch.device) -> int:
        return self.train_steps or (100 if device.type == "cuda" else 5)


def run_bench(plan: BenchPlan, device: torch.device, progress=None) -> dict:
    """The full report: memory / attack benches first (so the CPU RSS peak is theirs), then the
    tuning tables (``plan.tune``), the sampler at each batch size and the training update."""
    report: dict = {"environment": bench_environment(device), "plan": asdict(plan),
                    "tuned_settings": {k: v for k, v in asdict(tuned_settings(device)).items()
                                       if k not in ("tau", "temperature", "variant")}}
    geo = dict(image_size=plan.image_size, channels=plan.channels, width=plan.width)
    if plan.attack:
        k = plan.chain_steps(device)
        report["attack"] = {
            "full": attack_bench(device, mode="full", n_images=plan.attack_images,
                                 reps=plan.attack_reps, steps=k, repeats=1, ebm=plan.ebm,
                                 gemm_size=plan.gemm_size, **geo),
            "bpda": attack_bench(device, mode="bpda", n_images=plan.attack_images,
                                 reps=plan.attack_reps, steps=k, repeats=2, ebm=plan.ebm,
                                 gemm_size=plan.gemm_size, **geo)}
        if progress:
            progress()
    if plan.tune:
        report["tune"] = [tune_table(device, b, ebm=plan.ebm, gemm_size=plan.gemm_size, **geo)
                          for b in plan.batches]
    report["sampler"] = []
    for b in plan.batches:
        variants = None
        if plan.all_variants:
            net = bench_net(plan.image_size, plan.channels, plan.width, device, plan.ebm)
            variants = sampler_variants(device, net, bench_batch(
                b, plan.channels, plan.image_size, 0, device))
        report["sampler"].append(sampler_bench(
            device, b, steps=plan.sampler_steps(device), repeats=plan.repeats, variants=variants,
            child_naive=plan.child_naive and device.type == "cpu", ebm=plan.ebm,
            gemm_size=plan.gemm_size, **geo))
        if progress:
            progress()
    if plan.train:
        report["train"] = training_bench(device, batch=plan.train_batch,
                                         mcmc_steps=plan.update_steps(device),
                                         repeats=max(2, plan.repeats), gemm_size=plan.gemm_size,
                                         **geo)
        if progress:
            progress()
    report["summary"] = {f"batch_{r['batch']}_speedup": r["speedup"] for r in report["sampler"]}
    report["summary"].update({f"batch_{r['batch']}_cpu_speedup": r["cpu_speedup"]
                              for r in report["sampler"]})
    report["summary"].update({f"batch_{r['batch']}_process_speedup": r["process_speedup"]
                              for r in report["sampler"] if "process_speedup" in r})
    report["summary"].update({f"batch_{r['batch']}_tuned_image_steps_per_s":
                              r["tuned_image_steps_per_s"] for r in report["sampler"]})
    report["summary"].update({f"batch_{r['batch']}_peak_fraction": r["peak_fraction"]
                              for r in report["sampler"]})
    return report


def format_table(report: dict) -> str:
    """The report as text: the tuning tables (with ``--tune``), one line per sampler variant
    and batch, then the attack and training lines."""
    lines = []
    for t in report.get("tune", []):
        lines.append(f"autotune, batch {t['batch']} ({t['channels']}x{t['image_size']}x"
                     f"{t['image_size']}): chose {t['chosen']} in {t['tune_seconds']} s "
                     f"(cache {t['cache_file']}; fp32 GEMM {t['gemm_gflops']['fp32']} GFLOP/s)")
        for name, c in t["candidates"].items():
            if "rows_per_s" in c:
                pf = f"{c['peak_fraction']:.2f}" if "peak_fraction" in c else "-"
                note = f"  ({c['dropped']})" if "dropped" in c else ""
                lines.append(f"  {name:<34} {c['rows_per_s']:>10.0f} rows/s "
                             f"{c.get('gflops', 0):>7.1f} GFLOP/s  peak {pf}{note}")
            else:
                lines.append(f"  {name:<34} {c.get('dropped') or c.get('error', '')}")
    lines.append(f"{'batch':>6} {'variant':<34} {'img-steps/s':>11} {'GFLOP/s':>8} {'peak':>5} "
                 f"{'best':>5} "
                 f"{'naive':>8} {'speedup':>8} {'cpu-speedup':>11} {'vs default-OpenMP naive':>24} "
                 f"{'drift cos':>9}")
    for r in report.get("sampler", []):
        child = r.get("naive_default_openmp_image_steps_per_s")
        for name, v in r["variants"].items():
            proc = (f"{v['process_speedup']:.2f}x (naive {child:.0f}/s)" if child else "-")
            label = name if name == v["variant"] else f"{name}={v['variant']}"
            lines.append(f"{r['batch']:>6} {label:<34} {v['image_steps_per_s']:>11.0f} "
                         f"{v['gflops']:>8.1f} {v['peak_fraction']:>5.2f} "
                         f"{v['peak_fraction_best']:>5.2f} "
                         f"{r['naive_image_steps_per_s']:>8.0f} {v['speedup']:>7.2f}x "
                         f"{v['cpu_speedup']:>10.2f}x {proc:>24} {v['drift_cosine_min']:>9.4f}")
    for mode, a in report.get("attack", {}).items():
        rate = (f"; {a['gflops']} GFLOP/s, peak fraction {a['peak_fraction']} ({a['variant']})"
                if "gflops" in a else "")
        lines.append(f"attack {mode:<5}: {a['seconds_per_attack_step']:.3f} s/step "
                     f"({a['n_images']} images x H={a['eot_reps']}, K={a['defense_steps']}), "
                     f"peak memory {a['peak_memory_mb']} MB ({a['peak_memory_kind']}){rate}")
    if "train" in report:
        t = report["train"]
        lines.append(f"train midrun: {t['seconds_per_update']:.3f} s/update (batch {t['batch']} "
                     f"x K={t['mcmc_steps']}, {t['image_steps_per_s']:.0f} image-steps/s), "
                     f"{t['gflops']} GFLOP/s, peak fraction {t['peak_fraction']} "
                     f"({t['variant']})")
    return "\n".join(lines)


if __name__ == "__main__":  # the naive child process of :func:`naive_in_child`
    _child_main(json.loads(sys.argv[1]))
