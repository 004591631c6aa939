"""Device and precision choices."""

from __future__ import annotations

import contextlib
import os
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
