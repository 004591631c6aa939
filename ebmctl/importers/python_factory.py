"""The ``path/to/module.py:factory`` source: the user's own architecture, ``factory(**kwargs)``
returning an ``nn.Module``. This runs that file's code, now and every time the artifact is
loaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from torch import nn

from ebmctl.errors import InputError
from ebmctl.importers.classifier import Normalized, import_classifier
from ebmctl.importers.request import ImportRequest


def python_factory(path: str, factory: str, kwargs: dict | None = None,
                   mean: list | None = None, std: list | None = None) -> nn.Module:
    """``factory(**kwargs)`` from the Python file ``path`` (runs that file's code)."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"model source file not found: {file}")
    spec = importlib.util.spec_from_file_location(f"ebmctl_user_model_{abs(hash(str(file)))}",
                                                  file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise InputError(f"{file}: importing it failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise InputError(f"{file} has no callable {factory!r}")
    try:
        net = fn(**(kwargs or {}))
    except Exception as exc:
        raise InputError(f"{file}:{factory}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(net, nn.Module):
        raise InputError(f"{file}:{factory}() returned {type(net).__name__}, not an nn.Module")
    return Normalized(net, mean, std)


def import_python_factory(name: str, out: str | Path, request: ImportRequest) -> Path:
    """``module.py:factory`` as a classifier artifact at ``out`` (arch ``python-factory``;
    the artifact records the file's absolute path, the factory and its keyword arguments)."""
    path, fn = name.rsplit(":", 1)
    args = {"path": str(Path(path).resolve()), "factory": fn,
            "kwargs": request.factory_kwargs or {}}
    return import_classifier(request, out, "python-factory", lambda classes: (
        args, python_factory(args["path"], fn, request.factory_kwargs, request.mean,
                             request.std)))
