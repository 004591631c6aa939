"""ebmctl.models: the plain EBM and the Hat EBM load from their artifacts as one EnergyFunction
(energy [B] of [0,1] images and its input gradient), so OOD scoring treats both alike."""

import json

import pytest
import torch

from builders import random_artifact, random_classifier, random_ebm
from ebmctl.errors import ArtifactError
from ebmctl.models import EnergyModel, HatModel, load_energy_model

CPU = torch.device("cpu")
DATA = {"range": "[-1,1]", "image_size": 8, "channels": 1, "dataset": "digits"}


def _plain(tmp_path):
    args = {"in_channels": 1, "image_size": 8, "channels": 4, "activation": "leaky_relu",
            "leak": 0.05}
    return random_ebm(tmp_path / "ebm.safetensors", arch_args=args, data=DATA, temperature=0.5)


def _hat(tmp_path):
    args = {"hat_arch": "sngan-ebm",
            "hat_args": {"in_channels": 1, "image_size": 8, "width": 8, "spectral_norm": False},
            "generator_arch": "sngan-generator",
            "generator_args": {"latent_dim": 4, "image_size": 8, "channels": 1, "width": 8}}
    return random_artifact(tmp_path / "hat.safetensors", kind="hat-ebm", arch="hat-ebm",
                           arch_args=args, data=DATA,
                           extra={"eps_y": 0.02, "eps_z": 0.02, "temperature": 0.25,
                                  "mode": "conditional", "mcmc_steps": 3})


@pytest.mark.parametrize("make,cls,kind,temperature", [
    (_plain, EnergyModel, "ebm", 0.5), (_hat, HatModel, "hat-ebm", 0.25)])
def test_both_energy_models_load_as_one_energy_function(tmp_path, make, cls, kind, temperature):
    model = load_energy_model(make(tmp_path), CPU)
    assert type(model) is cls and model.kind == kind and model.temperature == temperature
    assert (model.image_size, model.channels) == (8, 1) and model.path.endswith(".safetensors")
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    e = model.energy01(x)
    assert e.shape == (5,)
    # The energy of a [0,1] image is U_net(2x - 1)/T: the temperature divides the net's output.
    z = x * 2 - 1
    assert torch.allclose(e, model.net(z) / temperature)
    g = model.grad01(x)
    assert g.shape == x.shape and not x.requires_grad
    # grad01 is the derivative of energy01: a small step along it raises the energy by |g|^2 h.
    h = 1e-3
    step = h * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    rise = (model.energy01(x + step) - e) / h
    assert torch.allclose(rise, g.flatten(1).norm(dim=1), rtol=0.05, atol=1e-4)
    assert all(p.grad is None for p in model.net.parameters())


def test_an_image_of_another_size_is_adapted_first(tmp_path):
    model = load_energy_model(_plain(tmp_path), CPU)
    big = torch.rand(2, 3, 16, 16)
    assert model.energy01(big).shape == (2,) and model.grad01(big).shape == big.shape


def test_load_energy_model_rejects_other_artifacts(tmp_path):
    path = random_classifier(tmp_path / "clf.safetensors", data=DATA)
    with pytest.raises(ArtifactError, match="'classifier' artifact"):
        load_energy_model(path, CPU)


def test_ood_reports_a_hat_ebm_with_its_own_kind_and_temperature(tmp_path):
    from ebmctl.commands.ood import ood_settings
    from ebmctl.ood import run_ood
    from ebmctl.profiles import resolve

    cfg = resolve(None, ["ood.n_images=20", "run.threads=1"])
    hat = _hat(tmp_path)
    rep = run_ood(ood_settings(cfg, hat), hat, CPU, tmp_path / "ood.json", sets=["uniform-noise"])
    assert rep["model_kind"] == "hat-ebm" and rep["temperature"] == 0.25
    assert json.loads((tmp_path / "ood.json").read_text())["model_kind"] == "hat-ebm"
