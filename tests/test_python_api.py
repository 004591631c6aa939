"""The library API for users who bring their own classifier: ``ebmctl.defend``,
``ebmctl.evaluate``, ``ebmctl.load_ebm``, and torchattacks driving a defended model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ebmctl
from ebmctl.defense import average_outputs
from ebmctl.models import EnergyModel
from ebmctl.errors import ArtifactError, ConfigError, InputError
from ebmctl.nn.ebm import LightweightEBM

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


class DigitsNet(nn.Module):
    """A user's own classifier: [0,1] images [B,1,8,8] → 10 logits."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(16 * 64, 10))

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope="module")
def digits():
    """A small digits classifier trained for a few seconds, and 96 held-out test images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    train, test = perm[:1500], perm[1500:1596]
    torch.manual_seed(0)  # test-only weight init
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for step in range(300):
        idx = train[torch.randint(0, len(train), (64,), generator=g)]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert acc > 0.85, acc
    return model, x[test], y[test]


def tiny_ebm(activation: str = "leaky_relu", tau: float = 0.05, temperature: float = 1.0
             ) -> EnergyModel:
    torch.manual_seed(1)  # test-only weight init
    net = LightweightEBM(1, 8, 8, activation=activation).eval()
    return EnergyModel(net, tau, temperature, 8, 1)


def test_defend_without_ebm_is_the_model_itself(digits):
    model, x, _ = digits
    d = ebmctl.defend(model, None)
    assert not d.stochastic
    xg = x[:5].clone().requires_grad_(True)
    out = d(xg)
    assert torch.equal(out, model(x[:5]))
    (g,) = torch.autograd.grad(out[:, 3].sum(), xg)
    xr = x[:5].clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(model(xr)[:, 3].sum(), xr)
    assert torch.equal(g, gr)


def test_forward_is_the_eot_average_of_reps_purified_copies(digits):
    model, x, _ = digits
    d = ebmctl.defend(model, tiny_ebm(), steps=4, reps=3, seed=7)
    with torch.no_grad():
        out = d(x[:6])
        # the first call is keyed (seed, "defend", 0): rebuild it from the CLI's Defense
        reps = d.defense.replicates(x[:6], 3, (7, "defend", 0))
        expected = average_outputs(d.defense.outputs_of(reps), "logits")
    assert out.shape == (6, 10)
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(reps[0], x[:6])  # purification moved the images


def test_noise_is_fresh_per_call_and_reproducible_per_seed(digits):
    model, x, _ = digits
    d = ebmctl.defend(model, tiny_ebm(), steps=3, reps=2, seed=3)
    with torch.no_grad():
        a, b = d(x[:4]), d(x[:4])
        assert not torch.allclose(a, b)  # an attacker's EOT sees the randomness
        assert torch.allclose(d.reseed()(x[:4]), a)
        other = ebmctl.defend(model, tiny_ebm(), steps=3, reps=2, seed=3)
        assert torch.allclose(other(x[:4]), a)
    assert d.calls == 1 and d.defense.image_steps == 3 * 4 * 2 * 3


def test_bpda_backward_is_straight_through_the_chain(digits):
    model, x, y = digits
    d = ebmctl.defend(model, tiny_ebm(), steps=4, reps=3, seed=5, gradient="bpda")
    xg = x[:6].clone().requires_grad_(True)
    loss = F.cross_entropy(d(xg), y[:6], reduction="sum")
    (g,) = torch.autograd.grad(loss, xg)
    # BPDA by hand: the gradient w.r.t. each purified copy, passed unchanged to the input
    reps = d.defense.replicates(x[:6], 3, (5, "defend", 0)).requires_grad_(True)
    ref = F.cross_entropy(average_outputs(d.defense.outputs_of(reps), "logits"), y[:6],
                          reduction="sum")
    (gr,) = torch.autograd.grad(ref, reps)
    assert torch.allclose(g, gr.sum(0), atol=1e-6)
    assert g.abs().sum() > 0


def test_full_gradient_follows_the_chain_of_a_smooth_ebm(digits):
    """gradient="full" differentiates through the Langevin steps: on a smooth (SiLU) EBM its
    gradient matches central finite differences of the defended loss under fixed noise."""
    model, x, y = digits
    model64 = DigitsNet()
    model64.load_state_dict(model.state_dict())
    model64 = model64.double().eval()
    ebm = tiny_ebm("silu", tau=0.5, temperature=0.05)  # strong drift: a non-identity Jacobian
    ebm.net.double()
    d = ebmctl.defend(model64, ebm, steps=3, reps=2, seed=11, gradient="full")
    x0, y0 = x[:2].double(), y[:2]

    def loss_at(xv):
        d.reseed()
        xv = xv.clone().requires_grad_(True)
        loss = F.cross_entropy(d(xv), y0, reduction="sum")
        return loss, xv

    loss, xv = loss_at(x0)
    (g,) = torch.autograd.grad(loss, xv)
    v = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = 1e-5
    fd = (loss_at(x0 + h * v)[0] - loss_at(x0 - h * v)[0]).item() / (2 * h)
    assert (g * v).sum().item() == pytest.approx(fd, rel=1e-3, abs=1e-6)


def test_defended_model_behaves_like_any_module(digits):
    model, x, _ = digits
    d = ebmctl.defend(model, tiny_ebm(), steps=2, reps=2).eval().to("cpu")
    for n in (1, 7):
        assert d(x[:n]).shape == (n, 10)
    keys = list(d.state_dict())
    assert len(keys) == len(set(keys)) and any(k.startswith("ebm_net.") for k in keys)
    d.train()
    assert d.model.training and not d.ebm_net.training  # the purifier never trains
    with pytest.raises(InputError):
        d(x[0])


def test_input_range_other_than_unit(digits):
    """A model taking [0,255] pixels: the wrapper receives [0,255] images and purifies in [0,1]
    units, so it matches the [0,1] wrapper of the same model under the same noise."""
    model, x, _ = digits

    class Bytes(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, v):
            return self.inner(v / 255.0)

    a = ebmctl.defend(model, tiny_ebm(), steps=3, reps=2, seed=2)
    b = ebmctl.defend(Bytes(), tiny_ebm(), steps=3, reps=2, seed=2, input_range=(0, 255))
    with torch.no_grad():
        assert torch.allclose(a(x[:4]), b(x[:4] * 255.0), atol=1e-4)


@pytest.mark.parametrize("kw", [{"gradient": "exact"}, {"average": "median"}, {"reps": 0},
                                {"steps": -1}, {"input_range": (1, 0)}])
def test_bad_arguments_are_config_errors(digits, kw):
    with pytest.raises(ConfigError):
        ebmctl.defend(digits[0], tiny_ebm(), **{"steps": 1, "reps": 1, **kw})


def test_load_ebm_by_shipped_name_and_errors(tmp_path):
    ebm = ebmctl.load_ebm("cifar10")
    assert ebm.image_size == 32 and ebm.channels == 3 and ebm.tau > 0
    with pytest.raises(InputError, match="shipped"):
        ebmctl.load_ebm("cifar100")
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError):
        ebmctl.load_ebm(bad)


def test_evaluate_is_callable_and_the_package_still_imports():
    import ebmctl.evaluate.report as report
    from ebmctl.api import evaluate

    assert callable(ebmctl.evaluate) and callable(report.format_table)
    assert ebmctl.evaluate.report is report and callable(evaluate)


def test_evaluate_returns_the_cli_report(digits):
    from ebmctl.evaluate.report import format_table

    model, x, y = digits
    rep = ebmctl.evaluate(model, x[:16], y[:16], attacks=["pgd", "fgsm"], eps=0.1, steps=5,
                          step_size=0.03, batch_size=8, seeds=[0, 1])
    r = rep.results["undefended"]
    assert set(r.attacks) == {"pgd", "fgsm"}
    assert len(r.attacks["pgd"].accuracy_curve) == 6 and len(r.adversarial.ci) == 2
    assert r.adversarial.mean <= min(a.adversarial.mean for a in r.attacks.values())
    assert rep.sanity.checks and r.eps0_control is not None
    assert rep.threat.eps == pytest.approx(0.1) and rep.seeds == [0, 1]
    # the CLI's report type; its JSON is what `ebmctl attack` writes, and it reads the same
    assert type(rep).__name__ == "AttackReport"
    assert type(rep).from_json(json.loads(json.dumps(rep.to_json()))) == rep
    assert any("worst case" in row[1] for row in format_table(rep))
    with pytest.raises(InputError):
        ebmctl.evaluate(model, x[:4] * 16, y[:4])
    with pytest.raises(InputError):
        ebmctl.evaluate(model, x[:4], y[:3])


def test_evaluate_attacks_a_defended_model_with_bpda_eot(digits):
    model, x, y = digits
    d = ebmctl.defend(model, tiny_ebm(), steps=2, reps=2)
    rep = ebmctl.evaluate(d, x[:8], y[:8], eps=0.1, steps=3, step_size=0.03, eot_reps=2,
                          batch_size=8, sanity=False)
    r = rep.results["defended"]
    assert list(r.attacks) == ["bpda-eot"] and r.image_steps > 0
    assert rep.defense["steps"] == 2 and rep.defense["eot_reps"] == 2


# --- torchattacks (a test dependency only) ------------------------------------------------

def test_torchattacks_pgd_matches_ebmctl_pgd(digits):
    """Same fixed start, ε, α and steps: torchattacks' PGD against ``ebmctl.defend(model,
    None)`` and ebmctl's PGD (Alg. 1) leave the same accuracy, within one image."""
    import torchattacks  # the test extra installs it (pyproject.toml)

    model, x, y = digits
    eps, alpha, steps = 0.08, 0.02, 10
    d = ebmctl.defend(model, None).eval()
    adv = torchattacks.PGD(d, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    assert (adv - x).abs().max() <= eps + 1e-6
    with torch.no_grad():
        theirs = (d(adv).argmax(1) == y).float().mean().item()
    rep = ebmctl.evaluate(d, x, y, attacks=["pgd"], eps=eps, step_size=alpha, steps=steps,
                          random_start=False, batch_size=len(x), sanity=False)
    ours = rep.results["undefended"].adversarial.mean
    natural = rep.results["undefended"].natural.mean
    print(f"torchattacks PGD {theirs:.4f}, ebmctl PGD {ours:.4f}, natural {natural:.4f}, "
          f"n={len(x)}")
    assert theirs < natural - 0.2  # the attack does something
    assert abs(theirs - ours) <= 1 / len(x) + 1e-9


def test_torchattacks_eotpgd_lowers_a_defended_models_accuracy(digits):
    import torchattacks  # the test extra installs it (pyproject.toml)

    model, x, y = digits
    x, y = x[:32], y[:32]
    d = ebmctl.defend(model, tiny_ebm(), steps=3, reps=2).eval()
    with torch.no_grad():
        clean = (d(x).argmax(1) == y).float().mean().item()
    adv = torchattacks.EOTPGD(d, eps=0.1, alpha=0.025, steps=8, eot_iter=2)(x, y)
    with torch.no_grad():
        robust = (d(adv).argmax(1) == y).float().mean().item()
    assert clean > 0.8 and robust < clean - 0.3, (clean, robust)


def _readme_block(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_section_runs_as_written(capsys):
    code = _readme_block("Use it from Python")
    assert "ebmctl.defend" in code and "torchattacks" in code
    exec(compile(code, "README.md", "exec"), {})
    assert "robust accuracy" in capsys.readouterr().out
