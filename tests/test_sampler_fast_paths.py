"""The sampler's fast paths keep the sampler's results: per-step drift agreement, the same labels
after purification, exact equality of the eager path with the reference update, and a compile
fallback that cannot change results."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

import ebmctl.sampling.langevin as sampling
from ebmctl.bench import lightweight_net, step_agreement
from ebmctl.sampling.langevin import LangevinSettings, frozen, langevin, set_compile_default
from ebmctl.testing import tiny_bundle
from ebmctl.units import to_internal

TAU, TEMP = 0.01, 5e-5


def reference_langevin(net, x, steps, drift, scale, gen):
    """The update written out (docs/algorithms.md#langevin-update), fp32, parameters frozen."""
    with frozen(net):
        for _ in range(steps):
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(net(xg).sum(), xg)
            x = x - drift * g + scale * torch.randn(x.shape, generator=gen)
    return x.detach()


def template_labels(x01: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    """tiny_bundle's classifier: class c is a bright square at the c-th diagonal spot."""
    size = x01.shape[-1]
    side = max(1, size // 3)
    scores = []
    for c in range(num_classes):
        r0 = (c * size) // (num_classes + 1)
        scores.append(x01[:, :, r0:r0 + side, r0:r0 + side].mean((1, 2, 3)))
    return torch.stack(scores, 1).argmax(1)


def test_eager_path_equals_the_reference_update_exactly():
    net = lightweight_net(8, 1, 8, torch.device("cpu"))
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    s = LangevinSettings(TAU, TEMP, compile=False)
    got = langevin(net, x0, 5, s, torch.Generator().manual_seed(3))
    want = reference_langevin(net, x0, 5, s.drift, TAU, torch.Generator().manual_seed(3))
    assert torch.equal(got, want)
    assert all(p.requires_grad for p in net.parameters())  # frozen only while sampling


def test_channels_last_step_matches_fp32_step():
    net = lightweight_net(8, 1, 8, torch.device("cpu"))
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    agree = step_agreement(net, x, LangevinSettings(TAU, TEMP, channels_last=True, compile=False))
    assert agree["drift_cosine_min"] > 0.9999
    out = langevin(net, x, 3, LangevinSettings(TAU, TEMP, channels_last=True, compile=False),
                   torch.Generator().manual_seed(0))
    ref = langevin(net, x, 3, LangevinSettings(TAU, TEMP, compile=False),
                   torch.Generator().manual_seed(0))
    assert out.is_contiguous() and torch.allclose(out, ref, atol=1e-5)


def test_bf16_step_drift_agrees_with_fp32_and_purified_labels_match():
    """Per step, not per chain (the sampler is chaotic): one bf16 step's drift has cosine ≥ 0.95
    with the fp32 step's; a short purification of a fixed batch keeps every label."""
    net = lightweight_net(8, 1, 16, torch.device("cpu"))
    bundle = tiny_bundle(n=36)
    x01 = bundle.test.x
    x = to_internal(x01)
    agree = step_agreement(net, x, LangevinSettings(TAU, TEMP, precision="bf16",
                                                    channels_last=True, compile=False))
    assert agree["drift_cosine_min"] >= 0.95, agree
    labels = {}
    for precision in ("fp32", "bf16"):
        s = LangevinSettings(TAU, TEMP, precision=precision, compile=False)
        z = langevin(net, x, 10, s, torch.Generator().manual_seed(1))
        labels[precision] = template_labels((z + 1) / 2)
    assert torch.equal(labels["fp32"], template_labels(x01))  # the check can fail: it is informative
    assert torch.equal(labels["bf16"], labels["fp32"])


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    class Broken(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            raise RuntimeError("no C++ compiler")

    calls = []

    def fake_compile(net, **kw):
        calls.append(kw)
        return Broken(net)

    monkeypatch.setattr(torch, "compile", fake_compile)
    net = lightweight_net(8, 1, 8, torch.device("cpu"))
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = langevin(net, x0, 3, LangevinSettings(TAU, TEMP, compile=True),
                       torch.Generator().manual_seed(2))
        again = langevin(net, x0, 3, LangevinSettings(TAU, TEMP, compile=True),
                         torch.Generator().manual_seed(2))
    want = langevin(net, x0, 3, LangevinSettings(TAU, TEMP, compile=False),
                    torch.Generator().manual_seed(2))
    assert torch.equal(got, want) and torch.equal(again, want)
    assert len(calls) == 1
    assert sum("torch.compile failed" in str(w.message) for w in caught) == 1


def test_compile_default_follows_the_process_setting(monkeypatch):
    seen = []
    monkeypatch.setattr(sampling, "_compiled_energy_and_grad",
                        lambda net, x, p: (seen.append(1), sampling.energy_and_grad(net, x, p))[1])
    net = lightweight_net(8, 1, 8, torch.device("cpu"))
    x0 = torch.rand(2, 1, 8, 8)
    try:
        set_compile_default(True)
        assert LangevinSettings(TAU, TEMP).use_compile
        langevin(net, x0, 2, LangevinSettings(TAU, TEMP), torch.Generator())
        assert len(seen) == 2
        assert not LangevinSettings(TAU, TEMP, compile=False).use_compile
    finally:
        set_compile_default(False)
    langevin(net, x0, 2, LangevinSettings(TAU, TEMP), torch.Generator())
    assert len(seen) == 2


@pytest.mark.parametrize("user_value,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_policy_is_passive_unless_the_user_chose(user_value, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user_value:
        env["OMP_WAIT_POLICY"] = user_value
    code = ("import os, ebmctl.openmp_policy as p; "
            "print(os.environ['OMP_WAIT_POLICY'], p.SET_BY_EBMCTL)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [expected, str(user_value is None)]


def test_cpu_gradient_blocks_give_the_whole_batch_result():
    net = lightweight_net(8, 1, 8, torch.device("cpu"))
    x0 = torch.rand(40, 1, 8, 8) * 2 - 1
    blocked = LangevinSettings(TAU, TEMP, compile=False, block_rows=16)  # blocks of 16, 16, 8
    whole = LangevinSettings(TAU, TEMP, compile=False, block_rows=0)
    assert sampling.cpu_block_rows(x0, net, blocked) == 16
    assert sampling.cpu_block_rows(x0, net, whole) == 0
    a = langevin(net, x0, 3, blocked, torch.Generator().manual_seed(4))
    b = langevin(net, x0, 3, whole, torch.Generator().manual_seed(4))
    assert torch.allclose(a, b, atol=1e-6)


def test_cpu_blocks_follow_image_size_and_skip_coupled_rows():
    s = LangevinSettings(TAU, TEMP)
    net = lightweight_net(8, 1, 8, torch.device("cpu"))
    assert sampling.cpu_block_rows(torch.zeros(1500, 3, 32, 32), net, s) == 64
    assert sampling.cpu_block_rows(torch.zeros(800, 1, 8, 8), net, s) == 0  # fits one block
    bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert sampling.cpu_block_rows(torch.zeros(1500, 3, 32, 32), bn.train(), s) == 0
    assert sampling.cpu_block_rows(torch.zeros(1500, 3, 32, 32), bn.eval(), s) == 64
