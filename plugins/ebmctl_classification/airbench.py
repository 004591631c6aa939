"""The airbench CIFAR-10 network: a frozen patch-whitening layer, three conv groups, flip TTA.

Source: K. Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU", arXiv:2404.00498 (2024),
and its reference ``airbench94.py`` (github.com/KellerJordan/cifar10-airbench). The facts
carried over: a 2×2 convolution whose filters are the eigenvectors of the training images' 2×2
patch covariance divided by the square roots of their eigenvalues, with their negatives
(2·C·k² = 24 channels for RGB; frozen), GELU, then three groups
``conv3×3 → max-pool 2 → BatchNorm → GELU → conv3×3 → BatchNorm → GELU`` of widths
64/256/256, a global 3×3 max-pool, a bias-free linear head and a 1/9 logit scale. BatchNorm
weights are fixed at 1 (only the biases train), eps is 1e-12 and the running statistics move
by 0.4 per batch (airbench's "momentum 0.6"); convolutions start from identity (Dirac) filters
in their first ``in_channels`` outputs. The whitening bias trains for the first
``whiten_bias_epochs`` epochs and is frozen after (airbench: 3; 0 = it always trains), and the
test-time augmentation is airbench's level 1 (``flip_tta``) or level 2 (``tta_translate``: the
mirror pair at the image and at two 1-pixel translations). The training recipe around it (Nesterov SGD with a
separate normalisation-bias learning rate, the triangular schedule, lookahead, label
smoothing, flip + translate) lives in ``[model]`` settings; ``profiles/cifar10-airbench.toml``
sets them.

Shapes at 32×32 input: whitening 31×31 (no padding), group 1 15×15, group 2 7×7, group 3 3×3,
pool 1×1. Inputs are the task model's [-1,1] images; the whitening layer's bias centres them
(airbench normalises by the CIFAR mean and std first and leaves the bias to training).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ebmctl_classification.sections import AirbenchConfig


class WhiteningConv(nn.Conv2d):
    """``k×k`` patch whitening: ``2·C·k²`` output channels, the whitening filters and their
    negatives (so a following GELU keeps both signs). Its weight never trains; the bias does.

    :meth:`init_from_data` sets, for the patch covariance Σ = V diag(λ) Vᵀ of the data's
    (C·k²)-dimensional patches with mean μ, the filters W = diag(λ + eps)^(-1/2) Vᵀ and the
    bias −W μ: the first C·k² outputs then have zero mean and covariance ≈ I (exactly
    diag(λ/(λ+eps))) over those patches.
    """

    def __init__(self, in_channels: int = 3, kernel_size: int = 2, eps: float = 1.25e-4):
        width = 2 * in_channels * kernel_size**2
        super().__init__(in_channels, width, kernel_size, padding=0, bias=True)
        if eps <= 0:
            raise ValueError(f"whitening eps must be > 0, got {eps}")
        self.eps = eps
        self.weight.requires_grad_(False)

    def init_from_data(self, images: torch.Tensor) -> None:
        """Whiten the ``k×k`` patches of ``images`` [N, C, H, W] (the model's input units)."""
        c, k = self.in_channels, self.kernel_size[0]
        if images.dim() != 4 or images.shape[1] != c:
            raise ValueError(f"whitening needs images [N, {c}, H, W], got {tuple(images.shape)}")
        d = c * k * k
        total, first, second = (
            0,
            torch.zeros(d, dtype=torch.float64),
            torch.zeros(d, d, dtype=torch.float64),
        )
        for chunk in images.detach().split(256):  # float64 patches of 256 images: ~60 MB
            x = chunk.to("cpu", torch.float64)
            # [n, C, H', W', k, k] → [n·H'·W', C·k·k] in the weight's (C, kh, kw) order
            p = x.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, d)
            total, first, second = total + len(p), first + p.sum(0), second + p.T @ p
        mean = first / total
        cov = second / total - torch.outer(mean, mean)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        order = eigenvalues.argsort(descending=True)
        filters = eigenvectors[:, order].T / torch.sqrt(eigenvalues[order] + self.eps)[:, None]
        bias = -(filters @ mean)
        with torch.no_grad():
            self.weight.copy_(torch.cat((filters, -filters)).reshape(self.weight.shape))
            self.bias.copy_(torch.cat((bias, -bias)))


def _batchnorm(channels: int, momentum: float) -> nn.BatchNorm2d:
    """BatchNorm with its scale fixed at 1 (only the bias trains); ``momentum`` is airbench's
    (the weight of the old running statistics), PyTorch's is ``1 − momentum``."""
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=1 - momentum)
    bn.weight.requires_grad_(False)
    return bn


def _conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
    with torch.no_grad():  # identity filters for the first cin outputs (airbench's Conv)
        nn.init.dirac_(conv.weight[: min(cin, cout)])
    return conv


class ConvGroup(nn.Module):
    """``conv3×3 → max-pool 2 → BN → GELU → conv3×3 → BN → GELU``: [B, cin, H, W] →
    [B, cout, H//2, W//2]."""

    def __init__(self, cin: int, cout: int, bn_momentum: float):
        super().__init__()
        self.conv1, self.pool = _conv(cin, cout), nn.MaxPool2d(2)
        self.norm1, self.conv2 = _batchnorm(cout, bn_momentum), _conv(cout, cout)
        self.norm2, self.activ = _batchnorm(cout, bn_momentum), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """The airbench94 network (see the module docstring): [B, C, 32, 32] in [-1,1] → logits
    [B, num_classes].

    With ``flip_tta`` the model in eval mode returns the mean of the logits of the image and of
    its left-right mirror (airbench's TTA level 1); training mode sees one view. With
    ``tta_translate`` as well (level 2) that mirror pair is taken at three positions, the image
    (weight 1/2) and the image moved one pixel down-right and one pixel up-left with reflected
    borders (weight 1/4 each): six views. Attacks and the defense call the model in eval mode,
    so they differentiate through all views (each gradient costs 2 or 6 single-view passes).

    ``whiten_bias_epochs`` > 0: :meth:`begin_epoch` freezes the whitening bias from that epoch
    on (airbench trains it for 3 epochs).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: tuple[int, ...] | list[int] = (64, 256, 256),
        whiten_kernel: int = 2,
        whiten_eps: float = 1.25e-4,
        whiten_images: int = 5000,
        bn_momentum: float = 0.6,
        logit_scale: float = 1 / 9,
        flip_tta: bool = True,
        tta_translate: bool = False,
        whiten_bias_epochs: int = 0,
    ):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"airbench widths must be three positive integers, got {widths}")
        if whiten_kernel < 1 or whiten_images < 1:
            raise ValueError("whiten_kernel and whiten_images must be >= 1")
        if whiten_bias_epochs < 0:
            raise ValueError(f"whiten_bias_epochs must be >= 0, got {whiten_bias_epochs}")
        if not 0 <= bn_momentum < 1:
            raise ValueError(f"bn_momentum must be in [0, 1), got {bn_momentum}")
        self.whiten = WhiteningConv(in_channels, whiten_kernel, whiten_eps)
        self.init_images = whiten_images  # how many training images init_from_data wants
        self.activ = nn.GELU()
        cin = self.whiten.out_channels
        groups = []
        for w in widths:
            groups.append(ConvGroup(cin, w, bn_momentum))
            cin = w
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)  # airbench's MaxPool2d(3) on the 3×3 map
        self.head = nn.Linear(cin, num_classes, bias=False)
        self.logit_scale, self.flip_tta, self.tta_translate = logit_scale, flip_tta, tta_translate
        self.whiten_bias_epochs = whiten_bias_epochs

    def init_from_data(self, images: torch.Tensor) -> None:
        """Data-dependent initialisation before training: whiten the first ``whiten_images``
        training images' patches (airbench uses 5,000): ``images`` [N, C, H, W] in [-1,1], a
        random draw of ``init_images`` of them."""
        self.whiten.init_from_data(images)

    def begin_epoch(self, epoch: int) -> None:
        """Called by the training loop before epoch ``epoch`` (0-based): the whitening bias
        trains only while ``epoch < whiten_bias_epochs`` (always when that is 0). A frozen bias
        gets no gradient, so SGD leaves it exactly where it is (no momentum, no decay)."""
        n = self.whiten_bias_epochs
        self.whiten.bias.requires_grad_(n == 0 or epoch < n)

    def single_view(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, classes] of one view, without TTA."""
        x = self.groups(self.activ(self.whiten(x)))
        return self.head(self.pool(x).flatten(1)) * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.flip_tta or self.training:
            return self.single_view(x)
        if not self.tta_translate:
            # one batch of both views: a single pass over 2B images
            both = self.single_view(torch.cat((x, x.flip(3))))
            return 0.5 * (both[: len(x)] + both[len(x) :])
        # 1-pixel moves with reflected borders: the padded image cropped at two corners
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        views = [x, padded[..., :h, :w], padded[..., 2:, 2:]]
        # all six views (each position and its mirror) in one pass over 6B images
        z = self.single_view(torch.cat(views + [v.flip(3) for v in views])).split(len(x))
        pairs = [0.5 * (z[i] + z[i + 3]) for i in range(3)]
        return 0.5 * pairs[0] + 0.25 * (pairs[1] + pairs[2])


def airbench(**kw) -> AirbenchNet:
    return AirbenchNet(**kw)


def airbench_args(profile, bundle) -> dict:
    """``model.airbench_widths``, ``model.whiten_kernel``, ``model.whiten_eps``,
    ``model.whiten_images``, ``model.bn_momentum``, ``model.flip_tta``, ``model.tta_translate``
    and ``model.whiten_bias_epochs`` at the data's channels and classes."""
    air = profile.section(AirbenchConfig)
    return {
        "in_channels": bundle.channels,
        "num_classes": bundle.num_classes,
        "widths": list(air.airbench_widths),
        "whiten_kernel": air.whiten_kernel,
        "whiten_eps": air.whiten_eps,
        "whiten_images": air.whiten_images,
        "bn_momentum": air.bn_momentum,
        "flip_tta": air.flip_tta,
        "tta_translate": air.tta_translate,
        "whiten_bias_epochs": air.whiten_bias_epochs,
    }


__all__ = ["AirbenchNet", "ConvGroup", "WhiteningConv", "airbench", "airbench_args"]
