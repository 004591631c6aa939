"""The evaluation runner: reports, sanity checks, resume, adversarial export, plugins, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from ebmctl.context import evaluation_settings
from ebmctl.api import Attack, AttackOutcome, hookimpl
from ebmctl.evaluate import attack_eval
from ebmctl.evaluate.attack_eval import worst_case_curve
from ebmctl.evaluate.report import run_evaluation
from ebmctl.plugins import get_registries
from ebmctl.profiles import resolve
from ebmctl.testing import plugin_registered, run_cli


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


SETS = ["attack.n_images=8", "attack.batch_size=4", "attack.steps=2", "attack.eot_reps=2",
        "attack.restarts=2", "defense.steps=3", "defense.eot_reps=2", "attack.seeds=0,1",
        "attack.sanity_images=4", "run.device=cpu", "langevin.precision=fp32"]


def _strip(obj):
    """Drop timing and bookkeeping that legitimately differ between runs."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items()
                if k not in ("seconds", "chunks_reused", "environment", "memory")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def test_report_has_seeds_curves_per_image_outcomes_and_sanity(digits_artifacts, tmp_path):
    clf, ebm = digits_artifacts
    cfg = resolve("quick", SETS)
    out = tmp_path / "r.json"
    rep = run_evaluation(evaluation_settings(cfg), clf, ebm, torch.device("cpu"), out,
                         method="bpda-eot,transfer", save_adversarials=True)
    on_disk = json.loads(out.read_text())
    assert on_disk["results"]["defended"]["attack"] in ("bpda-eot", "transfer")
    d = rep.results["defended"]
    assert set(d.attacks) == {"bpda-eot", "transfer"}
    # the headline is the per-image worst case over both attacks, mean over the two seeds
    worst = [sum(all(v) for v in zip(*(a.per_seed[s].robust_ok
                                       for a in d.attacks.values()))) / 8 for s in range(2)]
    assert d.adversarial.mean == pytest.approx(sum(worst) / 2)
    a = d.attacks["bpda-eot"]
    assert len(a.per_seed) == 2 and len(a.accuracy_curve) == 3
    assert a.image_steps > 0 and len(a.per_seed[0].per_image) == 8
    assert a.accuracy_curve[-1] == pytest.approx(a.adversarial.mean)
    names = [c.check for c in rep.sanity.checks]
    assert any("transfer attack" in n for n in names) and any("eps = 0" in n for n in names)
    assert out.with_suffix(".png").exists()
    from safetensors.torch import load_file

    adv = load_file(str(out.with_suffix(".adv.safetensors")))
    assert adv["defended.bpda-eot.seed1"].shape == (8, 1, 8, 8)
    assert not out.with_name("r.parts").exists()


def test_resume_after_an_interruption_gives_the_same_report(digits_artifacts, tmp_path,
                                                             monkeypatch):
    clf, ebm = digits_artifacts
    cfg = resolve("quick", SETS + ["attack.sanity=false"])
    dev = torch.device("cpu")
    full = run_evaluation(evaluation_settings(cfg), clf, ebm, dev, tmp_path / "full.json")

    real_save, saved = attack_eval._save_part, []

    def flaky_save(path, outcome, meta):
        if len(saved) == 3:
            raise KeyboardInterrupt
        saved.append(path)
        real_save(path, outcome, meta)

    monkeypatch.setattr(attack_eval, "_save_part", flaky_save)
    out = tmp_path / "cut.json"
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(evaluation_settings(cfg), clf, ebm, dev, out)
    assert not out.exists() and len(list(tmp_path.glob("cut.parts/*"))) == 3
    monkeypatch.setattr(attack_eval, "_save_part", real_save)
    resumed = run_evaluation(evaluation_settings(cfg), clf, ebm, dev, out, resume=True)
    reused = sum(s.chunks_reused for r in resumed.results.values()
                 for a in r.attacks.values() for s in a.per_seed)
    assert reused == 3
    assert _strip(resumed.to_json()) == _strip(full.to_json())


class Noise(Attack):
    """A third-party attack: uniform noise in the ε-ball, evaluated once with H_def."""

    name = "plugin-noise"
    description = "random noise (test plugin)"

    def run(self, defense, task, x, y, key, progress=None):
        from ebmctl.api import make_generator

        clean = task.score(defense.predict(x, self.verify_reps, (*key, "nat")), y)
        g = make_generator(x.device, *key, "noise")
        xa = (x + self.eps * (torch.rand(x.shape, generator=g) * 2 - 1)).clamp(0, 1)
        adv = task.score(defense.predict(xa, self.verify_reps, (*key, "adv")), y)
        nat_ok, rob_ok = clean > 0.5, (clean > 0.5) & (adv > 0.5)
        return AttackOutcome(nat_ok, rob_ok, clean, xa, rob_ok.view(1, 1, -1).expand(
            1, self.steps + 1, -1).clone())


class NoisePlugin:
    @hookimpl
    def ebmctl_register_attacks(self, register):
        register(Noise)


def test_a_third_party_attack_plugin_is_picked_up(digits_artifacts, tmp_path):
    clf, ebm = digits_artifacts
    with plugin_registered(NoisePlugin(), "noise-plugin"):
        assert get_registries().attacks.get("plugin-noise") is Noise
        out = tmp_path / "p.json"
        res = run_cli(["attack", "--profile", "quick", "-m", clf, "--ebm", ebm, "--method",
                       "plugin-noise", "-o", out] + sum((["--set", s] for s in SETS), []))
        assert res.exit_code == 0, res.output
        rep = json.loads(out.read_text())
        assert "plugin-noise" in rep["results"]["defended"]["attacks"]


def test_cli_bad_inputs_fail_in_one_line(digits_artifacts, tmp_path):
    clf, ebm = digits_artifacts
    for args in (["--method", "nope"], ["--sweep", "defense.steps"],
                 ["--sweep", "attack.nokey=1,2"], ["--undefended-only", "--sweep",
                                                   "defense.steps=1"]):
        res = run_cli(["attack", "--profile", "quick", "-m", clf, "--ebm", ebm, "-o",
                       tmp_path / "x.json"] + args)
        assert res.exit_code != 0
        assert res.stderr.startswith("Error:") and "Traceback" not in res.output, res.output
    assert not (tmp_path / "x.json").exists()


def test_worst_case_curve_combines_restarts():
    nat = torch.tensor([True, True, True, False])
    ok = torch.ones(2, 3, 4, dtype=torch.bool)
    ok[:, :, 3] = False
    ok[0, 2:, 0] = False  # image 0 broken at step 2 of restart 0 (stays broken in restart 1)
    ok[1, 0:, 0] = False
    ok[1, 1:, 1] = False  # image 1 broken at step 1 of restart 1
    curve = worst_case_curve(nat, ok)
    assert curve.tolist() == [0.75, 0.5, 0.25]
