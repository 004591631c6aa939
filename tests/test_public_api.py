"""Public API stability: plugins import only ebmctl.api (and ebmctl.testing), and the names
plugins rely on stay in ebmctl.api.__all__."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ebmctl.api as api

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {"ebmctl.api", "ebmctl.testing"}

# Names documented for plugin authors (docs/writing-a-plugin.md). Adding names to the API is
# fine; removing one of these breaks third-party plugins and must be a deliberate change here.
STABLE = {
    "hookimpl", "Task", "DatasetSpec", "DataRequest", "DatasetBundle", "Split", "ModelSpec",
    "Attack", "AttackOutcome", "IterativeAttack", "ascent_step", "project", "random_start",
    "make_generator", "derive_seed", "make_bundle", "split_indices", "load_image_folder",
    "adapt_images", "Defense", "EnergyModel", "TaskModel", "average_outputs", "Config",
    "EbmctlError", "ConfigError", "InputError", "PluginError", "ArtifactError",
    "save_artifact", "load_artifact", "atomic_path", "atomic_write_json",
}


def plugin_sources() -> list[Path]:
    """Every Python file of every built-in plugin (globbed, so new plugins are covered) and of
    the example plugin, tests included."""
    files = sorted(ROOT.glob("plugins/*/**/*.py")) + sorted(ROOT.glob("examples/*/**/*.py"))
    return [f for f in files if ".venv" not in f.parts and "build" not in f.parts]


def ebmctl_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of an ``ebmctl`` module in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "ebmctl":  # `from ebmctl import x` imports submodule or name x
                found += [(node.lineno, f"ebmctl.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return [(line, m) for line, m in found if m == "ebmctl" or m.startswith("ebmctl.")]


def test_plugin_sources_are_found():
    names = {p.relative_to(ROOT).parts[1] for p in plugin_sources()}
    assert "ebmctl_classification" in names and "ebmctl-plugin-example" in names


@pytest.mark.parametrize("path", plugin_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugin_imports_only_public_api(path):
    bad = [f"{path.relative_to(ROOT)}:{line} imports {m}"
           for line, m in ebmctl_imports(path) if m not in ALLOWED]
    assert not bad, "plugins may import only ebmctl.api / ebmctl.testing:\n" + "\n".join(bad)


def test_checker_catches_internal_imports(tmp_path):
    src = tmp_path / "p.py"
    src.write_text("import ebmctl.plugins\nfrom ebmctl import registry\nfrom ebmctl.api import Task\n"
                   "from ebmctl.defense import Defense\nimport torch\n")
    assert [m for _, m in ebmctl_imports(src)] == ["ebmctl.plugins", "ebmctl.registry",
                                                    "ebmctl.api", "ebmctl.defense"]


def test_public_names_exist_and_stay():
    missing = sorted(n for n in api.__all__ if not hasattr(api, n))
    assert not missing, f"ebmctl.api.__all__ lists names it does not define: {missing}"
    removed = sorted(STABLE - set(api.__all__))
    assert not removed, f"names plugins rely on were removed from ebmctl.api: {removed}"


def test_names_plugins_use_are_public():
    """A plugin's `from ebmctl.api import X` must name something in __all__, not an internal
    that ebmctl.api happens to have imported."""
    bad = []
    for path in plugin_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "ebmctl.api":
                bad += [f"{path.relative_to(ROOT)}: {a.name}" for a in node.names
                        if a.name not in api.__all__]
    assert not bad, "\n".join(bad)
