"""Multi-process runs launched by ``torchrun`` (torch.distributed; gloo on CPU, NCCL on CUDA).

Evaluation is sharded over images by *chunk*: chunk i covers images [i·b, (i+1)·b) and every
random draw of an attack on it is keyed by (seed, label, chunk start) (see
:mod:`ebmctl.evaluate.attack_eval`), so which process runs a chunk does not matter. Rank r runs
chunks r, r+W, r+2W, ...; the per-chunk outcomes are gathered and summarised in chunk order, so
the merged report equals a single-process run with the same seeds and chunk size.

``python -m ebmctl.torchrun ARGS`` (:mod:`ebmctl.torchrun`; ``-m ebmctl.distributed`` is the same
launcher) runs ``ebmctl ARGS`` in each launched process; while it runs, :func:`current` is the
launch's context, ``ebmctl attack`` shards its chunks
(:func:`ebmctl.evaluate.attack_eval.evaluate_attack_sharded`) and ``ebmctl train ebm`` its bank.
Only rank 0 prints; all ranks of an evaluation hold the same merged results and write the same
report atomically. This module holds the process-group plumbing only and imports nothing of
ebmctl's commands.

Convergent EBM training (``ebmctl train ebm``) runs data-parallel: with W processes the
persistent bank is split into W contiguous shards (``train.shards``; 1, the default, means one
per process, any other value must equal W), rank r keeps only shard r, draws its batch/W
positives and its chains with generators keyed (seed, update, r), runs Langevin on them, and the
network is wrapped in DistributedDataParallel, so the averaged gradient is that of the mean of
the W shard losses. One process with ``train.shards = W`` runs the W shards in turn and reaches
the same weights (:func:`ebmctl.training.convergent.train_ebm`). Rank 0 writes the artifact,
grids, log and checkpoints; checkpoints gather every shard of the bank, so ``--resume``
continues exactly.

Launch commands are in :mod:`ebmctl.torchrun`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CURRENT = DistContext()


def current() -> DistContext:
    """The context of the running ``python -m ebmctl.torchrun`` launch (single otherwise)."""
    return _CURRENT


@contextlib.contextmanager
def launched(ctx: DistContext) -> Iterator[DistContext]:
    """Make ``ctx`` what :func:`current` returns until the block ends (the torchrun launcher,
    :func:`ebmctl.torchrun.main`, runs the CLI inside it)."""
    global _CURRENT
    _CURRENT = ctx
    try:
        yield ctx
    finally:
        _CURRENT = DistContext()


def env_context() -> DistContext:
    """The process' place in a torchrun launch (rank 0 of 1 outside torchrun)."""
    return DistContext(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))


def init(device_type: str = "cpu") -> DistContext:
    """Join the process group torchrun set up (no-op for a single process). CUDA ranks use
    NCCL and the GPU of their local rank; CPU ranks use gloo."""
    ctx = env_context()
    if not ctx.active:
        return ctx
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(ctx.rank, ctx.world_size, ctx.local_rank, backend)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(ctx: DistContext, device: torch.device) -> torch.device:
    """Each CUDA rank gets its own GPU; CPU ranks share the CPU."""
    if device.type == "cuda" and ctx.active:
        return torch.device("cuda", ctx.local_rank)
    return device


def my_chunks(n_items: int, chunk: int, ctx: DistContext) -> list[int]:
    """Start indices of the chunks this rank runs (round-robin, so ranks get similar work)."""
    starts = list(range(0, n_items, chunk))
    return starts[ctx.rank::ctx.world_size]


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` in rank order, on every rank (in-memory exchange between the
    launched processes; nothing is read from files)."""
    if not ctx.active:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def run_chunks(fn: Callable[[int], Any], n_items: int, chunk: int, ctx: DistContext
               ) -> list[Any]:
    """``fn(start)`` for every chunk, spread over the ranks; results in chunk order on all ranks."""
    mine = {s: fn(s) for s in my_chunks(n_items, chunk, ctx)}
    merged: dict[int, Any] = {}
    for part in gather_objects(mine, ctx):
        merged.update(part)
    return [merged[s] for s in range(0, n_items, chunk)]


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def sum_over_ranks(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Element-wise sum of a few numbers over the ranks (the numbers themselves when single)."""
    if not ctx.active:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def train_shards(requested: int, ctx: DistContext) -> int:
    """``train.shards`` for this launch: as given in one process; under torchrun one shard per
    rank (1, the default, means "as many as processes"; any other count must match)."""
    if not ctx.active or requested in (1, ctx.world_size):
        return ctx.world_size if ctx.active else requested
    from ebmctl.errors import ConfigError

    raise ConfigError(f"train.shards = {requested} but torchrun started {ctx.world_size} "
                      f"processes; launch {requested} processes or set "
                      f"train.shards={ctx.world_size}")


def shard_bounds(n: int, shards: int, s: int) -> tuple[int, int]:
    """Rows [lo, hi) of a length-n bank that shard s of ``shards`` holds (contiguous blocks, so
    the concatenated shards are the bank in its single-process order)."""
    return s * n // shards, (s + 1) * n // shards


def data_parallel(net: torch.nn.Module, ctx: DistContext, device: torch.device
                  ) -> torch.nn.Module:
    """``net`` wrapped in DistributedDataParallel under torchrun (gradients averaged over the
    ranks during backward), ``net`` itself otherwise."""
    if not ctx.active:
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids)
