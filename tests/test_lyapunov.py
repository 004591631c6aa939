"""Benettin exponents and forgetting curves on energies whose answer is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ebmctl.dynamics import benettin as ly
from ebmctl.dynamics import forgetting as fg
from ebmctl.errors import ConfigError
from ebmctl.sampling.langevin import LangevinSettings
from ebmctl.seeds import make_generator

# Diagonal quadratic energy on 1×4×4 images: one slow direction (factor 1 − 0.2·0.5 = 0.9),
# the others much faster (factors ≤ 0.6), so Benettin converges quickly to log 0.9.
EIGEN = torch.tensor([0.5] + [2.0] * 7 + [3.0] * 8, dtype=torch.float64).reshape(1, 1, 4, 4)
DRIFT = 0.2


def quadratic_grad(x: torch.Tensor) -> torch.Tensor:
    return x * EIGEN.to(x)


def start_states(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_quadratic_energy_matches_closed_form_for_every_eta():
    settings = ly.ExponentSettings(etas=[0.01, 1.0, 10.0], burn_in=5, steps=400, seeds=[0, 1])
    lam, finals = ly.exponent_grid(quadratic_grad, start_states(), drift=DRIFT, tau=0.1,
                                   settings=settings, run_seed=0)
    expected = ly.quadratic_exponent(EIGEN.flatten().tolist(), DRIFT)
    assert expected == pytest.approx(math.log(0.9))
    assert lam.shape == (3, 2, 4) and finals.shape == (3, 4, 1, 4, 4)
    # the separation obeys δ ← (I − cA)δ whatever the (common) noise: same λ at every η
    assert torch.allclose(lam.mean((1, 2)), torch.full((3,), expected, dtype=torch.float64),
                          atol=0.01)
    summary = ly.summarise_exponents(settings.etas, lam, 3.0)
    assert summary["eta_star"] is None and summary["zero_crossing"] is None
    assert all(r["mean"] < 0 for r in summary["per_eta"])


def test_expanding_quadratic_direction_gives_the_positive_closed_form():
    # c·a = 2.4 > 2: the map overshoots and the separation grows by |1 − 2.4| = 1.4 per step.
    # The chains themselves diverge, so run few steps in float64 from the origin.
    eig = torch.full((1, 1, 2, 2), 12.0, dtype=torch.float64)
    lam, _ = ly.benettin_exponents(lambda x: x * eig, torch.zeros(3, 1, 2, 2, dtype=torch.float64),
                                   drift=DRIFT, noise_scale=0.0, burn_in=0, steps=50,
                                   separation=1e-6, noise=lambda k: torch.zeros(3, 1, 2, 2,
                                                                                dtype=torch.float64),
                                   direction=ly.random_unit_directions((3, 1, 2, 2),
                                                                       torch.Generator()))
    assert torch.allclose(lam, torch.full((3,), math.log(1.4), dtype=torch.float64), atol=1e-9)


def test_strongly_convex_energy_is_ordered_at_small_eta():
    # U = Σ x²/2 + x⁴/4 is 1-strongly convex: every step contracts by at least (1 − c·1).
    def grad(x):
        return x + x ** 3

    settings = ly.ExponentSettings(etas=[0.01], burn_in=50, steps=200, seeds=[0, 1])
    lam, _ = ly.exponent_grid(grad, 0.5 * start_states(), drift=DRIFT, tau=0.1,
                              settings=settings, run_seed=3)
    assert (lam < 0).all()
    assert lam.max().item() <= math.log(1 - DRIFT) + 1e-6


def test_linear_energy_has_exactly_zero_exponent():
    # ∇U constant: nothing separates or contracts the copies (the piecewise-linear caveat of
    # docs/algorithms.md#lyapunov-exponent inside one linear region).
    w = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    settings = ly.ExponentSettings(etas=[0.1, 5.0], burn_in=3, steps=50, seeds=[0])
    lam, _ = ly.exponent_grid(lambda x: w.expand_as(x), start_states(), drift=DRIFT, tau=0.1,
                              settings=settings, run_seed=0)
    assert lam.abs().max().item() < 1e-9


def test_results_do_not_depend_on_chunking_or_the_rest_of_the_grid():
    def grad(x):
        return torch.sin(3 * x) + x

    base = dict(burn_in=5, steps=20, seeds=[0, 4])
    big, _ = ly.exponent_grid(grad, start_states(), drift=DRIFT, tau=0.1, run_seed=7,
                              settings=ly.ExponentSettings(etas=[0.1, 1.0, 3.0], **base))
    small, _ = ly.exponent_grid(grad, start_states(), drift=DRIFT, tau=0.1, run_seed=7,
                                settings=ly.ExponentSettings(etas=[1.0], chunk_rows=8, **base))
    assert torch.equal(big[1], small[0])
    other, _ = ly.exponent_grid(grad, start_states(), drift=DRIFT, tau=0.1, run_seed=8,
                                settings=ly.ExponentSettings(etas=[1.0], **base))
    assert not torch.equal(other[0], small[0])


def test_zero_crossing_and_transition():
    etas = [0.01, 0.1, 1.0, 10.0]
    assert ly.zero_crossing(etas, [-2.0, -1.0, 1.0, 2.0]) == pytest.approx(math.sqrt(0.1 * 1.0))
    assert ly.zero_crossing(etas, [1.0, 2.0, 3.0, 4.0]) is None
    assert ly.zero_crossing(etas, [-1.0, -1.0, -1.0, -1.0]) is None
    lam = torch.tensor([[-1.0, -1.1], [0.01, -0.01], [0.5, 0.52], [1.0, 1.0]])
    s = ly.summarise_exponents(etas, lam, 3.0)
    assert s["eta_star"] == 1.0 and s["n_samples"] == 2
    assert s["per_eta"][0]["std"] == pytest.approx(lam[0].std().item())
    assert s["per_eta"][0]["se"] == pytest.approx(lam[0].std().item() / math.sqrt(2))


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError):
        ly.ExponentSettings(etas=[]).validate()
    with pytest.raises(ConfigError):
        ly.ExponentSettings(etas=[0.0, 1.0]).validate()
    with pytest.raises(ConfigError):
        ly.benettin_exponents(quadratic_grad, start_states(), drift=DRIFT, noise_scale=0.1,
                              burn_in=0, steps=5, separation=0.0, noise=lambda k: 0,
                              direction=start_states())


class Quadratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("a", EIGEN.float().clone())

    def forward(self, x):
        return 0.5 * (self.a * x * x).flatten(1).sum(1)


def test_forgetting_curves_contract_exactly_with_common_noise():
    net = Quadratic()
    x = torch.zeros(6, 1, 4, 4)
    x_adv = 0.1 * torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    settings = LangevinSettings(tau=0.1, temperature=0.1 ** 2 / (2 * DRIFT))
    gens = [make_generator("cpu", 0, name) for name in ("a", "b", "c")]

    def readout(v: fg.ChainViews, k: int) -> dict:
        return {"dist_common": ly.row_norms(v.clean - v.adv_common),
                "dist_independent": ly.row_norms(v.clean - v.adv_indep),
                "dist_clean_copies": ly.row_norms(v.clean - v.clean_indep)}

    raw = fg.forgetting_curves(net, settings, x, x_adv, [0, 5, 60], readout=readout,
                               generators=gens)
    assert sorted(raw) == [0, 5, 60]
    factor = (1 - DRIFT * EIGEN.float()) ** 5
    expected = ly.row_norms(factor * (x - x_adv))
    assert torch.allclose(raw[5]["dist_common"], expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(raw[0]["dist_clean_copies"], torch.zeros(6))
    rows = fg.summarise_forgetting(raw, ly.row_norms(x - x_adv))
    assert rows[0]["memory"] == pytest.approx(1.0)
    # after 60 steps the slowest direction keeps 0.9^60 ≈ 0.2% of the offset: forgotten
    assert rows[-1]["memory"] < 0.2
    assert rows[-1]["dist_clean_copies"] > 0.5 * rows[-1]["dist_independent"]
