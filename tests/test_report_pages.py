"""The figures a new user reads: titled segmentation panels, the attack gallery (clean /
adversarial / magnified perturbation / purified), the curve's axis for rule-scored tasks, and the
HTML pages of `ebmctl ood` and `ebmctl lyapunov` (beside their JSON and via `ebmctl report`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ebmctl.evaluate import html as html_mod
from ebmctl.evaluate.results import AttackReport
from ebmctl.evaluate.plots import curve_axis_label, magnify_perturbation, save_gallery
from ebmctl.testing import run_cli
from html_page import assert_self_contained

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


# --- segmentation panels ----------------------------------------------------------------------

def _seg_preds(n=2, size=12):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g)
    y = torch.randint(0, 2, (n, size, size), generator=g)
    pred = torch.randint(0, 2, (n, size, size), generator=g)
    return x, y, pred


def test_segmentation_panels_title_every_tile_with_the_radius_as_k_over_255(tmp_path):
    from ebmctl_segmentation.report import write_panels

    x, y, pred = _seg_preds()
    preds = {"undefended": (pred, pred, x.clone(), None),
             "defended": (pred, pred, x.clone(), x.clone() * 0.5)}
    files, titles = write_panels(x, y, preds, tmp_path / "rep.json", 2,
                                 {"norm": "linf", "eps": 8 / 255})
    assert titles == ["image", "true mask", "clean prediction (undefended)",
                      "adversarial, eps = 8/255 (vs undefended)", "its prediction (undefended)",
                      "adversarial, eps = 8/255 (vs defended)",
                      "purified adversarial (1 replicate)", "defended prediction (mean of H)"]
    assert [f.rsplit("/", 1)[-1] for f in files] == ["rep.panel-000.png", "rep.panel-001.png"]
    from PIL import Image

    w, h = Image.open(files[0]).size
    assert w > 4 * h  # one row of eight tiles


def test_undefended_only_panels_drop_the_defended_tiles(tmp_path):
    from ebmctl_segmentation.report import write_panels

    x, y, pred = _seg_preds(1)
    _, titles = write_panels(x, y, {"undefended": (pred, pred, x, None)}, tmp_path / "r.json",
                             1, {"norm": "l2", "eps": 0.5})
    assert titles == ["image", "true mask", "clean prediction (undefended)",
                      "adversarial, eps = 0.5 (l2) (vs undefended)",
                      "its prediction (undefended)"]


def test_curve_axis_of_a_rule_scored_task_says_what_it_plots(monkeypatch):
    labels, ticks = [], []

    def capture(fig):
        labels.append(fig.axes[0].get_ylabel())
        fig.canvas.draw()
        ticks.extend(t for t in fig.axes[0].get_xticks() if 0 <= t <= 2)
        return b"png"

    monkeypatch.setattr(html_mod, "_fig_png", capture)
    rep = {"metric": "dice", "results": {"undefended": {"attacks": {
        "pgd": {"accuracy_curve": [1.0, 0.6, 0.5]}}}}}
    assert html_mod._curves_png(AttackReport.from_json(rep)) == b"png"
    # a 2-step curve: the step axis is ticked at whole steps only (no step 0.5)
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert "fraction of images not broken" in labels[0] and "Dice-ratio" in labels[0]
    assert "robust dice" not in labels[0]
    assert curve_axis_label("accuracy") == "robust accuracy"


# --- the attack gallery -----------------------------------------------------------------------

def test_the_gallery_shows_several_classes_even_when_the_images_come_sorted():
    from ebmctl.evaluate.plots import gallery_indices

    y = torch.tensor([0] * 6 + [1] * 6 + [2] * 6)  # sorted by class, as folder datasets are
    pick = gallery_indices(y, 8)
    assert len(pick) == 8 and pick == sorted(pick)
    assert sorted(y[pick].tolist()) == [0, 0, 0, 1, 1, 1, 2, 2]  # round-robin over classes
    assert gallery_indices(y, 8) == pick  # deterministic
    assert gallery_indices(torch.tensor([3, 3]), 8) == [0, 1]
    assert gallery_indices(torch.zeros(4, 2, 2, dtype=torch.long), 3) == [0, 1, 2]  # masks



def test_perturbation_is_magnified_so_plus_minus_eps_spans_black_to_white():
    x = torch.full((1, 1, 1, 3), 0.5)
    eps = 8 / 255
    x_adv = x + torch.tensor([-eps, 0.0, eps]).view(1, 1, 1, 3)
    img, how = magnify_perturbation(x, x_adv, "linf", eps)
    assert torch.allclose(img.flatten(), torch.tensor([0.0, 0.5, 1.0]), atol=1e-6)
    assert "2 eps" in how
    # l2: per-pixel values are tiny next to eps, so each image is scaled by its own peak
    img, _ = magnify_perturbation(x, x + torch.tensor([0.0, 0.01, -0.02]).view(1, 1, 1, 3),
                                  "l2", 1.0)
    assert torch.allclose(img.flatten(), torch.tensor([0.5, 0.75, 0.0]), atol=1e-6)


def test_gallery_rows(tmp_path):
    x = torch.rand(3, 1, 8, 8)
    rows = save_gallery(tmp_path / "g.png", x, (x + 0.03).clamp(0, 1), norm="linf",
                        eps=8 / 255, purified=x)
    assert rows[0] == "clean" and rows[1] == "adversarial (linf eps = 8/255)"
    assert rows[2].startswith("perturbation, magnified") and rows[3] == "purified adversarial"
    assert len(save_gallery(tmp_path / "u.png", x, x, norm="linf", eps=8 / 255)) == 3


def test_write_gallery_purifies_the_adversarials_of_a_defended_label(digits_artifacts, tmp_path):
    from ebmctl.defense import Defense
    from ebmctl.models import EnergyModel, TaskModel
    from ebmctl.evaluate.plots import write_gallery

    clf, ebm = digits_artifacts
    model, energy = TaskModel.load(clf, CPU), EnergyModel.load(ebm, CPU)
    x = torch.rand(5, 1, 8, 8)
    threat = {"norm": "linf", "eps": 8 / 255}
    rows = write_gallery(tmp_path / "d.png", "defended", x, x, Defense(model, energy, steps=2),
                         threat, (0, "t"), n=4)
    assert rows[-1] == "purified adversarial (1 replicate)" and len(rows) == 4
    rows = write_gallery(tmp_path / "u.png", "undefended", x, x, Defense(model), threat,
                         (0, "t"))
    assert len(rows) == 3 and (tmp_path / "u.png").stat().st_size > 1000


# --- ood ----------------------------------------------------------------------------------------

def _ood_ebm(tmp_path):
    from builders import DIGITS, random_ebm

    return random_ebm(tmp_path / "ebm.safetensors", data={**DIGITS, "dataset": "digits"},
                      temperature=0.5)


def test_roc_area_equals_the_reported_auroc():
    from ebmctl.ood import auroc

    g = np.random.default_rng(0)
    pos, neg = g.normal(1, 1, 40).round(1), g.normal(0, 1, 30).round(1)  # with ties
    fpr, tpr = html_mod.roc_curve(pos, neg)
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(pos, neg), abs=1e-12)


def test_ood_writes_a_page_with_histograms_roc_and_the_auroc_table(tmp_path):
    model = _ood_ebm(tmp_path)
    out = tmp_path / "ood.json"
    r = run_cli(["ood", "--ebm", model, "--ood", "uniform-noise", "--n-images", "30",
                 "--out", out])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    row = rep["out_of_distribution"]["uniform-noise"]
    assert len(rep["in_distribution"]["energies"]) == 30 and len(row["energies"]) == 30
    page = out.with_suffix(".html").read_text()
    p = assert_self_contained(page)
    assert len(p.images) == 2  # histograms and ROC curves
    assert f"{row['auroc']:.4f}" in page and f"{row['fpr_at_95_tpr']:.4f}" in page
    assert "ROC" in p.text
    again = tmp_path / "again.html"
    r = run_cli(["report", str(out), "-o", str(again)])
    assert r.exit_code == 0, r.output
    assert again.read_text() == page


# --- lyapunov -----------------------------------------------------------------------------------

def test_lyapunov_writes_a_page_with_the_exponent_plot_and_table(tmp_path):
    ebm = _ood_ebm(tmp_path)
    out = tmp_path / "ly.json"
    r = run_cli(["lyapunov", "--ebm", ebm, "--etas", "0.1,1", "--n-images", "2",
                 "--set", "lyapunov.burn_in=1", "--set", "lyapunov.steps=3",
                 "--set", "lyapunov.seeds=0", "--set", "lyapunov.separation_factors=1",
                 "--out", out])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    page = out.with_suffix(".html").read_text()
    p = assert_self_contained(page)
    assert len(p.images) == 1
    # the table: eta, then the mean exponent, one row per eta
    assert [cells[:2] for cells in p.tables[0].body] == [
        (f"{row['eta']:.4g}", f"{row['mean']:.3e}") for row in rep["per_eta"]]
    r = run_cli(["lyapunov", "--ebm", ebm, "--etas", "0.1", "--out", out])
    assert r.exit_code != 0 and "--force" in r.output  # the page is not replaced silently


def test_report_renders_a_forgetting_curves_json(tmp_path):
    curves = [{"k": k, "dist_common": 1.0 / (k + 1), "dist_independent": 1.0,
               "dist_clean_copies": 0.9, "memory": 1.0 / (k + 1), "agree_common": 0.5,
               "agree_independent": 0.5, "score_clean": 0.7, "score_adv": 0.2}
              for k in (0, 2, 5)]
    path = tmp_path / "ly.memory.json"
    path.write_text(json.dumps({"command": "lyapunov", "curves": curves, "n_images": 4,
                                "attack": {"attack": "pgd", "target": "task model"},
                                "energy_gap": {}, "ebm": "e.safetensors", "dataset": "digits"}))
    r = run_cli(["report", str(path)])
    assert r.exit_code == 0, r.output
    p = assert_self_contained(path.with_suffix(".html").read_text())
    assert len(p.images) == 1
    # the table: k, then dist_common = 1/(k+1), one row per curve point
    assert [cells[:2] for cells in p.tables[0].body] == [("0", "1.000"), ("2", "0.333"),
                                                         ("5", "0.167")]


def test_report_rejects_a_json_of_another_command(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"command": "synthesize", "samples": []}))
    r = run_cli(["report", str(path)])
    assert r.exit_code != 0 and r.output.strip().startswith("Error:")
    assert "ood" in r.output and len(r.output.strip().splitlines()) == 1
