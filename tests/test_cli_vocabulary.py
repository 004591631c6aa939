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


# --- one vocabulary: a shared flag means the same thing in every command --------------------

#: Flags whose meaning is fixed across commands (ebmctl.commands.common.MEANINGS), with the
#: short name each one always pairs with.
SHARED_FLAGS = {"--ebm": None, "--model": "-m", "--out": "-o", "--out-dir": None,
                "--n-images": None, "--langevin-steps": "-k", "--updates": None}

#: Every old spelling still accepted, per command: (command, old, new). Adding or dropping one
#: must update this list (and the CHANGELOG's "Deprecated").
OLD_SPELLINGS = [
    ("purify", "--steps", "--langevin-steps"),
    ("synthesize", "--model", "--ebm"),
    ("synthesize", "-m", "--ebm"),
    ("synthesize", "--n", "--n-images"),
    ("synthesize", "--steps", "--langevin-steps"),
    ("synthesize", "-o", "--out-dir"),
    ("ood", "--model", "--ebm"),
    ("ood", "-m", "--ebm"),
    ("bench", "--steps", "--langevin-steps"),
    ("bench", "--attack-steps", "--attack-langevin-steps"),
    ("train ebm", "--steps", "--updates"),
    ("train hat", "--steps", "--updates"),
    ("train autoencoder", "--steps", "--updates"),
]


def _leaf_commands() -> dict[str, object]:
    import typer

    from ebmctl.cli import app

    found: dict[str, object] = {}

    def walk(cmd, path: str) -> None:
        subs = getattr(cmd, "commands", None)
        if not subs:
            found[path] = cmd
        for name, sub in (subs or {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    return found


def _type_name(param) -> str:
    """The value type (click's ParamType name, or the annotation typer kept)."""
    kind = getattr(param, "type", None)
    if kind is not None:
        return kind.name
    return str(param.type_descriptor.annotation)


def _signature(param) -> tuple:
    return (tuple(sorted(param.opts)), _type_name(param), param.metavar, param.multiple,
            getattr(param, "is_flag", False), param.nargs)


@pytest.mark.parametrize("flag", sorted(SHARED_FLAGS))
def test_a_shared_flag_has_one_meaning_type_and_short_name_everywhere(flag):
    from ebmctl.commands.common import MEANINGS

    uses = {path: p for path, cmd in _leaf_commands().items() for p in cmd.params
            if flag in p.opts}
    assert len(uses) >= 2 or flag == "--updates" and len(uses) >= 1, uses
    short = SHARED_FLAGS[flag]
    expected_opts = tuple(sorted([flag] + ([short] if short else [])))
    signatures = {path: _signature(p) for path, p in uses.items()}
    assert len(set(signatures.values())) == 1, signatures
    assert next(iter(signatures.values()))[0] == expected_opts
    wrong_help = {path: p.help for path, p in uses.items()
                  if not (p.help or "").startswith(MEANINGS[flag])}
    assert not wrong_help, f"{flag} must mean {MEANINGS[flag]!r}: {wrong_help}"


def test_no_other_flag_takes_a_shared_meaning_or_short_name():
    from ebmctl.commands.common import MEANINGS

    shorts = {s: f for f, s in SHARED_FLAGS.items() if s}
    clashes = []
    for path, cmd in _leaf_commands().items():
        for p in cmd.params:
            names = set(p.opts)
            for short, flag in shorts.items():
                if short in names and flag not in names:
                    clashes.append(f"{path}: {short} is not {flag}")
            for flag, meaning in MEANINGS.items():
                if (p.help or "").startswith(meaning) and flag not in names:
                    clashes.append(f"{path}: {sorted(names)} says {meaning!r}, the help of {flag}")
            if "--steps" in names or "--n" in names:
                clashes.append(f"{path}: {sorted(names)} is an old spelling shown in --help")
    assert not clashes, "\n".join(clashes)


def test_the_old_spellings_listed_here_are_exactly_the_ones_accepted():
    declared = {(path, old, new) for path, cmd in _leaf_commands().items()
                for old, new in getattr(cmd, "aliases", {}).items()}
    assert declared == set(OLD_SPELLINGS)


def _parse(cmd, path: str, args: list[str]) -> dict:
    ctx = cmd.make_context(path, list(args))
    return dict(ctx.params)


def _required_args(cmd, skip: str) -> list[str]:
    """Placeholder values for the command's other required arguments and options."""
    out = []
    for p in cmd.params:
        if not p.required or skip in getattr(p, "opts", []):
            continue
        if p.param_type_name == "argument":
            out.append("img.png")
        else:
            out += [p.opts[0], "x.safetensors"]
    return out


@pytest.mark.parametrize("path,old,new", OLD_SPELLINGS)
def test_an_old_spelling_still_works_as_a_hidden_alias(path, old, new, capsys):
    cmd = _leaf_commands()[path]
    target = next(p for p in cmd.params if new in p.opts)
    value = "5" if "int" in _type_name(target) else "some/file.safetensors"
    rest = _required_args(cmd, new)
    expected = _parse(cmd, path, [new, value, *rest])
    capsys.readouterr()
    forms = [[old, value]] + ([[f"{old}={value}"]] if old.startswith("--") else [[old + value]])
    for form in forms:
        assert _parse(cmd, path, [*form, *rest]) == expected, form
        captured = capsys.readouterr()
        assert captured.out == "", "an alias must print nothing on stdout"
        assert f"{old}` is deprecated; use {new}" in captured.err
    # not a declared option, so --help cannot list it
    assert all(old not in [*p.opts, *getattr(p, "secondary_opts", [])] for p in cmd.params)


def test_an_alias_value_that_looks_like_an_option_is_left_alone():
    cmd = _leaf_commands()["synthesize"]
    # `-o` is synthesize's old --out-dir; as the *value* of --out-dir it is a folder name.
    params = _parse(cmd, "synthesize", ["--ebm", "e.safetensors", "--out-dir", "-o"])
    assert str(params["out_dir"]) == "-o" and str(params["ebm"]) == "e.safetensors"


def test_old_spellings_run_end_to_end(tmp_path):
    missing = tmp_path / "missing.safetensors"
    new = run_cli(["ood", "--ebm", missing, "--out", tmp_path / "o.json"])
    old = run_cli(["ood", "-m", missing, "--out", tmp_path / "o.json"])
    assert new.exit_code == old.exit_code != 0
    assert old.stdout == new.stdout == ""
    assert [ln for ln in old.stderr.splitlines() if ln.startswith("Error:")] == \
        [ln for ln in new.stderr.splitlines() if ln.startswith("Error:")]
