"""Hat EBM: sampling updates the right variables with the right formula, training lowers the
energy of data relative to samples, resume reproduces an uninterrupted run, `train hat` CLI."""

import json

import pytest
import torch
from torch import nn

from ebmctl.models import HatModel
from ebmctl.sampling.hat import HatSettings, hat_langevin, initial_state
from ebmctl.nn.hat import HatEBM
from ebmctl.profiles import resolve
from ebmctl.seeds import make_generator
from ebmctl.testing import run_cli, tiny_bundle

TINY = ["hat.width=8", "hat.generator_width=8", "hat.latent_dim=8", "train.batch_size=8",
        "train.mcmc_steps=5", "hat.bank_size=16", "langevin.temperature=1e-2", "hat.eps_y=0.02",
        "hat.eps_z=0.02", "train.lr_adam=1e-3", "train.log_every=1", "train.data_noise=0.01",
        "run.threads=1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _hat(latent=4, size=8):
    torch.manual_seed(0)
    return HatEBM("sngan-ebm", {"in_channels": 1, "image_size": size, "width": 8,
                                "spectral_norm": False},
                  "sngan-generator", {"latent_dim": latent, "image_size": size, "channels": 1,
                                      "width": 8, "bn_fixed": True})


def test_conditional_updates_only_y_joint_updates_both():
    net = _hat()
    z0, y0 = initial_state(net, 6, make_generator("cpu", 0, "init"), "cpu")
    assert torch.count_nonzero(y0) == 0  # chains start from the all-zero residual
    cond = HatSettings(0.05, 0.05, 1.0, "conditional")
    z, y = hat_langevin(net, z0, y0, 3, cond, make_generator("cpu", 1))
    assert torch.equal(z, z0) and not torch.equal(y, y0)
    joint = HatSettings(0.05, 0.05, 1.0, "joint")
    z, y = hat_langevin(net, z0, y0, 3, joint, make_generator("cpu", 1))
    assert not torch.equal(z, z0) and not torch.equal(y, y0)
    ablation = HatSettings(0.05, 0.05, 1.0, "joint", residual=False)
    z, y = hat_langevin(net, z0, y0, 3, ablation, make_generator("cpu", 1))
    assert not torch.equal(z, z0) and torch.count_nonzero(y) == 0
    # The generator's weights are never touched by sampling.
    assert all(p.requires_grad for p in net.parameters())


class _Quadratic(nn.Module):
    """H(x) = ½‖x − c‖², so ∇H = x − c."""

    def __init__(self, c):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c))

    def forward(self, x):
        return 0.5 * (x - self.c).pow(2).flatten(1).sum(1)


class _Linear(nn.Module):
    latent_dim = 2

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0, -2.0]]))

    def forward(self, z):
        return (z @ self.w.t()).view(-1, 1, 1, 1)


def test_joint_step_matches_equations_6_6_and_6_7():
    net = HatEBM.__new__(HatEBM)
    nn.Module.__init__(net)
    net.hat, net.generator, net.latent_shape = _Quadratic(0.5), _Linear(), (2,)
    z0, y0 = torch.tensor([[0.3, -0.1]]), torch.tensor([[[[0.2]]]])
    eps_y, eps_z, t, tau_res = 0.1, 0.2, 0.5, 3.0
    s = HatSettings(eps_y, eps_z, t, "joint", residual_prior=tau_res)
    z1, y1 = hat_langevin(net, z0, y0, 1, s, make_generator("cpu", 7))
    g = make_generator("cpu", 7)
    v_y, v_z = torch.randn(y0.shape, generator=g), torch.randn(z0.shape, generator=g)
    gz = z0 @ torch.tensor([1.0, -2.0])
    # Y first: drift ε²/(2T)·∇H plus the prior's ε²·τ_res·Y, then noise.
    y_exp = y0 - eps_y ** 2 / (2 * t) * (gz + y0 - 0.5) - eps_y ** 2 * tau_res * y0 + eps_y * v_y
    # Then Z with the new Y: ∇_Z H(G(Z)+Y) = (G(Z)+Y−c)·w.
    resid = (gz + y_exp.flatten() - 0.5)
    z_exp = z0 - eps_z ** 2 / (2 * t) * resid * torch.tensor([1.0, -2.0]) + eps_z * v_z
    assert torch.allclose(y1, y_exp, atol=1e-6) and torch.allclose(z1, z_exp, atol=1e-6)


def test_bad_settings_are_config_errors():
    from ebmctl.api import ConfigError

    with pytest.raises(ConfigError):
        HatSettings(0.1, 0.1, 1.0, "sideways")
    with pytest.raises(ConfigError):
        HatSettings(0.1, 0.1, 1.0, "conditional", residual=False)


def _gap(net, data, key):
    """mean H(data) − mean H(model samples) under a fixed sampling key."""
    s = HatSettings(0.02, 0.02, 1e-2, "conditional")
    gen = make_generator("cpu", *key)
    z0, y0 = initial_state(net, 32, gen, "cpu")
    z, y = hat_langevin(net, z0, y0, 5, s, gen)
    with torch.no_grad():
        return (net.hat(data).mean() - net.hat(net.generate(z) + y).mean()).item()


def test_training_lowers_data_energy_relative_to_samples(tmp_path):
    from profile_runs import build_hat, train_hat

    bundle = tiny_bundle(n=60, channels=1, size=8)
    cfg = resolve(None, TINY + ["train.steps=8", "train.checkpoint_every=100"])
    data = bundle.test.x * 2 - 1
    before = _gap(build_hat(cfg, bundle, "cpu")[0], data, (0, "eval"))
    out = train_hat(cfg, bundle, tmp_path / "hat.safetensors", torch.device("cpu"))
    model = HatModel.load(out, torch.device("cpu"))
    after = _gap(model.net, data, (0, "eval"))
    assert after < before and after < 0, (before, after)
    log = json.loads(out.with_suffix(".log.json").read_text())
    assert len(log["history"]) == 8 and "generator_loss" in log["history"][0]
    assert model.settings.mode == "conditional" and model.mcmc_steps == 5
    assert list(tmp_path.glob("hat.samples-*.png"))
    assert not (tmp_path / "hat.ckpt.safetensors").exists()


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_run(tmp_path, crash_on_call):
    import ebmctl.training.hat as th
    from profile_runs import train_hat

    bundle = tiny_bundle(n=48, channels=1, size=8)
    cfg = resolve(None, TINY + ["train.steps=4", "train.checkpoint_every=2"])
    full = train_hat(cfg, bundle, tmp_path / "full.safetensors", torch.device("cpu"))
    restore = crash_on_call(th, "generator_update", 3)
    with pytest.raises(KeyboardInterrupt):
        train_hat(cfg, bundle, tmp_path / "part.safetensors", torch.device("cpu"))
    assert (tmp_path / "part.ckpt.safetensors").exists()
    restore()
    part = train_hat(cfg, bundle, tmp_path / "part.safetensors", torch.device("cpu"),
                     resume=True)
    a = HatModel.load(full, torch.device("cpu")).net.state_dict()
    b = HatModel.load(part, torch.device("cpu")).net.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_train_hat_cli_and_synthesize(tmp_path):
    out = tmp_path / "hat.safetensors"
    sets = []
    for s in TINY + ["train.steps=2", "data.max_train=64", "hat.mode=joint"]:
        sets += ["--set", s]
    r = run_cli(["train", "hat", *sets, "--out", out])
    assert r.exit_code == 0, r.output
    r = run_cli(["synthesize", "--ebm", out, "--n-images", "6", "-k", "3", "--mode",
                 "conditional", "--out-dir", tmp_path / "syn", "--set", "run.threads=1"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "syn" / "report.json").read_text())
    assert rep["kind"] == "hat-ebm" and rep["mode"] == "conditional" and rep["steps"] == 3
    assert len(list((tmp_path / "syn" / "images").glob("*.png"))) == 6
    assert (tmp_path / "syn" / "grid.png").exists() and (tmp_path / "syn" / "grid-generator.png").exists()


def test_cli_bad_input_one_line(tmp_path):
    r = run_cli(["train", "hat", "--set", "hat.arch=sngan-generator", "--out",
                 tmp_path / "h.safetensors"])
    assert r.exit_code != 0 and "not an EBM" in r.stderr and "Traceback" not in r.output
    r = run_cli(["synthesize", "--ebm", tmp_path / "missing.safetensors"])
    assert r.exit_code != 0 and "not found" in r.stderr
    assert not (tmp_path / "h.safetensors").exists()
