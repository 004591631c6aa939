"""Alg. 1's rules, proven with a scripted stochastic defense whose verdicts are chosen by the
randomness key, and the per-image worst case over attacks (AutoAttack semantics)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ebmctl.attacks.apgd import APGD, apgd_checkpoints
from ebmctl.attacks.bpda_eot import BPDAEOT
from ebmctl.attacks.full_eot import FullGradientEOT, SmoothedGradientEOT
from ebmctl.attacks.gradients import eot_gradient, purify_differentiable
from ebmctl.attacks.loop import SteppedAttack
from ebmctl.attacks.threat import project
from ebmctl.defense import Defense
from ebmctl.models import EnergyModel, TaskModel
from ebmctl.evaluate.attack_eval import evaluate_attack
from ebmctl.evaluate.runner import run_label
from ebmctl.evaluate.worst_case import worst_case
from ebmctl.evaluate.results import SeedResult
from ebmctl.nn.ebm import LightweightEBM
from ebmctl.testing import tiny_bundle
from ebmctl_classification.task import ClassificationTask

B = 4  # images; image i has label i and carries i in channel 1 (never perturbed)
STEP = 0.01


def images() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.full((B, 2, 2, 2), 0.5)
    for i in range(B):
        x[i, 1] = i / 10
    return x, torch.arange(B)


def ids_of(x: torch.Tensor) -> list[int]:
    return [int(round(v * 10)) for v in x[:, 1, 0, 0].tolist()]


def logits(ids: list[int], wrong: set[int]) -> torch.Tensor:
    out = torch.zeros(len(ids), B)
    for row, i in enumerate(ids):
        out[row, (i + 1) % B if i in wrong else i] = 1.0
    return out


class ScriptedDefense(Defense):
    """Natural check and verification verdicts chosen by the key: ``natural_wrong`` images fail
    the natural check; ``verify_wrong[(r, n)]`` fail verification at restart r, step n."""

    def __init__(self, natural_wrong=(), verify_wrong=None):
        super().__init__(TaskModel(nn.Identity()))
        self.natural_wrong, self.verify_wrong = set(natural_wrong), verify_wrong or {}
        self.keys: list[tuple] = []

    def predict(self, x01, reps, key, batch_rows=4096):
        self.keys.append(key)
        if key[-1] == "natural":
            return logits(ids_of(x01), self.natural_wrong)
        assert key[-1] == "verify"
        return logits(ids_of(x01), self.verify_wrong.get((key[-3], key[-2]), set()))


class Scripted(SteppedAttack):
    """Screening verdicts from ``screen[(r, n)]``; each step adds STEP to channel 0."""

    name = "scripted"
    screen: dict = {}

    def __init__(self, **kw):
        kw.setdefault("random_start", False)
        kw.setdefault("eps", 1.0)
        super().__init__(**kw)
        self.calls: list[tuple[int, int, list[int]]] = []

    def estimate(self, defense, task, x_adv, y, key):
        r, n = key[-2], key[-1]
        ids = ids_of(x_adv)
        self.calls.append((r, n, ids))
        return torch.zeros_like(x_adv), logits(ids, self.screen.get((r, n), set())), \
            torch.zeros(len(ids))

    def propose(self, state, idx, x_nat, x_cur, grad, loss, n, key):
        nxt = x_cur.clone()
        nxt[:, 0] += STEP
        return nxt


def _scripted(screen, steps=5, restarts=1):
    cls = type("S", (Scripted,), {"screen": screen})
    return cls(steps=steps, restarts=restarts)


def test_a_candidate_rejected_by_verification_stays_alive_and_keeps_being_attacked():
    x, y = images()
    attack = _scripted({(0, 1): {0}, (0, 3): {0}})
    defense = ScriptedDefense(verify_wrong={(0, 3): {0}})  # step 1's candidate is rejected
    out = attack.run(defense, ClassificationTask(), x, y, (0,))
    assert out.ok_by_step[0, 1, 0] and out.ok_by_step[0, 2, 0] and not out.ok_by_step[0, 3, 0]
    attacked_at = [n for r, n, ids in attack.calls if 0 in ids]
    assert attacked_at == [0, 1, 2, 3]  # attacked after the rejection, not after the break
    assert not out.robust_ok[0] and out.robust_ok[1:].all()
    # the saved adversarial of image 0 is the breaking point (3 steps), not the last iterate
    torch.testing.assert_close(out.x_adv[0, 0], x[0, 0] + 3 * STEP)
    torch.testing.assert_close(out.x_adv[1, 0], x[1, 0] + 5 * STEP)  # survivor: last iterate


def test_an_image_misclassified_clean_counts_as_broken_and_is_never_attacked():
    x, y = images()
    attack = _scripted({})
    out = attack.run(ScriptedDefense(natural_wrong={2}), ClassificationTask(), x, y, (0,))
    assert not out.natural_ok[2] and not out.robust_ok[2]
    assert all(2 not in ids for _, _, ids in attack.calls)
    assert out.robust_ok.float().mean().item() == 0.75


def test_an_image_broken_in_one_restart_is_not_attacked_again():
    x, y = images()
    attack = _scripted({(0, 2): {1}}, steps=4, restarts=2)
    out = attack.run(ScriptedDefense(verify_wrong={(0, 2): {1}}), ClassificationTask(), x, y, (0,))
    assert all(1 not in ids for r, n, ids in attack.calls if r == 1)
    assert any(1 in ids for r, n, ids in attack.calls if r == 0)
    torch.testing.assert_close(out.x_adv[1, 0], x[1, 0] + 2 * STEP)
    assert not out.robust_ok[1] and not out.ok_by_step[1, :, 1].any()


def test_the_curve_is_non_increasing_and_ends_at_the_reported_accuracy():
    x, y = images()
    screen = {(0, 1): {0}, (0, 3): {1, 3}, (1, 2): {2}}
    verify = {(0, 1): {0}, (0, 3): {3}, (1, 2): {2}}
    attack = _scripted(screen, steps=4, restarts=2)
    res = evaluate_attack(attack, ScriptedDefense(verify_wrong=verify), ClassificationTask(), x,
                          y, seed=0, batch_size=B, device=torch.device("cpu"), label="t")
    curve = res.accuracy_curve
    assert all(b <= a for a, b in zip(curve, curve[1:]))
    assert curve[-1] == res.adversarial == 0.25  # only image 1 survives (its break rejected)


def test_verification_noise_is_independent_of_the_screening_replicates():
    bundle = tiny_bundle(n=30, num_classes=3)
    x, y = bundle.test.x[:4], bundle.test.y[:4]
    torch.manual_seed(0)  # test-only weight init
    model = TaskModel(nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 3)), "[0,1]").eval()
    ebm = EnergyModel(LightweightEBM(1, 8, 8), 0.01, 5e-5, 8, 1)
    keys = []

    class Spy(Defense):
        def purify(self, x01, key):
            keys.append(key)
            return super().purify(x01, key)

    defense = Spy(model, ebm, steps=2, reps=2)
    # eps large and a screening that always claims a break: every point is also verified
    attack = BPDAEOT(eps=0.5, step_size=0.1, steps=3, eot_reps=2, verify_reps=2)
    attack.estimate = lambda d, t, xa, ya, key: (
        eot_gradient(d, xa, ya, 2, key, t.attack_loss, "bpda")[0],
        logits([(int(v) + 1) % 3 for v in ya], set())[:, :3], torch.zeros(len(ya)))
    attack.run(defense, ClassificationTask(), x, y, (0, "t"))
    screening = {k[:-1] for k in keys if k[-1] == "eot"}
    verifying = {k[:-3] for k in keys if "verify" in k}
    assert screening and verifying
    assert not ({k for k in keys if k[-1] == "eot"} & {k for k in keys if "verify" in k})
    # and the noise those keys give differs: a verification replicate is not a screening one
    k_screen = next(k for k in keys if k[-1] == "eot")
    k_verify = next(k for k in keys if "verify" in k and k[:-3] == k_screen[:-1])
    a = Defense(model, ebm, steps=2).purify(x[:1], k_screen)
    b = Defense(model, ebm, steps=2).purify(x[:1], k_verify)
    assert not torch.equal(a, b)


def test_the_headline_is_the_per_image_worst_case_over_attacks():
    """Two attacks that each break a different half: each row says 0.5, the headline 0.0."""
    x, y = images()
    first = type("A1", (Scripted,), {"name": "first", "screen": {(0, 1): {0, 1}}})
    second = type("A2", (Scripted,), {"name": "second", "screen": {(0, 1): {2, 3}}})
    defense = ScriptedDefense(verify_wrong={(0, 1): {0, 1, 2, 3}})
    for label in ("undefended", "defended"):
        row = run_label(label, defense, [first(steps=2), second(steps=2)],
                        ClassificationTask(), x, y, torch.device("cpu"), [0], {},
                        batch_size=4, tolerance=0.02)
        assert row.attacks["first"].adversarial.mean == 0.5
        assert row.attacks["second"].adversarial.mean == 0.5
        assert row.adversarial.mean == 0.0 and row.per_image_robust == [0, 0, 0, 0]
        # each image's saved adversarial comes from the attack that broke it
        torch.testing.assert_close(row.x_adv[:, 0], x[:, 0] + STEP)


def test_worst_case_combines_per_seed_and_keeps_natural_failures():
    def seed0(robust_ok: list[bool], x_adv: torch.Tensor) -> SeedResult:
        nat = [True, True, False]
        return SeedResult(seed=0, natural=2 / 3, adversarial=sum(robust_ok) / 3,
                          robust_by_step=[], accuracy_curve=[], natural_ok=nat,
                          robust_ok=robust_ok, per_image=[], seconds=0.0, image_steps=0,
                          chunks_reused=0, x_adv=x_adv)

    per = {"a": [seed0([True, False, False], torch.zeros(3, 1))],
           "b": [seed0([False, True, False], torch.ones(3, 1))]}
    (w,) = worst_case(per)
    assert w.adversarial == 0.0 and w.natural == pytest.approx(2 / 3)
    assert w.x_adv.flatten().tolist() == [1.0, 0.0, 0.0]  # first breaking attack, in order


def test_apgd_does_not_halve_again_right_after_a_reduction_without_improvement():
    steps = 12
    c1, c2 = sorted(apgd_checkpoints(steps))[:2]
    attack = APGD(eps=0.3, steps=steps)
    x_nat = torch.full((1, 1, 2, 2), 0.5)
    state = attack.init_state(x_nat, x_nat.clone(), (0,))
    idx = torch.tensor([0])
    x_cur = x_nat.clone()
    gen = torch.Generator().manual_seed(0)
    losses = [10.0] + [0.0] * c1 + [float(k) for k in range(1, c2 - c1 + 1)]
    etas = {}
    for n in range(c2 + 1):
        grad = torch.randn(x_cur.shape, generator=gen)
        if n == c1:  # momentum after the restart from the best point: the reference's rule
            x_prev, x_max, g_max = (state[k].clone() for k in ("x_prev", "x_max", "g_max"))
        nxt = attack.propose(state, idx, x_nat, x_cur, grad, torch.tensor([losses[n]]), n, (0,))
        if n == c1:
            eta = state["eta"].view(-1, 1, 1, 1)
            z = project(x_max + eta * g_max.sign(), x_nat, attack.eps, "linf")
            want = project(x_max + 0.75 * (z - x_max) + 0.25 * (x_max - x_prev), x_nat,
                           attack.eps, "linf")
            torch.testing.assert_close(nxt, want)
        etas[n] = state["eta"].item()
        x_cur = nxt
    assert etas[c1] == pytest.approx(0.3)  # condition 1 (no increase) halves 2ε once
    assert etas[c2] == pytest.approx(0.3)  # reduced at c1 and no improvement: no new halving


def test_the_eot_gradient_is_that_of_the_loss_of_the_averaged_logits():
    """Eq. 2.10 with H = 3, by hand; it differs from the mean of per-replicate gradients."""
    bundle = tiny_bundle(n=30, num_classes=3)
    x, y = bundle.test.x[:5], bundle.test.y[:5]
    torch.manual_seed(1)  # test-only weight init
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 3))
    with torch.no_grad():  # confident logits: the softmax is far from linear
        net[1].weight.mul_(10)
        net[3].weight.mul_(10)
    model = TaskModel(net, "[0,1]").eval()
    # noise τ = 0.3 so the three replicates differ enough for the two rules to disagree
    ebm = EnergyModel(LightweightEBM(1, 8, 8), 0.3, 1.0, 8, 1)
    defense = Defense(model, ebm, steps=3, reps=3)
    task = ClassificationTask()
    g, _, _ = eot_gradient(defense, x, y, 3, (7,), task.attack_loss, "bpda")
    reps = defense.replicates(x, 3, (7, "eot"))
    assert not torch.equal(reps[0], reps[1])
    hand = torch.zeros_like(x)
    per_rep = torch.zeros_like(x)
    for h in range(3):
        r = [reps[j].clone().requires_grad_(j == h) for j in range(3)]
        avg = sum(model(rj) for rj in r) / 3
        hand += torch.autograd.grad(task.attack_loss(avg, y).sum(), r[h])[0] / 3
        rh = reps[h].clone().requires_grad_(True)
        per_rep += torch.autograd.grad(task.attack_loss(model(rh), y).sum(), rh)[0] / 3
    torch.testing.assert_close(g, hand)
    mean_of_per_rep = per_rep / 3  # same 1/H² scale as Eq. 2.10's gradient
    assert (g - mean_of_per_rep).abs().max() > 0.05 * g.abs().max()


@pytest.mark.parametrize("cls", [FullGradientEOT, SmoothedGradientEOT], ids=lambda c: c.name)
def test_chain_gradient_attacks_run_through_a_stochastic_defense(cls):
    bundle = tiny_bundle(n=60, num_classes=3)
    x, y = bundle.test.x[:10], bundle.test.y[:10]
    xs, ys = bundle.train.x, bundle.train.y
    means = torch.stack([xs[ys == c].mean(0) for c in range(3)])
    lin = nn.Linear(64, 3)
    with torch.no_grad():
        lin.weight.copy_(8 * (means - means.mean(0, keepdim=True)).flatten(1))
        lin.bias.zero_()
    model = TaskModel(nn.Sequential(nn.Flatten(), lin), "[0,1]").eval()
    torch.manual_seed(0)  # test-only weight init
    ebm = EnergyModel(LightweightEBM(1, 8, 8, "leaky_relu"), 0.05, 1e-3, 8, 1)
    defense = Defense(model, ebm, steps=3, reps=2)
    attack = cls(eps=0.4, step_size=0.1, steps=6, eot_reps=2, verify_reps=2)
    out = attack.run(defense, ClassificationTask(), x, y, (0,))
    assert out.info["gradient"] == attack.gradient
    assert defense.image_steps > 2 * 3 * len(x)  # chains ran, differentiated twice per step
    assert out.robust_ok.float().mean() < out.natural_ok.float().mean() - 0.3
    # the gradient really passed the chain: the full one equals autograd through the purifier
    if cls is FullGradientEOT:
        g, _, _ = attack.estimate(defense, ClassificationTask(), x, y, (3,))
        xg = x.clone().requires_grad_(True)
        p = purify_differentiable(defense, xg.repeat(2, 1, 1, 1), (3, "chain")).view(2, *x.shape)
        loss = ClassificationTask().attack_loss(model(p.flatten(0, 1)).view(2, 10, 3).mean(0), y)
        (want,) = torch.autograd.grad(loss.sum(), xg)
        torch.testing.assert_close(g, want / 2)
