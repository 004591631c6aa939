"""The plugin docs match the code: the hook reference is regenerated from the docstrings, and
the guide names only hooks and Task methods that exist."""

from __future__ import annotations

import importlib.util
import re

from ebmctl import hookspecs
from ebmctl.api import Task
from guide import GUIDE, ROOT, guide_commands


def _generator():
    spec = importlib.util.spec_from_file_location("gen_hook_reference",
                                                  ROOT / "tools" / "gen_hook_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hook_reference_is_up_to_date():
    gen = _generator()
    assert gen.REFERENCE.read_text() == gen.render(), \
        "docs/hook-reference.md is stale; run: .venv/bin/python tools/gen_hook_reference.py"


def test_reference_covers_every_hook_and_public_name():
    text = (ROOT / "docs" / "hook-reference.md").read_text()
    hooks = [n for n in vars(hookspecs) if n.startswith("ebmctl_")]
    assert hooks and all(f"### `{h}(" in text for h in hooks)
    import ebmctl.api as api

    assert all(f"| `{name}` |" in text for name in api.__all__)


def test_guide_names_real_hooks_and_task_methods():
    text = GUIDE.read_text()
    for hook in set(re.findall(r"\bebmctl_(?:register|profile)_[a-z_]+\b", text)):
        assert hasattr(hookspecs, hook), f"the guide names a hook that does not exist: {hook}"
    table = text.split("## The Task protocol", 1)[1].split("\n## ", 1)[0]
    methods = re.findall(r"^\| `([a-z_]+)\(", table, re.M)
    assert len(methods) >= 8
    for m in methods:
        assert callable(getattr(Task, m, None)), f"the guide's Task table names {m}()"


def test_guide_blocks_are_commands():
    assert guide_commands("install") == [["pip", "install", "examples/ebmctl-plugin-example"]]
    for tag in ("smoke", "full"):
        cmds = guide_commands(tag)
        assert cmds and all(c[0] == "ebmctl" for c in cmds)
