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
    # arguments of the `wrn` architecture only (wide_resnet_args reads them); [model] keys, named
    # before the plugin owned them
    add("model.depth", "int", 28, "depth (WRN)", minimum=1)
    add("model.widen_factor", "int", 10, "widen factor (WRN)", minimum=1)
    add("model.dropout", "float", 0.0, "dropout", minimum=0, maximum=1)
    # the classification loss (ClassificationTask.configured reads it)
    add("model.label_smoothing", "float", 0.0, "label smoothing of the training cross-entropy: "
        "the target puts 1 - s + s/K on the label and s/K on each of the K classes (airbench: "
        "0.2); attack losses stay unsmoothed", minimum=0, maximum=0.99)
    # arguments of the `airbench` architecture only (airbench_args reads them)
    add("model.airbench_widths", "int_list", [64, 256, 256], "channels of the three conv "
        "groups (airbench)", minimum=1)
    add("model.whiten_kernel", "int", 2, "patch size k of the frozen whitening layer; it has "
        "2·C·k² channels (airbench)", minimum=1, maximum=8)
    add("model.whiten_eps", "float", 1.25e-4, "added to the patch-covariance eigenvalues "
        "before whitening, in squared [-1,1] units (airbench's 5e-4 on CIFAR-standardised "
        "inputs, whose unit is about 0.5 of [-1,1])", minimum=1e-12)
    add("model.whiten_images", "int", 5000, "training images whose patches set the whitening "
        "layer (airbench)", minimum=1)
    add("model.bn_momentum", "float", 0.6, "weight of the old BatchNorm running statistics per "
        "batch (airbench; PyTorch's momentum is 1 minus this)", minimum=0, maximum=0.999)
    add("model.flip_tta", "bool", True, "in eval mode average the logits of the image and its "
        "mirror (airbench)")
    add("model.tta_translate", "bool", False, "with model.flip_tta, also average the mirror "
        "pairs of the image moved one pixel down-right and up-left (weights 1/2, 1/4, 1/4: "
        "airbench's TTA level 2, six views)")
    add("model.whiten_bias_epochs", "int", 0, "train the whitening layer's bias for this many "
        "epochs, then freeze it (airbench: 3; 0 = it trains throughout)", minimum=0)
