"""Plugin manager: built-in plugins plus third-party ones from the ``ebmctl`` entry points.

Environment:
  EBMCTL_DISABLE_PLUGINS=1     load no third-party entry points (built-ins still load)
  EBMCTL_LOAD_PLUGINS=a,b      load only these third-party entry-point names
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from ebmctl import __version__, hookspecs
from ebmctl.errors import EbmctlError, PluginError
from ebmctl.config import Schema, core_schema
from ebmctl.registry import Registry

#: Built-in plugins: (plugin name, module). They are also declared as entry points.
BUILTINS = [
    ("core", "ebmctl.builtin"),
    ("classification", "ebmctl_classification"),
    ("segmentation", "ebmctl_segmentation"),
]


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    builtin: bool
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Registries:
    tasks: Registry
    datasets: Registry
    models: Registry
    attacks: Registry
    schema: Schema
    profile_dirs: list[Path]
    plugins: dict[str, PluginInfo]
    failures: list[str]


_state: dict[str, Any] = {"pm": None, "reg": None, "extra": []}


def _new_manager() -> tuple[pluggy.PluginManager, dict[str, PluginInfo], list[str]]:
    pm = pluggy.PluginManager("ebmctl")
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    failures: list[str] = []

    def add(name: str, obj: Any, dist: str, version: str, builtin: bool) -> None:
        if pm.has_plugin(name) or name in infos:
            failures.append(f"plugin {name!r} ({dist}) is already loaded; skipped the duplicate")
            return
        try:
            pm.register(obj, name=name)
        except Exception as exc:  # pluggy validation errors
            failures.append(f"plugin {name!r} could not be registered: {exc}")
            infos[name] = PluginInfo(name, dist, version, builtin, error=str(exc))
            return
        infos[name] = PluginInfo(name, dist, version, builtin)

    for name, module in BUILTINS:
        try:
            add(name, importlib.import_module(module), "ebmctl", __version__, True)
        except Exception as exc:
            failures.append(f"built-in plugin {name!r} failed to import: {exc}")

    if os.environ.get("EBMCTL_DISABLE_PLUGINS", "").strip() not in ("", "0"):
        return pm, infos, failures
    only = {s.strip() for s in os.environ.get("EBMCTL_LOAD_PLUGINS", "").split(",") if s.strip()}
    builtin_modules = {m for _, m in BUILTINS}
    eps = list(md.entry_points(group="ebmctl"))
    # A name that matches nothing is a typo that would otherwise load nothing silently.
    unknown = sorted(only - {ep.name for ep in eps} - {n for n, _ in BUILTINS})
    if unknown:
        installed = sorted({ep.name for ep in eps})
        raise PluginError(f"EBMCTL_LOAD_PLUGINS names {', '.join(map(repr, unknown))}, which is "
                          f"not an installed plugin (installed: {', '.join(installed) or 'none'})")
    for ep in eps:
        if ep.value.split(":")[0] in builtin_modules:
            continue
        if only and ep.name not in only:
            continue
        dist = getattr(ep.dist, "name", "?") if ep.dist else "?"
        version = getattr(ep.dist, "version", "?") if ep.dist else "?"
        try:
            obj = ep.load()
        except Exception as exc:
            msg = f"plugin {ep.name!r} ({dist} {version}) failed to load: {type(exc).__name__}: {exc}"
            failures.append(msg)
            infos[ep.name] = PluginInfo(ep.name, dist, version, False, error=msg)
            continue
        add(ep.name, obj, dist, version, False)
    return pm, infos, failures


def _collect(pm, infos, failures) -> Registries:
    reg = Registries(
        tasks=Registry("task"), datasets=Registry("dataset"), models=Registry("model"),
        attacks=Registry("attack"), schema=core_schema(), profile_dirs=[], plugins=infos,
        failures=failures,
    )
    what = {
        "ebmctl_register_tasks": ("tasks", reg.tasks),
        "ebmctl_register_datasets": ("datasets", reg.datasets),
        "ebmctl_register_models": ("models", reg.models),
        "ebmctl_register_attacks": ("attacks", reg.attacks),
    }
    for hook_name, (label, registry) in what.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin = impl.plugin_name

            def register(obj, _plugin=plugin, _registry=registry, _label=label):
                name = getattr(obj, "name", None)
                _registry.register(name, obj, _plugin)
                infos[_plugin].registered.setdefault(_label, []).append(name)

            _call_plugin_hook(impl, dict(register=register), failures, infos)
    for impl in pm.hook.ebmctl_profile_schema.get_hookimpls():
        def add(name, kind, default, help="", _plugin=impl.plugin_name, **kw):
            if name in reg.schema.keys:
                raise PluginError(f"plugin {_plugin!r} declared profile key {name!r} twice")
            reg.schema.add(name, kind, default, help, **kw)
            infos[_plugin].registered.setdefault("profile keys", []).append(name)

        _call_plugin_hook(impl, dict(add=add), failures, infos)
    dirs_by_plugin: dict[str, list[Path]] = {}
    for impl in pm.hook.ebmctl_profile_dirs.get_hookimpls():
        result = _call_plugin_hook(impl, {}, failures, infos)
        dirs_by_plugin[impl.plugin_name] = [Path(d) for d in result or []]
    # A plugin that failed in any hook is left out whole: a half-registered plugin (say, a task
    # without its dataset) would fail later with a confusing error far from the cause.
    failed = {name for name, info in infos.items() if info.error is not None}
    for name in failed:
        for registry in (reg.tasks, reg.datasets, reg.models, reg.attacks):
            registry.drop_plugin(name)
        for key in infos[name].registered.get("profile keys", []):
            reg.schema.keys.pop(key, None)
        infos[name].registered = {}
    for name, dirs in dirs_by_plugin.items():
        if name not in failed:
            reg.profile_dirs.extend(dirs)
    return reg


def _call_plugin_hook(impl, kwargs, failures, infos):
    try:
        return impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
    except EbmctlError as exc:
        prefix = f"plugin {impl.plugin_name!r}"
        msg = exc.message if exc.message.startswith(prefix) else f"{prefix}: {exc.message}"
    except Exception as exc:
        msg = f"plugin {impl.plugin_name!r} failed in {impl.function.__name__}: " \
              f"{type(exc).__name__}: {exc}"
    failures.append(msg)
    if impl.plugin_name in infos and infos[impl.plugin_name].error is None:
        infos[impl.plugin_name].error = msg
    return None


def get_plugin_manager() -> pluggy.PluginManager:
    get_registries()
    return _state["pm"]


def get_registries() -> Registries:
    if _state["reg"] is None:
        pm, infos, failures = _new_manager()
        for name, obj in _state["extra"]:
            if pm.has_plugin(name):
                pm.unregister(name=name)
            pm.register(obj, name=name)
            infos[name] = PluginInfo(name, "(registered at run time)", "-", False)
        _state["pm"] = pm
        _state["reg"] = _collect(pm, infos, failures)
    return _state["reg"]


def register_plugin(obj: Any, name: str) -> None:
    """Register a plugin object at run time (tests, notebooks). Rebuilds the registries."""
    _state["extra"] = [(n, o) for n, o in _state["extra"] if n != name] + [(name, obj)]
    reset()


def unregister_plugin(name: str) -> None:
    _state["extra"] = [(n, o) for n, o in _state["extra"] if n != name]
    reset()


def reset() -> None:
    _state["pm"] = None
    _state["reg"] = None


def warn_failures(stream=None) -> None:
    stream = stream or sys.stderr
    for msg in get_registries().failures:
        print(f"Warning: {msg}", file=stream)
