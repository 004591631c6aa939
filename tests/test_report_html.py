"""`ebmctl report RUN.json`: one self-contained HTML page with the report's headline numbers,
curves, images and sanity checks, and no external URL."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest
import torch
from torch import nn

import ebmctl
from ebmctl.evaluate.plots import save_grid
from ebmctl.evaluate.report import format_accuracy
from ebmctl.testing import run_cli


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.srcs, self.hrefs, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if "src" in a:
            self.srcs.append(a["src"])
        if "href" in a:
            self.hrefs.append(a["href"])

    def handle_data(self, data):
        self.text.append(data)


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
    path.write_text(json.dumps(rep))
    save_grid(x, d / "attack-report.undefended-adv.png")
    return path, rep


def test_report_page_is_self_contained_and_has_the_headline_numbers(run_json, tmp_path):
    path, rep = run_json
    out = tmp_path / "page.html"
    r = run_cli(["report", str(path), "-o", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    p = _Collect()
    p.feed(page)
    p.close()
    assert {"html", "table", "img", "h1"} <= set(p.tags)
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", page, re.I)  # nothing fetched
    assert p.srcs and all(s.startswith("data:image/png;base64,") for s in p.srcs)
    assert len(p.srcs) == 2 and not p.hrefs  # the curves and the adversarial grid, inlined
    r0 = rep["results"]["undefended"]
    assert format_accuracy(r0["adversarial"], r0["adversarial_std"], r0["adversarial_ci"]) in page
    for a in r0["attacks"].values():
        assert format_accuracy(a["adversarial_mean"], a["adversarial_std"],
                               a["adversarial_ci"]) in page
    assert "eps = 0 control" in page and "8/255" in page
    text = " ".join(p.text)
    assert all(c["check"] in text for c in rep["sanity"]["checks"])


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
