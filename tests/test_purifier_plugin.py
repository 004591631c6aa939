"""A third-party purifier end to end, as the guide tells it: pip-install
examples/ebmctl-purifier-example into this environment, see its purifier in `ebmctl plugins`,
and attack a classifier defended by it with `ebmctl attack --purifier`. The package is
uninstalled at the end."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys

import pytest

import ebmctl.plugins
from ebmctl.testing import run_cli
from tiny_attack import set_args
from guide import ROOT, guide_commands

EXAMPLE = ROOT / "examples" / "ebmctl-purifier-example"
DIST = "ebmctl-purifier-example"


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300
    )


def _forget_plugin() -> None:
    for name in [m for m in sys.modules if m.startswith("ebmctl_resize_pad")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    ebmctl.plugins.reset()


@pytest.fixture(scope="module")
def installed_purifier(tmp_path_factory):
    """The example installed with the guide's pip command (a copy, so no build files land in
    the repository; --no-deps --no-build-isolation because tests run offline)."""
    (cmd,) = guide_commands("install-purifier")
    assert cmd == ["pip", "install", "examples/ebmctl-purifier-example"]
    src = tmp_path_factory.mktemp("pkg") / DIST
    shutil.copytree(
        EXAMPLE, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    )
    _pip("uninstall", "-y", DIST)  # a leftover from an interrupted run
    result = _pip(*cmd[1:-1], str(src), "--no-deps", "--no-build-isolation", "-q")
    assert result.returncode == 0, result.stderr[-2000:]
    _forget_plugin()
    try:
        yield
    finally:
        _pip("uninstall", "-y", DIST)
        _forget_plugin()


def test_the_installed_purifier_is_listed_and_attacked(
    installed_purifier, digits_artifacts, tmp_path
):
    listed = json.loads(run_cli(["plugins", "--json"]).stdout)
    rows = {p["plugin"]: p for p in listed["plugins"]}
    assert (rows["resize-pad"]["distribution"], rows["resize-pad"]["error"]) == (DIST, None)
    assert rows["resize-pad"]["registered"]["purifiers"] == ["random-resize-pad"]
    purifier = {p["name"]: p for p in listed["purifiers"]}["random-resize-pad"]
    assert (purifier["stochastic"], purifier["differentiable"]) == (True, True)

    clf, _ = digits_artifacts
    out = tmp_path / "r.json"
    r = run_cli(
        [
            "attack",
            "--profile",
            "quick",
            "-m",
            clf,
            "--purifier",
            "random-resize-pad:max_pad=2",
            "--method",
            "bpda-eot,full-eot,transfer",
            "-o",
            out,
            *set_args(),
        ]
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["defense"]["purifier"]["name"] == "random-resize-pad"
    assert rep["defense"]["purifier"]["settings"] == {"max_pad": 2}
    defended = rep["results"]["defended"]
    assert {n: a["gradient"] for n, a in defended["attacks"].items()} == {
        "bpda-eot": "bpda",
        "full-eot": "full",
        "transfer": "classifier only",
    }
    # one seed: the headline is the per-image worst case over the three attacks
    robust = defended["per_image_robust"]
    assert defended["adversarial"] == pytest.approx(sum(robust) / len(robust))
    assert all(defended["adversarial"] <= a["adversarial_mean"]
               and a["natural_mean"] == pytest.approx(defended["natural"])
               for a in defended["attacks"].values())
    bad = run_cli(
        [
            "attack",
            "--profile",
            "quick",
            "-m",
            clf,
            "--purifier",
            "random-resize-pad:max_pad=0",
            "-o",
            tmp_path / "bad.json",
        ]
    )
    assert bad.exit_code != 0 and "max_pad must be >= 1" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
