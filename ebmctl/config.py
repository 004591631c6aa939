"""Configuration mechanics: the schema of profile keys, their parsing and checks, and the resolved
:class:`Config` (schema defaults < profile file < ``--set`` overrides).

Every key is declared in a schema; an unknown key or a bad value is a ConfigError naming it.
A subsystem declares its keys next to the code that reads them, as a *section*: a frozen
dataclass whose class attribute ``section`` names the profile table and whose fields are the
keys, each made with :func:`setting` (default, help, bounds, choices); the key's kind follows
the annotation (``int``, ``float``, :data:`Fraction`, ``str``, ``bool``, ``tuple[int, ...]``,
:data:`AutoBool`, :data:`AutoInt`, ...). Plugins (the built-in one included) add sections or single keys through the
``ebmctl_profile_schema`` hook; :meth:`Config.section` then hands code its typed section, so
core functions take sections, not the whole Config. Every core key belongs to a section that
the built-in plugin (:mod:`ebmctl.builtin`) adds; this module declares none. Finding and
reading profile files is :mod:`ebmctl.profiles`; this module imports no plugin.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, NewType

from ebmctl.errors import ConfigError
from ebmctl.registry import did_you_mean
from ebmctl.units import parse_fraction


@dataclass
class Key:
    kind: str  # int, float, fraction, str, bool, int_list, float_list, str_list, bool_or_auto,
    #            int_or_auto
    default: Any
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None


#: A float in [0,1] pixel units that profiles may also write as a fraction (``"8/255"``).
Fraction = NewType("Fraction", float)
#: A bool, or the string ``"auto"`` (left for the code to choose, e.g. by measuring).
AutoBool = typing.Union[bool, typing.Literal["auto"]]
#: An int, or the string ``"auto"``; bounds apply to the int only.
AutoInt = typing.Union[int, typing.Literal["auto"]]

#: Annotation of a section field -> key kind (lists are tuples, so sections stay immutable).
_KINDS: dict[Any, str] = {
    int: "int", float: "float", Fraction: "fraction", str: "str", bool: "bool",
    tuple[int, ...]: "int_list", tuple[float, ...]: "float_list", tuple[str, ...]: "str_list",
    AutoBool: "bool_or_auto", AutoInt: "int_or_auto",
}


def setting(default: Any, help: str = "", *, minimum: float | None = None,
            maximum: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A field of a section dataclass: its default, plus the schema entry's help, bounds and
    choices (kept in the field's ``metadata``). List defaults are given as tuples."""
    meta = {"help": help, "minimum": minimum, "maximum": maximum,
            "choices": tuple(choices) if choices else None}
    return field(default=default, metadata=meta)


def section_keys(cls: type) -> dict[str, Key]:
    """The schema entries ``"<cls.section>.<field>"`` of a section dataclass, in field order.

    Raises:
        ConfigError: ``cls`` is not a dataclass with a ``section`` name, or a field's
            annotation has no key kind (see ``_KINDS``) or no default.
    """
    name = getattr(cls, "section", None)
    if not dataclasses.is_dataclass(cls) or not isinstance(name, str) or not name:
        raise ConfigError(f"{cls!r} is not a profile section (a dataclass with a 'section' name)")
    # the names a section's annotations may use, for a class whose module is no longer in
    # sys.modules (a plugin reloaded or unloaded after import)
    names = {"ClassVar": typing.ClassVar, "Fraction": Fraction, "AutoBool": AutoBool,
             "AutoInt": AutoInt}
    try:
        hints = typing.get_type_hints(cls)
    except NameError:
        hints = typing.get_type_hints(cls, localns=names)
    out: dict[str, Key] = {}
    for f in dataclasses.fields(cls):
        key = f"{name}.{f.name}"
        kind = _KINDS.get(hints.get(f.name))
        if kind is None or f.default is dataclasses.MISSING:
            raise ConfigError(f"profile key {key!r} of {cls.__name__} needs a default and one of "
                              "the annotations int, float, Fraction, str, bool, tuple[T, ...], "
                              "AutoBool, AutoInt")
        meta = f.metadata
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        out[key] = Key(kind, default, meta.get("help", ""), meta.get("minimum"),
                       meta.get("maximum"), meta.get("choices"))
    return out


class Schema:
    def __init__(self) -> None:
        self.keys: dict[str, Key] = {}

    def add_section(self, cls: type,
                    choices: dict[str, tuple[str, ...]] | None = None) -> list[str]:
        """Add every key of the section dataclass ``cls`` (see :func:`section_keys`); returns
        their names. ``choices`` (field name -> allowed values) sets the choices of fields whose
        values come from a registry the section's module cannot import (``train.recipe``: the
        recipes import the section).

        Raises:
            ConfigError: ``cls`` is not a section, one of its keys is declared already, or
                ``choices`` names a field it does not have.
        """
        keys = section_keys(cls)
        for name in keys:
            if name in self.keys:
                raise ConfigError(f"profile key {name!r} is declared twice")
        for fname, allowed in (choices or {}).items():
            key = f"{cls.section}.{fname}"
            if key not in keys:
                raise ConfigError(f"{cls.__name__} has no field {fname!r} to give choices")
            keys[key] = dataclasses.replace(keys[key], choices=tuple(allowed))
        self.keys.update(keys)
        return list(keys)

    def add(self, name: str, kind: str, default: Any, help: str = "", *, minimum=None,
            maximum=None, choices=None) -> None:
        """Deprecated: declare one key ``"section.key"`` of ``kind`` (a key of ``_PARSERS``).
        Kept for plugins written against it; declare a section dataclass and use
        :meth:`add_section` instead.

        Raises:
            ConfigError: ``name`` has no section, or ``kind`` is unknown.
        """
        if "." not in name:
            raise ConfigError(f"profile key {name!r} must be 'section.key'")
        if kind not in _PARSERS:
            raise ConfigError(f"profile key {name!r} has unknown kind {kind!r}")
        self.keys[name] = Key(kind, default, help, minimum, maximum,
                              tuple(choices) if choices else None)

    def coerce(self, name: str, value: Any) -> Any:
        if name not in self.keys:
            raise ConfigError(f"unknown profile key {name!r}{did_you_mean(name, list(self.keys))}")
        key = self.keys[name]
        try:
            out = _PARSERS[key.kind](value)
        except (TypeError, ValueError, ZeroDivisionError):
            raise ConfigError(
                f"bad value {value!r} for profile key {name!r}: expected {key.kind}"
            ) from None
        for item in out if isinstance(out, list) else [out]:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"bad value {value!r} for profile key {name!r}: not finite")
            if key.minimum is not None and isinstance(item, (int, float)) and item < key.minimum:
                raise ConfigError(
                    f"bad value {value!r} for profile key {name!r}: must be >= {key.minimum}")
            if key.maximum is not None and isinstance(item, (int, float)) and item > key.maximum:
                raise ConfigError(
                    f"bad value {value!r} for profile key {name!r}: must be <= {key.maximum}")
            if key.choices is not None and item not in key.choices:
                raise ConfigError(
                    f"bad value {value!r} for profile key {name!r}: "
                    f"choose from {', '.join(key.choices)}")
        return out


def _parse_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(v, str) and v.lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(v)


def _parse_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError(v)
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError(v)
        return int(v)
    return int(str(v).strip())


def _parse_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError(v)
    return float(v)


def _or_auto(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parser(v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        return parse(v)

    return parser


def _parse_str(v: Any) -> str:
    if isinstance(v, os.PathLike):  # a typed --flag FILE
        return os.fspath(v)
    if not isinstance(v, (str, int, float)) or isinstance(v, bool):
        raise ValueError(v)
    return str(v)


def _list_of(parse: Callable[[Any], Any]) -> Callable[[Any], list]:
    def parser(v: Any) -> list:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                v = json.loads(text)
            else:
                v = [p for p in text.split(",") if p.strip()]
        if not isinstance(v, (list, tuple)):
            v = [v]
        return [parse(item) for item in v]

    return parser


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "int": _parse_int,
    "float": _parse_float,
    "fraction": parse_fraction,
    "str": _parse_str,
    "bool": _parse_bool,
    "bool_or_auto": _or_auto(_parse_bool),
    "int_or_auto": _or_auto(_parse_int),
    "int_list": _list_of(_parse_int),
    "float_list": _list_of(_parse_float),
    "str_list": _list_of(_parse_str),
}


S = typing.TypeVar("S")


@dataclass
class Config:
    """A resolved profile: flat ``section.key`` values plus where each came from."""

    values: dict[str, Any]
    #: where each value came from, as text for people (``ebmctl profiles show --provenance``,
    #: report headers); code asks :meth:`is_default`, :meth:`chosen` or :meth:`from_profile`
    #: instead of comparing it
    provenance: dict[str, str] = field(default_factory=dict)
    name: str = "defaults"
    schema: Schema | None = None
    #: the keys the user set on the command line (``--set`` or a command's flag)
    chosen_keys: frozenset[str] = frozenset()
    #: the keys the profile file set that no later layer (``--set``, a flag, an override)
    #: replaced
    profile_keys: frozenset[str] = frozenset()
    #: the keys some layer set (a profile file, ``--set`` or a flag, an artifact, an override)
    given_keys: frozenset[str] = frozenset()

    def __getitem__(self, key: str) -> Any:
        try:
            return self.values[key]
        except KeyError:
            choices = list(self.values)
            raise ConfigError(f"unknown profile key {key!r}{did_you_mean(key, choices)}") from None

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def section(self, name: str | type[S]) -> dict[str, Any] | S:
        """A section's values: given a name, a dict ``key -> value``; given a section dataclass
        (see :func:`section_keys`), that dataclass built from this profile (lists as tuples).

        Raises:
            ConfigError: the profile lacks one of the section's keys.
        """
        if isinstance(name, str):
            prefix = name + "."
            return {k[len(prefix):]: v for k, v in self.values.items() if k.startswith(prefix)}
        values = {}
        for f in dataclasses.fields(name):
            value = self[f"{name.section}.{f.name}"]
            values[f.name] = tuple(value) if isinstance(value, list) else value
        return name(**values)

    def is_default(self, key: str) -> bool:
        """True when ``key`` still holds its schema default (no profile, ``--set`` or artifact
        gave it)."""
        return key not in self.given_keys

    def chosen(self, key: str) -> bool:
        """True when the user set ``key`` on the command line (``--set`` or a command's flag),
        as opposed to a default, a profile file, an artifact or a value the code derived."""
        return key in self.chosen_keys

    def from_profile(self, key: str) -> bool:
        """True when the profile file gave ``key`` and no later layer (``--set``, a command's
        flag, an artifact or a value the code derived) replaced it."""
        return key in self.profile_keys

    def with_overrides(self, overrides: dict[str, Any], source: str = "override", *,
                       chosen: bool = False) -> "Config":
        """A copy with ``overrides`` (key -> typed value, checked against the schema: bounds,
        choices) on top, their provenance ``source``; ``chosen`` marks them as set by the user
        (:meth:`chosen`). The values are typed already: nothing goes through ``"key=value"``
        text.

        Raises:
            ConfigError: an unknown key or a value the schema refuses, naming it.
        """
        new = dataclasses.replace(self, values=dict(self.values), provenance=dict(self.provenance))
        for k, v in overrides.items():
            new.values[k] = self.schema.coerce(k, v) if self.schema else v
            new.provenance[k] = source
        if chosen:
            new.chosen_keys = self.chosen_keys | set(overrides)
        else:  # a later layer replaced what the user had chosen
            new.chosen_keys = self.chosen_keys - set(overrides)
        new.profile_keys = self.profile_keys - set(overrides)
        new.given_keys = self.given_keys | set(overrides)
        return new

    def to_dict(self) -> dict[str, Any]:
        nested: dict[str, Any] = {}
        for k, v in sorted(self.values.items()):
            sec, key = k.split(".", 1)
            nested.setdefault(sec, {})[key] = copy.deepcopy(v)
        return nested

    def record(self) -> "RunRecord":
        """The run's written record of this profile (see :class:`RunRecord`)."""
        return RunRecord(self.name, self.to_dict())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, schema: Schema) -> "Config":
        cfg = build_config(schema, {}, [], name="artifact")
        data = json.loads(text)
        flat = flatten(data)
        # Keys from plugins that are not loaded now are kept as they are.
        for k, v in flat.items():
            cfg.values[k] = schema.coerce(k, v) if k in schema.keys else v
            cfg.provenance[k] = "artifact"
        cfg.given_keys = frozenset(flat)
        return cfg


@dataclass(frozen=True)
class RunRecord:
    """What a run writes beside its results: the resolved profile as nested plain values
    (``section -> key -> value``), for an artifact's ``ebmctl.config``, a log's or report's
    ``config`` and the fingerprint a resume compares.

    It is a record, not a source of settings: it has no lookup by key. Recipes and workflows
    take the typed sections they use (built once by the command, :meth:`Config.section`) and
    this record only to write it down.
    """

    name: str
    values: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.values)

    def to_json(self) -> str:
        return json.dumps(self.values, sort_keys=True)


def replace_checked(section: S, **changes: Any) -> S:
    """``dataclasses.replace(section, **changes)`` with each value parsed and checked as its
    profile key would be (kind, bounds, choices; lists become tuples), so code that sets a
    section from typed arguments refuses what a profile would refuse.

    Raises:
        ConfigError: an unknown field or a bad value, naming the profile key.
    """
    schema = Schema()
    schema.keys.update(section_keys(type(section)))
    name = type(section).section
    values = {}
    for field_name, value in changes.items():
        out = schema.coerce(f"{name}.{field_name}", value)
        values[field_name] = tuple(out) if isinstance(out, list) else out
    return dataclasses.replace(section, **values)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables → flat ``section.key`` names (``{"a": {"b": 1}}`` → ``{"a.b": 1}``)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def parse_set_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def build_config(schema: Schema, profile_values: dict[str, Any], set_items: list[str],
                 name: str = "defaults") -> Config:
    values: dict[str, Any] = {}
    prov: dict[str, str] = {}
    for k, key in schema.keys.items():
        values[k] = copy.deepcopy(key.default)
        prov[k] = "default"
    for k, v in profile_values.items():
        values[k] = schema.coerce(k, v)
        prov[k] = f"profile {name}"
    sets = parse_set_options(set_items)
    for k, v in sets.items():
        values[k] = schema.coerce(k, v)
        prov[k] = "--set"
    return Config(values, prov, name, schema, frozenset(sets),
                  frozenset(profile_values) - frozenset(sets),
                  frozenset(profile_values) | frozenset(sets))
