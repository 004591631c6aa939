"""Device and precision choices."""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from functools import lru_cache

import torch

from ebmctl.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"bad device {name!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return dev


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


#: Environment switch of the Langevin autotuner: ``off`` (or 0/false/no) makes every ``auto``
#: sampler setting fall back to the fixed rules below (what the test suite uses, so results do
#: not depend on timings); unset or anything else leaves the tuner on.
AUTOTUNE_ENV = "EBMCTL_AUTOTUNE"


def autotune_enabled() -> bool:
    """True unless ``$EBMCTL_AUTOTUNE`` is off/0/false/no (read at every call)."""
    return os.environ.get(AUTOTUNE_ENV, "").strip().lower() not in ("off", "0", "false", "no")


def fixed_precision(device: torch.device) -> str:
    """The unmeasured rule for ``precision = auto``: bf16 on CUDA and on CPUs with native bf16
    (AMX/AVX512-bf16), else fp32."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return "bf16"
    return "fp32"


def resolve_precision(precision: str, device: torch.device) -> str:
    """A ``langevin.precision`` setting as the sampler receives it. ``auto`` stays ``auto``
    while the autotuner is on (the sampler measures fp32 against bf16 for each network and
    shape, :mod:`ebmctl.sampling.autotune`); with ``EBMCTL_AUTOTUNE=off`` it is
    :func:`fixed_precision`. Explicit precisions are returned unchanged."""
    if precision == "auto":
        return "auto" if autotune_enabled() else fixed_precision(device)
    return precision


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def set_threads(n: int) -> None:
    if n and n > 0:
        torch.set_num_threads(n)


# --- peak memory of one piece of work -------------------------------------------------------

def _proc_status_kib(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux); None elsewhere."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
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


def peak_memory_start(device: torch.device) -> int:
    """Start a peak-memory window on ``device``; returns the baseline (bytes) to hand to
    :func:`peak_memory_mib`. CUDA: resets the allocator's peak counter. CPU (Linux): resets
    the process's peak RSS (VmHWM) to its current RSS, so the window's peak is the measured
    work's own; where that reset is unavailable the baseline is the peak so far."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    if _reset_rss_peak():
        return (_proc_status_kib("VmRSS") or 0) * 1024
    return _rss_peak_bytes()


def _rss_peak_bytes() -> int:
    """The process's peak RSS: VmHWM (resettable) on Linux, else ``ru_maxrss`` (never reset)."""
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def peak_memory_mib(device: torch.device, base: int) -> float:
    """Peak in the window :func:`peak_memory_start` opened (MiB, rounded to 0.1): the CUDA
    allocator's peak, or on CPU the peak RSS above the RSS at the window's start (the growth
    the measured work caused)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return round(max(0, _rss_peak_bytes() - base) / 2 ** 20, 1)
