"""No function or method in ebmctl/ is longer than :data:`MAX_LINES` lines, counted from the
``def`` line to the body's last line (docstring and comments included, decorators not), read
from the source with ``ast``. A longer function does several jobs in one body; split it into
named steps.

:data:`ALLOWED` lists the functions over the limit today, with their length now. It is a
ratchet: it must shrink to empty. A listed function may get shorter, never longer, and an entry
whose function is back under the limit (or gone) fails the test until it is deleted here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ebmctl"
MAX_LINES = 80

#: "path relative to ebmctl/::qualified name" → its length now. Must shrink to empty.
ALLOWED: dict[str, int] = {
}


def function_lengths(source: str) -> dict[str, int]:
    """Qualified name (``Class.method``, ``outer.inner``) → lines from ``def`` to the body's
    last line, for every function and method in ``source``."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                out[name] = child.end_lineno - child.lineno + 1
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return out


def all_lengths() -> dict[str, int]:
    return {f"{path.relative_to(ROOT).as_posix()}::{name}": n
            for path in sorted(ROOT.rglob("*.py"))
            for name, n in function_lengths(path.read_text(encoding="utf-8")).items()}


def test_no_function_is_over_the_limit():
    lengths = all_lengths()
    over = {k: n for k, n in lengths.items() if n > MAX_LINES and k not in ALLOWED}
    assert not over, (f"functions over {MAX_LINES} lines (split them into named steps): "
                      + ", ".join(f"{k} ({n})" for k, n in sorted(over.items())))


def test_the_allow_list_only_shrinks():
    lengths = all_lengths()
    grown = {k: (lengths[k], n) for k, n in ALLOWED.items() if lengths.get(k, 0) > n}
    assert not grown, f"allowed functions grew (now, allowed): {grown}"
    done = sorted(k for k in ALLOWED if lengths.get(k, 0) <= MAX_LINES)
    assert not done, f"under {MAX_LINES} lines now or gone: delete from ALLOWED: {done}"


@pytest.mark.parametrize("source,expected", [
    ("def f():\n    return 1\n", {"f": 2}),
    ("class A:\n    def m(self):\n        pass\n\n        pass\n", {"A.m": 4}),
    ("def f():\n    def g():\n        pass\n    return g\n", {"f": 4, "f.g": 2}),
    ("async def f():\n    pass\n", {"f": 2}),
])
def test_lengths_are_counted_from_def_to_the_last_line(source, expected):
    assert function_lengths(source) == expected
