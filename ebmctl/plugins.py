"""Plugin manager: built-in plugins plus third-party ones from the ``ebmctl`` entry points.

A :class:`PluginHost` owns one pluggy manager, the registries its plugins filled and what
failed to load (as pytest's plugin manager does). The process uses :func:`default_host`, which the
module-level functions (:func:`get_registries`, :func:`register_plugin`, :func:`reset`, ...) act
on; tests and notebooks may build hosts of their own.

Environment:
  EBMCTL_DISABLE_PLUGINS=1     load no third-party entry points (built-ins still load)
  EBMCTL_LOAD_PLUGINS=a,b      load only these third-party entry-point names
"""

from __future__ import annotations

import functools
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
from ebmctl.config import Schema, section_keys
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
    purifiers: Registry
    schema: Schema
    profile_dirs: list[Path]
    plugins: dict[str, PluginInfo]
    failures: list[str]


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
        attacks=Registry("attack"), purifiers=Registry("purifier"), schema=Schema(), profile_dirs=[], plugins=infos,
        failures=failures,
    )
    what = {
        "ebmctl_register_tasks": ("tasks", reg.tasks),
        "ebmctl_register_datasets": ("datasets", reg.datasets),
        "ebmctl_register_models": ("models", reg.models),
        "ebmctl_register_attacks": ("attacks", reg.attacks),
        "ebmctl_register_purifiers": ("purifiers", reg.purifiers),
    }
    for hook_name, (label, registry) in what.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin = impl.plugin_name

            def register(obj, _plugin=plugin, _registry=registry, _label=label):
                name = getattr(obj, "name", None)
                _registry.register(name, obj, _plugin)
                infos[_plugin].registered.setdefault(_label, []).append(name)

            _call_plugin_hook(impl, dict(register=register), failures, infos)
    keys_of: dict[str, list[str]] = {}  # plugin -> the profile keys it declared
    for impl in pm.hook.ebmctl_profile_schema.get_hookimpls():
        def add(name, kind=None, default=None, help="", _plugin=impl.plugin_name, **kw):
            is_section = isinstance(name, type)
            names = list(section_keys(name)) if is_section else [name]
            for key in names:
                if key in reg.schema.keys:
                    raise PluginError(f"plugin {_plugin!r} declared profile key {key!r} twice")
            if is_section:
                reg.schema.add_section(name, **kw)
                infos[_plugin].registered.setdefault("profile sections", []).append(name.section)
            else:
                reg.schema.add(name, kind, default, help, **kw)
                infos[_plugin].registered.setdefault("profile keys", []).append(name)
            keys_of.setdefault(_plugin, []).extend(names)

        _call_plugin_hook(impl, dict(add=add), failures, infos)
    dirs_by_plugin: dict[str, list[Path]] = {}
    for impl in pm.hook.ebmctl_profile_dirs.get_hookimpls():
        result = _call_plugin_hook(impl, {}, failures, infos)
        dirs_by_plugin[impl.plugin_name] = [Path(d) for d in result or []]
    # A plugin that failed in any hook is left out whole: a half-registered plugin (say, a task
    # without its dataset) would fail later with a confusing error far from the cause.
    failed = {name for name, info in infos.items() if info.error is not None}
    for name in failed:
        for registry in (reg.tasks, reg.datasets, reg.models, reg.attacks, reg.purifiers):
            registry.drop_plugin(name)
        for key in keys_of.get(name, []):
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


class PluginHost:
    """One plugin manager with its registries, built on first use: the built-in plugins, the
    installed entry points (narrowed by ``EBMCTL_DISABLE_PLUGINS`` / ``EBMCTL_LOAD_PLUGINS``)
    and the plugin objects registered at run time with :meth:`register`."""

    def __init__(self) -> None:
        self._extra: list[tuple[str, Any]] = []
        self._pm: pluggy.PluginManager | None = None
        self._reg: Registries | None = None

    @property
    def manager(self) -> pluggy.PluginManager:
        self.registries()  # builds the manager with the registries
        return self._pm

    def registries(self) -> Registries:
        """Tasks, datasets, models, attacks, purifiers, the profile schema and profile folders of every
        loaded plugin (loading them now if this host has not yet)."""
        if self._reg is None:
            pm, infos, failures = _new_manager()
            for name, obj in self._extra:
                if pm.has_plugin(name):
                    pm.unregister(name=name)
                pm.register(obj, name=name)
                infos[name] = PluginInfo(name, "(registered at run time)", "-", False)
            self._pm = pm
            self._reg = _collect(pm, infos, failures)
        return self._reg

    def register(self, obj: Any, name: str) -> None:
        """Add (or replace) a plugin object at run time; the registries are rebuilt on next use."""
        self._extra = [(n, o) for n, o in self._extra if n != name] + [(name, obj)]
        self.reset()

    def unregister(self, name: str) -> None:
        self._extra = [(n, o) for n, o in self._extra if n != name]
        self.reset()

    def reset(self) -> None:
        """Forget the loaded plugins (run-time registrations are kept): the next use reloads
        them, e.g. after the environment variables changed."""
        self._pm = None
        self._reg = None

    def warn_failures(self, stream=None) -> None:
        stream = stream or sys.stderr
        for msg in self.registries().failures:
            print(f"Warning: {msg}", file=stream)


@functools.cache
def default_host() -> PluginHost:
    """The process' plugin host (created on first use)."""
    return PluginHost()


def get_plugin_manager() -> pluggy.PluginManager:
    return default_host().manager


def get_registries() -> Registries:
    return default_host().registries()


def register_plugin(obj: Any, name: str) -> None:
    """Register a plugin object at run time (tests, notebooks). Rebuilds the registries."""
    default_host().register(obj, name)


def unregister_plugin(name: str) -> None:
    default_host().unregister(name)


def reset() -> None:
    default_host().reset()


def warn_failures(stream=None) -> None:
    default_host().warn_failures(stream)
