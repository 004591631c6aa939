"""Built-in plugin: the segmentation task (thesis §4.4;
docs/algorithms.md#segmentation-and-the-dice-rule), its datasets and segmenters.

It imports only ``ebmctl.api``, like any third-party plugin.
"""

from __future__ import annotations

from pathlib import Path

from ebmctl.api import ModelSpec, hookimpl
from ebmctl_segmentation.datasets import DATASETS, TRIMAP_MODES
from ebmctl_segmentation.models import SMP_ARCHS, smp_args, smp_builder, unet_lite, unet_lite_args
from ebmctl_segmentation.metrics import DICE_MODES
from ebmctl_segmentation.task import ATTACK_LOSSES, SegmentationTask


@hookimpl
def ebmctl_register_tasks(register):
    register(SegmentationTask())


@hookimpl
def ebmctl_register_datasets(register):
    for spec in DATASETS:
        register(spec)


@hookimpl
def ebmctl_register_models(register):
    register(ModelSpec("unet-lite", "segmenter", unet_lite,
                       "small U-Net (width model.width, segmentation.depth poolings)",
                       {"task": unet_lite_args}))
    for name, smp_name in SMP_ARCHS.items():
        register(ModelSpec(name, "segmenter", smp_builder(name),
                           f"segmentation-models-pytorch {smp_name} (segmentation.encoder; "
                           "never downloads weights)", {"task": smp_args(name)}))


@hookimpl
def ebmctl_profile_schema(add):
    # the Dice rule (docs/algorithms.md#segmentation-and-the-dice-rule); [task] keys, named
    # before the plugin owned them
    add("task.dice_mode", "str", "foreground", "segmentation Dice aggregation",
        choices=DICE_MODES)
    add("task.dice_ratio_threshold", "float", 0.5, "segmentation broken iff Dice ratio below",
        minimum=0, maximum=1)
    # segmentation
    add("segmentation.attack_loss", "str", "ce",
        "loss the attacker maximises: per-pixel cross-entropy, soft Dice, both, or SegPGD's "
        "correct/wrong-pixel split",
        choices=ATTACK_LOSSES)
    add("segmentation.depth", "int", 3, "poolings of the unet-lite segmenter", minimum=1,
        maximum=6)
    add("segmentation.encoder", "str", "resnet34", "smp encoder (built with encoder_weights=None)")
    add("segmentation.encoder_depth", "int", 5, "smp encoder stages", minimum=3, maximum=5)
    add("segmentation.decoder_channels", "int_list", [],
        "smp decoder widths, one per encoder stage (empty = smp default)")
    add("segmentation.encoder_weights", "str", "",
        "local .safetensors file of encoder weights to start from (never downloaded)")
    add("segmentation.panels", "int", 8, "PNG panels written by `ebmctl attack`", minimum=0)
    add("data.synthetic_images", "int", 600, "images of the synthetic shapes dataset", minimum=12)
    add("data.synthetic_classes", "str", "binary",
        "shapes masks: binary (shape vs background) or shape (one class per shape)",
        choices=("binary", "shape"))
    add("data.trimap", "str", "pet+border", "Oxford-IIIT Pet trimap to mask",
        choices=TRIMAP_MODES)
    add("data.max_per_split", "int", 0, "cap on Pet images read per split (0 = all)", minimum=0)
    add("data.ignore_index", "int", -1,
        "mask value of void pixels (255 in VOC-style masks; -1 = none): never a class nor "
        "foreground, left out of the training loss, Dice, mIoU and the attack losses",
        minimum=-1, maximum=65535)


@hookimpl
def ebmctl_profile_dirs():
    return [Path(__file__).resolve().parent / "profiles"]
