"""SNGAN-style architectures: shapes, ranges, registration and artifact round trips."""

import math

import pytest
import torch

from ebmctl.artifacts import build_model, load_artifact, model_tensors, save_artifact
from ebmctl.nn.fixer import ImageToImageResNet
from ebmctl.nn.sngan import (
    Encoder,
    SNGANDiscriminatorEBM,
    SNGANGenerator,
    project_to_sphere,
)
from ebmctl.plugins import get_registries


def test_generator_outputs_images_in_range():
    g = SNGANGenerator(latent_dim=16, image_size=16, channels=3, width=16)
    x = g(torch.randn(5, 16))
    assert x.shape == (5, 3, 16, 16)
    assert x.abs().max() <= 1.0


def test_generator_rejects_bad_size():
    with pytest.raises(ValueError, match="image_size"):
        SNGANGenerator(image_size=24)


def test_fixed_bn_generator_is_per_sample():
    # With fixed batch-norm statistics a sample's output must not depend on the batch.
    g = SNGANGenerator(latent_dim=8, image_size=8, channels=1, width=8, bn_fixed=True).train()
    z = torch.randn(4, 8)
    assert torch.allclose(g(z)[:1], g(z[:1]), atol=1e-6)


def test_sngan_ebm_energy_shape_and_param_count():
    net = SNGANDiscriminatorEBM(in_channels=3, image_size=32, width=16)
    assert net(torch.randn(3, 3, 32, 32)).shape == (3,)
    # The authors' 32x32 width-256 layout has about 4.20M parameters.
    big = SNGANDiscriminatorEBM(width=256, spectral_norm=False)
    n = sum(p.numel() for p in big.parameters())
    assert 4.1e6 < n < 4.3e6


def test_spectral_norm_bounds_linear_head():
    net = SNGANDiscriminatorEBM(in_channels=1, image_size=8, width=8, spectral_norm=True).train()
    for _ in range(30):  # power iterations converge while training-mode forwards run
        net(torch.randn(2, 1, 8, 8))
    w = net.head.weight
    assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("sn", [True, False])
def test_sngan_ebm_round_trips_through_artifact(tmp_path, sn):
    args = {"in_channels": 1, "image_size": 8, "width": 8, "spectral_norm": sn}
    net = get_registries().models.get("sngan-ebm").build(**args).train()
    net(torch.randn(4, 1, 8, 8))  # move the power-iteration vectors off their init
    net.eval()
    path = save_artifact(tmp_path / "e.safetensors", model_tensors(net), kind="ebm",
                         arch="sngan-ebm", arch_args=args)
    again = build_model(load_artifact(path, "ebm"))
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(net(x), again(x), atol=1e-6)


def test_fixer_net_keeps_resolution_any_size():
    f = ImageToImageResNet(channels=3, width=8, n_blocks=2)
    for size in (8, 13):
        y = f(torch.rand(2, 3, size, size) * 2 - 1)
        assert y.shape == (2, 3, size, size) and y.abs().max() <= 1.0


def test_encoder_projects_to_sphere():
    enc = Encoder(in_channels=3, image_size=16, latent_dim=10, width=8)
    z = enc(torch.randn(4, 3, 16, 16))
    assert z.shape == (4, 10)
    assert torch.allclose(z.norm(dim=1), torch.full((4,), math.sqrt(10)), atol=1e-4)
    assert torch.allclose(project_to_sphere(z), z, atol=1e-5)


def test_registered_kinds():
    models = get_registries().models
    assert models.get("sngan-generator").kind == "generator"
    assert models.get("sngan-ebm").kind == "ebm"
    assert models.get("fixer-resnet").kind == "fixer"
    assert models.get("encoder").kind == "encoder"
