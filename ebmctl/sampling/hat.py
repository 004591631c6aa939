"""Hat EBM sampling (docs/algorithms.md#hat-ebm-sampling): alternating Langevin on the
residual Y and the latent Z of U(Y, Z) = H(G(Z) + Y). The loaded artifact is
:class:`ebmctl.models.HatModel`.

Update with temperature T (thesis §6.7.5), Y first, then Z with the new Y (Eqs. 6.6, 6.7):

    Y ← Y − (ε_Y²/(2T)) ∇_Y H(G(Z) + Y) − ε_Y² τ_res Y + ε_Y V        (τ_res: optional prior)
    Z ← Z − (ε_Z²/(2T)) ∇_Z H(G(Z) + Y)               + ε_Z V'       (joint mode only)

Conditional mode keeps Z fixed (Eq. 6.9); ``residual=False`` keeps Y at zero (the thesis'
residual ablation, §6.7.1). The generator is frozen and deterministic while sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ebmctl.errors import ConfigError, NumericalError
from ebmctl.nn.hat import HatEBM
from ebmctl.sampling.langevin import frozen

MODES = ("conditional", "joint")


@dataclass
class HatSettings:
    eps_y: float
    eps_z: float
    temperature: float
    mode: str = "conditional"
    residual: bool = True
    residual_prior: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown Hat EBM mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.temperature <= 0:
            raise ConfigError("the Hat EBM temperature must be > 0")
        if not self.residual and self.mode == "conditional":
            raise ConfigError("a conditional Hat EBM without the residual has nothing to sample; "
                              "use hat.mode = joint with hat.residual = false")

    @property
    def updates_z(self) -> bool:
        return self.mode == "joint"


def _hat_grad(hat: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(hat(xg).sum(), xg)
    return g


def _latent_grad(model: HatEBM, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        zg = z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model.energy(y, zg).sum(), zg)
    return g


def hat_langevin(model: HatEBM, z: torch.Tensor, y: torch.Tensor, steps: int,
                 settings: HatSettings, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``steps`` alternating Langevin steps from (Z, Y) (internal [-1,1] image units).
    Returns the final (Z, Y); the sample is ``G(Z) + Y``."""
    t = settings.temperature
    drift_y, drift_z = settings.eps_y ** 2 / (2 * t), settings.eps_z ** 2 / (2 * t)
    shrink_y = settings.eps_y ** 2 * settings.residual_prior
    z, y = z.detach().float(), y.detach().float()
    was_training = model.training
    model.eval()
    try:
        with frozen(model):
            gz = None
            if not settings.updates_z:
                with torch.no_grad():
                    gz = model.generate(z)  # Z is fixed: G(Z) once for the whole chain
            for k in range(steps):
                if settings.residual:
                    if settings.updates_z:
                        with torch.no_grad():
                            gz = model.generate(z)
                    # ∇_Y H(G(Z)+Y) equals ∇_X H at X = G(Z)+Y.
                    grad = _hat_grad(model.hat, gz + y)
                    noise = torch.randn(y.shape, generator=generator, device=y.device)
                    y = y - drift_y * grad - shrink_y * y + settings.eps_y * noise
                if settings.updates_z:
                    grad = _latent_grad(model, z, y)
                    noise = torch.randn(z.shape, generator=generator, device=z.device)
                    z = z - drift_z * grad + settings.eps_z * noise
                if (k + 1) % 25 == 0 and not (torch.isfinite(y).all() and torch.isfinite(z).all()):
                    raise NumericalError(f"Hat EBM chain produced NaN/Inf at step {k + 1}; lower "
                                         "hat.eps_y / hat.eps_z or raise langevin.temperature")
    finally:
        model.train(was_training)
    if not (torch.isfinite(y).all() and torch.isfinite(z).all()):
        raise NumericalError("Hat EBM chain produced NaN/Inf; lower hat.eps_y / hat.eps_z")
    return z, y


def initial_state(model: HatEBM, n: int, generator: torch.Generator, device) -> tuple:
    """Chains start at Z ~ N(0, I) and Y = 0, the "grey image" residual (thesis Alg. 5)."""
    z = torch.randn((n, *model.latent_shape), generator=generator, device=device)
    with torch.no_grad():
        shape = model.generate(z[:1]).shape[1:]
    return z, torch.zeros((n, *shape), device=device)
