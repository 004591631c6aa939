"""Built-in plugin: the segmentation task (thesis §4.4;
docs/algorithms.md#segmentation-and-the-dice-rule), its datasets and segmenters.

It imports only ``ebmctl.api``, like any third-party plugin.
"""

from __future__ import annotations

from pathlib import Path

from ebmctl.api import ModelSpec, hookimpl
from ebmctl_segmentation.datasets import DATASETS
from ebmctl_segmentation.models import SMP_ARCHS, smp_args, smp_builder, unet_lite, unet_lite_args
from ebmctl_segmentation.sections import SECTIONS
from ebmctl_segmentation.task import SegmentationTask


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
    for section in SECTIONS:  # each key is a field of a dataclass section (sections.py)
        add(section)


@hookimpl
def ebmctl_profile_dirs():
    return [Path(__file__).resolve().parent / "profiles"]
