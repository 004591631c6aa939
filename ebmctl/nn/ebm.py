"""EBM architectures. The network output is U_net(x) (lower = more likely), one scalar per image."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping

from torch import nn
import torch

from ebmctl.config import setting
from ebmctl.nn.hat import HatConfig

ACTIVATIONS = ("leaky_relu", "smooth_leaky", "silu", "softplus", "elu", "relu")

#: The smoothed leaky ReLU of Du, Hill & Cai (2026, "Memory Efficient Full-gradient Attacks",
#: arXiv 2605.06357): f(x) = 0.51·x + 0.49·√(x² + 1e-4) − 0.0049.
MEFA_SMOOTH_LEAKY = {"linear": 0.51, "root": 0.49, "eps": 1e-4, "offset": 0.0049}


@dataclass(frozen=True)
class EbmConfig:
    """The profile section ``[ebm]``: the architecture of an EBM in the ``ebm`` role and its
    arguments (the lightweight ConvNet's and the SNGAN EBM's). ``smooth_leaky`` is
    f(x) = a·x + b·√(x² + c) − d (:class:`SmoothLeakyReLU`); the defaults are MEFA's."""

    section: ClassVar[str] = "ebm"

    arch: str = setting("lightweight", "EBM architecture")
    channels: int = setting(32, "base channels n_f", minimum=1)
    activation: str = setting("leaky_relu", "leaky_relu (the thesis) | smooth_leaky (MEFA's "
                              "smoothed leaky ReLU, coefficients ebm.smooth_*) | silu | softplus "
                              "(β = 10) | elu | relu", choices=ACTIVATIONS)
    leak: float = setting(0.05, "LeakyReLU slope", minimum=0, maximum=1)
    smooth_linear: float = setting(MEFA_SMOOTH_LEAKY["linear"],
                                   "smooth_leaky: a, the coefficient of x")
    smooth_root: float = setting(MEFA_SMOOTH_LEAKY["root"],
                                 "smooth_leaky: b, the coefficient of √(x² + c)")
    smooth_eps: float = setting(MEFA_SMOOTH_LEAKY["eps"], "smooth_leaky: c under the root; the "
                                "kink is rounded over |x| ≲ √c", minimum=1e-12)
    smooth_offset: float = setting(MEFA_SMOOTH_LEAKY["offset"],
                                   "smooth_leaky: d, subtracted (b·√c gives f(0) = 0)")
    spectral_norm: bool = setting(True, "spectral normalisation in the SNGAN EBM")
    pool: str = setting("sum", "SNGAN EBM global pooling: sum | mean", choices=("sum", "mean"))


class SmoothLeakyReLU(nn.Module):
    """f(x) = a·x + b·√(x² + c) − d, elementwise; any shape in, the same shape out.

    A leaky ReLU with its kink rounded off over |x| ≲ √c: the slope tends to a + b for
    x ≫ √c and to a − b for x ≪ −√c, and f''(x) = b·c/(x² + c)^{3/2} > 0 everywhere, so the
    Hessian of an EBM built from it is not zero almost everywhere (unlike LeakyReLU) and the
    exact gradient through a Langevin chain differs from BPDA. The defaults are MEFA's
    (a, b, c, d) = (0.51, 0.49, 1e-4, 0.0049): slopes 1.0 and 0.02, and d = b·√c so f(0) = 0.

    A module of its own, not an ``nn.LeakyReLU`` subclass, so the smoothed-backward attack's
    ``smoothed_copy`` (which swaps out LeakyReLU/ReLU modules) leaves it as it is. The
    coefficients are plain floats, not buffers: the state dict is the same as a LeakyReLU
    network's and the artifact's ``arch_args`` carry the coefficients.
    """

    def __init__(self, linear: float = 0.51, root: float = 0.49, eps: float = 1e-4,
                 offset: float = 0.0049):
        super().__init__()
        if eps <= 0:
            raise ValueError(f"smooth_leaky eps must be > 0 (got {eps}); eps = 0 is LeakyReLU")
        self.linear, self.root, self.eps, self.offset = (float(linear), float(root), float(eps),
                                                         float(offset))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear * x + self.root * torch.sqrt(x * x + self.eps) - self.offset

    def extra_repr(self) -> str:
        return (f"linear={self.linear}, root={self.root}, eps={self.eps}, offset={self.offset} "
                f"(slopes {self.linear + self.root:g} / {self.linear - self.root:g}, "
                f"kink width {math.sqrt(self.eps):.3g})")


def smooth_leaky_args(ebm: EbmConfig) -> dict:
    """``{"smooth_leaky": {...}}`` from the section's ``ebm.smooth_*`` keys when
    ``ebm.activation = "smooth_leaky"``, else ``{}`` (other activations' arch args stay as they
    were, so their artifacts and checkpoints are unchanged)."""
    if ebm.activation != "smooth_leaky":
        return {}
    return {"smooth_leaky": {k: float(getattr(ebm, f"smooth_{k}")) for k in MEFA_SMOOTH_LEAKY}}


def make_activation(name: str, leak: float = 0.05,
                    smooth_leaky: Mapping[str, float] | None = None) -> nn.Module:
    """The activation module ``name``. ``leak`` is LeakyReLU's negative slope; ``smooth_leaky``
    holds :class:`SmoothLeakyReLU`'s coefficients (default: MEFA's). ``softplus`` is
    log(1 + e^{10x})/10 (β = 10: a ReLU rounded over |x| ≲ 0.1)."""
    if name == "leaky_relu":
        return nn.LeakyReLU(leak)
    if name == "smooth_leaky":
        return SmoothLeakyReLU(**{**MEFA_SMOOTH_LEAKY, **(smooth_leaky or {})})
    if name == "silu":
        return nn.SiLU()
    if name == "softplus":
        return nn.Softplus(beta=10.0)
    if name == "elu":
        return nn.ELU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


class LightweightEBM(nn.Module):
    """The thesis' lightweight ConvNet EBM (docs/algorithms.md#lightweight-ebm): conv3×3, then
    stride-2 conv4×4 layers doubling the width, then a final conv whose kernel covers the
    remaining map. No linear layers and no normalisation; on larger inputs the energy is the sum
    over the output map.
    At 32×32×3 with ``channels=32`` it has 693,569 parameters. Input [B, C, H, W] in [-1, 1],
    output U(x) [B]. ``activation`` is one of :data:`ACTIVATIONS` (the thesis: ``leaky_relu``
    with ``leak`` 0.05; ``smooth_leaky`` with coefficients ``smooth_leaky`` is MEFA's smooth EBM).
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, channels: int = 32,
                 activation: str = "leaky_relu", leak: float = 0.05, n_down: int | None = None,
                 smooth_leaky: dict | None = None):
        super().__init__()
        if n_down is None:
            n_down = 3 if image_size >= 32 else 2 if image_size >= 8 else 1
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, 1, 1),
                                   make_activation(activation, leak, smooth_leaky)]
        size, width = image_size, channels
        for _ in range(n_down):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1),
                       make_activation(activation, leak, smooth_leaky)]
            width *= 2
            size = _conv_out(size, 4, 2, 1)
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for {n_down} downsamplings")
        layers.append(nn.Conv2d(width, 1, size, 1, 0))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1).sum(1)


def lightweight_ebm(**kw) -> LightweightEBM:
    return LightweightEBM(**kw)


def lightweight_args(profile, bundle) -> dict:
    """Arguments of an EBM in the ``ebm`` role: ``ebm.channels``, ``ebm.activation``,
    ``ebm.leak`` (and the ``ebm.smooth_*`` coefficients for ``smooth_leaky``) at the data's
    channels and size. Also the arguments of any registered EBM that declares none."""
    ebm = profile.section(EbmConfig)
    return {"in_channels": bundle.channels, "image_size": bundle.image_size,
            "channels": ebm.channels, "activation": ebm.activation, "leak": ebm.leak,
            **smooth_leaky_args(ebm)}


def lightweight_hat_args(profile, bundle) -> dict:
    """As the hat network H of a Hat EBM (role ``hat``): width ``hat.width``, the activation of
    the ``ebm`` section."""
    ebm = profile.section(EbmConfig)
    return {"in_channels": bundle.channels, "image_size": bundle.image_size,
            "channels": profile.section(HatConfig).width, "activation": ebm.activation,
            "leak": ebm.leak, **smooth_leaky_args(ebm)}
