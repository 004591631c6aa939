"""Segmenters: a light U-Net for quick runs and tests, and segmentation-models-pytorch models.

smp models are always built with ``encoder_weights=None`` (nothing is downloaded); a local
``.safetensors`` file of encoder weights may be named in ``segmentation.encoder_weights``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ebmctl.api import ConfigError, InputError, ModelConfig
from ebmctl_segmentation.sections import SegmentationConfig

#: ebmctl architecture name -> segmentation-models-pytorch architecture name.
SMP_ARCHS = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "manet": "MAnet",
    "linknet": "Linknet",
    "fpn": "FPN",
    "deeplabv3plus": "DeepLabV3Plus",
}
#: Architectures whose decoder takes one width per encoder stage.
_DECODER_CHANNELS = ("unet", "unetplusplus", "manet")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNetLite(nn.Module):
    """The classic U-Net (Ronneberger et al. 2015) at a small width: ``depth`` poolings, widths
    doubling per level, skip connections by concatenation. Any input size works (the upsampled
    map is resized to its skip's size)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 16,
                 depth: int = 3):
        super().__init__()
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(in_channels, widths[0])] +
                                  [_block(widths[i], widths[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                 for i in reversed(range(depth))])
        self.merge = nn.ModuleList([_block(2 * widths[i], widths[i])
                                    for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge):
            skip = skips.pop()
            x = up(x)
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = merge(torch.cat([skip, x], 1))
        return self.head(x)


class PaddedSegmenter(nn.Module):
    """Pads the input to a multiple of the encoder's stride (smp models need it) and crops the
    logits back, so any image size works."""

    def __init__(self, net: nn.Module, multiple: int):
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return self.net(x)[..., :h, :w]


def unet_lite(**kw) -> UNetLite:
    return UNetLite(**kw)


def smp_builder(arch: str):
    def build(in_channels: int = 3, num_classes: int = 2, encoder: str = "resnet34",
              encoder_depth: int = 5, decoder_channels: list[int] | None = None) -> nn.Module:
        import segmentation_models_pytorch as smp

        kw = dict(encoder_name=encoder, encoder_weights=None, encoder_depth=encoder_depth,
                  in_channels=in_channels, classes=num_classes)
        if decoder_channels and arch in _DECODER_CHANNELS:
            kw["decoder_channels"] = list(decoder_channels)
        try:
            net = smp.create_model(SMP_ARCHS[arch], **kw)
        except (KeyError, ValueError, TypeError, AssertionError) as exc:
            raise ConfigError(f"cannot build segmentation model {arch!r} with encoder "
                              f"{encoder!r}: {exc}") from None
        return PaddedSegmenter(net, 2 ** encoder_depth)

    return build


# What each segmenter reads from the profile as the task model (ModelSpec.args_from["task"]).
def _segmenter_io(bundle) -> dict:
    return {"in_channels": bundle.channels, "num_classes": max(2, bundle.num_classes)}


def unet_lite_args(profile, bundle) -> dict:
    """``model.width`` and ``segmentation.depth`` (poolings)."""
    return {**_segmenter_io(bundle), "width": profile.section(ModelConfig).width,
            "depth": profile.section(SegmentationConfig).depth}


def smp_args(arch: str):
    """The reader of smp architecture ``arch``: ``segmentation.encoder``,
    ``segmentation.encoder_depth`` and ``segmentation.decoder_channels`` (one width per encoder
    stage, U-Net-like decoders only)."""

    def read(profile, bundle) -> dict:
        seg = profile.section(SegmentationConfig)
        depth = seg.encoder_depth
        args = {**_segmenter_io(bundle), "encoder": seg.encoder, "encoder_depth": depth}
        dec = seg.decoder_channels
        if dec:
            if arch not in _DECODER_CHANNELS:
                raise ConfigError(f"segmentation.decoder_channels applies to "
                                  f"{', '.join(_DECODER_CHANNELS)}, not {arch!r}")
            if len(dec) != depth:
                raise ConfigError(f"segmentation.decoder_channels needs {depth} widths (one per "
                                  f"encoder stage, segmentation.encoder_depth), got {len(dec)}")
            args["decoder_channels"] = list(dec)
        return args

    return read


def load_encoder_weights(net: nn.Module, path: str) -> None:
    """Load a local ``.safetensors`` state dict into an smp model's encoder (keys with or
    without the ``encoder.`` prefix). Never downloads; no pickle."""
    if not path:
        return
    p = Path(path).expanduser()
    if p.suffix != ".safetensors":
        raise InputError(f"segmentation.encoder_weights must be a .safetensors file (pickled "
                         f".pth files are not read): {p}")
    if not p.is_file():
        raise InputError(f"encoder weights file not found: {p}")
    inner = getattr(net, "net", net)
    encoder = getattr(inner, "encoder", None)
    if encoder is None:
        raise ConfigError("segmentation.encoder_weights needs an smp architecture "
                          f"({', '.join(SMP_ARCHS)}) with an encoder")
    from safetensors.torch import load_file

    try:
        state = load_file(str(p))
    except Exception as exc:
        raise InputError(f"cannot read encoder weights {p}: {exc}") from None
    state = {k[len("encoder."):] if k.startswith("encoder.") else k: v for k, v in state.items()}
    # nn.Module's own loader: smp encoders override load_state_dict and return nothing.
    missing, unexpected = nn.Module.load_state_dict(encoder, state, strict=False)
    if unexpected or len(missing) == len(encoder.state_dict()):
        raise InputError(f"{p} does not match the encoder (unexpected keys {unexpected[:3]}, "
                         f"{len(missing)} missing)")
