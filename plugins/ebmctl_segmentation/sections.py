"""The profile keys of the segmentation plugin, declared as sections (frozen dataclasses whose
fields are the keys; ``ebmctl_profile_schema`` adds them and the code reads them back typed
with ``config.section(...)``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ebmctl.api import setting
from ebmctl_segmentation.datasets import TRIMAP_MODES
from ebmctl_segmentation.metrics import DICE_MODES

#: losses the attacker may maximise (``segmentation.attack_loss``)
ATTACK_LOSSES = ("ce", "dice", "ce+dice", "segpgd")


@dataclass(frozen=True)
class DiceRuleConfig:
    """``[task]`` keys of the Dice rule (docs/algorithms.md#segmentation-and-the-dice-rule),
    named before the plugin owned them."""

    section: ClassVar[str] = "task"

    dice_mode: str = setting("foreground", "segmentation Dice aggregation", choices=DICE_MODES)
    dice_ratio_threshold: float = setting(0.5, "segmentation broken iff Dice ratio below",
                                          minimum=0, maximum=1)


@dataclass(frozen=True)
class SegmentationConfig:
    """The section ``[segmentation]``: the attacker's loss, the segmenters' architecture
    arguments, local encoder weights and the report's panels."""

    section: ClassVar[str] = "segmentation"

    attack_loss: str = setting("ce", "loss the attacker maximises: per-pixel cross-entropy, "
                               "soft Dice, both, or SegPGD's correct/wrong-pixel split",
                               choices=ATTACK_LOSSES)
    depth: int = setting(3, "poolings of the unet-lite segmenter", minimum=1, maximum=6)
    encoder: str = setting("resnet34", "smp encoder (built with encoder_weights=None)")
    encoder_depth: int = setting(5, "smp encoder stages", minimum=3, maximum=5)
    decoder_channels: tuple[int, ...] = setting(
        (), "smp decoder widths, one per encoder stage (empty = smp default)")
    encoder_weights: str = setting("", "local .safetensors file of encoder weights to start "
                                   "from (never downloaded)")
    panels: int = setting(8, "PNG panels written by `ebmctl attack`", minimum=0)


@dataclass(frozen=True)
class SegmentationDataConfig:
    """``[data]`` keys of the segmentation datasets (handed to them as
    ``DataRequest.options``) and the void label every loss and metric leaves out."""

    section: ClassVar[str] = "data"

    synthetic_images: int = setting(600, "images of the synthetic shapes dataset", minimum=12)
    synthetic_classes: str = setting("binary", "shapes masks: binary (shape vs background) or "
                                     "shape (one class per shape)", choices=("binary", "shape"))
    trimap: str = setting("pet+border", "Oxford-IIIT Pet trimap to mask", choices=TRIMAP_MODES)
    max_per_split: int = setting(0, "cap on Pet images read per split (0 = all)", minimum=0)
    ignore_index: int = setting(-1, "mask value of void pixels (255 in VOC-style masks; -1 = "
                                "none): never a class nor foreground, left out of the training "
                                "loss, Dice, mIoU and the attack losses", minimum=-1,
                                maximum=65535)


SECTIONS = (DiceRuleConfig, SegmentationConfig, SegmentationDataConfig)
