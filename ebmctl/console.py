"""Console output: rich progress on a terminal, sparse log lines otherwise."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator

from rich.console import Console


def err_console() -> Console:
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def out_console() -> Console:
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _LineProgress:
    def __init__(self, total: int, description: str):
        self.total, self.description, self.done = max(1, total), description, 0
        self.start, self.last = time.time(), 0.0
        self.status = ""

    def advance(self, n: int = 1, status: str = "") -> None:
        self.done += n
        if status:
            self.status = status
        now = time.time()
        if now - self.last > 10 or self.done >= self.total:
            self.last = now
            pct = 100.0 * self.done / self.total
            print(f"{self.description}: {self.done}/{self.total} ({pct:.0f}%) "
                  f"{now - self.start:.0f}s {self.status}", file=sys.stderr, flush=True)


class _RichProgress:
    def __init__(self, progress, task_id):
        self.progress, self.task_id = progress, task_id

    def advance(self, n: int = 1, status: str = "") -> None:
        self.progress.update(self.task_id, advance=n, status=status)


@contextlib.contextmanager
def progress_bar(total: int, description: str, quiet: bool = False) -> Iterator:
    console = err_console()
    if quiet:
        yield _Null()
        return
    if not console.is_terminal:
        yield _LineProgress(total, description)
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                  console=console, transient=False) as prog:
        tid = prog.add_task(description, total=total, status="")
        yield _RichProgress(prog, tid)


class _Null:
    def advance(self, n: int = 1, status: str = "") -> None:
        pass
