"""Hat EBM sampling (docs/algorithms.md#hat-ebm-sampling): alternating Langevin on the
residual Y and the latent Z of U(Y, Z) = H(G(Z) + Y), and the loaded-artifact wrapper used by
`synthesize`/`ood`.

Update with temperature T (thesis §6.7.5), Y first, then Z with the new Y (Eqs. 6.6, 6.7):

    Y ← Y − (ε_Y²/(2T)) ∇_Y H(G(Z) + Y) − ε_Y² τ_res Y + ε_Y V        (τ_res: optional prior)
    Z ← Z − (ε_Z²/(2T)) ∇_Z H(G(Z) + Y)               + ε_Z V'       (joint mode only)

Conditional mode keeps Z fixed (Eq. 6.9); ``residual=False`` keeps Y at zero (the thesis'
residual ablation, §6.7.1). The generator is frozen and deterministic while sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ebmctl.artifacts import load_model
from ebmctl.defense import adapt_images
from ebmctl.errors import ArtifactError, ConfigError, NumericalError
from ebmctl.nn.hat import HatEBM
from ebmctl.sampling import frozen
from ebmctl.seeds import make_generator
from ebmctl.units import to_internal, to_public

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


@dataclass
class HatModel:
    """A trained Hat EBM artifact with its sampling constants."""

    net: HatEBM
    settings: HatSettings
    mcmc_steps: int
    image_size: int
    channels: int
    path: str = ""

    @classmethod
    def load(cls, path: str | Path, device: torch.device) -> "HatModel":
        net, art = load_model(path, "hat-ebm")
        extra, data = art.extra, art.data
        try:
            settings = HatSettings(float(extra["eps_y"]), float(extra["eps_z"]),
                                   float(extra["temperature"]), str(extra["mode"]),
                                   bool(extra.get("residual", True)),
                                   float(extra.get("residual_prior", 0.0)))
            steps = int(extra["mcmc_steps"])
            size, ch = int(data["image_size"]), int(data["channels"])
        except (KeyError, TypeError, ValueError, ConfigError):
            raise ArtifactError(f"{path}: Hat EBM artifact lacks valid sampling metadata") from None
        return cls(net.to(device).eval(), settings, steps, size, ch, str(path))

    def energy01(self, x01: torch.Tensor) -> torch.Tensor:
        """Model energy H(x)/T of [0,1] images evaluated directly, no latent sampling (thesis
        §6.5.4)."""
        x = to_internal(adapt_images(x01, self.image_size, self.channels))
        return self.net(x) / self.settings.temperature

    def sample01(self, n: int, steps: int, key: tuple, *, mode: str | None = None,
                 chunk_size: int = 1024) -> dict[str, torch.Tensor]:
        """``n`` samples in [0,1] units: ``samples`` = G(Z_K) + Y_K, ``generator`` = G(Z_0) (the
        generator alone), and the final ``z`` and ``y``. Noise is derived from ``key``."""
        settings = self.settings
        if mode and mode != settings.mode:
            settings = HatSettings(settings.eps_y, settings.eps_z, settings.temperature, mode,
                                   settings.residual, settings.residual_prior)
        dev = next(self.net.parameters()).device
        parts: dict[str, list[torch.Tensor]] = {"samples": [], "generator": [], "z": [], "y": []}
        for i, start in enumerate(range(0, n, chunk_size)):
            gen = make_generator(dev, *key, "chunk", i)
            z0, y0 = initial_state(self.net, min(chunk_size, n - start), gen, dev)
            z, y = hat_langevin(self.net, z0, y0, steps, settings, gen)
            with torch.no_grad():
                parts["generator"].append(to_public(self.net.generate(z0)))
                parts["samples"].append(to_public(self.net.generate(z) + y))
            parts["z"].append(z)
            parts["y"].append(y)
        return {k: torch.cat(v) for k, v in parts.items()}
