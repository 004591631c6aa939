"""The torchrun launcher: ``python -m ebmctl.torchrun ARGS`` runs ``ebmctl ARGS`` in every process
that ``torchrun`` starts (``-m ebmctl.distributed`` is the same launcher under its first name).

One node, two processes::

    torchrun --standalone --nproc_per_node 2 -m ebmctl.torchrun attack --profile quick ...
    torchrun --standalone --nproc_per_node 2 -m ebmctl.torchrun train ebm --profile quick

Several nodes (run on each node; node_rank 0..N-1; HOST:PORT reachable from all; training
writes ``--out`` from rank 0, so resuming needs it on a filesystem every node sees)::

    torchrun --nnodes N --node_rank R --nproc_per_node G --rdzv_backend c10d \\
             --rdzv_endpoint HOST:29500 -m ebmctl.torchrun attack --profile quick ...

It sits above the CLI it launches; the process-group plumbing it sets up is
:mod:`ebmctl.distributed`.
"""

from __future__ import annotations

import ebmctl.openmp_policy  # noqa: F401  (before torch: OpenMP workers wait passively)
import contextlib
import os
import sys

import torch

from ebmctl import distributed as D
from ebmctl.cli import run

#: Global ``ebmctl`` options that take a value (the value is not the command's name).
_VALUE_OPTIONS = ("--profile", "-p", "--set", "-s", "--device", "--seed")


def unsupported_under_torchrun(argv: list[str]) -> str | None:
    """Why ``ebmctl argv`` cannot run as asked in a launch, or None. ``--resume`` continues
    ``train ebm`` exactly (rank 0's checkpoints hold every bank shard). The sharded evaluation
    keeps no per-chunk results, so ``attack --resume`` would silently start again, and the
    other trainers are not data-parallel: a resume there is refused, never ignored."""
    words, skip = [], False
    for a in argv:
        if skip or a in _VALUE_OPTIONS:
            skip = not skip
            continue
        if not a.startswith("-"):
            words.append(a)
    command = " ".join(words[:2] if words[:1] in (["train"], ["fix"]) else words[:1])
    if not any(a in ("--resume", "--force-resume") for a in argv) or command == "train ebm":
        return None
    if command == "attack":
        return ("`ebmctl attack --resume` does not work under torchrun (the sharded evaluation "
                "keeps no per-chunk results to resume from); rerun the launch without --resume, "
                "or run `ebmctl attack --resume` in one process")
    return (f"--resume under torchrun works for `ebmctl train ebm` only, not `ebmctl {command}`; "
            f"run `ebmctl {command} --resume` in one process")


def main(argv: list[str]) -> int:
    """Join the torchrun launch, run ``ebmctl argv`` (rank 0's console only), leave the group."""
    refused = unsupported_under_torchrun(argv) if D.env_context().active else None
    if refused:  # every rank stops here, before joining the group; rank 0 says why
        if D.env_context().is_main:
            print(f"Error: {refused}", file=sys.stderr)
        return 2
    wants_cpu = any(a in ("cpu", "--device=cpu", "run.device=cpu") for a in argv)
    ctx = D.init("cuda" if torch.cuda.is_available() and not wants_cpu else "cpu")
    try:
        with D.launched(ctx):
            if ctx.is_main:
                return run(argv)
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
                    contextlib.redirect_stderr(null):
                code = run(argv)
            if code:
                print(f"rank {ctx.rank}: ebmctl exited with {code}", file=sys.stderr)
            return code
    finally:
        D.shutdown()


if __name__ == "__main__":
    # Under ``-m`` this file runs as ``__main__``; the launch context lives in
    # ebmctl.distributed, which both copies share.
    sys.exit(main(sys.argv[1:]))
