"""Attack suite: every attack works on an undefended model, and the gradient identities of
BPDA and of the Langevin chain hold."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ebmctl.attacks.apgd import APGD, APGDDLR, apgd_checkpoints
from ebmctl.attacks.bpda_eot import BPDAEOT
from ebmctl.attacks.full_eot import FullGradientEOT, SmoothedGradientEOT
from ebmctl.attacks.gradients import eot_gradient, langevin_differentiable, smoothed_copy
from ebmctl.attacks.losses import dlr_loss, margin_loss
from ebmctl.attacks.pgd import FGSM, PGD
from ebmctl.attacks.square import Square
from ebmctl.attacks.transfer import Transfer
from ebmctl.defense import Defense
from ebmctl.models import EnergyModel, TaskModel
from ebmctl.nn.ebm import LightweightEBM
from ebmctl.sampling.langevin import LangevinSettings, langevin
from ebmctl.testing import tiny_bundle
from ebmctl_classification.task import ClassificationTask


def template_classifier(bundle) -> TaskModel:
    """A linear classifier whose weights are the class-mean images (no training, deterministic)."""
    x, y = bundle.train.x, bundle.train.y
    means = torch.stack([x[y == c].mean(0) for c in range(bundle.num_classes)])
    lin = nn.Linear(x[0].numel(), bundle.num_classes)
    with torch.no_grad():
        centred = means - means.mean(0, keepdim=True)
        lin.weight.copy_(8 * centred.flatten(1))
        lin.bias.zero_()
    return TaskModel(nn.Sequential(nn.Flatten(), lin), input_range="[0,1]").eval()


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def setup():
    bundle = tiny_bundle(n=60, num_classes=3)
    model = template_classifier(bundle)
    x, y = bundle.test.x[:10], bundle.test.y[:10]
    return bundle, model, x, y


ATTACKS = [PGD, FGSM, BPDAEOT, FullGradientEOT, SmoothedGradientEOT, APGD, APGDDLR, Transfer,
           Square]


@pytest.mark.parametrize("cls", ATTACKS, ids=lambda c: c.name)
def test_each_attack_lowers_accuracy_of_an_undefended_model(setup, cls):
    _, model, x, y = setup
    task = ClassificationTask()
    defense = Defense(model)
    # random search needs more queries and a larger radius than the gradient attacks
    steps, eps = (80, 0.5) if cls is Square else (10, 0.4)
    attack = cls(norm="linf", eps=eps, step_size=0.1, steps=steps, restarts=1)
    out = attack.run(defense, task, x, y, (0, "test"))
    nat = out.natural_ok.float().mean().item()
    adv = out.robust_ok.float().mean().item()
    assert nat >= 0.9
    assert adv < nat - 0.3, (cls.name, nat, adv)
    # the returned adversarial images respect the threat model
    assert (out.x_adv - x).abs().max() <= eps + 1e-6
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert out.ok_by_step.shape == (1, attack.steps + 1, len(x))


def test_l2_attacks_stay_in_the_ball(setup):
    _, model, x, y = setup
    task = ClassificationTask()
    for cls, eps, steps in ((PGD, 1.5, 8), (APGD, 1.5, 8), (Square, 3.0, 80)):
        attack = cls(norm="l2", eps=eps, step_size=0.4, steps=steps)
        out = attack.run(Defense(model), task, x, y, (1,))
        norms = (out.x_adv - x).flatten(1).norm(dim=1)
        assert (norms <= eps + 1e-4).all()
        assert out.robust_ok.float().mean() < out.natural_ok.float().mean() - 0.2, cls.name


def tiny_ebm(activation="leaky_relu", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)  # test-only weight init
    return LightweightEBM(1, 8, 8, activation).to(dtype)


def test_bpda_with_one_replicate_is_the_classifier_gradient_at_the_purified_point(setup):
    _, model, x, y = setup
    task = ClassificationTask()
    ebm = EnergyModel(tiny_ebm(), tau=0.01, temperature=5e-5, image_size=8, channels=1)
    defense = Defense(model, ebm, steps=5, reps=1)
    attack = BPDAEOT(eot_reps=1)
    key = (3, "k")
    g, _, _ = attack.estimate(defense, task, x, y, key)
    purified = defense.replicates(x, 1, (*key, "eot"))[0].requires_grad_(True)
    loss = task.attack_loss(model(purified), y).sum()
    (expected,) = torch.autograd.grad(loss, purified)
    assert not torch.equal(purified.detach(), x)  # the purifier really moved the images
    torch.testing.assert_close(g, expected)
    # the shared estimator gives the same BPDA gradient
    g2, _, _ = eot_gradient(defense, x, y, 1, key, task.attack_loss, "bpda")
    torch.testing.assert_close(g2, expected)


def _chain_case(activation, dtype=torch.float64, steps=6):
    net = tiny_ebm(activation, dtype)
    settings = LangevinSettings(0.05, 1e-3)  # large drift so that any Hessian term is visible
    gen = torch.Generator().manual_seed(7)
    noise = torch.randn(steps, 4, 1, 8, 8, generator=gen, dtype=dtype)
    x0 = torch.rand(4, 1, 8, 8, generator=gen, dtype=dtype) * 2 - 1
    w = torch.randn(4, 1, 8, 8, generator=gen, dtype=dtype)
    return net, settings, noise, x0, w


def test_leaky_relu_chain_gradient_equals_bpda_with_the_same_noise():
    net, settings, noise, x0, w = _chain_case("leaky_relu")
    x = x0.clone().requires_grad_(True)
    x_k = langevin_differentiable(net, x, 6, settings, noise=lambda k: noise[k], segment=4)
    (g_full,) = torch.autograd.grad((x_k * w).sum(), x)
    # BPDA: the gradient of f(x_K) = <w, x_K> w.r.t. the purified point is w
    torch.testing.assert_close(g_full, w)
    # the chain's forward values are the sampler's
    ref = langevin(net.float(), x0.float(), 6, settings, noise=lambda k: noise[k].float())
    net.double()
    torch.testing.assert_close(x_k.detach().float(), ref, atol=1e-5, rtol=1e-5)


def test_smooth_energy_chain_gradient_matches_finite_differences():
    net, settings, noise, x0, w = _chain_case("silu")

    def f(x):
        return (langevin_differentiable(net, x, 6, settings, noise=lambda k: noise[k],
                                        segment=2) * w).sum()

    x = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x)
    v = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=x0.dtype)
    h = 1e-6
    fd = (f(x0 + h * v) - f(x0 - h * v)) / (2 * h)
    assert abs(fd.item() - (g * v).sum().item()) < 1e-6 * max(1.0, abs(fd.item()))
    # and the Hessian term is real: the chain gradient is not the BPDA gradient
    assert (g - w).abs().max() > 1e-3


def test_checkpoint_segment_length_does_not_change_the_gradient():
    net, settings, noise, x0, w = _chain_case("silu", steps=7)
    grads = []
    for seg in (1, 3, 7):
        x = x0.clone().requires_grad_(True)
        out = langevin_differentiable(net, x, 7, settings, noise=lambda k: noise[k], segment=seg)
        grads.append(torch.autograd.grad((out * w).sum(), x)[0])
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], grads[2])


def test_smoothed_backward_keeps_the_forward_and_adds_a_hessian_term():
    net, settings, noise, x0, w = _chain_case("leaky_relu")
    twin, replaced = smoothed_copy(net, 0.1)
    assert replaced == 3
    x = x0.clone().requires_grad_(True)
    out = langevin_differentiable(net, x, 6, settings, noise=lambda k: noise[k], backward_net=twin)
    plain = langevin_differentiable(net, x0, 6, settings, noise=lambda k: noise[k])
    torch.testing.assert_close(out.detach(), plain)
    (g,) = torch.autograd.grad((out * w).sum(), x)
    assert (g - w).abs().max() > 1e-3


def test_full_gradient_attack_through_a_defense_runs_and_counts_image_steps(setup):
    _, model, x, y = setup
    ebm = EnergyModel(tiny_ebm(), tau=0.01, temperature=5e-5, image_size=8, channels=1)
    defense = Defense(model, ebm, steps=4, reps=2)
    g, avg, loss = eot_gradient(defense, x, y, 3, (0,), ClassificationTask().attack_loss, "full")
    assert g.shape == x.shape and avg.shape == (len(x), 3) and loss.shape == (len(x),)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert defense.image_steps == 2 * 3 * len(x) * 4  # forward + recomputation


def test_losses_and_schedules():
    out = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0])
    torch.testing.assert_close(margin_loss(out, y), torch.tensor([-2.0, 2.0]))
    torch.testing.assert_close(dlr_loss(out, y), torch.tensor([-2.0 / 3.0, 2.0 / 2.0]))
    marks = sorted(apgd_checkpoints(100))
    assert marks[0] == 22 and all(b > a for a, b in zip(marks, marks[1:])) and marks[-1] < 100
