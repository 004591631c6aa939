"""References a reader can follow: the shipped files never cite the internal design document
("SPEC §N", "SPEC 1.6.3", "SPEC Eq.", ...), which users do not have, and every link into
docs/algorithms.md names a heading that exists there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALGORITHMS = ROOT / "docs" / "algorithms.md"
SHIPPED = ["ebmctl", "plugins", "profiles", "docs", "examples", "bench", "scripts", "tools",
           "README.md", "CHANGELOG.md"]
TEXT_SUFFIXES = {".py", ".md", ".toml", ".sh", ".txt", ".rst", ".cfg", ".ini", ".yaml", ".yml",
                 ".json", ".typed", ""}
SKIP_PARTS = {"__pycache__", ".egg-info", "build", "dist"}
# The internal document is cited as "SPEC" (any use of the word: "SPEC §4", "SPEC 7.5",
# "SPEC Eq. 2.3", "the SPEC's layout", "SPEC text"); nothing else in the project spells it so.
SPEC_WORD = re.compile(r"\bSPEC\b")
LINK = re.compile(r"algorithms\.md#([A-Za-z0-9_-]+)")


def shipped_files() -> list[Path]:
    files = []
    for name in SHIPPED:
        p = ROOT / name
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if (f.is_file() and f.suffix in TEXT_SUFFIXES
                        and not any(part in SKIP_PARTS or part.endswith(".egg-info")
                                    for part in f.relative_to(ROOT).parts)):
                    files.append(f)
    return files


def read(f: Path) -> str:
    try:
        return f.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ""


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces → '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors() -> list[str]:
    text = re.sub(r"```.*?```", "", ALGORITHMS.read_text(encoding="utf-8"), flags=re.S)
    return [slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)]


def test_slug_matches_github():
    assert slug("Alg. 1: attack evaluation") == "alg-1-attack-evaluation"
    assert slug("Purification and the EOT defense") == "purification-and-the-eot-defense"
    assert slug("APGD") == "apgd"


def test_no_internal_spec_references():
    hits = []
    for f in shipped_files():
        for i, line in enumerate(read(f).splitlines(), 1):
            if SPEC_WORD.search(line):
                hits.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()[:90]}")
    assert not hits, ("cite the thesis, the paper or a section of docs/algorithms.md instead "
                      "of the internal SPEC:\n" + "\n".join(hits))


def test_algorithms_doc_headings_are_unique():
    found = anchors()
    assert len(found) > 20
    dupes = sorted({a for a in found if found.count(a) > 1})
    assert not dupes, f"docs/algorithms.md has repeated headings (ambiguous anchors): {dupes}"


def test_algorithm_links_resolve():
    known = set(anchors())
    bad = []
    files = shipped_files() + sorted((ROOT / "tests").glob("*.py"))
    for f in files:
        text = read(f)
        for m in LINK.finditer(text):
            if m.group(1) not in known:
                line = text.count("\n", 0, m.start()) + 1
                bad.append(f"{f.relative_to(ROOT)}:{line}: #{m.group(1)}")
        if f == ALGORITHMS:
            for m in re.finditer(r"\]\(#([A-Za-z0-9_-]+)\)", text):
                if m.group(1) not in known:
                    bad.append(f"docs/algorithms.md: internal link #{m.group(1)}")
    assert not bad, ("links to headings that docs/algorithms.md does not have:\n"
                     + "\n".join(bad))


def test_code_links_to_algorithms_doc():
    """The replacement is real: the code points readers at the document."""
    linked = [f for f in shipped_files() if f.suffix == ".py" and LINK.search(read(f))]
    assert len(linked) >= 10
