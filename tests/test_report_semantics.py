"""What a report's numbers mean: threat settings used as given, intervals, convergence flags,
sanity checks that can fail, and the ε = 0 control."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ebmctl.context import evaluation_settings
from ebmctl.defense import DefenseConfig
from ebmctl.errors import ConfigError
from ebmctl.evaluate.report import (
    format_table,
    make_attack,
    masking_verdict,
    report_notes,
    run_evaluation,
    summarise_attack,
)
from ebmctl.evaluate.results import AttackReport, SeedResult
from ebmctl.evaluate.stats import still_falling, wilson_interval
from ebmctl.profiles import resolve
from ebmctl.testing import run_cli


def test_wilson_interval_matches_a_hand_computation():
    # 148/200: p = 0.74, z = 1.96, z²/n = 0.019208 → centre 0.749604 / 1.019208 = 0.735477,
    # half-width 1.96·√(0.74·0.26/200 + 3.8416/160000) / 1.019208 = 0.060386
    lo, hi = wilson_interval(148, 200)
    assert lo == pytest.approx(0.675091, abs=1e-5) and hi == pytest.approx(0.795863, abs=1e-5)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)


def test_l2_step_size_is_used_as_given_or_rejected():
    cfg = resolve("quick", ["attack.norm=l2", "attack.eps_l2=0.8", "attack.step_size_l2=0.3"])
    assert make_attack(evaluation_settings(cfg), "bpda-eot", True).step_size == 0.3
    # the ℓ∞ step given for an ℓ2 attack is an error naming it, not a silent ε/4
    with pytest.raises(ConfigError, match="attack.step_size"):
        evaluation_settings(resolve("quick", ["attack.norm=l2", "attack.step_size=0.001"]))
    with pytest.raises(ConfigError, match="attack.eps_l2"):
        make_attack(evaluation_settings(resolve("quick", ["attack.eps_l2=2.0"])), "pgd", False)
    # nothing given: the documented default ε_l2/4
    l2 = evaluation_settings(resolve("quick", ["attack.norm=l2"]))
    assert make_attack(l2, "pgd", False).step_size == pytest.approx(0.5 / 4)


def test_other_norm_keys_are_refused_by_where_they_came_from_not_by_label(tmp_path):
    """Given on the command line under any flag's name, or by the profile file that chose the
    norm: refused. Left by a profile while the command line changed the norm: ignored."""
    base = resolve("quick", ["attack.norm=l2"])
    with pytest.raises(ConfigError, match="attack.eps does not apply"):
        evaluation_settings(base.with_overrides({"attack.eps": 0.1}, "--eps", chosen=True))
    # the label alone decides nothing: a value the code set is not the user's
    evaluation_settings(base.with_overrides({"attack.eps": 0.1}, "--eps"))
    profile = tmp_path / "l2.toml"
    profile.write_text('[attack]\nnorm = "l2"\neps = 0.1\n')
    with pytest.raises(ConfigError, match="attack.eps does not apply"):
        evaluation_settings(resolve(str(profile)))
    moved = resolve(str(profile), ["attack.norm=linf"])  # eps now applies: no conflict
    assert evaluation_settings(moved).attack.radius == 0.1
    linf = tmp_path / "linf.toml"
    linf.write_text('[attack]\neps_l2 = 0.7\n')  # a profile's l2 radius, the norm from --set
    assert evaluation_settings(resolve(str(linf), ["attack.norm=linf"])).attack.norm \
        == "linf"


def test_a_swept_value_changes_the_settings_as_the_profile_key_would():
    """``with_value`` (one sweep value) sets the section field, the record the report stores
    and hashes for --resume, the seeds and the settings given, exactly as the profile with the
    key given on the command line would; a key of another section or a bad value is refused
    before any work."""
    base = resolve("quick", ["attack.seeds=0"])
    settings = evaluation_settings(base)
    for key, value in [("attack.eps", "8/255"), ("defense.steps", 3), ("attack.seeds", "4,5"),
                       ("attack.energy_weight", 0.1), ("evaluate.eot_reps", 3)]:
        varied = settings.with_value(key, value)
        direct = evaluation_settings(base.with_overrides({key: value}, "--sweep", chosen=True))
        for name in ("attack", "defense", "langevin", "evaluate", "seeds", "given",
                     "resubmission_reps_given", "dtype", "seed"):
            assert getattr(varied, name) == getattr(direct, name), (key, name)
        assert varied.record.to_dict() == direct.record.to_dict(), key
    assert settings.record.to_dict()["defense"]["steps"] == base.section(DefenseConfig).steps
    with pytest.raises(ConfigError, match="run.seed is not an"):
        settings.with_value("run.seed", 3)
    with pytest.raises(ConfigError, match="defense.steps"):
        settings.with_value("defense.steps", -1)


def test_the_library_refuses_what_a_profile_would():
    from ebmctl.config import replace_checked
    from ebmctl.attacks.base import AttackConfig

    with pytest.raises(ConfigError, match="attack.eps.*<= 1"):
        replace_checked(AttackConfig(), eps=2.0)
    with pytest.raises(ConfigError, match="attack.norm"):
        replace_checked(AttackConfig(), norm="l1")
    assert replace_checked(AttackConfig(), seeds=[1, 2]).seeds == (1, 2)


def test_an_attack_option_no_attack_takes_is_rejected(digits_artifacts, tmp_path):
    clf, _ = digits_artifacts
    r = run_cli(["attack", "-p", "quick", "--model", str(clf), "--undefended-only",
                 "--set", "attack.square_p_init=0.5", "--n-images", "4",
                 "--out", str(tmp_path / "r.json")])
    assert r.exit_code != 0 and "attack.square_p_init" in r.output


def test_eps_follows_the_norm_chosen_by_a_profile_or_set(digits_artifacts, tmp_path):
    clf, _ = digits_artifacts
    out = tmp_path / "l2.json"
    r = run_cli(["attack", "-p", "quick", "--model", str(clf), "--undefended-only",
                 "--set", "attack.norm=l2", "--eps", "0.7", "--n-images", "4",
                 "--set", "attack.steps=1", "--set", "attack.sanity=false", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["threat"]["norm"] == "l2" and rep["threat"]["eps"] == 0.7
    assert rep["threat"]["step_size"] == pytest.approx(0.7 / 4)


class _Attack:
    description, per_step_curve, diagnostic = "", True, False

    def __init__(self, name: str, gradient: str):
        self.name, self.gradient = name, gradient

    def gradient_mode(self):
        return self.gradient


def _seed_result(natural: float, adversarial: float, curve: list[float]) -> SeedResult:
    """A seed's result with only its figures (no per-image rows)."""
    return SeedResult(seed=0, natural=natural, adversarial=adversarial, robust_by_step=[curve],
                      accuracy_curve=curve, natural_ok=[], robust_ok=[], per_image=[],
                      seconds=1.0, image_steps=0, chunks_reused=0, x_adv=torch.zeros(0))


def test_a_curve_still_falling_at_its_end_is_flagged_not_converged():
    assert still_falling([1.0, 0.8, 0.7, 0.7, 0.7, 0.69])
    assert not still_falling([1.0, 0.6, 0.5, 0.5, 0.5, 0.5])
    per_seed = [_seed_result(1.0, 0.4, [1.0, 0.8, 0.6, 0.5, 0.45, 0.4])]
    row = summarise_attack(_Attack("x", "bpda"), per_seed, 100)
    assert row.converged is False and row.adversarial.std is None
    assert row.adversarial.ci == [pytest.approx(0.3094, abs=1e-3),
                                  pytest.approx(0.4980, abs=1e-3)]
    report = {"results": {"defended": {"attacks": {"x": row.to_json()}, "converged": False,
                                       "n_seeds": 1, "n_images": 100}}}
    assert format_table(report)[0][-1] == "NOT converged"
    notes = report_notes(report)
    assert any("not converged" in n for n in notes) and any("n = 1" in n for n in notes)


def _images_result(adversarial: float, n: int = 100) -> SeedResult:
    """A seed's result on n images, all natural-correct, the first round(adversarial·n) robust
    (the verdicts compare per-image worst cases, so they need the per-image rows)."""
    k = round(adversarial * n)
    return SeedResult(seed=0, natural=1.0, adversarial=k / n, robust_by_step=[[1.0, k / n]],
                      accuracy_curve=[1.0, k / n], natural_ok=[True] * n,
                      robust_ok=[True] * k + [False] * (n - k), per_image=[], seconds=1.0,
                      image_steps=0, chunks_reused=0, x_adv=torch.zeros(n, 1))


def test_gradient_masking_is_suspected_when_a_transfer_attack_wins():
    def rows(transfer: float) -> dict:
        return {"bpda-eot": summarise_attack(_Attack("bpda-eot", "bpda"),
                                             [_images_result(0.6)], 100),
                "transfer": summarise_attack(_Attack("transfer", "classifier only"),
                                             [_images_result(transfer)], 100)}

    verdict = masking_verdict(rows(0.4), 0.02)
    assert verdict.suspected is True and verdict.attack == "transfer"
    assert (verdict.white_box, verdict.non_white_box) == (pytest.approx(0.6), 0.4)
    assert masking_verdict(rows(0.7), 0.02).suspected is False
    # within the tolerance is not suspected
    assert masking_verdict(rows(0.59), 0.02).suspected is False


def test_sanity_checks_can_fail_and_the_eps0_control_is_reported(digits_artifacts, tmp_path):
    clf, ebm = digits_artifacts
    sets = ["attack.n_images=8", "attack.batch_size=8", "attack.steps=2", "attack.eot_reps=2",
            "attack.restarts=1", "defense.steps=2", "defense.eot_reps=2", "attack.seeds=0",
            "attack.sanity_images=8", "run.device=cpu", "langevin.precision=fp32"]
    rep = run_evaluation(evaluation_settings(resolve("quick", sets)), clf, ebm, torch.device("cpu"),
                         tmp_path / "r.json")
    checks = {c.check: c for c in rep.sanity.checks}
    assert not any("uses H_def" in name for name in checks)  # the check that could not fail
    zero = next(c for n, c in checks.items() if n.startswith("undefended: eps = 0"))
    assert zero.passed and zero.figures["adversarial"] == zero.figures["natural"]
    mono = next(c for n, c in checks.items() if n.startswith("defended: accuracy does not rise"))
    rising = mono.figures["adversarial"]
    assert mono.figures["eps"][0] == 0.0 and len(rising) == 3
    assert mono.passed == all(b <= a + 0.02 for a, b in zip(rising, rising[1:]))
    assert any("transfer attack" in n for n in checks)
    control = rep.results["defended"].eps0_control
    assert control.inflation == pytest.approx(control.natural - control.adversarial)
    d = rep.results["defended"]
    assert d.per_image_robust == [int(v) for v in d.attacks["bpda-eot"].per_seed[0].robust_ok]
    assert isinstance(d.converged, bool) and d.n_images == 8
    lo, hi = d.adversarial.ci
    assert lo <= d.adversarial.mean <= hi and not math.isnan(lo)


def test_the_eps0_control_runs_on_the_first_control_images_and_says_so(digits_artifacts,
                                                                       tmp_path):
    from ebmctl.evaluate.report import format_table

    clf, ebm = digits_artifacts
    sets = ["attack.n_images=8", "attack.batch_size=8", "attack.steps=2", "attack.eot_reps=2",
            "attack.restarts=1", "defense.steps=2", "defense.eot_reps=2", "attack.seeds=0",
            "attack.sanity_images=4", "attack.control_images=3", "run.device=cpu",
            "langevin.precision=fp32"]
    rep = run_evaluation(evaluation_settings(resolve("quick", sets)), clf, ebm, torch.device("cpu"),
                         tmp_path / "r.json", undefended=False)
    control = rep.results["defended"].eps0_control
    assert control.n_images == 3 and len(control.per_image_robust) == 3
    assert rep.results["defended"].n_images == 8  # the headline keeps every image
    row = next(r for r in format_table(rep) if "eps = 0 control" in r[1])
    assert "first 3 images" in row[1]
    mono = next(c for c in rep.sanity.checks if "does not rise" in c.check)
    assert mono.figures["adversarial"][0] == sum(control.per_image_robust) / 3


def test_a_radius_of_whole_255ths_is_printed_as_such():
    from ebmctl.units import format_radius

    assert format_radius(8 / 255) == "8/255" and format_radius(2 / 255) == "2/255"
    assert format_radius(0.1) == "0.1" and format_radius(0.5) == "0.5"
    assert format_radius(0.0) == "0"


def test_the_returned_report_is_the_file_and_carries_the_images_apart(digits_artifacts,
                                                                        tmp_path):
    """run_evaluation returns the typed report whose JSON is the file; the adversarial images
    ride on typed fields (the worst case's is the first breaking attack's) and never reach
    the JSON."""
    clf, ebm = digits_artifacts
    sets = ["attack.n_images=4", "attack.batch_size=4", "attack.steps=1", "attack.eot_reps=1",
            "attack.restarts=1", "defense.steps=1", "defense.eot_reps=1", "attack.seeds=0,1",
            "attack.sanity=false", "run.device=cpu", "langevin.precision=fp32",
            "attack.undefended_method=pgd,fgsm"]
    out = tmp_path / "r.json"
    rep = run_evaluation(evaluation_settings(resolve("quick", sets)), clf, ebm,
                         torch.device("cpu"), out, defended=False)
    on_disk = json.loads(out.read_text())
    assert rep.to_json() == on_disk and AttackReport.from_json(on_disk) == rep
    assert "x_adv" not in out.read_text()
    row = rep.results["undefended"]
    assert on_disk["results"]["undefended"]["adversarial"] == row.adversarial.mean
    assert row.n_seeds == 2
    pgd, fgsm = row.attacks["pgd"].per_seed[-1], row.attacks["fgsm"].per_seed[-1]
    for i in range(4):
        first = pgd if not pgd.robust_ok[i] else fgsm
        assert torch.equal(row.x_adv[i], first.x_adv[i])
