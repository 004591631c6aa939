"""TOML run profiles: where they are found (the folders plugins declare), how ``extends`` chains
are read, and :func:`resolve`, which turns a profile name plus ``--set`` items into a
:class:`~ebmctl.config.Config` against the schema of every loaded plugin.

The schema and the Config themselves are :mod:`ebmctl.config`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from ebmctl.config import Config, build_config, flatten
from ebmctl.errors import ConfigError
from ebmctl.plugins import get_registries
from ebmctl.registry import did_you_mean


def read_profile_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"profile file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read profile {path}: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"malformed TOML in profile {path}: {exc}") from None


def profile_dirs() -> list[Path]:
    """Folders of bundled and plugin profiles, in plugin load order."""
    return get_registries().profile_dirs


def available_profiles() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in profile_dirs():
        for p in sorted(Path(d).glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def find_profile(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists() or "/" in name_or_path:
        if not p.exists():
            raise ConfigError(f"profile file not found: {p}")
        return p
    profiles = available_profiles()
    if name_or_path not in profiles:
        raise ConfigError(f"unknown profile {name_or_path!r}{did_you_mean(name_or_path, list(profiles))}")
    return profiles[name_or_path]


def _load_profile_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"profile {path} extends itself")
    data = read_profile_file(path)
    base: dict[str, Any] = {}
    parent = data.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"profile {path}: 'extends' must be a profile name")
        base = _load_profile_chain(find_profile(parent), seen + (path.resolve(),))
    data.pop("description", None)
    flat = flatten(data)
    for k in flat:
        if "." not in k:
            raise ConfigError(f"profile {path}: top-level key {k!r} must be inside a [section]")
    base.update(flat)
    return base


def profile_description(path: Path) -> str:
    data = read_profile_file(path)
    return str(data.get("description", ""))


def resolve(profile: str | None, set_items: list[str] | None = None) -> Config:
    """Resolve a profile name or path plus ``--set`` items against the full schema (core keys
    and every loaded plugin's)."""
    schema = get_registries().schema
    if profile:
        path = find_profile(profile)
        values = _load_profile_chain(path)
        name = path.stem
    else:
        values, name = {}, "defaults"
    return build_config(schema, values, set_items or [], name=name)
