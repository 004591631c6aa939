"""Built-in plugin: the classification task, its datasets and classifier architectures.

It imports only ``ebmctl.api``, like any third-party plugin.
"""

from __future__ import annotations

from ebmctl.api import ModelSpec, hookimpl
from ebmctl_classification.airbench import airbench, airbench_args
from ebmctl_classification.datasets import DATASETS
from ebmctl_classification.models import (
    resnet9,
    resnet9_args,
    small_cnn,
    small_cnn_args,
    wide_resnet,
    wide_resnet_args,
)
from ebmctl_classification.sections import SECTIONS
from ebmctl_classification.task import ClassificationTask


@hookimpl
def ebmctl_register_tasks(register):
    register(ClassificationTask())


@hookimpl
def ebmctl_register_datasets(register):
    for spec in DATASETS:
        register(spec)


@hookimpl
def ebmctl_register_models(register):
    register(ModelSpec("small-cnn", "classifier", small_cnn, "small CNN for quick runs",
                       {"task": small_cnn_args}))
    register(ModelSpec("resnet9", "classifier", resnet9, "ResNet-9 with a width parameter",
                       {"task": resnet9_args}))
    register(ModelSpec("wrn", "classifier", wide_resnet, "WideResNet (WRN-28-10 by default)",
                       {"task": wide_resnet_args}))
    register(ModelSpec("airbench", "classifier", airbench, "airbench94 (Jordan 2024): frozen "
                       "2x2 patch whitening, conv groups 64/256/256 with BatchNorm + GELU, "
                       "flip TTA", {"task": airbench_args}))


@hookimpl
def ebmctl_profile_schema(add):
    for section in SECTIONS:  # each key is a field of a dataclass section (sections.py)
        add(section)
