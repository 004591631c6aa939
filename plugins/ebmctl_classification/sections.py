"""The profile keys of the classification plugin, declared as sections (frozen dataclasses
whose fields are the keys; ``ebmctl_profile_schema`` adds them and the code reads them back
typed with ``config.section(...)``). All are ``[model]`` keys, named before the plugin owned
them; each section belongs to the code that reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ebmctl.api import setting


@dataclass(frozen=True)
class WideResNetConfig:
    """Arguments of the ``wrn`` architecture only (:func:`wide_resnet_args` reads them)."""

    section: ClassVar[str] = "model"

    depth: int = setting(28, "depth (WRN)", minimum=1)
    widen_factor: int = setting(10, "widen factor (WRN)", minimum=1)
    dropout: float = setting(0.0, "dropout", minimum=0, maximum=1)


@dataclass(frozen=True)
class ClassificationLossConfig:
    """The classification loss (``ClassificationTask.configured`` reads it)."""

    section: ClassVar[str] = "model"

    label_smoothing: float = setting(0.0, "label smoothing of the training cross-entropy: the "
                                     "target puts 1 - s + s/K on the label and s/K on each of "
                                     "the K classes (airbench: 0.2); attack losses stay "
                                     "unsmoothed", minimum=0, maximum=0.99)


@dataclass(frozen=True)
class AirbenchConfig:
    """Arguments of the ``airbench`` architecture only (:func:`airbench_args` reads them)."""

    section: ClassVar[str] = "model"

    airbench_widths: tuple[int, ...] = setting((64, 256, 256), "channels of the three conv "
                                               "groups (airbench)", minimum=1)
    whiten_kernel: int = setting(2, "patch size k of the frozen whitening layer; it has 2·C·k² "
                                 "channels (airbench)", minimum=1, maximum=8)
    whiten_eps: float = setting(1.25e-4, "added to the patch-covariance eigenvalues before "
                                "whitening, in squared [-1,1] units (airbench's 5e-4 on "
                                "CIFAR-standardised inputs, whose unit is about 0.5 of [-1,1])",
                                minimum=1e-12)
    whiten_images: int = setting(5000, "training images whose patches set the whitening layer "
                                 "(airbench)", minimum=1)
    bn_momentum: float = setting(0.6, "weight of the old BatchNorm running statistics per batch "
                                 "(airbench; PyTorch's momentum is 1 minus this)", minimum=0,
                                 maximum=0.999)
    flip_tta: bool = setting(True, "in eval mode average the logits of the image and its mirror "
                             "(airbench)")
    tta_translate: bool = setting(False, "with model.flip_tta, also average the mirror pairs of "
                                  "the image moved one pixel down-right and up-left (weights "
                                  "1/2, 1/4, 1/4: airbench's TTA level 2, six views)")
    whiten_bias_epochs: int = setting(0, "train the whitening layer's bias for this many epochs, "
                                      "then freeze it (airbench: 3; 0 = it trains throughout)",
                                      minimum=0)


SECTIONS = (WideResNetConfig, ClassificationLossConfig, AirbenchConfig)
