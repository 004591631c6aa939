"""Hat EBM parts (docs/algorithms.md#hat-ebm): the pair (hat network H, generator G) as one module.

The energy is U(Y, Z) = H(G(Z) + Y) (Eq. 6.4). Both parts are built through the model registry
from their names and JSON arguments, so a Hat EBM artifact rebuilds without pickle and any
registered EBM / generator architecture (e.g. ``sngan-ebm`` / ``sngan-generator``) can be used.
"""

from __future__ import annotations

import torch
from torch import nn


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
