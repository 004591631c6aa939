"""Generate docs/hook-reference.md from the code: hookspec docstrings, the Task protocol, the
plugin data types, the attack base classes and the public API (``ebmctl.api.__all__``).

    python tools/gen_hook_reference.py           # rewrite docs/hook-reference.md
    python tools/gen_hook_reference.py --check   # exit 1 if the file is out of date

The test suite runs the check, so a changed docstring or a new public name fails CI until the
reference is regenerated.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "hook-reference.md"


def _doc(obj) -> str:
    return inspect.cleandoc(obj.__doc__ or "").strip() or "(undocumented)"


def _first_line(obj) -> str:
    return _doc(obj).split("\n\n")[0].replace("\n", " ")


def _annotation(a) -> str:
    # modules use `from __future__ import annotations`, so annotations are source strings
    return a.strip("'\"") if isinstance(a, str) else inspect.formatannotation(a)


def _params(func, drop_self: bool = False) -> str:
    sig = inspect.signature(func)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    text = []
    for p, orig in zip(params, sig.parameters.values()):
        if drop_self and orig.name == "self":
            continue
        item = str(p)
        if orig.annotation is not inspect.Parameter.empty:
            name, _, default = item.partition("=")
            item = f"{name}: {_annotation(orig.annotation)}" + (f" = {default}" if default else "")
        text.append(item)
    # re-insert the keyword-only marker that dropping annotations keeps in str(sig) only
    kinds = [p.kind for p in sig.parameters.values() if not (drop_self and p.name == "self")]
    if inspect.Parameter.KEYWORD_ONLY in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds:
        text.insert(kinds.index(inspect.Parameter.KEYWORD_ONLY), "*")
    ret = sig.return_annotation
    arrow = "" if ret is inspect.Signature.empty else f" -> {_annotation(ret)}"
    return f"({', '.join(text)}){arrow}"


def _signature(func) -> str:
    return f"{func.__name__}{_params(func)}"


def _hooks() -> list[str]:
    from ebmctl import hookspecs

    out = ["## Hooks", "", "Implement any of these in your plugin module with `@hookimpl` "
           "(from `ebmctl.api`). Take only the arguments you need.", ""]
    specs = [f for name, f in vars(hookspecs).items()
             if name.startswith("ebmctl_") and inspect.isfunction(f)]
    for func in specs:
        out += [f"### `{_signature(func)}`", "", _doc(func), ""]
    return out


def _methods(cls, names=None) -> list[str]:
    out = []
    for name, member in vars(cls).items():
        if isinstance(member, classmethod):
            member = member.__func__
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        if names is not None and name not in names:
            continue
        out += [f"#### `{_signature(member)}`", "", _doc(member), ""]
    return out


def _task() -> list[str]:
    from ebmctl.contracts import Task

    attrs = [(k, v) for k, v in vars(Task).items()
             if not k.startswith("_") and not callable(v) and not isinstance(v, property)]
    out = ["## The Task protocol (`ebmctl.api.Task`)", "", _doc(Task), "",
           "Class attributes (override them):", ""]
    out += [f"- `{k}` (default `{v!r}`)" for k, v in attrs]
    out += ["", "Methods (override those without a default; defaults are shown as such):", ""]
    return out + _methods(Task)


def _dataclass(cls) -> list[str]:
    out = [f"### `{cls.__name__}`", ""]
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        out += [_doc(cls), ""]
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f" = `{f.default!r}`"
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f" = `{f.default_factory()!r}`"  # type: ignore[misc]
        else:
            default = " (required)"
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append(f"- `{f.name}: {kind}`{default}")
    return out + [""]


def _data_types() -> list[str]:
    from ebmctl.contracts import DataRequest, DatasetBundle, DatasetSpec, ModelSpec, Split

    out = ["## Data types", ""]
    for cls in (DatasetSpec, DataRequest, DatasetBundle, Split, ModelSpec):
        out += _dataclass(cls)
    return out


def _attacks() -> list[str]:
    from ebmctl.attacks.base import Attack, AttackOutcome
    from ebmctl.attacks.loop import IterativeAttack

    out = ["## Attacks", "", f"### `Attack{_params(Attack.__init__, drop_self=True)}`", "",
           _doc(Attack), ""]
    out += _methods(Attack, {"from_config", "gradient_mode", "check_defense", "run"})
    out += ["### `IterativeAttack`", "", _doc(sys.modules[IterativeAttack.__module__]), ""]
    out += _methods(IterativeAttack, {"direction"})
    out += _dataclass(AttackOutcome)
    return out


def _public_api() -> list[str]:
    import ebmctl.api as api

    out = ["## Public API (`ebmctl.api`)", "", _doc(api), "",
           "| name | from | what |", "|---|---|---|"]
    for name in sorted(api.__all__, key=str.lower):
        obj = getattr(api, name)
        module = getattr(obj, "__module__", None) or "-"
        what = _describe(name, obj).replace("|", "\\|")  # a literal | would end the cell
        out.append(f"| `{name}` | `{module}` | {what} |")
    return out + [""]


def _describe(name: str, obj) -> str:
    """One line per public name: its docstring's first paragraph, else what it is."""
    if inspect.isclass(obj):
        if obj.__doc__ and obj.__doc__.startswith(name + "("):
            return "dataclass (fields under Data types)"  # dataclass without its own docstring
        if obj.__doc__ and obj.__doc__ is not obj.__mro__[1].__doc__:
            return _first_line(obj)
        return f"subclass of `{obj.__mro__[1].__name__}`"
    if inspect.isfunction(obj):
        return _first_line(obj) if obj.__doc__ else f"`{_signature(obj)}`"
    if isinstance(obj, (str, int, float, tuple, list)):
        return f"constant `{obj!r}`"
    # an instance (e.g. the pluggy marker): its type, never its repr (which holds an address)
    return f"`{type(obj).__module__.split('.')[0]}.{type(obj).__name__}` instance"


def _environment() -> list[str]:
    import ebmctl.plugins as plugins

    text = _doc(plugins)
    env = text.split("Environment:", 1)[1] if "Environment:" in text else ""
    lines = [line.strip() for line in env.strip().splitlines() if line.strip()]
    return ["## Environment variables", ""] + [f"- `{line.split(None, 1)[0]}`: "
                                               f"{line.split(None, 1)[1]}" for line in lines] + [""]


def render() -> str:
    parts = ["# ebmctl plugin reference", "",
             "Generated by `python tools/gen_hook_reference.py` from the docstrings in "
             "`ebmctl/hookspecs.py`, `ebmctl/contracts.py`, `ebmctl/attacks/` and `ebmctl/api.py`; "
             "do not edit by hand. The guide is [writing-a-plugin.md](writing-a-plugin.md).", ""]
    for section in (_hooks, _task, _data_types, _attacks, _public_api, _environment):
        parts += section()
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not REFERENCE.exists() or REFERENCE.read_text() != text:
            print(f"{REFERENCE} is out of date; run: python tools/gen_hook_reference.py",
                  file=sys.stderr)
            return 1
        return 0
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    tmp = REFERENCE.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(REFERENCE)
    print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
