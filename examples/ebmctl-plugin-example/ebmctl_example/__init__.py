"""An example ebmctl plugin: the ``digit-mosaic`` dataset, the ``multilabel`` task, the
``mosaic-cnn`` model, the ``random-walk`` attack and the bundled ``digit-mosaic`` profile.

ebmctl finds this module through the ``ebmctl`` entry point in pyproject.toml and calls the
``@hookimpl`` functions below. It imports only ``ebmctl.api``.
"""

from __future__ import annotations

from pathlib import Path

from ebmctl.api import DatasetSpec, ModelSpec, hookimpl
from ebmctl_example.attacks import RandomWalk
from ebmctl_example.models import mosaic_cnn, mosaic_cnn_args
from ebmctl_example.mosaic import load_digit_mosaic
from ebmctl_example.sections import SECTIONS
from ebmctl_example.task import MultiLabelTask

__version__ = "0.1.0"


@hookimpl
def ebmctl_register_datasets(register):
    register(DatasetSpec("digit-mosaic", load_digit_mosaic, task="multilabel",
                         description="1-3 embedded digits in a 2x2 grid, multi-hot targets; "
                                     "split by source digit"))


@hookimpl
def ebmctl_register_tasks(register):
    register(MultiLabelTask())


@hookimpl
def ebmctl_register_models(register):
    register(ModelSpec("mosaic-cnn", "tagger", mosaic_cnn, "small CNN tagger, one logit per label",
                       {"task": mosaic_cnn_args}))


@hookimpl
def ebmctl_register_attacks(register):
    register(RandomWalk)


@hookimpl
def ebmctl_profile_schema(add):
    for section in SECTIONS:  # each key is a field of a dataclass section (sections.py)
        add(section)


@hookimpl
def ebmctl_profile_dirs():
    return [Path(__file__).parent / "profiles"]
