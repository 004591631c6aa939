"""The attack interface of :class:`ebmctl.attacks.base.Attack`: each class declares the
``[attack]`` settings it reads and is built from the section by ``from_config``; a run keeps
its bookkeeping out of the attack object, so one instance can attack two batches at once."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from ebmctl.api import Attack
from ebmctl.attacks.base import DEFENDED_ONLY, OPTIONAL_SETTINGS, AttackConfig, build_attack
from ebmctl.attacks.bpda_eot import BPDAEOT
from ebmctl.defense import Defense
from ebmctl.models import EnergyModel, TaskModel
from ebmctl.nn.ebm import LightweightEBM
from ebmctl.plugins import get_registries
from ebmctl.testing import tiny_bundle
from ebmctl_classification.task import ClassificationTask

TASK = ClassificationTask()


def builtin_attacks() -> list[type[Attack]]:
    registry = get_registries().attacks
    return [registry.get(name) for name in ("bpda-eot", "pgd", "fgsm", "full-eot", "smooth-eot",
                                            "apgd-ce", "apgd-dlr", "transfer", "square")]


@pytest.mark.parametrize("cls", builtin_attacks(), ids=lambda c: c.name)
def test_every_declared_option_reaches_the_constructor_and_only_given_ones_are_passed(cls):
    # loss = dlr: the one loss every attack accepts (apgd-dlr refuses any other)
    section = AttackConfig(loss="dlr", eot_reps=3, square_p_init=0.5)
    assert cls.options <= set(OPTIONAL_SETTINGS)
    # every option given: a constructor keyword renamed without the declaration fails here
    every = build_attack(cls, section, defended=True, verify_reps=4, given=OPTIONAL_SETTINGS)
    assert every.options_given == {f"attack.{name}" for name in cls.options}
    assert (every.eot_reps, every.verify_reps) == (3, 4)
    # an undefended run never receives the settings about the defending EBM
    bare = build_attack(cls, section, defended=False, verify_reps=4, given=OPTIONAL_SETTINGS)
    assert bare.options_given == {f"attack.{name}" for name in cls.options - set(DEFENDED_ONLY)}
    assert (bare.eot_reps, bare.verify_reps) == (1, 1)
    # nothing given: the constructor's defaults hold
    assert build_attack(cls, section, defended=True, verify_reps=4).options_given == set()


def test_a_setting_is_read_only_by_the_attacks_that_declare_it():
    registry = get_registries().attacks
    section = AttackConfig(square_p_init=0.5, gradient="full")
    square = build_attack(registry.get("square"), section, defended=True, verify_reps=2,
                          given={"square_p_init", "gradient"})
    assert square.p_init == 0.5 and square.options_given == {"attack.square_p_init"}
    assert square.gradient_mode() == "none"
    apgd = build_attack(registry.get("apgd-ce"), section, defended=True, verify_reps=2,
                        given={"square_p_init", "gradient"})
    assert apgd.gradient_mode() == "full" and apgd.options_given == {"attack.gradient"}
    # not given: the constructor's default, whatever the section holds
    assert build_attack(registry.get("apgd-ce"), section, defended=True,
                        verify_reps=2).gradient_mode() == "bpda"


def test_the_base_class_declares_what_the_evaluation_reads():
    class Minimal(Attack):
        name = "minimal"

    a = Minimal.from_config(AttackConfig(eps=0.1, steps=3), defended=True, verify_reps=5)
    assert (a.eps, a.steps, a.verify_reps) == (0.1, 3, 5)
    assert a.gradient_mode() == "exact" and a.per_step_curve and not a.diagnostic
    assert a.options_given == frozenset()
    a.check_defense(Defense(TaskModel(nn.Identity())))  # accepts every defense
    registry = get_registries().attacks
    assert registry.get("transfer").per_step_curve is False
    assert registry.get("transfer")().gradient_mode() == "classifier only"


def _defense(steps: int = 2, reps: int = 2) -> tuple[Defense, torch.Tensor, torch.Tensor]:
    bundle = tiny_bundle(n=60, num_classes=3)
    xs, ys = bundle.train.x, bundle.train.y
    means = torch.stack([xs[ys == c].mean(0) for c in range(3)])
    lin = nn.Linear(64, 3)
    torch.manual_seed(0)  # test-only weight init
    with torch.no_grad():
        lin.weight.copy_(0.5 * (means - means.mean(0, keepdim=True)).flatten(1))
        lin.bias.zero_()
    model = TaskModel(nn.Sequential(nn.Flatten(), lin), "[0,1]").eval()
    ebm = EnergyModel(LightweightEBM(1, 8, 4, "silu"), 0.05, 1.0, 8, 1)
    return Defense(model, ebm, steps=steps, reps=reps), bundle.test.x[:6], bundle.test.y[:6]


def test_a_run_leaves_the_attack_as_it_was():
    defense, x, y = _defense()
    attack = BPDAEOT(eps=0.3, step_size=0.05, steps=2, eot_reps=2, verify_reps=2,
                     common_noise=True)
    before = dict(vars(attack))
    attack.run(defense, TASK, x, y, (0, "t"))
    assert vars(attack).keys() == before.keys()
    assert all(vars(attack)[k] is v for k, v in before.items())


def test_one_instance_attacks_two_batches_at_once_as_it_would_one_after_the_other():
    defense, x, y = _defense()
    # two batches of different sizes: fixed noise is drawn per batch size, so a run that read
    # the other's batch would draw other noise (or index past its rows)
    batches = [(x, y, (0, "a")), (x[:4], y[:4], (1, "b"))]
    barrier = threading.Barrier(2)

    class Waiting(BPDAEOT):
        def estimate(self, d, task, x_adv, yy, key):
            if key[-2:] == (0, 0) and threading.current_thread() is not threading.main_thread():
                barrier.wait(timeout=60)  # both runs are under way before either moves on
            return super().estimate(d, task, x_adv, yy, key)

    attack = Waiting(eps=0.3, step_size=0.05, steps=3, eot_reps=2, verify_reps=2,
                     common_noise=True, common_noise_defender=True)
    alone = [attack.run(defense, TASK, xb, yb, key) for xb, yb, key in batches]
    together: list = [None, None]

    def work(i):
        xb, yb, key = batches[i]
        together[i] = attack.run(defense, TASK, xb, yb, key)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for a, b in zip(alone, together):
        assert b is not None
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.ok_by_step, b.ok_by_step)
