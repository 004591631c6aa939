"""One Langevin step is the update of docs/algorithms.md#langevin-update,
x − τ²/(2T)·∇U(x) + τ·z, and a chain leaves the EBM's parameter gradients alone."""

from __future__ import annotations

import torch

from ebmctl.nn.ebm import LightweightEBM
from ebmctl.sampling.langevin import LangevinSettings, langevin


def test_langevin_step_matches_formula():
    class Quadratic(torch.nn.Module):
        def forward(self, x):
            return 0.5 * (x ** 2).flatten(1).sum(1)

    x0 = torch.randn(4, 1, 3, 3)
    s = LangevinSettings(tau=0.1, temperature=0.02)
    gen = torch.Generator().manual_seed(0)
    out = langevin(Quadratic(), x0, 1, s, gen)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    expected = x0 - (0.1 ** 2 / (2 * 0.02)) * x0 + 0.1 * z
    assert torch.allclose(out, expected, atol=1e-6)


def test_langevin_does_not_touch_parameter_grads():
    net = LightweightEBM(1, 8, 4)
    langevin(net, torch.rand(3, 1, 8, 8), 3, LangevinSettings(0.01, 5e-5),
             torch.Generator().manual_seed(1))
    assert all(p.grad is None for p in net.parameters())
    assert all(p.requires_grad for p in net.parameters())
