"""Helpers for testing ebmctl and plugins: run the CLI in-process, register plugins, tiny data.

Plugin authors::

    from ebmctl.testing import run_cli, plugin_registered, tiny_bundle

    def test_my_task(tmp_path):
        with plugin_registered(my_plugin_module, "my-plugin"):
            result = run_cli(["plugins"])
            assert "my-plugin" in result.stdout
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ebmctl.plugins import register_plugin, reset, unregister_plugin
from ebmctl.contracts import DatasetBundle, Split


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(args: list[str], env: dict[str, str] | None = None) -> CliResult:
    """Run ``ebmctl args...`` in-process and capture its exit code, stdout and stderr."""
    from ebmctl.cli import run

    out, err = io.StringIO(), io.StringIO()
    old_env = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = run([str(a) for a in args])
            except SystemExit as exc:  # pragma: no cover - run() should not exit
                code = int(exc.code or 0)
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return CliResult(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def plugin_registered(obj: Any, name: str) -> Iterator[None]:
    """Register a plugin object for the duration of a ``with`` block."""
    register_plugin(obj, name)
    try:
        yield
    finally:
        unregister_plugin(name)
        reset()


def tiny_bundle(n: int = 48, channels: int = 1, size: int = 8, num_classes: int = 3,
                seed: int = 0, name: str = "tiny") -> DatasetBundle:
    """A small deterministic classification bundle: class c is a bright square at a c-th spot."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = 0.1 * torch.rand(n, channels, size, size, generator=g)
    for i in range(n):
        c = int(y[i])
        r0 = (c * size) // (num_classes + 1)
        x[i, :, r0:r0 + max(1, size // 3), r0:r0 + max(1, size // 3)] += 0.8
    x = x.clamp(0, 1)
    k = n // 6
    return DatasetBundle(name, Split(x[2 * k:], y[2 * k:]), Split(x[:k], y[:k]),
                         Split(x[k:2 * k], y[k:2 * k]), num_classes,
                         [f"class{c}" for c in range(num_classes)], {"source": "synthetic"})
