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


def profile_key(key: ast.expr, keys: set[str], sections: set[str]) -> str | None:
    """The profile key an expression spells as a string (a literal naming a declared key, or an
    f-string starting with ``<section>.``, shown as ``"<section>.…{...}"``), else None."""
    if isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value in keys:
        return key.value
    if isinstance(key, ast.JoinedStr) and key.values:
        head = key.values[0]
        if (isinstance(head, ast.Constant) and isinstance(head.value, str)
                and head.value.split(".", 1)[0] in sections and "." in head.value):
            return head.value + "{...}"
    return None


def string_lookups(source: str, keys: set[str], sections: set[str]) -> list[tuple[int, str]]:
    """(line, key) of each subscript by a profile key written as a string in ``source``."""
    return [(node.lineno, key) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Subscript)
            and (key := profile_key(node.slice, keys, sections)) is not None]


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


def get_lookups(source: str, keys: set[str], sections: set[str]) -> list[tuple[int, str]]:
    """(line, key) of each ``x.get("section.key", ...)`` call by a profile key written as a
    string (or an f-string starting with ``<section>.``) in ``source``."""
    return [(node.lineno, key) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get" and node.args
            and (key := profile_key(node.args[0], keys, sections)) is not None]


def test_the_get_check_sees_both_spellings_and_leaves_other_keys():
    keys, sections = {"data.dataset"}, {"data", "ebm"}
    src = ('cfg.get("data.dataset")\ncfg.get(f"ebm.{k}", 0)\nmeta.get("ebmctl.kind", "")\n'
           'd.get("dataset")\n')
    assert get_lookups(src, keys, sections) == [(1, "data.dataset"), (2, "ebm.{...}")]


def test_no_profile_key_is_read_by_string_get():
    keys, sections = _sections()
    bad = []
    for tree in TREES:
        for path in sorted(tree.rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "/tests/" in rel:
                continue
            bad += [f"{rel}:{line}: .get({key!r})"
                    for line, key in get_lookups(path.read_text(), keys, sections)]
    assert not bad, ("read these keys through their section (cfg.section(XConfig).field), not "
                     "by string:\n" + "\n".join(bad))


#: workflows and recipes that take typed sections, plain fields and a RunRecord, never the whole
#: Config (the command layer, ``ebmctl/context.py`` and ``ebmctl/commands/``, builds them; the
#: one place such a module turns a Config into its sections is a ``from_config`` classmethod,
#: which the command calls once)
SECTION_TAKERS = [ROOT / "ebmctl" / "evaluate", ROOT / "ebmctl" / "dynamics",
                  ROOT / "ebmctl" / "training", ROOT / "ebmctl" / "synthesis.py",
                  ROOT / "ebmctl" / "ood.py"]
BUILDS_SECTIONS = "from_config"


def config_parameters(source: str) -> list[tuple[int, str]]:
    """(line, name) of each function parameter in ``source`` annotated ``Config`` (also
    ``config.Config``, ``"Config"`` or ``Config | None``) or named ``cfg``, outside a
    ``from_config`` classmethod."""
    def names_config(annotation) -> bool:
        if annotation is None:
            return False
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            annotation = ast.parse(annotation.value, mode="eval").body
        return any((isinstance(n, ast.Name) and n.id == "Config")
                   or (isinstance(n, ast.Attribute) and n.attr == "Config")
                   for n in ast.walk(annotation))

    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if getattr(node, "name", "") == BUILDS_SECTIONS:
            continue
        a = node.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
            if arg is not None and (arg.arg == "cfg" or names_config(arg.annotation)):
                found.append((arg.lineno, arg.arg))
    return found


def test_the_parameter_check_sees_annotations_and_the_name():
    src = ('def f(a: Config, b: "Config | None" = None, *, c: config.Config): ...\n'
           'def g(cfg, x: AttackConfig, y: "EvaluationSettings"): ...\n'
           'class R:\n    @classmethod\n    def from_config(cls, cfg: Config): ...\n'
           '    def __init__(self, s: "RunRecord | Config"): ...\n')
    assert config_parameters(src) == [(1, "a"), (1, "b"), (1, "c"), (2, "cfg"), (6, "s")]


def test_workflows_take_sections_not_the_whole_config():
    bad = []
    for place in SECTION_TAKERS:
        for path in sorted([place] if place.is_file() else place.rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            bad += [f"{rel}:{line}: parameter {name!r}"
                    for line, name in config_parameters(path.read_text())]
    assert not bad, ("take the typed sections the command builds (an EvaluationSettings, "
                     "cfg.section(XConfig), a RunRecord), not the whole Config:\n"
                     + "\n".join(bad))
