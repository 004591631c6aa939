"""Throughput of the Langevin sampler and of attacks (docs/algorithms.md#sampler-throughput),
measured in image-steps/s.

Every sampler figure is a ratio taken *within one run*: the naive reference loop and the tuned
sampler alternate (naive, tuned, naive, tuned, ...) on the same network and batch, so a shared or
throttled machine slows both alike. The naive reference is the purification loop as the authors'
code runs it: fp32, eager, parameters requiring grad, contiguous memory, one ``autograd.grad`` per
step. The tuned sampler is :func:`ebmctl.sampling.langevin.langevin` with the settings chosen for the device.

Besides wall time, CPU time of this process is recorded: on a machine shared with other jobs it
is the steadier measure of work done (it excludes time spent waiting for a core).
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from ebmctl.device import cpu_has_native_bf16, resolve_precision
from ebmctl.nn.ebm import LightweightEBM
from ebmctl.sampling.langevin import LangevinSettings, energy_and_grad, langevin, sampling_net
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


def tuned_settings(device: torch.device, precision: str = "auto", channels_last: bool | None = None,
                   compile: bool | None = None, tau: float = TAU,
                   temperature: float = TEMPERATURE) -> LangevinSettings:
    """The sampler settings chosen per device: bf16 autocast where the hardware has it (CUDA, CPUs
    with AMX/AVX512-bf16), channels_last and torch.compile on CUDA. On a CPU without native bf16,
    fp32 (bf16 is emulated there and ran ~10× slower in our measurements), no compile (the
    inductor compile took 208 s on 2 shared cores and the compiled step was not faster), and
    cache-sized gradient blocks (``block_rows`` None = by image size)."""
    cuda = device.type == "cuda"
    return LangevinSettings(tau, temperature, 1.0, resolve_precision(precision, device),
                            cuda if channels_last is None else channels_last,
                            cuda if compile is None else compile)


def sampler_variants(device: torch.device) -> dict[str, LangevinSettings]:
    """Named settings to compare with ``--all-variants`` (the tuned one is ``tuned``)."""
    out = {"fp32-frozen-whole-batch": LangevinSettings(TAU, TEMPERATURE, compile=False,
                                                       block_rows=0),
           "fp32-channels_last": LangevinSettings(TAU, TEMPERATURE, channels_last=True,
                                                  compile=False, block_rows=0)}
    if device.type == "cuda" or cpu_has_native_bf16():
        out["bf16-channels_last"] = LangevinSettings(TAU, TEMPERATURE, precision="bf16",
                                                     channels_last=True, compile=False)
    if device.type == "cuda":
        out["bf16-channels_last-compile"] = LangevinSettings(TAU, TEMPERATURE, precision="bf16",
                                                             channels_last=True, compile=True)
    out["tuned"] = tuned_settings(device)
    return out


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
                   seed: int = 0, timeout: float = 3600) -> tuple[float, float]:
    """(wall, CPU) seconds of the naive loop run in a fresh process with OpenMP's default
    settings, i.e. the reference code as a user runs it. Start-up and a one-step warm-up are
    not timed (the child times its own loop)."""
    job = json.dumps({"batch": batch, "image_size": image_size, "channels": channels,
                      "width": width, "steps": steps, "seed": seed})
    proc = subprocess.run([sys.executable, "-m", "ebmctl.bench", job], capture_output=True,
                          text=True, env=naive_child_env(), timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"naive child failed: {proc.stderr.strip()[-300:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return res["wall"], res["cpu"]


def _child_main(job: dict) -> None:
    device = torch.device("cpu")
    net = lightweight_net(job["image_size"], job["channels"], job["width"], device, job["seed"])
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
    """How one tuned step's drift compares with the fp32 eager step's on the same states: the
    cosine of the two drifts (per image, min and mean) and their relative difference."""
    xs = x.contiguous(memory_format=torch.channels_last) if (
        settings.channels_last and x.dim() == 4) else x
    from ebmctl.sampling.langevin import frozen

    with frozen(net):
        _, ref = energy_and_grad(net, x, "fp32")
        _, got = energy_and_grad(sampling_net(net, settings.use_compile), xs, settings.precision)
    ref, got = ref.flatten(1).double(), got.contiguous().flatten(1).double()
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=1)
    rel = ((got - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-30))
    return {"drift_cosine_min": round(cos.min().item(), 6),
            "drift_cosine_mean": round(cos.mean().item(), 6),
            "drift_rel_diff_max": float(f"{rel.max().item():.3g}")}


# --- the benchmarks -----------------------------------------------------------------------

def sampler_bench(device: torch.device, batch: int, *, image_size: int = 32, channels: int = 3,
                  width: int = 32, steps: int = 5, repeats: int = 3,
                  variants: dict[str, LangevinSettings] | None = None, seed: int = 0,
                  child_naive: bool = False) -> dict:
    """Image-steps/s of the naive loop and each sampler variant at one batch size.

    With ``child_naive`` (CPU) each round also times the naive loop in a fresh process with
    OpenMP's default settings (:func:`naive_in_child`); ``process_speedup`` compares with that.
    """
    variants = variants or {"tuned": tuned_settings(device)}
    net = lightweight_net(image_size, channels, width, device, seed)
    x = bench_batch(batch, channels, image_size, seed, device)
    drift, scale = TAU ** 2 / (2 * TEMPERATURE), TAU

    def gen():
        return make_generator(device, seed, "bench-noise", batch)

    fns: dict[str, Callable[[], object]] = {
        "naive": lambda: naive_langevin(net, x, steps, drift, scale, gen())}
    warmup = {}
    for name, s in variants.items():
        fns[name] = (lambda s=s: langevin(net, x, steps, s, gen(), check_every=0))
        # the first call pays for compilation / kernel selection; report it, don't time it
        warmup[name] = round(timed(lambda s=s: langevin(net, x, 1, s, gen()), device)[0], 3)
    timed(lambda: naive_langevin(net, x, 1, drift, scale, gen()), device)
    if child_naive:
        child = {"wall": [], "cpu": []}

        def run_child():
            w, c = naive_in_child(batch, image_size, channels, width, steps, seed)
            child["wall"].append(w)
            child["cpu"].append(c)
        fns = {"naive-default-openmp": run_child, **fns}
    times = interleaved(fns, repeats, device)
    if child_naive:
        times["naive-default-openmp"] = child  # the child's own loop time, not its start-up
    work = batch * steps
    row: dict = {"batch": batch, "image_size": image_size, "channels": channels, "width": width,
                 "steps": steps, "repeats": repeats,
                 "naive_image_steps_per_s": round(work / statistics.median(times["naive"]["wall"]), 1),
                 "naive_image_steps_per_cpu_s": round(work / statistics.median(times["naive"]["cpu"]), 1),
                 "variants": {}}
    for name, s in variants.items():
        t = times[name]
        row["variants"][name] = {
            "settings": {k: v for k, v in asdict(s).items() if k not in ("tau", "temperature")},
            "image_steps_per_s": round(work / statistics.median(t["wall"]), 1),
            "image_steps_per_cpu_s": round(work / statistics.median(t["cpu"]), 1),
            "speedup": round(_paired_ratio(times["naive"]["wall"], t["wall"]), 3),
            "cpu_speedup": round(_paired_ratio(times["naive"]["cpu"], t["cpu"]), 3),
            "warmup_s": warmup[name],
            **({"process_speedup": round(_paired_ratio(times["naive-default-openmp"]["wall"],
                                                       t["wall"]), 3)} if child_naive else {}),
            **step_agreement(net, x[: min(batch, 256)], s),
        }
    tuned = row["variants"].get("tuned") or next(iter(row["variants"].values()))
    row["tuned_image_steps_per_s"] = tuned["image_steps_per_s"]
    row["speedup"] = tuned["speedup"]
    row["cpu_speedup"] = tuned["cpu_speedup"]
    if child_naive:
        row["naive_default_openmp_image_steps_per_s"] = round(
            work / statistics.median(times["naive-default-openmp"]["wall"]), 1)
        row["process_speedup"] = tuned["process_speedup"]
    row["raw_seconds"] = {k: {m: [round(v, 4) for v in vals] for m, vals in t.items()}
                          for k, t in times.items()}
    return row


def _small_defense(device: torch.device, image_size: int, channels: int, width: int,
                   steps: int, reps: int, settings: LangevinSettings):
    from ebmctl.defense import Defense
    from ebmctl.models import EnergyModel, TaskModel
    from ebmctl.plugins import get_registries

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(0, "bench-classifier"))
        clf = get_registries().models.get("small-cnn").build(
            in_channels=channels, num_classes=10, image_size=image_size)
    model = TaskModel(clf, "[-1,1]", image_size, channels).to(device).eval()
    ebm = EnergyModel(lightweight_net(image_size, channels, width, device), TAU, TEMPERATURE,
                      image_size, channels)
    return Defense(model, ebm, steps=steps, reps=reps, precision=settings.precision,
                   channels_last=settings.channels_last)


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _proc_status_kib("VmHWM") is not None
    except OSError:
        return False


def _peak_memory_reset(device: torch.device) -> int:
    """Start a peak-memory window; returns the baseline in bytes."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    if _reset_rss_peak():
        return (_proc_status_kib("VmRSS") or 0) * 1024
    return _rss_peak_bytes()


def _rss_peak_bytes() -> int:
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _peak_memory_mb(device: torch.device, base: int) -> float:
    """Peak in the window: the CUDA allocator's peak, or on CPU the peak RSS above the RSS at
    the window's start (the growth the measured work caused)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return round(max(0, _rss_peak_bytes() - base) / 2 ** 20, 1)


def attack_bench(device: torch.device, *, mode: str = "bpda", n_images: int = 8, reps: int = 4,
                 steps: int = 20, image_size: int = 32, channels: int = 3, width: int = 32,
                 repeats: int = 2, segment: int = 0) -> dict:
    """Seconds per attack step (one EOT gradient: H purified replicates of each image through
    the EBM, classifier forward/backward) for a small classifier, and the peak memory.

    ``mode="full"`` differentiates through the K-step chain with segment checkpointing
    (√K segments by default); the peak is then what the checkpointing bounds. On CUDA the peak
    is the allocator's; on CPU (Linux) the peak RSS above the RSS before the timed steps."""
    from ebmctl.attacks.gradients import auto_segment, eot_gradient
    from ebmctl.attacks.losses import margin_loss

    settings = tuned_settings(device)
    defense = _small_defense(device, image_size, channels, width, steps, reps, settings)
    x = torch.rand((n_images, channels, image_size, image_size),
                   generator=make_generator("cpu", 0, "bench-attack")).to(device)
    y = torch.arange(n_images, device=device) % 10

    def one_step():
        eot_gradient(defense, x, y, reps, (0, "bench", mode), margin_loss, mode,
                     segment=segment)

    one_step()  # the first call pays one-time costs (kernel selection, plugin imports)
    base = _peak_memory_reset(device)
    times = interleaved({"attack": one_step}, repeats, device)["attack"]
    peak = _peak_memory_mb(device, base)
    sec = statistics.median(times["wall"])
    seg = segment or auto_segment(steps)
    rows = n_images * reps
    state_mb = math.ceil(steps / seg) * rows * channels * image_size ** 2 * 4 / 2 ** 20
    out = {"mode": mode, "n_images": n_images, "eot_reps": reps, "defense_steps": steps,
           "seconds_per_attack_step": round(sec, 4),
           "attack_steps_per_s": round(1.0 / sec, 4),
           "image_attack_steps_per_s": round(n_images / sec, 2),
           "langevin_image_steps_per_s": round(rows * steps * (2 if mode != "bpda" else 1) / sec, 1),
           "peak_memory_mb": peak,
           "peak_memory_kind": "cuda allocator peak" if device.type == "cuda"
           else "peak RSS growth during the attack steps"}
    if mode != "bpda":
        out.update(segment=seg, stored_states_mb=round(state_mb, 2))
    return out


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "device": str(device),
           "threads": torch.get_num_threads(), "cpu_native_bf16": cpu_has_native_bf16()}
    import os

    env["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
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

    def sampler_steps(self, device: torch.device) -> int:
        return self.steps or (50 if device.type == "cuda" else 3)

    def chain_steps(self, device: torch.device) -> int:
        return self.attack_steps or (1500 if device.type == "cuda" else 20)


def run_bench(plan: BenchPlan, device: torch.device, progress=None) -> dict:
    """The full report: memory / attack benches first (so the CPU RSS peak is theirs), then the
    sampler at each batch size."""
    report: dict = {"environment": environment(device), "plan": asdict(plan),
                    "tuned_settings": {k: v for k, v in asdict(tuned_settings(device)).items()
                                       if k not in ("tau", "temperature")}}
    geo = dict(image_size=plan.image_size, channels=plan.channels, width=plan.width)
    if plan.attack:
        k = plan.chain_steps(device)
        report["attack"] = {
            "full": attack_bench(device, mode="full", n_images=plan.attack_images,
                                 reps=plan.attack_reps, steps=k, repeats=1, **geo),
            "bpda": attack_bench(device, mode="bpda", n_images=plan.attack_images,
                                 reps=plan.attack_reps, steps=k, repeats=2, **geo)}
        if progress:
            progress()
    variants = sampler_variants(device) if plan.all_variants else {"tuned": tuned_settings(device)}
    report["sampler"] = []
    for b in plan.batches:
        report["sampler"].append(sampler_bench(
            device, b, steps=plan.sampler_steps(device), repeats=plan.repeats, variants=variants,
            child_naive=plan.child_naive and device.type == "cpu", **geo))
        if progress:
            progress()
    report["summary"] = {f"batch_{r['batch']}_speedup": r["speedup"] for r in report["sampler"]}
    report["summary"].update({f"batch_{r['batch']}_cpu_speedup": r["cpu_speedup"]
                              for r in report["sampler"]})
    report["summary"].update({f"batch_{r['batch']}_process_speedup": r["process_speedup"]
                              for r in report["sampler"] if "process_speedup" in r})
    report["summary"].update({f"batch_{r['batch']}_tuned_image_steps_per_s":
                              r["tuned_image_steps_per_s"] for r in report["sampler"]})
    return report


def format_table(report: dict) -> str:
    lines = [f"{'batch':>6} {'variant':<28} {'img-steps/s':>12} {'naive':>10} {'speedup':>8} "
             f"{'cpu-speedup':>11} {'vs default-OpenMP naive':>24} {'drift cos':>9}"]
    for r in report.get("sampler", []):
        child = r.get("naive_default_openmp_image_steps_per_s")
        for name, v in r["variants"].items():
            proc = (f"{v['process_speedup']:.2f}x (naive {child:.0f}/s)" if child else "-")
            lines.append(f"{r['batch']:>6} {name:<28} {v['image_steps_per_s']:>12.0f} "
                         f"{r['naive_image_steps_per_s']:>10.0f} {v['speedup']:>7.2f}x "
                         f"{v['cpu_speedup']:>10.2f}x {proc:>24} {v['drift_cosine_min']:>9.4f}")
    for mode, a in report.get("attack", {}).items():
        lines.append(f"attack {mode:<5}: {a['seconds_per_attack_step']:.3f} s/step "
                     f"({a['n_images']} images x H={a['eot_reps']}, K={a['defense_steps']}), "
                     f"peak memory {a['peak_memory_mb']} MB ({a['peak_memory_kind']})")
    return "\n".join(lines)


if __name__ == "__main__":  # the naive child process of :func:`naive_in_child`
    _child_main(json.loads(sys.argv[1]))
