"""What the CLI tells a user to type must exist: every ``--flag`` and ``section.key`` named in an
error or notice in ebmctl/ and plugins/ is checked against the real command tree and profile
schema, and click's usage errors (a missing option, an unknown one) keep their usual form."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ebmctl.testing import run_cli

ROOT = Path(__file__).resolve().parent.parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]")
KEY = re.compile(r"(?<![\w.])([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)(?![\w(])")
#: Calls whose string arguments reach the user as a message.
MESSAGE_CALLS = {"info", "warn", "warning", "numerical_stop", "print", "echo"}


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _message_strings(tree: ast.AST):
    """(line, text) of every string constant inside a raise, an ``...Error(...)`` call or a
    message call (f-strings contribute their literal parts)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            roots = [node.exc]
        elif isinstance(node, ast.Call) and (_call_name(node).endswith("Error")
                                             or _call_name(node) in MESSAGE_CALLS):
            roots = [node]
        else:
            continue
        for root in roots:
            for n in ast.walk(root):
                if isinstance(n, ast.Constant) and isinstance(n.value, str):
                    yield n.lineno, n.value


def _mentions():
    flags, keys = set(), set()
    for f in sorted([*ROOT.joinpath("ebmctl").rglob("*.py"),
                     *ROOT.joinpath("plugins").rglob("*.py")]):
        where = str(f.relative_to(ROOT))
        for line, text in _message_strings(ast.parse(f.read_text(encoding="utf-8"))):
            flags |= {(where, line, m) for m in FLAG.findall(text)}
            keys |= {(where, line, m.group(0)) for m in KEY.finditer(text)}
    return sorted(flags), sorted(keys)


def _cli_options() -> set[str]:
    import typer

    from ebmctl.cli import app

    found: set[str] = set()

    def walk(cmd) -> None:
        for p in getattr(cmd, "params", []):
            found.update(o for o in [*p.opts, *getattr(p, "secondary_opts", [])]
                         if o.startswith("--"))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return found | {"--help"}


def test_message_flags_and_profile_keys_exist():
    from ebmctl.plugins import get_registries

    schema = get_registries().schema.keys
    sections = {k.split(".", 1)[0] for k in schema}
    options = _cli_options()
    flags, keys = _mentions()
    assert len(flags) > 20 and len(keys) > 40, "the parser no longer finds the messages"
    bad_flags = [f"{w}:{ln}: {m}" for w, ln, m in flags if m not in options]
    bad_keys = [f"{w}:{ln}: {m}" for w, ln, m in keys
                if m.split(".", 1)[0] in sections and m not in schema]
    assert not bad_flags, "messages name flags no command has:\n" + "\n".join(bad_flags)
    assert not bad_keys, "messages name profile keys the schema lacks:\n" + "\n".join(bad_keys)


@pytest.mark.parametrize("argv,needle", [
    (["attack"], "Missing option '--model'"),
    (["fix", "train"], "Missing option '--ebm'"),
    (["ood"], "Missing option '--ebm'"),
    (["attack", "--model", "m.safetensors", "--no-such-flag"], "No such option: --no-such-flag"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["attack", "-m", "m.safetensors", "--n-images", "many"], "Invalid value for '--n-images'"),
])
def test_usage_errors_are_clicks_with_exit_code_2(argv, needle):
    r = run_cli(argv)
    assert r.exit_code == 2, r.output
    assert needle in r.stderr, r.stderr
    assert "internal error" not in r.output and "Traceback" not in r.output


def test_version_needs_no_command():
    from ebmctl import __version__

    r = run_cli(["--version"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"ebmctl {__version__}"
