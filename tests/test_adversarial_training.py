"""Adversarial training (``[adversarial]``, ebmctl/training/adversarial.py): it buys robustness,
the TRADES loss is the paper's, FGSM-RS starts uniformly in the ball, the training attack stays
in the threat model, crafting leaves BatchNorm alone, the artifact records the settings, and bad
settings are refused by key."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ebmctl.artifacts import load_artifact
from ebmctl.context import get_task
from ebmctl.contracts import DatasetBundle, Split
from ebmctl.errors import ConfigError
from ebmctl.models import TaskModel
from ebmctl.profiles import resolve
from ebmctl.seeds import make_generator
from ebmctl.testing import run_cli
from profile_runs import adversarial_settings, train_task_model
from ebmctl.training.adversarial import (
    AdversarialConfig,
    adversarial_loss,
    robust_accuracy,
    trades_kl,
    training_attack,
)

CPU = torch.device("cpu")


def _settings(*sets: str) -> AdversarialConfig:
    return adversarial_settings(resolve(None, list(sets)))


def _fragile_bundle(n: int = 600) -> DatasetBundle:
    """Two classes told apart by a faint ±0.05 pattern over every pixel (perfectly predictive,
    erased by an ε = 0.1 ℓ∞ perturbation) and by a bright bar's side (robust, but on the wrong
    side for 15% of the images): natural training may lean on the faint pattern, adversarial
    training at ε = 0.1 cannot."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    sign = (2 * y - 1).float().view(n, 1, 1, 1)
    pattern = torch.sign(torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(99)))
    x = 0.5 + 0.05 * sign * pattern
    side = torch.where(torch.rand(n, generator=g) < 0.15, 1 - y, y)
    for i in range(n):
        c = 0 if side[i] == 0 else 5
        x[i, :, :, c:c + 3] += 0.4
    x = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    k = n // 6
    return DatasetBundle("fragile", Split(x[2 * k:], y[2 * k:]), Split(x[:k], y[:k]),
                         Split(x[k:2 * k], y[k:2 * k]), 2, ["a", "b"])


def test_one_epoch_of_pgd_training_beats_natural_training_under_pgd(tmp_path):
    bundle = _fragile_bundle()
    common = ["model.epochs=1", "model.width=8", "model.batch_size=32", "model.lr=0.01",
              "adversarial.eps=0.1", "adversarial.norm=linf", "adversarial.steps=5",
              "adversarial.eval_steps=10"]
    robust = {}
    for method in ("none", "pgd"):
        cfg = resolve(None, common + [f"adversarial.method={method}"])
        task = get_task(cfg)
        out = train_task_model(cfg, bundle, task, tmp_path / f"{method}.safetensors", CPU)
        model = TaskModel.load(out, CPU)
        judge = _settings(*common, "adversarial.method=pgd", "adversarial.eval_steps=20")
        robust[method] = robust_accuracy(model, task, bundle.test.x, bundle.test.y, judge,
                                         make_generator(CPU, 0, "judge"), CPU)
    assert robust["pgd"] > robust["none"] + 0.15, robust


class _Linear(nn.Module):
    def __init__(self, d: int = 16, classes: int = 3):
        super().__init__()
        self.fc = nn.Linear(d, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.linspace(-2, 2, d * classes).view(classes, d).sin() * 3)
            self.fc.bias.copy_(torch.tensor([0.1, -0.2, 0.3][:classes]))

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_trades_loss_matches_a_hand_computation():
    task = get_task(resolve(None, []))
    model = _Linear()
    x = torch.linspace(0.05, 0.95, 4 * 16).view(4, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 1])
    adv = _settings("adversarial.method=trades", "adversarial.beta=3", "adversarial.eps=0.1",
                    "adversarial.norm=linf", "adversarial.steps=3")
    loss = adversarial_loss(model, task, x, y, adv, make_generator(CPU, 5, "t"))
    x_adv = training_attack(model, task, x, y, adv, make_generator(CPU, 5, "t"))
    # by hand, in float64: CE of the clean logits + β · mean_i Σ_c p_c (log p_c − log q_c)
    w, b = model.fc.weight.double(), model.fc.bias.double()
    z, z_adv = x.double().flatten(1) @ w.T + b, x_adv.double().flatten(1) @ w.T + b
    p = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in z.tolist()]
    q = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in z_adv.tolist()]
    ce = sum(-math.log(p[i][int(y[i])]) for i in range(4)) / 4
    kl = sum(sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p[i], q[i]))
             for i in range(4)) / 4
    assert kl > 1e-4  # the attack moved the prediction, so the β term is really tested
    assert loss.item() == pytest.approx(ce + 3 * kl, rel=1e-4, abs=1e-6)
    # and the KL is torch's own divergence, summed over classes
    ref = F.kl_div(F.log_softmax(z_adv, 1), F.log_softmax(z, 1), log_target=True,
                   reduction="none").sum(1)
    assert torch.allclose(trades_kl(z_adv, z), ref, atol=1e-9)


class _Flat(nn.Module):
    """Logits that do not depend on the image (zero input gradient): the attack's step is 0,
    so its output is its start."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.5, -0.5]))

    def forward(self, x):
        return self.bias.expand(len(x), 2) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_fgsm_rs_starts_uniformly_in_the_linf_ball():
    task = get_task(resolve(None, []))
    x = torch.full((4000, 1, 4, 4), 0.5)
    y = torch.zeros(4000, dtype=torch.long)
    adv = _settings("adversarial.method=fgsm-rs", "adversarial.eps=0.2",
                    "adversarial.norm=linf")
    delta = (training_attack(_Flat(), task, x, y, adv, make_generator(CPU, 1, "rs")) - x)
    d = delta.flatten()
    assert d.abs().max() <= 0.2 + 1e-6
    # U(-ε, ε): mean 0, std ε/√3, and each tenth of the interval holds a tenth of the draws
    assert abs(d.mean().item()) < 0.003
    assert d.std().item() == pytest.approx(0.2 / math.sqrt(3), rel=0.02)
    counts = torch.histc(d, bins=10, min=-0.2, max=0.2) / d.numel()
    assert torch.allclose(counts, torch.full((10,), 0.1), atol=0.01)
    # every image gets its own draw, and a different generator key another start
    again = training_attack(_Flat(), task, x, y, adv, make_generator(CPU, 2, "rs")) - x
    assert not torch.allclose(again, delta)


def test_fgsm_rs_l2_start_is_a_random_direction_inside_the_ball():
    task = get_task(resolve(None, []))
    x = torch.full((2000, 1, 4, 4), 0.5)
    adv = _settings("adversarial.method=fgsm-rs", "adversarial.eps=0.3", "adversarial.norm=l2")
    delta = training_attack(_Flat(), task, x, torch.zeros(2000, dtype=torch.long), adv,
                            make_generator(CPU, 1, "rs")) - x
    norms = delta.flatten(1).norm(dim=1)
    assert norms.max() <= 0.3 + 1e-6 and norms.min() < 0.03 and norms.max() > 0.27
    assert delta.flatten(1).mean(0).abs().max() < 0.02  # no preferred direction


@pytest.mark.parametrize("method", ["pgd", "trades", "fgsm-rs"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_training_attack_stays_within_eps_and_the_pixel_range(method, norm, eps):
    cfg = resolve(None, [f"adversarial.method={method}", f"adversarial.norm={norm}",
                         f"adversarial.eps={eps}", "adversarial.step_size=0.2",
                         "model.width=8"])
    from ebmctl.architectures import build_model

    task = get_task(cfg)
    net = build_model("task", cfg, _fragile_bundle(60), (0, "init"), task)[0]
    model = TaskModel(net, "[-1,1]", 8, 1).train()
    # pixels at both ends of the range, where the clamp to [0,1] must act
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(3)).round()
    x[:8] = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = torch.arange(16) % 2
    x_adv = training_attack(model, task, x, y, adversarial_settings(cfg),
                            make_generator(CPU, 0, "a"))
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert (size > eps / 4).any()  # it moved: the bound is not met by standing still


class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 16, 3)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def _bn_state(m: nn.Module) -> dict:
    return {k: v.clone() for k, v in m.state_dict().items() if "running" in k or "batches" in k}


@pytest.mark.parametrize("method,forwards", [("pgd", 1), ("fgsm-rs", 1), ("trades", 2)])
def test_crafting_runs_in_eval_mode_and_only_the_update_moves_batchnorm(method, forwards):
    task = get_task(resolve(None, []))
    adv = _settings(f"adversarial.method={method}", "adversarial.eps=0.1",
                    "adversarial.norm=linf")
    model = _BNNet().train()
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 3
    before = _bn_state(model)
    x_adv = training_attack(model, task, x, y, adv, make_generator(CPU, 0, "bn"))
    assert model.training and model.bn.training  # the caller's mode is restored
    for k, v in _bn_state(model).items():  # crafting (eval mode) left the statistics alone
        assert torch.equal(v, before[k]), k
    # the loss's forward passes are train-mode ones: the statistics move exactly as one
    # train-mode pass over x' (TRADES: over x, then x') moves them
    reference = copy.deepcopy(model)
    adversarial_loss(model, task, x, y, adv, make_generator(CPU, 0, "bn"))
    with torch.no_grad():
        if forwards == 2:
            reference(x)
        reference(x_adv)
    after, expected = _bn_state(model), _bn_state(reference)
    assert int(after["bn.num_batches_tracked"]) == forwards
    for k in after:
        assert torch.allclose(after[k].float(), expected[k].float(), atol=1e-6), k


def test_digits_run_keeps_the_best_robust_epoch_and_records_the_settings(tmp_path):
    out = tmp_path / "at.safetensors"
    r = run_cli(["train", "classifier", "--set", "model.epochs=2", "--set", "model.width=8",
                 "--set", "adversarial.method=fgsm-rs", "--set", "adversarial.eps=0.1",
                 "--set", "adversarial.norm=linf", "--set", "adversarial.eval_images=100",
                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    rec = load_artifact(out, "classifier").extra["adversarial"]
    assert rec["method"] == "fgsm-rs" and rec["eps"] == pytest.approx(0.1)
    assert rec["alpha"] == pytest.approx(0.125) and rec["craft_mode"] == "eval"
    history = load_artifact(out, "classifier").extra["history"]
    scores = [h["val_robust_accuracy"] for h in history]
    assert rec["best_epoch"] == 1 + scores.index(max(scores))
    assert rec["val_robust"] == pytest.approx(max(scores))
    assert 0 <= rec["test_robust"] <= rec["test"] <= 1
    shown = run_cli(["inspect", str(out)])
    assert shown.exit_code == 0
    assert "adversarial training: fgsm-rs" in shown.stdout and "linf" in shown.stdout
    log = json.loads(out.with_suffix(".log.json").read_text())
    assert log["adversarial"]["method"] == "fgsm-rs"


def test_default_threat_is_the_profiles_attack():
    adv = _settings("adversarial.method=pgd", "attack.norm=l2", "attack.eps_l2=0.7")
    assert (adv.norm, adv.eps) == ("l2", pytest.approx(0.7))
    assert adv.alpha == pytest.approx(2.5 * 0.7 / 10)
    assert _settings("adversarial.method=pgd").eps == pytest.approx(8 / 255)


@pytest.mark.parametrize("sets,key", [
    (["adversarial.method=madry"], "adversarial.method"),
    (["adversarial.method=fgsm-rs", "adversarial.steps=3"], "adversarial.steps"),
    (["adversarial.method=pgd", "adversarial.beta=2"], "adversarial.beta"),
    (["adversarial.method=pgd", "adversarial.eval_steps=10"], "adversarial.eval_steps"),
    (["adversarial.method=pgd", "adversarial.eps=1.5", "adversarial.norm=linf"],
     "adversarial.eps"),
    (["adversarial.method=pgd", "adversarial.eps=-0.1"], "adversarial.eps"),
    (["adversarial.method=pgd", "adversarial.norm=l3"], "adversarial.norm"),
])
def test_bad_settings_are_refused_naming_the_key(tmp_path, sets, key):
    args = ["train", "classifier", "--set", "model.epochs=1", "--out",
            str(tmp_path / "x.safetensors")]
    for s in sets:
        args += ["--set", s]
    r = run_cli(args)
    assert r.exit_code != 0
    assert key in r.stderr and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_training_attack_needs_a_method():
    with pytest.raises(ConfigError, match="none"):
        training_attack(_Flat(), get_task(resolve(None, [])), torch.zeros(1, 1, 2, 2),
                        torch.zeros(1, dtype=torch.long), _settings(), make_generator(CPU, 0))


def test_a_setting_the_method_ignores_is_refused_only_when_the_user_gave_it():
    from ebmctl.attacks.base import AttackConfig
    from ebmctl.training import adversarial

    fgsm, attack = AdversarialConfig(method="fgsm-rs", steps=3), AttackConfig(eps=0.1)
    resolved = adversarial.adversarial_settings(fgsm, attack)
    assert (resolved.norm, resolved.eps) == (attack.norm, pytest.approx(0.1))
    with pytest.raises(ConfigError, match=r"adversarial\.steps"):
        adversarial.adversarial_settings(fgsm, attack, given={"steps"})
    trades_beta = AdversarialConfig(method="pgd", beta=2.0)
    with pytest.raises(ConfigError, match=r"adversarial\.beta"):
        adversarial.adversarial_settings(trades_beta, attack, given={"beta"})
