"""One configuration dialect: code reads profile keys through their typed sections
(``cfg.section(TrainConfig).steps``), never by string subscript (``cfg["train.steps"]``).

The check reads the source with ``ast``: a subscript whose key is a string literal naming a
declared profile key, or an f-string starting with ``<section>.`` of a declared section, is a
string lookup. It covers ``ebmctl/``, the bundled plugins and the example plugin.
"""

from __future__ import annotations

import ast
from pathlib import Path


from ebmctl.plugins import get_registries

ROOT = Path(__file__).resolve().parents[1]
TREES = [ROOT / "ebmctl", ROOT / "plugins", ROOT / "examples" / "ebmctl-plugin-example"]

def _sections() -> tuple[set[str], set[str]]:
    keys = set(get_registries().schema.keys)
    return keys, {k.split(".", 1)[0] for k in keys}


def string_lookups(source: str, keys: set[str], sections: set[str]) -> list[tuple[int, str]]:
    """(line, key) of each subscript by a profile key written as a string in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Subscript):
            continue
        key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value in keys:
            found.append((node.lineno, key.value))
        elif isinstance(key, ast.JoinedStr) and key.values:
            head = key.values[0]
            if (isinstance(head, ast.Constant) and isinstance(head.value, str)
                    and head.value.split(".", 1)[0] in sections and "." in head.value):
                found.append((node.lineno, head.value + "{...}"))
    return found


def test_the_check_sees_both_spellings():
    keys, sections = {"train.steps"}, {"train", "ebm"}
    src = ('cfg["train.steps"]\nprofile[f"ebm.smooth_{k}"]\nmeta["ebmctl.kind"]\n'
           'state["linear.weight"]\ncfg.section(T).steps\n')
    assert string_lookups(src, keys, sections) == [(1, "train.steps"), (2, "ebm.smooth_{...}")]


def test_no_profile_key_is_read_by_string_subscript():
    keys, sections = _sections()
    assert {"train.steps", "hat.width", "task.dice_mode", "model.depth"} <= keys
    bad = []
    for tree in TREES:
        for path in sorted(tree.rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "/tests/" in rel:
                continue
            bad += [f"{rel}:{line}: [{key!r}]"
                    for line, key in string_lookups(path.read_text(), keys, sections)]
    assert not bad, ("read these keys through their section (cfg.section(XConfig).field), not "
                     "by string:\n" + "\n".join(bad))


# --- recipes and workflows take typed sections, never the whole Config ----------------------

#: Folders whose functions take the typed sections they read and a ``RunRecord`` to write down,
#: never the resolved ``Config`` (add a folder here to hold its modules to it too). The one
#: place a module turns a ``Config`` into its sections is a classmethod named ``from_config``,
#: which the command calls once.
SECTIONS_ONLY_TREES = [ROOT / "ebmctl" / "training"]
SECTIONS_ONLY = sorted(p for tree in SECTIONS_ONLY_TREES for p in tree.rglob("*.py"))
BUILDS_SECTIONS = "from_config"


def config_parameters(source: str) -> list[tuple[int, str]]:
    """(line, function) of each function in ``source`` with a parameter annotated ``Config``
    (bare, dotted, quoted or in a union) or named ``cfg`` (the profile's name by convention,
    annotated or not), other than a ``from_config`` classmethod."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if node.name == BUILDS_SECTIONS:
            continue
        a = node.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
            if arg is None:
                continue
            note = arg.annotation
            text = "" if note is None else str(note.value if isinstance(note, ast.Constant)
                                               else ast.unparse(note))
            names = {part.strip().split(".")[-1] for part in text.split("|")}
            if "Config" in names or arg.arg == "cfg":
                found.append((node.lineno, node.name))
                break
    return sorted(found)


def test_the_config_check_sees_each_spelling():
    src = ("def a(cfg: Config): ...\ndef b(x, cfg: 'Config'): ...\n"
           "def c(*, cfg: ebmctl.config.Config): ...\n"
           "class R:\n    def __init__(self, cfg: Config | None): ...\n"
           "    @classmethod\n    def from_config(cls, cfg: Config): ...\n"
           "def d(train: TrainConfig, record: RunRecord): ...\n"
           "def e(cfg, bundle): ...\n"
           "def f(x: 'RunRecord | Config'): ...\n")
    assert config_parameters(src) == [(1, "a"), (2, "b"), (3, "c"), (5, "__init__"), (9, "e"),
                                      (10, "f")]


def test_training_recipes_take_sections_not_the_config():
    assert SECTIONS_ONLY, "no training modules found"
    bad = [f"{path.relative_to(ROOT).as_posix()}:{line}: {name}()"
           for path in SECTIONS_ONLY
           for line, name in config_parameters(path.read_text())]
    assert not bad, ("take the typed sections the function reads (built once by the command "
                     "with a from_config classmethod) and a RunRecord to write down, not the "
                     "whole Config:\n" + "\n".join(bad))
