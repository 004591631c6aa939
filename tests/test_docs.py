"""The README and docs stay as promised: a short README, no tracker references or "Stale"
banners, shell examples that name real commands and options, a measurement header above every
figure table in docs/results/, and relative links that resolve.

The command check parses each example with the CLI's own click parser (command tree and option
names, values not converted), so it runs nothing and needs no model files.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CHANGELOG = ROOT / "CHANGELOG.md"
RESULTS = ROOT / "docs" / "results"
README_MAX_LINES = 150

#: The line directly above every table in docs/results/ (blank lines between are allowed):
#: what ran, with which profile, at which commit, on what hardware, in which precision, when.
MEASURED = re.compile(
    r"^> \*\*Measured\*\* · command: `[^`]+`(?: (?:and|or|/) `[^`]+`)* · profile: [^·]+ · "
    r"commit: `[0-9a-f]{7,40}` · device: (?:CPU|GPU)\b[^·]* · precision: [^·]+ · "
    r"date: \d{4}-\d{2}-\d{2}$")

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
ISSUE_WORD = re.compile(r"\bissues?\s+#?\d+", re.I)
HASH_NUMBER = re.compile(r"(?<![\w&/#])#\d+\b")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def without_fences(text: str) -> str:
    """The text with every fenced block blanked out (line numbers kept)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def prose(text: str) -> str:
    """The text without fenced blocks and inline code (commands and anchors may hold '#N')."""
    return re.sub(r"`[^`\n]*`", "``", without_fences(text))


def shell_commands(text: str) -> list[str]:
    """Every `ebmctl ...` line of the shell blocks, continuation lines joined, comments and a
    leading prompt (`$ `, `dir$ `) removed."""
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) not in SHELL_FENCES:
            continue
        for line in m.group(2).replace("\\\n", " ").splitlines():
            line = re.sub(r"^\S*\$\s+", "", line.strip())
            if line.startswith("ebmctl "):
                out.append(line)
    return out


def tables(text: str) -> list[tuple[int, list[str]]]:
    """(line index of the first row, the lines above it) for every Markdown table outside
    fenced blocks."""
    lines = without_fences(text).splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|")):
            found.append((i, lines[:i]))
    return found


@pytest.fixture(scope="module")
def cli():
    import typer

    from ebmctl.cli import app

    return typer.main.get_command(app)


def check_command(root: click.Command, line: str) -> str | None:
    """None when `line` names real (sub)commands and only options they take, else why not.
    Each level is parsed by its own click parser: unknown options and missing option values
    fail there; values are not converted, so placeholders like FILE pass."""
    try:
        args = shlex.split(line, comments=True)[1:]
    except ValueError as exc:
        return f"unparseable ({exc})"
    cmd, ctx, name = root, None, "ebmctl"
    while True:
        try:
            ctx = cmd.make_context(name, list(args), parent=ctx, resilient_parsing=True)
            ctx.resilient_parsing = False  # now let the parser refuse unknown options
            cmd.make_parser(ctx).parse_args(list(args))
        except Exception as exc:  # the vendored click's UsageError subclasses
            return f"{name}: {getattr(exc, 'message', exc)}"
        if not hasattr(cmd, "get_command"):
            return None
        rest = list(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])
                    ) + list(ctx.args)
        if not rest:
            return None if cmd.invoke_without_command else f"{name}: no command given"
        sub = cmd.get_command(ctx, rest[0])
        if sub is None:
            return f"{name}: no command {rest[0]!r}"
        name, cmd, args = rest[0], sub, rest[1:]


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, (f"README.md has {n} lines; keep it to {README_MAX_LINES} and "
                                   "move details to docs/guide.md, figures to docs/results/")


def test_no_stale_banners():
    hits = [f"{rel(f)}:{i}: {line.strip()[:80]}" for f in doc_files()
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"\bstale\b", line, re.I)]
    assert not hits, ("a stale figure is re-measured or deleted, not kept with a banner:\n"
                      + "\n".join(hits))


def test_no_issue_references():
    hits = []
    for f in [*doc_files(), CHANGELOG]:
        for i, line in enumerate(prose(f.read_text(encoding="utf-8")).splitlines(), 1):
            if ISSUE_WORD.search(line) or HASH_NUMBER.search(line):
                hits.append(f"{rel(f)}:{i}: {line.strip()[:90]}")
    assert not hits, ("describe the change, not the tracker entry (readers have no tracker):\n"
                      + "\n".join(hits))


def test_tests_state_behaviour_not_tracker_entries():
    """A test file says what behaviour it specifies; a tracker entry's number and item mean
    nothing to a reader without the tracker."""
    item = re.compile(r"\bitems? \d+\b", re.I)
    hits = [f"{rel(f)}:{i}: {line.strip()[:90]}"
            for f in sorted((ROOT / "tests").glob("*.py"))
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
            if ISSUE_WORD.search(line) or item.search(line)]
    assert not hits, "name the behaviour instead:\n" + "\n".join(hits)


def test_no_machine_load_asides():
    hits = [f"{rel(f)}:{i}: {line.strip()[:90]}" for f in doc_files()
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"load average|\bshared (?:2-core )?(?:CPU|machine)|this machine's day",
                         line, re.I)]
    assert not hits, "machine-load stories do not belong in the docs:\n" + "\n".join(hits)


def test_shell_examples_name_real_commands_and_options(cli):
    checked, bad = 0, []
    for f in doc_files():
        for line in shell_commands(f.read_text(encoding="utf-8")):
            checked += 1
            why = check_command(cli, line)
            if why:
                bad.append(f"{rel(f)}: {line[:100]}\n    -> {why}")
    assert checked > 30
    assert not bad, "documented commands the CLI does not accept:\n" + "\n".join(bad)


def test_command_check_catches_mistakes(cli):
    assert check_command(cli, "ebmctl --profile quick attack -m a.safetensors --eps 8/255") is None
    assert check_command(cli, "ebmctl train ebm --recipe midrun --updates 5  # a note") is None
    assert "no command 'frobnicate'" in check_command(cli, "ebmctl frobnicate")
    assert "no command 'frob'" in check_command(cli, "ebmctl train frob")
    assert "--bogus" in check_command(cli, "ebmctl attack --bogus 3")
    assert "requires an argument" in check_command(cli, "ebmctl attack --eps")


def test_results_tables_carry_their_measurement_header():
    bad = []
    for f in sorted(RESULTS.rglob("*.md")):
        for i, above in tables(f.read_text(encoding="utf-8")):
            header = next((ln for ln in reversed(above) if ln.strip()), "")
            if not MEASURED.match(header):
                bad.append(f"{rel(f)}:{i + 1}: table without a measurement header above it")
    assert not bad, ("put `> **Measured** · command: `...` · profile: ... · commit: `abc1234` · "
                     "device: CPU|GPU ... · precision: ... · date: YYYY-MM-DD` directly above "
                     "every table in docs/results/ (see docs/results/README.md):\n"
                     + "\n".join(bad))


def test_measured_header_format():
    ok = ("> **Measured** · command: `ebmctl quickstart` · profile: `quick` · commit: `b72effb` "
          "· device: CPU (2-core AMD EPYC, AVX2) · precision: fp32 · date: 2026-12-07")
    assert MEASURED.match(ok)
    assert not MEASURED.match(ok.replace("commit: `b72effb`", "commit: HEAD"))
    assert not MEASURED.match(ok.replace(" · date: 2026-12-07", ""))


def test_relative_links_resolve():
    bad = []
    for f in doc_files():
        for target in LINK.findall(prose(f.read_text(encoding="utf-8"))):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same page
            path = target.split("#", 1)[0]
            if not (f.parent / path).exists():
                bad.append(f"{rel(f)}: ({target})")
    assert not bad, "relative links to files that do not exist:\n" + "\n".join(bad)
