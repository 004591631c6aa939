"""`ebmctl report RUN.json`: one self-contained HTML page with the report's headline numbers,
curves, images and sanity checks, and no external URL."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import ebmctl
from ebmctl.evaluate.plots import save_grid
from ebmctl.evaluate.results import AttackReport
from ebmctl.evaluate.tables import WORST_CASE, format_accuracy, result_rows
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
    r0 = rep.results["undefended"]
    assert format_accuracy(r0.adversarial.mean, r0.adversarial.std, r0.adversarial.ci) in page
    for a in r0.attacks.values():
        assert format_accuracy(a.adversarial.mean, a.adversarial.std, a.adversarial.ci) in page
    assert "eps = 0 control" in page and "8/255" in page
    assert all(c.check in p.text for c in rep.sanity.checks)


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


def _page_rows(page: str) -> tuple[list[tuple], list[str]]:
    """The body rows of the headline table (inside ``<div class="results">``) and each row's
    class."""
    rows = [r for r in read_page(page).table("results").rows if not r.header]
    return [r.cells for r in rows], [r.cls for r in rows]


def test_the_page_and_the_terminal_show_the_same_rows(run_json, tmp_path):
    """One source of rows: the page's headline table is result_rows, also where the page's own
    renderer once differed (one attack: no worst-case row; a diagnostic run says so)."""
    from ebmctl.evaluate.html import render_attack

    path, rep = run_json
    d = json.loads(path.read_text())
    rows, classes = _page_rows(render_attack(d, path))
    assert rows == [tuple(r) for r in result_rows(rep)]
    assert [c == "headline" for c in classes] == [r[1] == WORST_CASE for r in rows]
    one = json.loads(path.read_text())
    und = one["results"]["undefended"]
    und["attacks"] = {"pgd": {**und["attacks"]["pgd"], "diagnostic": True}}
    rows, classes = _page_rows(render_attack(one, path))
    assert rows == [tuple(r) for r in result_rows(AttackReport.from_json(one))]
    assert not any(r[1] == WORST_CASE for r in rows)
    assert rows[0][1] == "pgd (DIAGNOSTIC: defender noise fixed)" and classes[0] == "headline"


def test_a_report_file_reads_back_into_the_records_it_was_written_from(run_json):
    path, rep = run_json
    d = json.loads(path.read_text())
    back = AttackReport.from_json(d)
    assert back.to_json() == d
    r = back.results["undefended"]
    assert r.adversarial.mean == rep.results["undefended"].adversarial.mean
    assert r.attacks["pgd"].per_seed[0].x_adv is None  # images are never serialised
    assert r.eps0_control.adversarial_ci == rep.results["undefended"].eps0_control.adversarial_ci


@pytest.mark.parametrize("name", ["pgd-eps0.1-at-s0", "pgd-eps0.1-nat-s0"])
def test_committed_reports_still_render(name, tmp_path):
    """Reports under docs/ written by earlier versions load into records and render."""
    from pathlib import Path

    src = Path(__file__).parent.parent / "docs" / "adversarial-training" / f"{name}.json"
    d = json.loads(src.read_text())
    assert AttackReport.from_json(d).to_json() == d
    out = tmp_path / "page.html"
    r = run_cli(["report", str(src), "-o", str(out)])
    assert r.exit_code == 0, r.output
    rows, _ = _page_rows(out.read_text())
    assert rows == [tuple(r) for r in result_rows(d)]


#: appended to a copy of the page: once loaded, the DOM records how many images decoded
_PROBE = ("<script>window.addEventListener('load', () => {document.body.dataset.decoded = "
          "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length;"
          "document.body.dataset.images = document.images.length;});</script>")


@pytest.mark.slow
def test_headless_chromium_shows_the_headline_table_and_every_figure(attack_page, tmp_path):
    """The page as a browser builds it (``chromium --headless --dump-dom``): the headline
    table holds the report's rows, and every figure on the page decoded."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    out, page_path = attack_page
    page = page_path.read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", _PROBE + "</body>"))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", probed.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    dom = r.stdout
    assert "<table" in dom, r.stderr[-2000:]
    rows, _ = _page_rows(dom)
    assert rows == [tuple(x) for x in result_rows(json.loads(out.read_text()))]
    figures = len(read_page(page).images)
    assert figures == 3  # the curves and one gallery per model
    assert f'data-images="{figures}"' in dom and f'data-decoded="{figures}"' in dom, dom[-500:]
