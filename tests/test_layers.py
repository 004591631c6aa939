"""One-way layers (docs/architecture.md): every import inside ebmctl/ points down or sideways,
never up, and no two modules import each other, however indirectly.

    interface   cli, commands/, torchrun, api, testing
    workflows   evaluate/, training/, dynamics/ (and context, bench, ood, synthesis)
    core        attacks/, defense, sampling/, models (and nn/, images, data, importers)
    foundation  config, artifacts, units, seeds (and errors, plugins, profiles, ...)

The imports are read from the source with ``ast``: function-level (lazy) imports and imports
under ``if TYPE_CHECKING:`` included. A type-only import never runs, but it is a dependence all
the same: a circle hidden behind ``TYPE_CHECKING`` surfaces as soon as someone moves one of the
two modules or a type checker resolves the names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ebmctl"

FOUNDATION, CORE, WORKFLOWS, INTERFACE = 0, 1, 2, 3
NAMES = {FOUNDATION: "foundation", CORE: "core", WORKFLOWS: "workflows", INTERFACE: "interface"}

#: Module (or package: it covers its submodules) → layer. The longest matching name wins, and a
#: module that matches nothing fails the test, so every new module is placed on purpose.
LAYERS = {
    # interface: what a user or a plugin calls
    "ebmctl.cli": INTERFACE,
    "ebmctl.commands": INTERFACE,
    "ebmctl.torchrun": INTERFACE,
    "ebmctl.distributed.__main__": INTERFACE,  # `python -m ebmctl.distributed`, the launcher
    "ebmctl.api": INTERFACE,
    "ebmctl.testing": INTERFACE,
    # workflows: whole runs built from the core
    "ebmctl.evaluate": WORKFLOWS,
    "ebmctl.training": WORKFLOWS,
    "ebmctl.dynamics": WORKFLOWS,
    "ebmctl.context": WORKFLOWS,
    "ebmctl.bench": WORKFLOWS,
    "ebmctl.ood": WORKFLOWS,
    "ebmctl.synthesis": WORKFLOWS,
    # the built-in plugin registers core pieces and the sections of core and workflows alike
    "ebmctl.builtin": WORKFLOWS,
    # core: the algorithms and the models they run on
    "ebmctl.attacks": CORE,
    "ebmctl.defense": CORE,
    "ebmctl.purifiers": CORE,
    "ebmctl.sampling": CORE,
    "ebmctl.models": CORE,
    "ebmctl.architectures": CORE,
    "ebmctl.nn": CORE,
    "ebmctl.defended": CORE,
    "ebmctl.images": CORE,
    "ebmctl.data_utils": CORE,
    "ebmctl.importers": CORE,
    # foundation: settings, files, units, seeds and the plugin machinery
    "ebmctl": FOUNDATION,  # the package itself (__version__)
    "ebmctl.config": FOUNDATION,
    "ebmctl.profiles": FOUNDATION,
    "ebmctl.plugins": FOUNDATION,
    "ebmctl.hookspecs": FOUNDATION,
    "ebmctl.registry": FOUNDATION,
    "ebmctl.contracts": FOUNDATION,
    "ebmctl.artifacts": FOUNDATION,
    "ebmctl.units": FOUNDATION,
    "ebmctl.seeds": FOUNDATION,
    "ebmctl.errors": FOUNDATION,
    "ebmctl.device": FOUNDATION,
    "ebmctl.console": FOUNDATION,
    "ebmctl.shipped": FOUNDATION,
    "ebmctl.openmp_policy": FOUNDATION,
    "ebmctl.distributed": FOUNDATION,
}

#: (importer, imported) pairs allowed to break the rules, each with its reason. Empty: keep it so.
EXEMPT: dict[tuple[str, str], str] = {}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def layer_of(module: str) -> int | None:
    name = module
    while name:
        if name in LAYERS:
            return LAYERS[name]
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The ebmctl modules ``module`` imports anywhere in its source, ``TYPE_CHECKING`` blocks
    and function bodies included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(owner(a.name) for a in node.names if a.name.split(".")[0] == "ebmctl")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ebmctl":
                continue
            for alias in node.names:  # `from ebmctl.dynamics import report` imports a module
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else owner(target))
    found.discard(None)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in modules() if layer_of(m) is None)
    assert not unplaced, f"add these modules to LAYERS in {__file__}: {unplaced}"


def test_no_module_imports_a_higher_layer():
    upward = []
    for module, targets in import_graph().items():
        for target in sorted(targets):
            if (module, target) in EXEMPT:
                continue
            mine, theirs = layer_of(module), layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{module} ({NAMES[mine]}) imports {target} ({NAMES[theirs]})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other (size > 1), plus any
    module that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_no_import_cycles():
    graph = {m: {t for t in ts if (m, t) not in EXEMPT} for m, ts in import_graph().items()}
    cycles = strongly_connected(graph)
    assert not cycles, "modules that import each other: " + "; ".join(map(str, cycles))


@pytest.mark.parametrize("source,expected", [
    ("from ebmctl.cli import run\n", {"ebmctl.cli"}),
    ("def f():\n    from ebmctl.commands import attack\n", {"ebmctl.commands.attack"}),
    ("import ebmctl.dynamics.report as ly\n", {"ebmctl.dynamics.report"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ebmctl.cli import run\n",
     {"ebmctl.cli"}),
    ("import typing\nif typing.TYPE_CHECKING:\n    from ebmctl.defense import Defense\n",
     {"ebmctl.defense"}),
    ("from . import report\n", {"ebmctl.evaluate.report"}),
])
def test_the_walker_sees_lazy_and_type_only_imports(tmp_path, source, expected):
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert imports_of("ebmctl.evaluate.probe", path, modules()) == expected


def test_an_upward_import_is_caught():
    graph = {"ebmctl.units": {"ebmctl.cli"}, "ebmctl.cli": {"ebmctl.units"}}
    assert strongly_connected(graph) == [["ebmctl.cli", "ebmctl.units"]]
    assert layer_of("ebmctl.units") < layer_of("ebmctl.cli")
    assert layer_of("ebmctl.commands.attack") == INTERFACE
    assert layer_of("ebmctl.distributed.__main__") == INTERFACE
    assert layer_of("ebmctl.distributed") == FOUNDATION


def test_every_package_is_installed():
    """pyproject.toml lists the packages by name, so a new subpackage of ebmctl/ missing there
    works from the source tree but is absent from the installed wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT.parent / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    packages = {m for m, p in modules().items() if p.name == "__init__.py"}
    assert not packages - listed, f"add to [tool.setuptools] packages: {sorted(packages - listed)}"
