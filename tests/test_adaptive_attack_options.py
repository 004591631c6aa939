"""Attack options for stochastic defenses: the MEFA final-iterate protocol verifies only each
restart's last iterate; a surrogate chain of K steps is the full chain gradient; fixed (common)
randomness reproduces runs and is labelled a diagnostic kept out of the headline; the
defense-aware loss adds exactly −λ·∇U; worst-of-N re-evaluation with Wilson intervals."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ebmctl.context import evaluation_settings
from ebmctl.attacks.apgd import APGD
from ebmctl.attacks.bpda_eot import BPDAEOT
from ebmctl.attacks.full_eot import FullGradientEOT
from ebmctl.attacks.gradients import purify_differentiable
from ebmctl.attacks.loop import SteppedAttack
from ebmctl.defense import Defense, average_outputs
from ebmctl.models import EnergyModel, TaskModel
from ebmctl.errors import ConfigError
from ebmctl.evaluate import plan
from ebmctl.evaluate.report import make_attack, run_evaluation
from ebmctl.evaluate.runner import run_label
from ebmctl.evaluate.tables import result_rows
from ebmctl.evaluate.resubmit import resubmit_images, summarise_resubmissions
from ebmctl.nn.ebm import LightweightEBM
from ebmctl.profiles import resolve
from ebmctl.testing import tiny_bundle
from ebmctl_classification.task import ClassificationTask

TASK = ClassificationTask()
B = 4
STEP = 0.01


# --- a scripted defense: verdicts chosen by the randomness key ------------------------------

def images(n: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i carries i/10 in channel 1 (never perturbed) and has label i % B."""
    x = torch.full((n, 2, 2, 2), 0.5)
    for i in range(n):
        x[i, 1] = i / 10
    return x, torch.arange(n) % B


def ids_of(x: torch.Tensor) -> list[int]:
    return [int(round(v * 10)) for v in x[:, 1, 0, 0].tolist()]


def logits(ids: list[int], wrong: set[int]) -> torch.Tensor:
    out = torch.zeros(len(ids), B)
    for row, i in enumerate(ids):
        out[row, (i + 1) % B if i in wrong else i % B] = 1.0
    return out


class ScriptedDefense(Defense):
    """``verify_wrong[(r, n)]``: images a verification at restart r, step n misclassifies;
    ``resubmit_wrong[j]``: images resubmission j misclassifies."""

    def __init__(self, verify_wrong=None, resubmit_wrong=None):
        super().__init__(TaskModel(nn.Identity()))
        self.verify_wrong, self.resubmit_wrong = verify_wrong or {}, resubmit_wrong or {}
        self.keys: list[tuple] = []

    def predict(self, x01, reps, key, batch_rows=4096):
        self.keys.append(key)
        if key[-1] == "natural":
            return logits(ids_of(x01), set())
        if key[-1] == "verify":
            return logits(ids_of(x01), self.verify_wrong.get((key[-3], key[-2]), set()))
        return logits(ids_of(x01), self.resubmit_wrong.get(key[-2], set()))  # (.., j, start)


class Scripted(SteppedAttack):
    """Every screening claims a break; each step adds STEP to channel 0."""

    name = "scripted"

    def __init__(self, **kw):
        kw.setdefault("random_start", False)
        kw.setdefault("eps", 1.0)
        super().__init__(**kw)
        self.estimated_at: list[int] = []

    def estimate(self, defense, task, x_adv, y, key):
        self.estimated_at.append(key[-1])
        ids = ids_of(x_adv)
        return torch.zeros_like(x_adv), logits(ids, set(ids)), torch.zeros(len(ids))

    def propose(self, state, idx, x_nat, x_cur, grad, loss, n, key):
        nxt = x_cur.clone()
        nxt[:, 0] += STEP
        return nxt


# --- tiny real defenses ---------------------------------------------------------------------

def linear_model(bundle, scale: float = 8.0) -> TaskModel:
    xs, ys = bundle.train.x, bundle.train.y
    means = torch.stack([xs[ys == c].mean(0) for c in range(3)])
    lin = nn.Linear(64, 3)
    with torch.no_grad():
        lin.weight.copy_(scale * (means - means.mean(0, keepdim=True)).flatten(1))
        lin.bias.zero_()
    return TaskModel(nn.Sequential(nn.Flatten(), lin), "[0,1]").eval()


def smooth_defense(steps: int = 3, reps: int = 2, tau: float = 0.05) -> tuple:
    bundle = tiny_bundle(n=60, num_classes=3)
    torch.manual_seed(0)  # test-only weight init
    ebm = EnergyModel(LightweightEBM(1, 8, 4, "silu"), tau, 1.0, 8, 1)
    # scale 0.5: logits not saturated, so the loss gradients are far from zero
    defense = Defense(linear_model(bundle, 0.5), ebm, steps=steps, reps=reps)
    return defense, bundle.test.x[:6], bundle.test.y[:6]


class ZeroEnergy(nn.Module):
    """U ≡ 0: a Langevin step only adds τ·ξ, so a purified copy minus its input is its noise."""

    def forward(self, z):
        return (z * 0).flatten(1).sum(1)


class Recorder(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.inputs = net, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.net(x)


# --- the MEFA final-iterate protocol --------------------------------------------------------

def test_final_iterate_only_verifies_only_each_restarts_last_iterate():
    x, y = images()
    steps = 4
    verify = {(0, 1): {0}, (0, steps): {2}}
    # the thesis' rule: every screening claims a break, so step 1's verification breaks
    # image 0 and step N's image 2
    out = Scripted(steps=steps).run(ScriptedDefense(verify), TASK, x, y, (0,))
    assert out.robust_ok.tolist() == [False, True, False, True]
    # MEFA: no verification before n = N, then every alive image is verified once
    attack = Scripted(steps=steps, final_iterate_only=True)
    defense = ScriptedDefense(verify)
    out = attack.run(defense, TASK, x, y, (0,))
    assert out.robust_ok.tolist() == [True, True, False, True]
    assert [k[-2] for k in defense.keys if k[-1] == "verify"] == [steps]
    assert attack.estimated_at == list(range(steps))  # no gradient wasted at the last point
    torch.testing.assert_close(out.x_adv[:, 0], x[:, 0] + steps * STEP)  # the last iterate
    assert out.ok_by_step[0, :steps].all() and attack.per_step_curve is False


# --- surrogate chain ------------------------------------------------------------------------

def test_a_surrogate_chain_of_k_steps_is_the_full_gradient_and_a_shorter_one_is_not():
    defense, x, y = smooth_defense(steps=3)
    full = FullGradientEOT(eot_reps=2).estimate(defense, TASK, x, y, (5,))
    same = FullGradientEOT(eot_reps=2, gradient_steps=3).estimate(defense, TASK, x, y, (5,))
    for a, b in zip(full, same):
        assert torch.equal(a, b)
    grad, out, loss = FullGradientEOT(eot_reps=2, gradient_steps=2).estimate(
        defense, TASK, x, y, (5,))
    # the gradient is autograd through a 2-step chain with the same key ...
    xg = x.clone().requires_grad_(True)
    p = purify_differentiable(defense, xg.repeat(2, 1, 1, 1), (5, "chain"), steps=2)
    avg = defense.outputs_of(p.view(2, *x.shape)).mean(0)
    (want,) = torch.autograd.grad(TASK.attack_loss(avg, y).sum(), xg)
    torch.testing.assert_close(grad, want / 2)
    assert (grad - full[0]).abs().max() > 1e-3 * full[0].abs().max()
    # ... while screening and loss come from the defense's own K = 3 steps
    reps = defense.replicates(x, 2, (5, "eot"))
    torch.testing.assert_close(out, average_outputs(defense.outputs_of(reps)))
    torch.testing.assert_close(loss, TASK.attack_loss(out, y))


def test_gradient_steps_beyond_k_or_without_a_chain_gradient_is_rejected_naming_the_key():
    defense, x, y = smooth_defense(steps=3)
    with pytest.raises(ConfigError, match="attack.gradient_steps"):
        FullGradientEOT(gradient_steps=4, steps=1).run(defense, TASK, x, y, (0,))
    with pytest.raises(ConfigError, match="attack.gradient_steps"):
        APGD(gradient="bpda", gradient_steps=2)
    cfg = resolve("quick", ["attack.gradient_steps=2"])
    assert make_attack(evaluation_settings(cfg), "full-eot", True).gradient_steps == 2
    bpda = make_attack(evaluation_settings(cfg), "bpda-eot", True)
    assert bpda.gradient_steps == 0
    with pytest.raises(ConfigError, match="attack.gradient_steps"):
        plan.check_options_used(evaluation_settings(cfg), [bpda])


# --- fixed randomness -----------------------------------------------------------------------

@pytest.mark.parametrize("cls", [BPDAEOT, FullGradientEOT], ids=lambda c: c.name)
@pytest.mark.parametrize("common", [False, True], ids=["fresh-noise", "common-noise"])
def test_two_attack_runs_with_the_same_seed_are_bit_identical(common, cls):
    runs = []
    for seed in (0, 0, 1):
        defense, x, y = smooth_defense(steps=2, tau=0.3)
        attack = cls(eps=0.3, step_size=0.05, steps=3, eot_reps=2, verify_reps=2,
                     common_noise=common)
        runs.append(attack.run(defense, TASK, x, y, (seed, "t")))
    a, b, c = runs
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.ok_by_step, b.ok_by_step)
    assert torch.equal(a.robust_ok, b.robust_ok) and torch.equal(a.natural_ok, b.natural_ok)
    assert not torch.equal(a.x_adv, c.x_adv)  # the seed does reach the random draws


@pytest.mark.parametrize("attacker,defender,cls", [
    (False, False, BPDAEOT), (True, False, BPDAEOT), (True, True, BPDAEOT),
    (False, False, FullGradientEOT), (True, False, FullGradientEOT)])
def test_common_noise_reuses_the_replicates_noise_at_every_attack_step(attacker, defender, cls):
    bundle = tiny_bundle(n=60, num_classes=3)
    x, y = bundle.test.x[:4], bundle.test.y[:4]
    rec = Recorder(linear_model(bundle).net)
    defense = Defense(TaskModel(rec, "[0,1]"), EnergyModel(ZeroEnergy(), 0.2, 1.0, 8, 1),
                      steps=2, reps=3)
    noise: dict[tuple[str, int], torch.Tensor] = {}

    class Spy(cls):
        def estimate(self, d, task, x_adv, yy, key):
            rec.inputs.clear()
            res = super().estimate(d, task, x_adv, yy, key)
            noise["attacker", key[-1]] = rec.inputs[0].view(2, *x_adv.shape) - x_adv
            claimed = logits([(int(v) + 1) % 3 for v in yy], set())[:, :3]
            return res[0], claimed, res[2]  # every image a candidate: verified every step

        def verify(self, d, x_adv, rows, key):
            rec.inputs.clear()
            out = super().verify(d, x_adv, rows, key)
            noise["defender", key[-1]] = rec.inputs[0].view(3, *x_adv.shape) - x_adv
            return out

    attack = Spy(eps=0.3, step_size=0.05, steps=3, eot_reps=2, verify_reps=3,
                 common_noise=attacker, common_noise_defender=defender)
    attack.run(defense, TASK, x, y, (0, "t"))
    assert not torch.allclose(noise["attacker", 0], torch.zeros(1), atol=1e-3)
    for who, fixed in (("attacker", attacker), ("defender", defender)):
        same = torch.allclose(noise[who, 0], noise[who, 3], atol=1e-6)
        assert same is fixed, who
    assert attack.diagnostic is defender


def test_a_diagnostic_run_is_labelled_and_kept_out_of_the_headline():
    x, y = images()
    defense = ScriptedDefense(verify_wrong={(0, 1): {0, 1, 2, 3}})
    honest = type("H", (Scripted,), {"name": "honest"})
    fixed = type("D", (Scripted,), {"name": "fixed"})
    # "honest" runs one step only, so step 1's verification never reaches it
    row = run_label("defended", defense,
                    [honest(steps=0), fixed(steps=2, common_noise_defender=True)], TASK, x, y,
                    torch.device("cpu"), [0], {}, batch_size=4, tolerance=0.02)
    assert row.attacks["fixed"].adversarial.mean == 0.0
    assert row.attacks["fixed"].diagnostic is True
    assert "diagnostic" not in row.attacks["honest"].to_json()
    assert "diagnostic" not in row.to_json()
    assert row.adversarial.mean == 1.0 and row.attack == "honest"
    table = result_rows({"results": {"defended": row.to_json()}})
    assert any("DIAGNOSTIC" in r[1] for r in table)
    only = run_label("defended", defense, [fixed(steps=2, common_noise_defender=True)],
                     TASK, x, y, torch.device("cpu"), [0], {}, batch_size=4, tolerance=0.02)
    assert only.diagnostic is True


# --- the defense-aware (energy) loss --------------------------------------------------------

@pytest.mark.parametrize("cls", [BPDAEOT, FullGradientEOT], ids=lambda c: c.name)
def test_energy_weight_changes_the_gradient_by_exactly_minus_lambda_grad_u(cls):
    defense, x, y = smooth_defense(steps=2)
    lam = 0.3
    g0, out0, loss0 = cls(eot_reps=2).objective(defense, TASK, x, y, (4,))
    g1, out1, loss1 = cls(eot_reps=2, energy_weight=lam).objective(defense, TASK, x, y, (4,))
    xg = x.clone().requires_grad_(True)
    u = defense.ebm.net(2 * xg - 1) / defense.ebm.temperature  # U of the [0,1] images
    (grad_u,) = torch.autograd.grad(u.sum(), xg)
    assert grad_u.abs().max() > 1e-3  # the term is not vacuous
    torch.testing.assert_close(g1 - g0, -lam * grad_u, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss1 - loss0, -lam * u.detach(), rtol=1e-4, atol=1e-6)
    assert torch.equal(out0, out1)  # screening is unchanged
    with pytest.raises(ConfigError, match="attack.energy_weight"):
        cls(energy_weight=-1.0)
    bare = Defense(defense.model)
    with pytest.raises(ConfigError, match="attack.energy_weight"):
        cls(energy_weight=lam, steps=1).run(bare, TASK, x, y, (0,))


def test_new_options_default_off_and_defended_only_ones_are_rejected_on_undefended_runs():
    quick = resolve("quick")
    a = make_attack(evaluation_settings(quick), "bpda-eot", True)
    assert (a.final_iterate_only, a.common_noise, a.common_noise_defender, a.energy_weight,
            a.gradient_steps) == (False, False, False, 0.0, 0)
    cfg = resolve("quick", ["attack.energy_weight=0.1", "attack.final_iterate_only=true"])
    pgd = make_attack(evaluation_settings(cfg), "pgd", False)
    assert pgd.energy_weight == 0.0 and pgd.final_iterate_only is True
    with pytest.raises(ConfigError, match="attack.energy_weight"):
        plan.check_options_used(evaluation_settings(cfg), [pgd])
    settings = evaluation_settings(cfg)
    plan.check_options_used(settings, [pgd, make_attack(settings, "bpda-eot", True)])
    assert make_attack(evaluation_settings(cfg), "bpda-eot", True).energy_weight == 0.1


# --- worst-of-N re-evaluation ---------------------------------------------------------------

def test_worst_of_n_is_at_most_the_mean_over_resubmissions_on_every_image():
    defense, x, y = smooth_defense(steps=2, tau=0.6)
    nat = torch.ones(len(x), dtype=torch.bool)
    res = resubmit_images(defense, TASK, x, y, nat, nat, torch.ones(len(x)), resubmissions=6,
                          eot_reps=[1, 3], key=(0,), batch_size=4,
                          device=torch.device("cpu"))
    for fig in res["by_eot_reps"].values():
        pairs = list(zip(fig["per_image_worst_of_n"], fig["per_image_mean"]))
        assert all(w <= m for w, m in pairs)
        assert fig["worst_of_n"] <= fig["mean"]
    fig = res["by_eot_reps"]["1"]
    assert any(w < m for w, m in zip(fig["per_image_worst_of_n"], fig["per_image_mean"])), \
        "no image flipped between resubmissions: the test would not catch a wrong rule"


def test_resubmission_figures_and_their_wilson_intervals_by_hand():
    x, y = images(10)
    # N = 4: images 0-2 always right; 3-5 wrong once; 6-9 wrong every time
    always_wrong = {6, 7, 8, 9}
    wrong = {0: {3} | always_wrong, 1: {4} | always_wrong, 2: {5} | always_wrong,
             3: always_wrong}
    defense = ScriptedDefense(resubmit_wrong=wrong)
    nat = torch.ones(10, dtype=torch.bool)
    res = resubmit_images(defense, TASK, x, y, nat, nat, torch.ones(10), resubmissions=4,
                          eot_reps=[5], key=(0, "t"), batch_size=3,
                          device=torch.device("cpu"))
    fig = res["by_eot_reps"]["5"]
    assert fig["per_image_worst_of_n"] == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert fig["per_image_mean"] == [1, 1, 1, 0.75, 0.75, 0.75, 0, 0, 0, 0]
    assert fig["worst_of_n"] == pytest.approx(0.3) and fig["mean"] == pytest.approx(0.525)
    # Wilson, z = 1.959964, n = 10: p = 0.3 → centre (0.3 + 0.192073)/1.384146 = 0.355506,
    # half 1.959964·√(0.021 + 0.009604)/1.384146 = 0.247720 → [0.1078, 0.6032];
    # p = 0.525 → centre 0.517979, half 1.959964·√(0.0249375 + 0.009604)/1.384146 = 0.263152
    # → [0.2548, 0.7811]
    assert fig["worst_of_n_ci"] == pytest.approx([0.1078, 0.6032], abs=1e-4)
    assert fig["mean_ci"] == pytest.approx([0.2548, 0.7811], abs=1e-4)
    # an image that failed the natural check is never robust, whatever its resubmissions say
    nat[0] = False
    fig = summarise_resubmissions(torch.ones(4, 10, dtype=torch.bool), nat)
    assert fig["per_image_worst_of_n"][0] == 0 and fig["per_image_mean"][0] == 0


def test_the_report_carries_resubmission_figures_and_memory_per_attack(digits_artifacts,
                                                                       tmp_path):
    clf, ebm = digits_artifacts
    sets = ["attack.n_images=6", "attack.batch_size=6", "attack.steps=2", "attack.eot_reps=2",
            "attack.restarts=1", "defense.steps=2", "defense.eot_reps=2", "attack.seeds=0",
            "run.device=cpu", "langevin.precision=fp32", "attack.sanity=false",
            "evaluate.resubmissions=2", "evaluate.eot_reps=1,3"]
    out = tmp_path / "r.json"
    run_evaluation(evaluation_settings(resolve("quick", sets)), clf, ebm, torch.device("cpu"), out)
    rep = json.loads(out.read_text())
    d, u = rep["results"]["defended"], rep["results"]["undefended"]
    assert "resubmission" not in u  # a deterministic model: nothing to resubmit
    res = d["resubmission"]
    assert set(res["worst_case"]["by_eot_reps"]) == {"1", "3"}
    assert set(res["attacks"]) == set(d["attacks"])
    assert res["worst_case"]["per_image_eot_verdict"] == d["per_image_robust"]
    for a in (*d["attacks"].values(), *u["attacks"].values()):
        assert a["memory"]["peak_rss_mib"] > 0 and a["memory"]["cuda_peak_mib"] is None
    printed = [r for r in result_rows(rep) if "resubmissions (H=3)" in r[1]]
    fig = res["worst_case"]["by_eot_reps"]["3"]
    assert [r[3].split()[0] for r in printed] == [f"{fig['mean']:.3f}",
                                                 f"{fig['worst_of_n']:.3f}"]
    with pytest.raises(ConfigError, match="evaluate.eot_reps"):
        run_evaluation(evaluation_settings(resolve("quick", sets[:-2] + ["evaluate.eot_reps=5"])),
                       clf, ebm, torch.device("cpu"), tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="evaluate.resubmissions"):
        run_evaluation(evaluation_settings(resolve("quick", sets)), clf, ebm, torch.device("cpu"),
                       tmp_path / "bad.json", defended=False)


