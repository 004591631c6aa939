"""EBM architectures. The network output is U_net(x) (lower = more likely), one scalar per image."""

from __future__ import annotations

from torch import nn
import torch

ACTIVATIONS = ("leaky_relu", "silu", "softplus", "elu")


def make_activation(name: str, leak: float = 0.05) -> nn.Module:
    if name == "leaky_relu":
        return nn.LeakyReLU(leak)
    if name == "silu":
        return nn.SiLU()
    if name == "softplus":
        return nn.Softplus(beta=10.0)
    if name == "elu":
        return nn.ELU()
    raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


class LightweightEBM(nn.Module):
    """The thesis' lightweight ConvNet EBM (SPEC §1.6.1): conv3×3, then stride-2 conv4×4 layers
    doubling the width, then a final conv whose kernel covers the remaining map. No linear layers
    and no normalisation; on larger inputs the energy is the sum over the output map.
    At 32×32×3 with ``channels=32`` it has 693,569 parameters.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, channels: int = 32,
                 activation: str = "leaky_relu", leak: float = 0.05, n_down: int | None = None):
        super().__init__()
        if n_down is None:
            n_down = 3 if image_size >= 32 else 2 if image_size >= 8 else 1
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, 1, 1),
                                   make_activation(activation, leak)]
        size, width = image_size, channels
        for _ in range(n_down):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1), make_activation(activation, leak)]
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
