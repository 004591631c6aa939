"""The install path of a third-party plugin, as the guide tells it: pip-install the example
package into this environment, see it in `ebmctl plugins`, and run the guide's commands on its
task. The package is uninstalled at the end."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ebmctl.plugins
from ebmctl.testing import run_cli
from guide import ROOT, guide_commands

EXAMPLE = ROOT / "examples" / "ebmctl-plugin-example"
DIST = "ebmctl-plugin-example"


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=300)


def _forget_plugin() -> None:
    for name in [m for m in sys.modules if m == "ebmctl_example" or
                 m.startswith("ebmctl_example.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    ebmctl.plugins.reset()


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """Install the example (a copy, so no build files land in the repository) with the guide's
    pip command, plus --no-deps --no-build-isolation because tests run offline."""
    (cmd,) = guide_commands("install")
    assert cmd == ["pip", "install", "examples/ebmctl-plugin-example"]
    src = tmp_path_factory.mktemp("pkg") / "ebmctl-plugin-example"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns(
        "tests", "__pycache__", "build", "*.egg-info", "conftest.py"))
    _pip("uninstall", "-y", DIST)  # a leftover from an interrupted run
    result = _pip(*cmd[1:-1], str(src), "--no-deps", "--no-build-isolation", "-q")
    assert result.returncode == 0, result.stderr[-2000:]
    _forget_plugin()
    try:
        yield
    finally:
        _pip("uninstall", "-y", DIST)
        _forget_plugin()


@pytest.mark.slow  # a fresh interpreter pays torch's import (~5-20 s); in-process is below
def test_installed_plugin_is_listed_in_a_fresh_process(installed_example, tmp_path):
    exe = Path(sys.executable).parent / "ebmctl"
    # run outside the repository so the example can only come from the installed package
    r = subprocess.run([str(exe), "plugins", "--json"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {p["plugin"]: p for p in json.loads(r.stdout)["plugins"]}
    row = rows["example"]
    assert (row["distribution"], row["version"], row["error"]) == (DIST, "0.1.0", None)
    assert row["registered"]["tasks"] == ["multilabel"]
    assert row["registered"]["datasets"] == ["digit-mosaic"]
    assert row["registered"]["models"] == ["mosaic-cnn"]
    assert row["registered"]["attacks"] == ["random-walk"]


def test_guide_smoke_commands_run_as_written(installed_example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = guide_commands("smoke")
    assert [c[:2] for c in commands[:3]] == [["ebmctl", "plugins"], ["ebmctl", "profiles"],
                                             ["ebmctl", "train"]]
    outputs = {}
    for cmd in commands:
        assert cmd[0] == "ebmctl"
        r = run_cli(cmd[1:])
        assert r.exit_code == 0, f"{' '.join(cmd)}\n{r.output[-3000:]}"
        outputs[cmd[1]] = r.stdout
    assert DIST in outputs["plugins"]
    rows = {p["plugin"]: p for p in json.loads(run_cli(["plugins", "--json"]).stdout)["plugins"]}
    assert (rows["example"]["distribution"], rows["example"]["version"]) == (DIST, "0.1.0")
    assert rows["example"]["registered"]["tasks"] == ["multilabel"]
    assert rows["example"]["error"] is None
    report = json.loads((tmp_path / "runs/smoke/attack.json").read_text())
    assert (report["task"], report["metric"], report["dataset"]) == ("multilabel", "F1",
                                                                     "digit-mosaic")
    assert report["n_images"] == 8
    assert set(report["results"]) == {"undefended", "defended"}
    assert report["config"]["multilabel"]["min_f1"] == 1.0  # the plugin's key is in the record
    assert (tmp_path / "runs/smoke/attack.png").exists()
    assert "ebmctl.kind: tagger" in outputs["inspect"]


@pytest.mark.slow
def test_guide_full_commands_run_as_written(installed_example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for cmd in guide_commands("full"):
        r = run_cli(cmd[1:])
        assert r.exit_code == 0, f"{' '.join(cmd)}\n{r.output[-3000:]}"
    for name in ("attack.json", "attack-random-walk.json"):
        report = json.loads((tmp_path / "runs/mosaic" / name).read_text())
        for res in report["results"].values():
            # the headline is the per-image worst case: the mean of the 0/1 list (one seed)
            assert res["n_seeds"] == 1 and res["adversarial"] == pytest.approx(
                sum(res["per_image_robust"]) / res["n_images"])
            assert res["adversarial"] <= res["natural"]
