"""`ebmctl compare`: several evaluations on one page (robust accuracy against ε), from
undefended `attack --sweep` reports, single attack reports and synthetic defended sweeps; and
the refusals (different tasks or norms, a sweep over another key)."""

from __future__ import annotations

import copy
import json

import pytest

from ebmctl.errors import InputError
from ebmctl.evaluate.compare import WORST, build_comparison
from ebmctl.testing import run_cli
from html_page import assert_self_contained

FAST = ["--set", "attack.steps=5", "--set", "attack.n_images=20", "--set",
        "attack.batch_size=20", "--set", "attack.restarts=1", "--set", "attack.sanity=false"]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Two tiny digits classifiers (natural, fgsm-rs) and, for each, an undefended ℓ∞ sweep
    with PGD, APGD-CE and APGD-DLR (worst case per image) over two seeds, plus an ℓ2 sweep."""
    d = tmp_path_factory.mktemp("compare")
    out = {}
    for name, sets in (("nat", []), ("at", ["--set", "adversarial.method=fgsm-rs",
                                             "--set", "adversarial.eps=0.1",
                                             "--set", "adversarial.eval_images=50"])):
        model = d / f"{name}.safetensors"
        r = run_cli(["train", "classifier", "--set", "model.epochs=2", "--set", "model.width=8",
                     *sets, "--out", str(model)])
        assert r.exit_code == 0, r.output
        r = run_cli(["attack", "--model", str(model), "--undefended-only", *FAST,
                     "--set", "attack.undefended_method=pgd,apgd-ce,apgd-dlr",
                     "--set", "attack.step_size=0.02", "--seeds", "0,1",
                     "--sweep", "attack.eps=0,0.05,0.15", "--out", str(d / f"{name}.json")])
        assert r.exit_code == 0, r.output
        out[name] = d / f"{name}.json"
    r = run_cli(["attack", "--model", str(d / "nat.safetensors"), "--undefended-only", *FAST,
                 "--norm", "l2", "--sweep", "attack.eps_l2=0.5,1.0",
                 "--out", str(d / "nat-l2.json")])
    assert r.exit_code == 0, r.output
    out["nat-l2"] = d / "nat-l2.json"
    out["dir"] = d
    return out


def test_undefended_sweep_records_what_compare_needs(sweeps):
    rep = json.loads(sweeps["nat"].read_text())
    assert rep["label"] == "undefended" and rep["task"] == "classification"
    assert rep["model"].endswith("nat.safetensors") and rep["values"] == [0, 0.05, 0.15]
    row = rep["rows"][0]
    assert set(row["attacks"]) == {"pgd", "apgd-ce", "apgd-dlr"}
    # eps = 0 moves nothing: robust = natural; the worst case is no better than any attack
    assert row["adversarial"] == pytest.approx(row["natural"])
    for r in rep["rows"]:
        assert all(r["adversarial"] <= a["adversarial"] + 1e-9 for a in r["attacks"].values())


def test_compare_page_holds_every_reports_curve(sweeps, tmp_path):
    page = tmp_path / "cmp.html"
    r = run_cli(["compare", str(sweeps["nat"]), str(sweeps["at"]), "--names",
                 "natural,fgsm-rs", "--out", str(page)])
    assert r.exit_code == 0, r.output
    comparison = json.loads(page.with_suffix(".json").read_text())
    assert comparison["norm"] == "linf" and comparison["eps"] == [0, 0.05, 0.15]
    heads = [ln for ln in comparison["lines"] if ln["headline"]]
    assert {(ln["model"], ln["attack"]) for ln in heads} == {("natural", WORST),
                                                            ("fgsm-rs", WORST)}
    # one line per model x defense x attack: three attacks and the worst case, per model
    assert len(comparison["lines"]) == 8
    src = {"natural": json.loads(sweeps["nat"].read_text()),
           "fgsm-rs": json.loads(sweeps["at"].read_text())}
    for ln in heads:
        assert [q["adversarial"] for q in ln["points"]] == pytest.approx(
            [row["adversarial"] for row in src[ln["model"]]["rows"]])
        for q in ln["points"]:
            lo, hi = q["adversarial_ci"]
            assert lo <= q["adversarial"] <= hi and q["n_seeds"] == 2
    shown = assert_self_contained(page.read_text())
    assert len(shown.images) == 1  # the curves
    # the table: a header, then the 8 lines
    (table,) = shown.tables
    assert len(table.rows) == 1 + 8 and table.rows[0].header and len(table.body) == 8
    assert "natural" in shown.text and "fgsm-rs" in shown.text
    assert page.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # the terminal table too
    assert "fgsm-rs" in r.stdout and "eps=0.15" in r.stdout
    # an existing page is not overwritten without --force
    again = run_cli(["compare", str(sweeps["nat"]), "--out", str(page)])
    assert again.exit_code != 0 and "--force" in again.stderr


def test_single_attack_reports_give_points(sweeps, tmp_path):
    single = sweeps["dir"] / "nat.attack.eps=0.05.json"  # the sweep's own per-value report
    c = build_comparison([single])
    (line,) = [ln for ln in c["lines"] if ln["headline"]]
    assert line["attack"] == WORST and [q["eps"] for q in line["points"]] == [0.05]


def test_compare_refuses_different_norms_naming_the_reports(sweeps, tmp_path):
    r = run_cli(["compare", str(sweeps["nat"]), str(sweeps["nat-l2"]), "--out",
                 str(tmp_path / "x.html")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1
    assert "norm" in err and "nat.json" in err and "nat-l2.json" in err
    assert "linf" in err and "l2" in err
    assert not (tmp_path / "x.html").exists()


def test_compare_refuses_different_tasks_naming_them(sweeps, tmp_path):
    other = json.loads(sweeps["nat"].read_text())
    other["task"] = "segmentation"
    seg = tmp_path / "seg.json"
    seg.write_text(json.dumps(other))
    r = run_cli(["compare", str(sweeps["nat"]), str(seg), "--out", str(tmp_path / "x.html")])
    assert r.exit_code != 0
    assert "task" in r.stderr and "segmentation" in r.stderr and "seg.json" in r.stderr
    assert "classification" in r.stderr and "nat.json" in r.stderr


def test_compare_overlays_a_defended_sweep_and_refuses_other_keys(sweeps, tmp_path):
    base = json.loads(sweeps["nat"].read_text())
    defended = copy.deepcopy(base)
    defended.update(label="defended", defense={"steps": 100, "eot_reps": 32,
                                                "ebm": "runs/digits-ebm.safetensors"})
    for row in defended["rows"]:
        row["attacks"] = {"bpda-eot": row["attacks"]["pgd"] | {"converged": False}}
    path = tmp_path / "def.json"
    path.write_text(json.dumps(defended))
    c = build_comparison([sweeps["nat"], path])
    lines = {(ln["defense"], ln["attack"]): ln for ln in c["lines"]}
    key = ("defended (digits-ebm, K_def=100, H_def=32)", "bpda-eot")
    assert lines[key]["headline"]  # its only attack is its headline
    assert all(q["converged"] is False for q in lines[key]["points"])
    other = copy.deepcopy(base)
    other["key"] = "defense.steps"
    bad = tmp_path / "steps.json"
    bad.write_text(json.dumps(other))
    with pytest.raises(InputError, match="defense.steps"):
        build_comparison([bad])
    with pytest.raises(InputError, match="not found"):
        build_comparison([tmp_path / "missing.json"])


def test_sweeping_the_other_norms_radius_is_refused(sweeps):
    r = run_cli(["attack", "--model", str(sweeps["dir"] / "nat.safetensors"),
                 "--undefended-only", *FAST, "--norm", "l2", "--sweep", "attack.eps=0.1,0.2",
                 "--out", str(sweeps["dir"] / "bad.json")])
    assert r.exit_code != 0
    assert "attack.eps" in r.stderr and "attack.eps_l2" in r.stderr


def test_a_resumed_sweep_rebuilds_the_values_it_finished_without_attacking(sweeps, tmp_path,
                                                                           monkeypatch):
    """A sweep killed while its second value runs, started again with --resume, rebuilds the
    first value from its parts (no attack runs for it, same figures) and attacks only the
    second; once the sweep is written no parts folder is left."""
    from ebmctl.evaluate import attack_eval
    from ebmctl.evaluate import report as report_mod

    out = tmp_path / "s.json"
    args = ["attack", "--model", str(sweeps["dir"] / "nat.safetensors"), "--undefended-only",
            *FAST, "--sweep", "attack.eps=0.05,0.15", "--out", str(out)]
    saved = []
    real_save, real_eval = attack_eval._save_part, report_mod.run_evaluation
    monkeypatch.setattr(attack_eval, "_save_part",
                        lambda *a, **k: (saved.append(a[0]), real_save(*a, **k)))

    def killed_on_the_second_value(settings, *a, **k):
        if settings.attack.eps == 0.15:
            raise KeyboardInterrupt
        return real_eval(settings, *a, **k)

    monkeypatch.setattr(report_mod, "run_evaluation", killed_on_the_second_value)
    assert run_cli(args).exit_code != 0 and not out.exists()
    first = json.loads((tmp_path / "s.attack.eps=0.05.json").read_text())
    per_value = len(saved)
    assert per_value > 0 and (tmp_path / "s.attack.eps=0.05.parts").is_dir()
    monkeypatch.setattr(report_mod, "run_evaluation", real_eval)
    saved.clear()
    r = run_cli([*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert len(saved) == per_value  # the second value's attacks only
    assert all("eps=0.15" in str(p) for p in saved)
    again = json.loads((tmp_path / "s.attack.eps=0.05.json").read_text())
    assert again["results"]["undefended"]["adversarial"] == \
        first["results"]["undefended"]["adversarial"]
    assert not list(tmp_path.glob("*.parts"))
