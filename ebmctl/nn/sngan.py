"""SNGAN-style networks (docs/algorithms.md#sngan-networks): the discriminator EBM, the
generator and a convolutional encoder. The fixer's image-to-image net, built from the same
residual blocks, is in :mod:`ebmctl.nn.fixer`.

Every constructor takes JSON-able keyword arguments only, so artifacts rebuild them from
``ebmctl.arch_args``. Spectral normalisation uses ``torch.nn.utils.parametrizations``: its
state lives in ordinary ``state_dict`` entries (``...parametrizations.weight.original``, ``_u``,
``_v``), so it round-trips through safetensors artifacts without pickle.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from ebmctl.nn.ebm import ACTIVATIONS, EbmConfig, make_activation, smooth_leaky_args
from ebmctl.nn.hat import HatConfig

SNGAN_ACTIVATIONS = ACTIVATIONS


def _activation(name: str, smooth_leaky: dict | None = None) -> nn.Module:
    if name not in SNGAN_ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(SNGAN_ACTIVATIONS)}")
    return make_activation(name, smooth_leaky=smooth_leaky)


def _sn(module: nn.Module, enabled: bool) -> nn.Module:
    return _spectral_norm(module) if enabled else module


def _n_resamples(image_size: int, base: int = 4) -> int:
    """How many ×2 resamplings link a ``base``×``base`` map to ``image_size`` (a power-of-two
    multiple of ``base``)."""
    if image_size < base or image_size % base:
        raise ValueError(f"image_size {image_size} must be a multiple of {base} and at least {base}")
    ratio = image_size // base
    n = int(round(math.log2(ratio)))
    if 2 ** n != ratio:
        raise ValueError(f"image_size {image_size} must be {base}·2^n (e.g. 32, 64, 128)")
    return n


class FixedBatchNorm2d(nn.Module):
    """Batch norm with its statistics fixed to mean 0, variance 1 (thesis §6.5.3):
    a per-channel affine map, so each sample's output depends on that sample only."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _bn(channels: int, fixed: bool) -> nn.Module:
    return FixedBatchNorm2d(channels) if fixed else nn.BatchNorm2d(channels)


# --- generator ---------------------------------------------------------------------------

class GenBlock(nn.Module):
    """BN-ReLU-upsample-conv3×3-BN-ReLU-conv3×3, plus an upsample-conv1×1 shortcut."""

    def __init__(self, cin: int, cout: int, upsample: bool = True, bn_fixed: bool = False):
        super().__init__()
        self.upsample = upsample
        self.bn1, self.bn2 = _bn(cin, bn_fixed), _bn(cout, bn_fixed)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if (cin != cout or upsample) else nn.Identity()

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest") if self.upsample else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self._up(F.relu(self.bn1(x))))
        h = self.conv2(F.relu(self.bn2(h)))
        return h + self.shortcut(self._up(x))


class SNGANGenerator(nn.Module):
    """SNGAN ResNet generator: z [B, latent_dim] → Linear → 4×4×width → n upsampling GenBlocks →
    BN-ReLU-conv3×3 → tanh, images in [-1, 1]. At 32×32 with width 256 this is the SNGAN
    CIFAR-10 layout (about 4.3M parameters)."""

    def __init__(self, latent_dim: int = 128, image_size: int = 32, channels: int = 3,
                 width: int = 256, bn_fixed: bool = False):
        super().__init__()
        self.latent_dim, self.image_size, self.channels = latent_dim, image_size, channels
        self.width = width
        self.fc = nn.Linear(latent_dim, 4 * 4 * width)
        self.blocks = nn.Sequential(*[GenBlock(width, width, True, bn_fixed)
                                      for _ in range(_n_resamples(image_size))])
        self.bn = _bn(width, bn_fixed)
        self.out = nn.Conv2d(width, channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z.flatten(1)).view(z.shape[0], self.width, 4, 4)
        h = self.blocks(h)
        return torch.tanh(self.out(F.relu(self.bn(h))))

    def sample_latent(self, n: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.randn((n, self.latent_dim), generator=generator, device=device)


# --- discriminator EBM --------------------------------------------------------------------

class DiscStem(nn.Module):
    """SNGAN 'optimized' first block: conv3×3 → act → conv3×3 → avg-pool, shortcut
    avg-pool → conv1×1 (no activation before the first conv: the input is an image)."""

    def __init__(self, cin: int, cout: int, sn: bool, act: str, smooth_leaky: dict | None = None):
        super().__init__()
        self.conv1 = _sn(nn.Conv2d(cin, cout, 3, 1, 1), sn)
        self.conv2 = _sn(nn.Conv2d(cout, cout, 3, 1, 1), sn)
        self.shortcut = _sn(nn.Conv2d(cin, cout, 1), sn)
        self.act = _activation(act, smooth_leaky)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(self.conv2(self.act(self.conv1(x))), 2)
        return h + self.shortcut(F.avg_pool2d(x, 2))


class DiscBlock(nn.Module):
    """act → conv3×3 → act → conv3×3 (→ avg-pool), shortcut conv1×1 (→ avg-pool) when the
    block downsamples or changes width, identity otherwise."""

    def __init__(self, cin: int, cout: int, downsample: bool, sn: bool, act: str,
                 smooth_leaky: dict | None = None):
        super().__init__()
        self.downsample = downsample
        self.conv1 = _sn(nn.Conv2d(cin, cout, 3, 1, 1), sn)
        self.conv2 = _sn(nn.Conv2d(cout, cout, 3, 1, 1), sn)
        self.shortcut = (_sn(nn.Conv2d(cin, cout, 1), sn) if (downsample or cin != cout)
                         else nn.Identity())
        self.act1, self.act2 = _activation(act, smooth_leaky), _activation(act, smooth_leaky)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.act2(self.conv1(self.act1(x))))
        s = self.shortcut(x)
        if self.downsample:
            h, s = F.avg_pool2d(h, 2), F.avg_pool2d(s, 2)
        return h + s


class SNGANDiscriminatorEBM(nn.Module):
    """SNGAN ResNet discriminator as an EBM (Miyato et al. 2018; thesis §3.2.2): stem block,
    one downsampling ResBlock, two non-downsampling ResBlocks, activation, global pool,
    Linear(width→1, no bias). Output: energy U(x) [B], lower = more likely.
    ``spectral_norm=False`` gives the Hat EBM's hat network. ``pool`` is ``"sum"`` (SNGAN) or
    ``"mean"`` (global average pooling); with ``"sum"`` the energy scales with the feature-map
    area. At width 256 and 32×32 it has ≈4.20M parameters.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, width: int = 128,
                 spectral_norm: bool = True, activation: str = "relu", pool: str = "sum",
                 smooth_leaky: dict | None = None):
        super().__init__()
        if pool not in ("sum", "mean"):
            raise ValueError(f"pool must be 'sum' or 'mean', got {pool!r}")
        if image_size < 4:
            raise ValueError(f"image_size {image_size} is too small (needs at least 4)")
        self.pool = pool
        sl = smooth_leaky  # coefficients of activation = "smooth_leaky" (see ebmctl.nn.ebm)
        self.stem = DiscStem(in_channels, width, spectral_norm, activation, sl)
        self.blocks = nn.Sequential(
            DiscBlock(width, width, True, spectral_norm, activation, sl),
            DiscBlock(width, width, False, spectral_norm, activation, sl),
            DiscBlock(width, width, False, spectral_norm, activation, sl),
        )
        self.act = _activation(activation, sl)
        self.head = _sn(nn.Linear(width, 1, bias=False), spectral_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.blocks(self.stem(x)))
        h = h.sum(dim=(2, 3)) if self.pool == "sum" else h.mean(dim=(2, 3))
        return self.head(h).squeeze(1)


# --- encoder (autoencoder inference net, docs/algorithms.md#autoencoder-generator) ---

def project_to_sphere(z: torch.Tensor) -> torch.Tensor:
    """z ← √m · z / ‖z‖₂ per row (m = latent size), the retrofit latent constraint (thesis
    §6.5.2)."""
    flat = z.flatten(1)
    m = flat.shape[1]
    return (math.sqrt(m) * flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-8)).view_as(z)


class Encoder(nn.Module):
    """Inference net: conv3×3 stem, stride-2 conv blocks down to 4×4 (width doubling, capped at
    8×width), Linear → latent [B, latent_dim]; ``sphere=True`` projects onto the sphere of
    radius √latent_dim so latents match the scale of N(0, I) draws for the decoder."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, latent_dim: int = 128,
                 width: int = 64, sphere: bool = True):
        super().__init__()
        self.sphere = sphere
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1), nn.LeakyReLU(0.2)]
        w = width
        for _ in range(_n_resamples(image_size)):
            nw = min(w * 2, width * 8)
            layers += [nn.Conv2d(w, nw, 4, 2, 1), nn.BatchNorm2d(nw), nn.LeakyReLU(0.2)]
            w = nw
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(w * 4 * 4, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(self.features(x).flatten(1))
        return project_to_sphere(z) if self.sphere else z


def sngan_generator(**kw) -> SNGANGenerator:
    return SNGANGenerator(**kw)


def generator_args(profile, bundle) -> dict:
    """A Hat EBM's generator G (role ``generator``): ``hat.latent_dim`` and
    ``hat.generator_width`` at the data's size and channels."""
    hat = profile.section(HatConfig)
    return {"latent_dim": hat.latent_dim, "image_size": bundle.image_size,
            "channels": bundle.channels, "width": hat.generator_width}


def sngan_generator_args(profile, bundle) -> dict:
    """:func:`generator_args` with G's batch norm fixed to mean 0 / variance 1 (thesis §6.5.3)."""
    return {**generator_args(profile, bundle), "bn_fixed": True}


def sngan_ebm(**kw) -> SNGANDiscriminatorEBM:
    return SNGANDiscriminatorEBM(**kw)


def sngan_ebm_args(profile, bundle) -> dict:
    """The SNGAN EBM in the ``ebm`` role: width ``ebm.channels``, ``ebm.spectral_norm``,
    ``ebm.activation`` (with ``ebm.smooth_*``) and ``ebm.pool``."""
    ebm = profile.section(EbmConfig)
    return {"in_channels": bundle.channels, "image_size": bundle.image_size,
            "width": ebm.channels, "spectral_norm": ebm.spectral_norm,
            "activation": ebm.activation, "pool": ebm.pool, **smooth_leaky_args(ebm)}


def sngan_hat_args(profile, bundle) -> dict:
    """As the hat network H (role ``hat``): width ``hat.width`` and no spectral norm (thesis
    §6.5.1, §6.5.3); the architecture's own activation and pooling."""
    return {"in_channels": bundle.channels, "image_size": bundle.image_size,
            "width": profile.section(HatConfig).width, "spectral_norm": False}


def encoder(**kw) -> Encoder:
    return Encoder(**kw)
