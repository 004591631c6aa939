"""The Langevin step's autotuner: ``auto`` sampler settings resolved by measurement, once per
machine, torch release and EBM shape (like cuDNN's benchmark mode or FFTW's wisdom).

A *variant* is how one gradient evaluation of the sampler runs: precision (fp32, or bf16/fp16
autocast), memory layout (NCHW or channels_last), rows per gradient evaluation (``block_rows``,
0 = the whole batch), how the input gradient is computed (``autograd``, or ``explicit``: one
forward pass keeping the activation masks and one transposed pass, for piecewise-linear EBMs,
:mod:`ebmctl.sampling.fastgrad`; ``dense``: the same with small-map layers as matrix
products), one intra-op thread instead of the process's (``threads``), and on CUDA
``compile`` / a captured CUDA ``graph``.

:func:`resolve` turns a sampler's settings into one variant. Every setting given explicitly is
kept exactly (an explicit ``channels_last = False`` is never replaced); only the ``auto`` ones
are chosen, by timing candidates interleaved on the caller's own rows (a few seconds, under
:data:`TUNE_BUDGET_S`). bf16/fp16 are candidates only where their drift agrees with fp32's
(per-row cosine ≥ :data:`REDUCED_MIN_COSINE`). Choices are cached in
``$EBMCTL_CACHE_DIR`` (else ``$XDG_CACHE_HOME/ebmctl``, else ``~/.cache/ebmctl``), one JSON file
per machine (CPU model and flags, or GPU name) and torch release, keyed by the EBM's structure
(not its weights), the row shape, the batch size rounded up to a power of two, the thread
count and the fixed settings. A cache file that is unreadable, malformed, or written for
another machine or torch release is ignored with a :class:`AutotuneCacheWarning` and never
trusted; writes are atomic. ``EBMCTL_AUTOTUNE=off`` disables measuring: ``auto`` then means
the fixed rules (fp32 unless the hardware has native bf16, NCHW, :func:`cpu_block_rows`,
autograd), which is what the test suite runs.

A batch whose bucket has no entry yet, while another bucket of the same EBM structure, row
shape, threads, dtype and fixed settings has one, reuses the nearest bucket's choice
(:func:`neighbour_variant`) instead of measuring again: one run meets several batch sizes
(EOT copies, verification draws, the attack's last partial batch), and tuning each inside
the run costs more than it saves. ``ebmctl bench --tune`` measures a bucket exactly.

The sampler's results do not depend on the variant beyond rounding: the noise is drawn for the
whole chunk in the same order, and rows are independent (no variant is bit-exact with another).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import math
import os
import statistics
import time
import warnings
import weakref
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ebmctl.device import autotune_enabled, cpu_has_native_bf16, fixed_precision
from ebmctl.sampling import fastgrad

AUTO = "auto"
PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
GRADS = ("autograd", "explicit", "dense")
#: a bf16/fp16 candidate must give every row a drift with this cosine to fp32's drift
REDUCED_MIN_COSINE = 0.99
#: reduced precision must beat the best fp32 variant by this factor (it costs accuracy)
REDUCED_MIN_GAIN = 1.05
#: any other challenger must beat the incumbent (the fixed rule's variant, then each stage's
#: winner) by this factor: timing noise alone must not move a choice
MIN_GAIN = 1.03
#: one thread must beat the process's thread count by this factor (a win measured under a
#: passing load should not leave a core idle later)
THREADS_MIN_GAIN = 1.05
#: candidate rows per gradient evaluation (CPU); the whole batch is a candidate up to the last
BLOCK_CANDIDATES = (16, 32, 64, 128, 256, 512, 1024)
#: soft limit on one tuning (seconds): later stages are cut short once it is spent
TUNE_BUDGET_S = 15.0
#: longest single timed call; larger blocks are not tried (their per-row speed has levelled off)
MAX_CALL_S = 0.4
#: a timing sample lasts at least this long (several calls of a fast step)
MIN_SAMPLE_S = 0.02
ROUNDS = 5

CACHE_ENV = "EBMCTL_CACHE_DIR"
CACHE_FORMAT = "ebmctl-langevin-autotune"
CACHE_VERSION = 2

#: Input elements per CPU gradient block of the fixed rule: ~64 images of 32×32×3 (about where
#: the lightweight EBM's first activations stop fitting in cache), ~3000 of 8×8×1.
CPU_BLOCK_ELEMENTS = 64 * 3 * 32 * 32


class AutotuneCacheWarning(RuntimeWarning):
    """A cache file or entry was ignored (unreadable, malformed, or from another machine)."""


@dataclass(frozen=True)
class Variant:
    """One way of running the sampler's gradient evaluation (see the module docstring)."""

    precision: str = "fp32"
    channels_last: bool = False
    block_rows: int = 0
    grad: str = "autograd"
    compile: bool = False
    graph: bool = False
    #: intra-op threads while computing the gradient (0 = the process's setting)
    threads: int = 0

    @property
    def name(self) -> str:
        """e.g. ``fp32-cl-explicit-b64`` (``nchw``/``cl``; ``whole`` = one block; ``-t1``:
        one thread)."""
        parts = [self.precision, "cl" if self.channels_last else "nchw", self.grad,
                 f"b{self.block_rows}" if self.block_rows else "whole"]
        parts += ["compile"] * self.compile + ["graph"] * self.graph
        parts += [f"t{self.threads}"] * bool(self.threads)
        return "-".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "Variant":
        """A variant from its :meth:`to_dict` form, every field checked.

        Raises:
            ValueError: not a dict, an unknown or missing field, or a value out of range.
        """
        if not isinstance(d, dict) or set(d) != {f for f in cls.__dataclass_fields__}:
            raise ValueError(f"not a variant: {d!r}")
        v = cls(**d)
        if (v.precision not in PRECISIONS or v.grad not in GRADS
                or not all(isinstance(b, bool) for b in (v.channels_last, v.compile, v.graph))
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 0
                       for n in (v.block_rows, v.threads))):
            raise ValueError(f"bad variant values: {d!r}")
        return v


@dataclass(frozen=True)
class Request:
    """What the caller fixed (None = ``auto``, to be chosen)."""

    precision: str | None
    channels_last: bool | None
    block_rows: int | None
    compile: bool | None

    @property
    def free(self) -> bool:
        return None in (self.precision, self.channels_last, self.block_rows, self.compile)


# --- the fixed rules (autotuner off, or nothing left to choose) -----------------------------

def cpu_block_rows(x: torch.Tensor, net: nn.Module, settings) -> int:
    """Rows per gradient block of the fixed rule, or 0 for the whole batch: blocks only on
    CPU, and never for a network whose rows interact (batch norm in training mode).
    ``settings.block_rows``: 0 = whole batch, an int = that many rows, None/``auto`` = by
    image size (:data:`CPU_BLOCK_ELEMENTS`)."""
    requested = settings.block_rows if settings.block_rows != AUTO else None
    if x.device.type != "cpu" or requested == 0 or _rows_interact(net):
        return 0
    rows = requested or max(16, CPU_BLOCK_ELEMENTS // max(1, x[0].numel()))
    return rows if x.shape[0] > rows else 0


def _rows_interact(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
               for m in net.modules())


def request_of(settings, x: torch.Tensor, net: nn.Module) -> Request:
    """The :class:`Request` a :class:`~ebmctl.sampling.langevin.LangevinSettings` makes for
    the batch ``x``: ``precision``/``channels_last``/``block_rows``/``compile`` equal to
    ``"auto"`` are free; ``block_rows`` None is fixed, to :func:`cpu_block_rows`'s value."""
    comp = settings.compile_request
    blocks = settings.block_rows
    return Request(None if settings.precision == AUTO else settings.precision,
                   None if settings.channels_last == AUTO else bool(settings.channels_last),
                   None if blocks == AUTO else cpu_block_rows(x, net, settings),
                   None if comp == AUTO else bool(comp))


def fixed_variant(net: nn.Module, x: torch.Tensor, request: Request) -> Variant:
    """The variant without measuring: fixed settings as given, ``auto`` ones by the fixed
    rules (precision :func:`ebmctl.device.fixed_precision`, NCHW, :func:`cpu_block_rows`,
    autograd, no compile)."""
    precision = request.precision or fixed_precision(x.device)
    blocks = (request.block_rows if request.block_rows is not None
              else cpu_block_rows(x, net, _BlockOnly(None)))
    return Variant(precision, bool(request.channels_last) and x.dim() == 4, blocks,
                   "autograd", bool(request.compile))


class _BlockOnly:
    """Stands in for settings in :func:`cpu_block_rows` (only ``block_rows`` is read)."""

    def __init__(self, block_rows):
        self.block_rows = block_rows


# --- the cache --------------------------------------------------------------------------------

def cache_dir() -> Path:
    """``$EBMCTL_CACHE_DIR``, else ``$XDG_CACHE_HOME/ebmctl``, else ``~/.cache/ebmctl``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ebmctl"


def _cpuinfo() -> tuple[str, str]:
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
                if model and flags:
                    break
    except OSError:
        pass
    if not model:
        import platform

        model = platform.processor() or platform.machine()
    return model, flags


@functools.lru_cache(maxsize=8)
def _machine(kind: str, index: int | None) -> str:
    if kind == "cuda":
        idx = index if index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        return json.dumps({"device": "cuda", "gpu": torch.cuda.get_device_name(idx),
                           "capability": f"{major}.{minor}"})
    model, flags = _cpuinfo()
    return json.dumps({"device": kind, "cpu": model,
                       "flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
                       "capability": torch.backends.cpu.get_cpu_capability(),
                       "logical_cpus": os.cpu_count()})


def machine_signature(device: torch.device) -> dict:
    """What a timing depends on besides the network: the CPU model and a digest of its
    flags, torch's CPU capability and the logical CPU count; on CUDA the GPU's name and
    compute capability (read once per process)."""
    return json.loads(_machine(device.type, device.index))


def _digest(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def cache_file(device: torch.device) -> Path:
    """The cache file of this machine and torch release."""
    return cache_dir() / f"langevin-{_digest([machine_signature(device), torch.__version__], 12)}.json"


_NET_SIG: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def net_signature(net: nn.Module) -> str:
    """A digest of ``net``'s structure (class, layers and their hyper-parameters, parameter
    dtype), not of its weights: retraining an EBM keeps its tuned variant."""
    sig = _NET_SIG.get(net)
    if sig is None:
        p = next(net.parameters(), None)
        sig = _digest([type(net).__module__, type(net).__qualname__, repr(net),
                       str(p.dtype) if p is not None else ""])
        _NET_SIG[net] = sig
    return sig


def batch_bucket(rows: int) -> int:
    """Rows rounded up to a power of two (at least 16): batches in one bucket share a choice
    (e.g. 1600 → 2048, 64 → 64, 5 → 16)."""
    return max(16, 1 << max(0, int(rows) - 1).bit_length())


def _family(net: nn.Module, x: torch.Tensor, request: Request) -> dict:
    """What every batch bucket of one tuning problem shares: EBM structure, row shape, thread
    count, input dtype and the fixed settings (cache entries record these fields)."""
    return {"net": net_signature(net), "row_shape": list(x.shape[1:]),
            "threads": torch.get_num_threads(), "dtype": str(x.dtype),
            "request": asdict(request)}


def cache_key(net: nn.Module, x: torch.Tensor, request: Request) -> str:
    """The entry key: the problem's :func:`_family` and the batch bucket (the machine and
    torch release name the file)."""
    return _digest({**_family(net, x, request), "batch": batch_bucket(x.shape[0])}, 24)


_WARNED: set[str] = set()


def _warn(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, AutotuneCacheWarning, stacklevel=3)


def load_cache(device: torch.device) -> dict[str, dict]:
    """This machine's cache entries (key → entry). A missing file gives {}; an unreadable,
    malformed or foreign one (another machine, torch release or format) gives {} and one
    :class:`AutotuneCacheWarning`."""
    path = cache_file(device)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        _warn(f"ignoring the autotune cache {path}: unreadable ({type(exc).__name__})")
        return {}
    expected = {"format": CACHE_FORMAT, "version": CACHE_VERSION,
                "machine": machine_signature(device), "torch": torch.__version__}
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in expected.items()):
        bad = [k for k, v in expected.items() if not isinstance(data, dict) or data.get(k) != v]
        _warn(f"ignoring the autotune cache {path}: written for another "
              f"{'/'.join(bad)} (it is re-measured and rewritten)")
        return {}
    entries = data.get("entries")
    if not isinstance(entries, dict):
        _warn(f"ignoring the autotune cache {path}: no entries table")
        return {}
    return entries


def _entry_variant(entry: Any, request: Request, path: Path) -> Variant | None:
    """The variant of a cache entry if it is well formed and honours ``request``."""
    try:
        v = Variant.from_dict(entry.get("variant") if isinstance(entry, dict) else None)
    except (TypeError, ValueError):
        _warn(f"ignoring a malformed entry of the autotune cache {path}")
        return None
    if not _honours(v, request):
        _warn(f"ignoring an entry of the autotune cache {path} that contradicts its settings")
        return None
    return v


def _honours(v: Variant, r: Request) -> bool:
    return ((r.precision is None or v.precision == r.precision)
            and (r.channels_last is None or v.channels_last == r.channels_last)
            and (r.block_rows is None or v.block_rows == r.block_rows)
            and (r.compile is None or v.compile == r.compile))


def store(device: torch.device, key: str, entry: dict) -> Path:
    """Add ``entry`` under ``key`` to this machine's cache file (atomically rewritten; a bad
    existing file is replaced). Returns the path.

    Raises:
        OSError: the cache directory cannot be created or written (:func:`resolve` then warns
            and keeps the choice for this process only).
    """
    from ebmctl.artifacts import atomic_write_json

    path = cache_file(device)
    entries = load_cache(device)
    entries[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"format": CACHE_FORMAT, "version": CACHE_VERSION,
                             "machine": machine_signature(device), "torch": torch.__version__,
                             "entries": entries})
    return path


# --- what ran (for reports) -----------------------------------------------------------------

_RAN: dict[str, dict] = {}


def ran() -> list[dict]:
    """Each distinct variant the sampler resolved in this process: its name and fields, how
    it was chosen (``explicit``, ``fixed rule``, ``cache``, ``cache (bucket N)`` for another
    bucket's choice reused, ``measured``), the row shape and batch bucket."""
    return [dict(v) for v in _RAN.values()]


def _record(variant: Variant, source: str, x: torch.Tensor) -> None:
    shape = list(x.shape[1:])
    key = json.dumps([variant.name, source, shape, batch_bucket(x.shape[0])])
    _RAN.setdefault(key, {"variant": variant.name, **variant.to_dict(), "chosen_by": source,
                          "row_shape": shape, "batch_bucket": batch_bucket(x.shape[0])})


# --- measuring ----------------------------------------------------------------------------------

Builder = Callable[[Variant], Callable[[torch.Tensor], torch.Tensor]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _layout(x: torch.Tensor, v: Variant) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if (
        v.channels_last and x.dim() == 4) else x.contiguous()


@dataclass
class _Samples:
    """Per-round rows/s of one candidate: by wall-clock time and by this process's CPU time."""

    wall: list[float]
    cpu: list[float]

    @property
    def rate(self) -> float:
        return statistics.median(self.wall) if self.wall else 0.0


class _Timer:
    """Interleaved timing of candidate gradient functions on given rows, within a wall-clock
    budget: every round times each candidate once, so candidates of one round share the
    machine's load."""

    def __init__(self, x: torch.Tensor, build: Builder, deadline: float):
        self.x, self.build, self.deadline = x, build, deadline
        self.table: dict[str, dict] = {}

    def over(self) -> bool:
        return time.perf_counter() > self.deadline

    def _prepare(self, v: Variant, rows: int):
        xs = _layout(self.x[:rows], v)
        fn = self.build(v)
        dev = xs.device
        _sync(dev)
        t0 = time.perf_counter()
        fn(xs)  # first call: kernel selection, compilation, graph capture
        _sync(dev)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn(xs)
        _sync(dev)
        once = max(time.perf_counter() - t0, 1e-6)
        return fn, xs, warm, once

    def run(self, cands: list[tuple[Variant, int]], rounds: int = ROUNDS,
            give_up_vs: float | None = None) -> dict[Variant, _Samples]:
        """Per-round rows/s of each (variant, rows) candidate. A candidate whose single call is
        slower per row than ``give_up_vs`` rows/s by 2× is dropped after its warm-up."""
        live = []
        for v, rows in dict.fromkeys(cands):
            try:
                fn, xs, warm, once = self._prepare(v, rows)
            except Exception as exc:  # a variant that cannot run here is not a candidate
                self.table[v.name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
                continue
            rate = rows / once
            self.table.setdefault(v.name, {}).update(rows=rows, warmup_s=round(warm, 4))
            if give_up_vs and rate * 2 < give_up_vs:
                self.table[v.name]["rows_per_s"] = round(rate, 1)
                self.table[v.name]["dropped"] = "over 2x slower on its first calls"
                continue
            reps = max(1, math.ceil(MIN_SAMPLE_S / once))
            live.append((v, rows, fn, xs, reps, _Samples([], [])))
        for r in range(rounds):
            if r >= 2 and self.over():
                break
            for v, rows, fn, xs, reps, samples in live:
                _sync(xs.device)
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(reps):
                    fn(xs)
                _sync(xs.device)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                samples.wall.append(rows * reps / wall)
                samples.cpu.append(rows * reps / max(cpu, 1e-9))
        out = {}
        for v, rows, fn, xs, reps, samples in live:
            out[v] = samples
            self.table[v.name].update(rows_per_s=round(samples.rate, 1),
                                      rows_per_cpu_s=round(statistics.median(samples.cpu), 1))
        return out


def _pick(stats: dict[Variant, _Samples], incumbent: Variant, gain: float = MIN_GAIN,
          cpu_check: bool = True) -> Variant:
    """The challenger whose wall-clock rate, as the median over rounds of its ratio to the
    incumbent's in the same round, is highest and at least ``gain``; with ``cpu_check`` its
    CPU-time rate must not be lower either (the two agree when the gain is real; a round in
    which the incumbent waited for a core inflates only the first). Else the incumbent."""
    if incumbent not in stats:
        return max(stats, key=lambda v: stats[v].rate)
    inc = stats[incumbent]
    best, best_ratio = incumbent, gain
    for v, st in stats.items():
        if v == incumbent or not st.wall:
            continue
        wall = statistics.median(a / b for a, b in zip(st.wall, inc.wall))
        cpu = statistics.median(a / b for a, b in zip(st.cpu, inc.cpu))
        if wall >= best_ratio and (cpu >= 1.0 or not cpu_check):
            best, best_ratio = v, wall
    return best


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def drift_cosine_min(build: Builder, x: torch.Tensor, v: Variant) -> float:
    """The smallest per-row cosine (over rows of ``x`` [B,C,H,W]) between ``v``'s gradient
    and the fp32 autograd gradient of the same rows: 1.0 = the same direction. ``build`` is
    :func:`resolve`'s gradient builder."""
    ref = build(Variant("fp32", False, 0, "autograd"))(x.contiguous())
    got = build(replace(v, block_rows=0))(_layout(x, v))
    ref, got = ref.flatten(1).double(), got.contiguous().flatten(1).double()
    return torch.nn.functional.cosine_similarity(ref, got, dim=1, eps=1e-30).min().item()


def _layout_and_gradient_candidates(net: nn.Module, x: torch.Tensor, request: Request,
                                    explicit_ok: bool, layouts: list[bool], ref_block: int,
                                    precision: str) -> list[Variant]:
    """The first stage's candidates at the reference block: every layout × gradient method
    (autograd, the explicit gradient where ``explicit_ok``) × ``torch.compile`` (CUDA, autograd
    only), the explicit gradient in a CUDA graph too on CUDA, and the dense lowering where it
    applies (NCHW rows only)."""
    cuda = x.device.type == "cuda"
    grads = ["autograd"] + (["explicit"] if explicit_ok else [])
    dense_ok = explicit_ok and x.dim() == 4 and fastgrad.dense_applies(net, tuple(x.shape[1:]))
    compiles = ([request.compile] if request.compile is not None else
                ([False, True] if cuda else [False]))
    cands = []
    for cl in layouts:
        for g in grads:
            for comp in compiles:
                if comp and g == "explicit":
                    continue  # compile wraps the autograd step; the explicit one has no graph
                cands.append(Variant(precision, cl, ref_block, g, comp))
                if cuda and g == "explicit":
                    cands.append(Variant(precision, cl, ref_block, g, False, True))
    if dense_ok and False in layouts:  # the dense lowering runs on NCHW rows
        cands.append(Variant(precision, False, ref_block, "dense"))
    return cands


def _block_stage(timer: _Timer, rates: dict[Variant, _Samples], best: Variant,
                 rows: int) -> Variant:
    """Rows per block: ``best`` at each of :data:`BLOCK_CANDIDATES` below ``rows`` whose call
    stays under :data:`MAX_CALL_S` at ``best``'s rate (on CUDA only blocks of 256 rows or
    more), and the whole batch, timed against ``best``; adds the timings to ``rates``."""
    per_row = 1.0 / max(rates[best].rate, 1e-9)
    sizes = [b for b in BLOCK_CANDIDATES if b < rows and b * per_row <= MAX_CALL_S]
    if timer.x.device.type == "cuda":
        sizes = [b for b in sizes if b >= 256]
    if rows <= BLOCK_CANDIDATES[-1] and rows * per_row <= MAX_CALL_S:
        sizes.append(rows)  # the whole batch
    cands = [replace(best, block_rows=0 if b >= rows else b) for b in sizes]
    cands = [v for v in dict.fromkeys(cands) if v != best]
    if not cands:
        return best
    more = timer.run([(v, rows if v.block_rows == 0 else min(v.block_rows, rows))
                      for v in [best, *cands]])
    rates.update(more)
    return _pick(more, best)


def _accurate_reduced_candidates(build: Builder, sample: torch.Tensor, best: Variant,
                                 precisions: list[str], layouts: list[bool], table: dict
                                 ) -> tuple[list[Variant], dict[str, float]]:
    """``best`` at each reduced precision and layout whose drift keeps a per-row cosine of at
    least :data:`REDUCED_MIN_COSINE` with fp32's on ``sample`` [B,C,H,W]: (those candidates,
    every measured variant's cosine). Variants that fail or drift are recorded in ``table``
    with the reason."""
    accuracy: dict[str, float] = {}
    cands: list[Variant] = []
    for p in precisions:
        for cl in layouts:
            v = replace(best, precision=p, channels_last=cl and best.grad != "dense",
                        graph=False)
            try:
                cos = drift_cosine_min(build, sample, v)
            except Exception as exc:  # e.g. no bf16 kernels on this device
                table[v.name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
                continue
            accuracy[v.name] = round(cos, 6)
            if cos >= REDUCED_MIN_COSINE:
                if v not in cands:
                    cands.append(v)
            else:
                table[v.name] = {"drift_cosine_min": round(cos, 6),
                                 "dropped": f"drift cosine < {REDUCED_MIN_COSINE}"}
    return cands, accuracy


def tune(net: nn.Module, x: torch.Tensor, request: Request, build: Builder,
         explicit_ok: bool, budget_s: float = TUNE_BUDGET_S) -> tuple[Variant, dict]:
    """Measure candidates for the free settings of ``request`` on the rows of ``x`` and
    return (the fastest variant, a report with every candidate's rows/s). ``build(v)`` gives
    the gradient function of variant ``v`` (rows in, gradient rows out).

    Stages: layout × gradient method at a reference block; then rows per block; then one
    thread (CPU); then reduced precision (bf16, and fp16 on CUDA) where it passes the drift
    check. Every stage times its incumbent (first the fixed rules' variant) in the same rounds
    as its challengers and keeps it unless a challenger is :data:`MIN_GAIN` faster by the
    median of per-round ratios, wall-clock and CPU time agreeing (:func:`_pick`)."""
    start = time.perf_counter()
    dev, rows = x.device, int(x.shape[0])
    timer = _Timer(x, build, start + budget_s)
    cuda = dev.type == "cuda"
    blocks_fixed = request.block_rows is not None

    # the reference block: the fixed rule's, capped so one call stays short
    ref_block = (request.block_rows if blocks_fixed else
                 (0 if cuda else cpu_block_rows(x, net, _BlockOnly(None))))
    layouts = [request.channels_last] if request.channels_last is not None else (
        [False, True] if x.dim() == 4 else [False])
    base_precision = request.precision or ("fp64" if x.dtype == torch.float64 else "fp32")

    def rows_for(b: int) -> int:
        return rows if b == 0 else min(b, rows)

    # stage 1: layout × gradient method (× compile, × CUDA graph on CUDA) at the reference block
    cands = _layout_and_gradient_candidates(net, x, request, explicit_ok, layouts, ref_block,
                                            base_precision)
    rates = timer.run([(v, rows_for(v.block_rows)) for v in cands])
    if not rates:
        raise RuntimeError("no sampler variant could run: " + json.dumps(timer.table))
    # the incumbent is what the fixed rules would run (NCHW unless fixed, autograd)
    fixed = Variant(base_precision, bool(request.channels_last), ref_block, "autograd",
                    bool(request.compile))
    best = _pick(rates, fixed)

    def block_stage(best: Variant) -> Variant:
        if blocks_fixed or _rows_interact(net) or timer.over():
            return best
        return _block_stage(timer, rates, best, rows)

    best = block_stage(best)

    # stage 3: one thread instead of the process's (small steps: OpenMP wake-ups can cost more
    # than the second core gives)
    if not cuda and torch.get_num_threads() > 1 and not timer.over():
        one = replace(best, threads=1)
        more = timer.run([(best, rows_for(best.block_rows)), (one, rows_for(one.block_rows))])
        rates.update(more)
        # wall time only: one thread always spends less CPU time per row
        best = _pick(more, best, THREADS_MIN_GAIN, cpu_check=False)

    # stage 4: reduced precision, only where it agrees with fp32 and clearly wins
    if request.precision is None and base_precision == "fp32" and not timer.over():
        # a CPU without native bf16 emulates it (~10x slower here, bench/README.md): not tried
        reduced = ["bf16"] if (cuda or (dev.type == "cpu" and cpu_has_native_bf16())) else []
        reduced += ["fp16"] if cuda else []
        if not reduced:
            timer.table["bf16"] = {"dropped": "no native bf16 on this CPU (emulated)"}
        cands, accuracy = _accurate_reduced_candidates(build, x[: min(rows, 64)], best, reduced,
                                                       layouts, timer.table)
        if cands:
            # one slow first call (e.g. a kernel without a native path) drops a candidate
            more = timer.run([(v, rows_for(v.block_rows)) for v in [best, *cands]],
                             give_up_vs=rates[best].rate)
            for v in cands:
                if v in more:
                    timer.table[v.name]["drift_cosine_min"] = accuracy.get(v.name)
            rates.update(more)
            reduced_best = _pick(more, best, REDUCED_MIN_GAIN)
            if reduced_best != best:
                best = block_stage(reduced_best)
    report = {"candidates": timer.table, "chosen": best.name,
              "rows_per_s": round(rates[best].rate if best in rates else 0.0, 1),
              "tune_seconds": round(time.perf_counter() - start, 2),
              "rows": rows, "cpu_native_bf16": cpu_has_native_bf16(),
              "threads": torch.get_num_threads(), "load_average": _load_average()}
    return best, report


# --- resolving --------------------------------------------------------------------------------

_MEMO: dict[tuple, Variant] = {}


def resolve(net: nn.Module, x: torch.Tensor, settings, build: Builder, *,
            explicit_ok: bool = False, retune: bool = False) -> Variant:
    """The variant the sampler runs for ``net`` on the batch ``x`` with ``settings``
    (a :class:`~ebmctl.sampling.langevin.LangevinSettings`, whose ``auto`` fields are free).

    Fixed settings are kept; with nothing free, or with the tuner off, no timing happens.
    Otherwise: this process's memo, then the cache file, then :func:`tune` (which writes the
    cache). ``explicit_ok`` says the explicit gradient applies to ``net``; ``retune`` skips
    memo and cache (``ebmctl bench --tune``)."""
    if getattr(settings, "variant", None) is not None:
        _record(settings.variant, "explicit", x)
        return settings.variant
    request = request_of(settings, x, net)
    if not request.free or not autotune_enabled():
        v = fixed_variant(net, x, request)
        _record(v, "explicit" if not request.free else "fixed rule", x)
        return v
    key = cache_key(net, x, request)
    memo_key = (str(cache_file(x.device)), key)
    if not retune and memo_key in _MEMO:
        return _MEMO[memo_key]
    v = None
    if not retune:
        entries = load_cache(x.device)
        if key in entries:
            v = _entry_variant(entries[key], request, cache_file(x.device))
            if v is not None and v.grad != "autograd" and not explicit_ok:
                v = None
        if v is not None:
            _record(v, "cache", x)
        else:
            near = neighbour_variant(entries, net, x, request, explicit_ok)
            if near is not None:
                v, bucket = near
                _record(v, f"cache (bucket {bucket})", x)
    if v is None:
        from ebmctl.console import info

        info(f"autotuning the Langevin step for rows of {tuple(x.shape[1:])} on {x.device} "
             f"(once per machine; cached in {cache_dir()})")
        v, report = tune(net, x, request, build, explicit_ok)
        entry = {"variant": v.to_dict(), "name": v.name, **_family(net, x, request),
                 "net_class": type(net).__qualname__, "batch_bucket": batch_bucket(x.shape[0]),
                 "measured": report,
                 "tuned_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                     timespec="seconds")}
        try:
            store(x.device, key, entry)
        except OSError as exc:  # a read-only home must not stop a run
            _warn(f"could not write the autotune cache ({exc}); the choice holds for this run")
        _record(v, "measured", x)
        _LAST_REPORT[key] = entry
    _MEMO[memo_key] = v
    return v


def neighbour_variant(entries: dict[str, dict], net: nn.Module, x: torch.Tensor,
                      request: Request, explicit_ok: bool) -> tuple[Variant, int] | None:
    """The choice of the nearest tuned batch bucket for ``x``'s rows, adapted to them, and that
    bucket; None when no entry shares the EBM structure, row shape, thread count, input dtype
    and fixed settings (``request``). Nearest is by log2 distance, a tie going to the larger
    bucket (its per-row behaviour is the closer one for blocks). A "whole batch" choice made
    for a smaller bucket becomes blocks of that bucket's size: only calls of that many rows
    were measured. Entries that fail :func:`_entry_variant`'s checks are skipped."""
    want = _family(net, x, request)
    target = batch_bucket(x.shape[0])
    found = []
    for entry in entries.values():
        if not isinstance(entry, dict) or any(entry.get(k) != v for k, v in want.items()):
            continue
        bucket = entry.get("batch_bucket")
        if isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1:
            continue
        v = _entry_variant(entry, request, cache_file(x.device))
        if v is None or (v.grad != "autograd" and not explicit_ok):
            continue
        found.append((abs(math.log2(bucket) - math.log2(target)), -bucket, v))
    if not found:
        return None
    _, neg_bucket, v = min(found, key=lambda t: (t[0], t[1]))
    bucket = -neg_bucket
    if v.block_rows == 0 and x.shape[0] > bucket and request.block_rows is None:
        v = replace(v, block_rows=bucket)
    return v, bucket


#: the last tuning report per key in this process (``ebmctl bench --tune`` prints it)
_LAST_REPORT: dict[str, dict] = {}


def last_report(net: nn.Module, x: torch.Tensor, settings) -> dict | None:
    """The tuning report :func:`resolve` made in this process for these arguments, if any."""
    return _LAST_REPORT.get(cache_key(net, x, request_of(settings, x, net)))


def cached_entries(device: torch.device, net_sig: str | None = None) -> list[dict]:
    """This machine's cache entries (optionally only those of one network signature), for
    ``ebmctl inspect``; a bad file gives [] with its warning."""
    return [e for e in load_cache(device).values()
            if isinstance(e, dict) and (net_sig is None or e.get("net") == net_sig)]


def reset_memo() -> None:
    """Forget this process's resolutions and records (tests; a new cache directory)."""
    _MEMO.clear()
    _RAN.clear()
    _LAST_REPORT.clear()
    _WARNED.clear()
