"""Smooth EBMs: ``ebm.activation = smooth_leaky | silu | softplus``.

The smooth leaky ReLU is MEFA's f(x) = 0.51x + 0.49·√(x² + 1e-4) − 0.0049 (Du, Hill & Cai
2026). Unlike a LeakyReLU EBM, whose exact Langevin-chain gradient equals BPDA almost
everywhere, a smooth EBM has a Hessian, so the chain gradient carries −d·∇²U terms.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ebmctl.artifacts import load_artifact, load_model
from ebmctl.attacks.gradients import langevin_differentiable, smoothed_copy
from ebmctl.nn.ebm import LightweightEBM, SmoothLeakyReLU, make_activation
from ebmctl.profiles import resolve
from ebmctl.sampling.langevin import LangevinSettings, langevin
from ebmctl.testing import run_cli

TINY = ["run.threads=1", "data.max_train=48", "train.steps=1", "train.mcmc_steps=2",
        "train.batch_size=8", "train.bank_size=16", "ebm.channels=4", "langevin.precision=fp32",
        "train.log_every=1", "output.grid_every=1000", "train.checkpoint_every=1000",
        "train.health_chains=0"]


def _sets(items):
    return [a for s in items for a in ("--set", s)]


def test_smooth_leaky_is_the_mefa_function():
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    f = SmoothLeakyReLU()
    expected = 0.51 * x + 0.49 * torch.sqrt(x ** 2 + 1e-4) - 0.0049
    torch.testing.assert_close(f(x), expected, rtol=0, atol=1e-15)
    assert f(torch.zeros(1, dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-15)
    # slopes: a + b = 1.0 far right, a − b = 0.02 far left
    z = torch.tensor([-50.0, 50.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(f(z).sum(), z)
    torch.testing.assert_close(g, torch.tensor([0.02, 1.0], dtype=torch.float64),
                               rtol=0, atol=1e-6)
    # other coefficients are used as given
    g2 = make_activation("smooth_leaky", smooth_leaky={"linear": 0.6, "root": 0.4, "eps": 0.01,
                                                        "offset": 0.04})
    torch.testing.assert_close(g2(x), 0.6 * x + 0.4 * torch.sqrt(x ** 2 + 0.01) - 0.04)


def test_profile_keys_and_quick_smooth_profile():
    cfg = resolve("quick-smooth")
    quick = resolve("quick")
    differ = {k for k, v in cfg.values.items() if quick.values[k] != v}
    assert differ == {"ebm.activation"} and cfg["ebm.activation"] == "smooth_leaky"
    assert (cfg["ebm.smooth_linear"], cfg["ebm.smooth_root"], cfg["ebm.smooth_eps"],
            cfg["ebm.smooth_offset"]) == (0.51, 0.49, 1e-4, 0.0049)
    r = run_cli(["train", "ebm", "--set", "ebm.activation=smooth_relu", "--out", "x.safetensors"])
    assert r.exit_code != 0 and "smooth_leaky" in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize("arch,activation,recipe", [
    ("lightweight", "smooth_leaky", "convergent"),
    ("lightweight", "silu", "convergent"),
    ("lightweight", "softplus", "convergent"),
    ("sngan-ebm", "smooth_leaky", "midrun"),
])
def test_activation_trains_and_round_trips_through_the_artifact(tmp_path, arch, activation,
                                                                 recipe):
    out = tmp_path / "e.safetensors"
    extra = ["train.target_horizon=4"] if recipe == "midrun" else []
    r = run_cli(["train", "ebm", "--recipe", recipe, *_sets(TINY + extra), "--set",
                 f"ebm.arch={arch}", "--set", f"ebm.activation={activation}",
                 "--set", "ebm.smooth_eps=0.01", "--set", "ebm.smooth_offset=0.0049", "--out", out])
    assert r.exit_code == 0, r.output
    art = load_artifact(out, "ebm")
    assert art.arch_args["activation"] == activation
    if activation == "smooth_leaky":
        assert art.arch_args["smooth_leaky"] == {"linear": 0.51, "root": 0.49, "eps": 0.01,
                                                 "offset": 0.0049}
    else:
        assert "smooth_leaky" not in art.arch_args
    net, _ = load_model(out, "ebm")
    kind = {"smooth_leaky": SmoothLeakyReLU, "silu": nn.SiLU, "softplus": nn.Softplus}[activation]
    acts = [m for m in net.modules() if isinstance(m, kind)]
    assert acts and not any(isinstance(m, (nn.LeakyReLU, nn.ReLU)) for m in net.modules())
    if activation == "smooth_leaky":
        assert all(m.eps == 0.01 for m in acts)
    # the reloaded weights are the trained ones, and the network evaluates
    state = net.state_dict()
    assert all(torch.equal(state[k], art.tensors["model." + k]) for k in state)
    channels, size = art.json("data")["channels"], art.json("data")["image_size"]
    assert torch.isfinite(net(torch.rand(2, channels, size, size) * 2 - 1)).all()


def _smooth_case(steps=6):
    torch.manual_seed(0)  # test-only weight init
    net = LightweightEBM(1, 8, 8, "smooth_leaky").double()
    settings = LangevinSettings(0.05, 1e-3)  # a large drift makes the Hessian term visible
    gen = torch.Generator().manual_seed(7)
    noise = torch.randn(steps, 4, 1, 8, 8, generator=gen, dtype=torch.float64)
    x0 = torch.rand(4, 1, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
    w = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    return net, settings, noise, x0, w


def test_smooth_ebm_chain_gradient_is_not_bpda_and_matches_finite_differences():
    net, settings, noise, x0, w = _smooth_case()

    def f(x):
        out = langevin_differentiable(net, x, 6, settings, noise=lambda k: noise[k], segment=2)
        return (out * w).sum()

    x = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x)
    # BPDA treats the chain as the identity: its gradient of <w, x_K> is w
    assert (g - w).abs().max() > 1e-2
    v = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=x0.dtype)
    h = 1e-6
    fd = (f(x0 + h * v) - f(x0 - h * v)) / (2 * h)
    assert abs(fd.item() - (g * v).sum().item()) < 1e-6 * max(1.0, abs(fd.item()))
    # the differentiable chain runs the sampler's chain
    out = langevin_differentiable(net, x0, 6, settings, noise=lambda k: noise[k])
    ref = langevin(copy.deepcopy(net).float(), x0.float(), 6, settings,
                   noise=lambda k: noise[k].float())  # the sampler runs in float32
    torch.testing.assert_close(out.detach().float(), ref, atol=1e-5, rtol=1e-5)


def test_smoothed_backward_copy_leaves_a_smooth_ebm_alone():
    net, *_ = _smooth_case()
    _, replaced = smoothed_copy(net, 0.1)
    assert replaced == 0


def test_purify_and_the_attacks_run_on_a_smooth_ebm_artifact(tmp_path):
    import sys
    from pathlib import Path

    from builders import random_ebm

    sys.path.insert(0, str(Path(__file__).parent / "corpus"))
    from make_corpus import DATA, EBM_ARGS, save_valid

    valid = save_valid(tmp_path / "art")
    args = {**EBM_ARGS, "activation": "smooth_leaky",
            "smooth_leaky": {"linear": 0.51, "root": 0.49, "eps": 1e-4, "offset": 0.0049}}
    ebm = random_ebm(tmp_path / "smooth.safetensors", arch_args=args, data=DATA,
                     task="classification")
    from ebmctl.evaluate.plots import save_image01

    img = tmp_path / "digit.png"
    save_image01(torch.rand(1, 8, 8), img)
    r = run_cli(["purify", "--ebm", ebm, "-k", "3", "--out-dir", tmp_path / "out", img])
    assert r.exit_code == 0, r.output
    r = run_cli(["attack", "-m", valid["classifier"], "--ebm", ebm, "--defended-only",
                 "--method", "bpda-eot,full-eot,smooth-eot,apgd-ce", "--n-images", "4",
                 "--out", tmp_path / "rep.json",
                 *_sets(["defense.steps=3", "defense.eot_reps=2", "attack.eot_reps=2",
                         "attack.steps=2", "attack.restarts=1", "attack.sanity=false",
                         "langevin.precision=fp32", "run.threads=1"])])
    assert r.exit_code == 0, r.output

