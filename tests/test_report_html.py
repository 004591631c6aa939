"""`ebmctl report RUN.json`: one self-contained HTML page with the report's headline numbers,
curves, images and sanity checks, and no external URL."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import ebmctl
from ebmctl.evaluate.plots import save_grid
from ebmctl.evaluate.report import format_accuracy
from ebmctl.testing import run_cli
from html_page import assert_self_contained, read_page


@pytest.fixture(scope="module")
def run_json(tmp_path_factory):
    """A real report from ebmctl.evaluate (tiny random model, PGD + FGSM, sanity checks), saved
    as JSON with an adversarial grid beside it, as `ebmctl attack` writes them."""
    d = tmp_path_factory.mktemp("rep")
    torch.manual_seed(0)  # test-only weight init
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    rep = ebmctl.evaluate(model, x, y, attacks=["pgd", "fgsm"], eps=8 / 255, steps=3,
                          step_size=2 / 255, batch_size=8)
    path = d / "attack-report.json"
    path.write_text(json.dumps(rep.to_json()))
    save_grid(x, d / "attack-report.undefended-adv.png")
    return path, rep


def test_report_page_is_self_contained_and_has_the_headline_numbers(run_json, tmp_path):
    path, rep = run_json
    out = tmp_path / "page.html"
    r = run_cli(["report", str(path), "-o", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    p = assert_self_contained(page)
    assert {"html", "table", "img", "h1"} <= set(p.tags)
    assert len(p.images) == 2  # the curves and the adversarial grid, inlined
    r0 = rep["results"]["undefended"]
    assert format_accuracy(r0["adversarial"], r0["adversarial_std"], r0["adversarial_ci"]) in page
    for a in r0["attacks"].values():
        assert format_accuracy(a["adversarial_mean"], a["adversarial_std"],
                               a["adversarial_ci"]) in page
    assert "eps = 0 control" in page and "8/255" in page
    assert all(c["check"] in p.text for c in rep["sanity"]["checks"])


def test_report_defaults_beside_the_json_and_keeps_outputs(run_json):
    path, _ = run_json
    r = run_cli(["report", str(path)])
    assert r.exit_code == 0, r.output
    assert path.with_suffix(".html").is_file()
    r = run_cli(["report", str(path)])  # never replaced silently
    assert r.exit_code == 8 and r.output.strip().startswith("Error:")


@pytest.mark.parametrize("content", [None, "not json", '{"rows": []}'])
def test_bad_report_inputs_are_one_line_errors(tmp_path, content):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    r = run_cli(["report", str(path)])
    assert r.exit_code != 0 and r.output.strip().startswith("Error:"), r.output
    assert len(r.output.strip().splitlines()) == 1


GALLERY_SETS = ["attack.n_images=4", "attack.batch_size=4", "attack.steps=2",
                "attack.eot_reps=1", "defense.steps=2", "defense.eot_reps=2",
                "attack.sanity=false", "run.device=cpu", "langevin.precision=fp32"]


@pytest.fixture(scope="module")
def attack_page(digits_artifacts, tmp_path_factory):
    """`ebmctl attack` on the digits artifacts, undefended and defended: its JSON and page."""
    clf, ebm = digits_artifacts
    out = tmp_path_factory.mktemp("att") / "attack-report.json"
    r = run_cli(["attack", "--profile", "quick", "-m", str(clf), "--ebm", str(ebm),
                 "--eps", "8/255", "-o", str(out)] + sum((["--set", s] for s in GALLERY_SETS), []))
    assert r.exit_code == 0, r.output
    return out, out.with_suffix(".html")


def test_attack_page_shows_a_gallery_per_model_with_the_purified_copies(attack_page):
    out, page_path = attack_page
    for label in ("undefended", "defended"):
        assert out.with_name(f"attack-report.{label}-gallery.png").stat().st_size > 1000
    p = read_page(page_path.read_text())
    assert len(p.images) == 3  # curves + one gallery per model, inlined
    assert "undefended: clean / adversarial / perturbation magnified" in p.text
    assert "defended: clean / adversarial / perturbation magnified / purified" in p.text


@pytest.mark.slow
def test_headless_chromium_renders_the_attack_page(attack_page, tmp_path):
    """The page as a browser shows it: a screenshot that is not blank (Debian's chromium)."""
    import shutil
    import subprocess

    import numpy as np
    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    _, page_path = attack_page
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,2400", page_path.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), r.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape[0] >= 1000
    assert pixels.var() > 100.0  # a blank (single-colour) page has variance 0
    # the images were decoded: some rows hold many dark pixels, as text alone never does
    assert (pixels < 100).mean(axis=1).max() > 0.2
