"""Hat EBM parts (docs/algorithms.md#hat-ebm): the pair (hat network H, generator G) as one module.

The energy is U(Y, Z) = H(G(Z) + Y) (Eq. 6.4). Both parts are built through the model registry
from their names and JSON arguments, so a Hat EBM artifact rebuilds without pickle and any
registered EBM / generator architecture (e.g. ``sngan-ebm`` / ``sngan-generator``) can be used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ebmctl.config import setting


@dataclass(frozen=True)
class HatConfig:
    """The profile section ``[hat]``: the Hat EBM of thesis Ch. 6 (docs/algorithms.md#hat-ebm):
    its hat network H and generator G, the Langevin step sizes of Y and Z, the historical bank and
    the generator's training."""

    section: ClassVar[str] = "hat"

    mode: str = setting("conditional", "conditional (Z fixed, Y sampled) | joint (Y and Z)",
                        choices=("conditional", "joint"))
    arch: str = setting("sngan-ebm", "hat network H (an EBM architecture; no spectral norm)")
    width: int = setting(128, "width of the hat network", minimum=1)
    generator_arch: str = setting("sngan-generator", "generator G architecture")
    generator_width: int = setting(256, "width of the generator", minimum=1)
    latent_dim: int = setting(128, "latent size m of G", minimum=1)
    generator: str = setting("", "pretrained generator artifact (refinement/retrofit); empty = "
                             "train G from scratch in tandem")
    train_generator: bool = setting(True, "train G from the historical bank (Alg. 5)")
    eps_y: float = setting(0.0001, "Langevin ε of the residual image Y", minimum=0)
    eps_z: float = setting(0.005, "Langevin ε of the latent Z (joint mode)", minimum=0)
    bank_size: int = setting(10000, "historical (X, Z) bank size", minimum=1)
    lr_generator: float = setting(0.0001, "generator Adam learning rate", minimum=0)
    grad_clip: float = setting(0.0, "hat gradient-norm clip (0 = off)", minimum=0)
    lr_decay_step: int = setting(0, "divide both learning rates by 10 from this update (0 = "
                                 "never)", minimum=0)
    gen_loss_scale: float = setting(1000.0, "generator loss = scale · MSE (the 1/(2η²))",
                                    minimum=0)
    residual: bool = setting(True, "sample the residual Y (false: the thesis' §6.7.1 ablation)")
    residual_prior: float = setting(0.0, "τ_res of the optional prior τ_res·‖Y‖²", minimum=0)


def latent_shape_of(generator: nn.Module, args: dict | None = None) -> tuple[int, ...]:
    """The latent shape of a generator: its ``latent_shape`` attribute (image-shaped latents of
    the retrofit autoencoder), else ``latent_dim``, else the ``latent_dim`` argument."""
    shape = getattr(generator, "latent_shape", None)
    if shape is not None:
        return tuple(int(s) for s in shape)
    dim = getattr(generator, "latent_dim", None) or (args or {}).get("latent_dim")
    if dim is None:
        raise ValueError("cannot tell the generator's latent size (no latent_shape/latent_dim)")
    return (int(dim),)


class HatEBM(nn.Module):
    """H and G together. ``forward(x)`` is the hat energy H(x) of images (used for OOD scores,
    docs/algorithms.md#ood-scores); ``energy(y, z)`` is U(Y, Z) = H(G(Z) + Y)."""

    def __init__(self, hat_arch: str, hat_args: dict, generator_arch: str, generator_args: dict):
        super().__init__()
        from ebmctl.plugins import get_registries

        models = get_registries().models
        self.hat = models.get(hat_arch).build(**hat_args)
        self.generator = models.get(generator_arch).build(**generator_args)
        self.latent_shape = latent_shape_of(self.generator, generator_args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hat(x)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def energy(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.hat(self.generator(z) + y)


def hat_ebm(**kw) -> HatEBM:
    return HatEBM(**kw)
