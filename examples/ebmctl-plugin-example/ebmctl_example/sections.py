"""The plugin's profile keys, declared as sections: a frozen dataclass per table, whose class
attribute ``section`` names the table and whose fields are the keys (default, help, bounds
and choices through ``setting``; the kind follows the annotation). ``ebmctl_profile_schema``
adds them; the code reads them back typed: ``config.section(MultiLabelConfig).threshold``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ebmctl.api import setting


@dataclass(frozen=True)
class MultiLabelConfig:
    """``[multilabel]``: the task's decision rule (``MultiLabelTask.configured`` reads it)."""

    section: ClassVar[str] = "multilabel"

    threshold: float = setting(0.5, "probability above which a label is predicted",
                               minimum=0.01, maximum=0.99)
    min_f1: float = setting(1.0, "an example is handled correctly iff its F1 >= this (1.0: the "
                            "exact label set)", minimum=0.0, maximum=1.0)


@dataclass(frozen=True)
class MosaicDataConfig:
    """``[data]`` keys of the ``digit-mosaic`` dataset (handed to its loader as
    ``DataRequest.options``)."""

    section: ClassVar[str] = "data"

    mosaic_train: int = setting(3000, "digit-mosaic: training mosaics", minimum=1)
    mosaic_eval: int = setting(500, "digit-mosaic: validation and test mosaics each", minimum=1)


SECTIONS = (MultiLabelConfig, MosaicDataConfig)
