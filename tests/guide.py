"""Read the command blocks of docs/writing-a-plugin.md that tests run as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "writing-a-plugin.md"


def guide_block(tag: str) -> str:
    """The ```bash block right after ``<!-- guide-test: TAG -->`` in the guide."""
    m = re.search(rf"<!-- guide-test: {re.escape(tag)} -->\s*```bash\n(.*?)```", GUIDE.read_text(),
                  re.S)
    if m is None:
        raise AssertionError(f"{GUIDE} has no bash block marked guide-test: {tag}")
    return m.group(1)


def guide_commands(tag: str) -> list[list[str]]:
    """The block's commands as argument lists (backslash continuations joined)."""
    text = guide_block(tag).replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
