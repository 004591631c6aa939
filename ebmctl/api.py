"""The public API: everything a plugin may import from ebmctl, in one place.

Built-in plugins import only these names (a test enforces it). Anything else is internal.

The library API for users who bring their own classifier (docs/python-api.md) lives here too:
:func:`defend`, :func:`evaluate`, :func:`load_ebm` and :class:`DefendedModel` (in ``__all__``
and listed again in ``LIBRARY``; also ``ebmctl.defend`` etc. at the top level).
"""

from ebmctl.artifacts import (
    Artifact,
    atomic_path,
    atomic_write_json,
    load_artifact,
    save_artifact,
)
from ebmctl.attacks.base import Attack, AttackOutcome
from ebmctl.attacks.loop import IterativeAttack, SteppedAttack
from ebmctl.attacks.threat import ascent_step, project, random_start
from ebmctl.data_utils import (
    IMAGE_EXTENSIONS,
    load_image_folder,
    make_bundle,
    split_indices,
)
from ebmctl.defended import DefendedModel as DefendedModel  # the library API (LIBRARY)
from ebmctl.defended import defend as defend
from ebmctl.defended import load_ebm as load_ebm
from ebmctl.defense import (
    CallablePurifier,
    Defense,
    DefenseConfig,
    Purifier,
    PurifierContext,
    average_outputs,
)
from ebmctl.models import EnergyModel, TaskModel
from ebmctl.units import adapt_images
from ebmctl.training.task_model import ModelConfig
from ebmctl.evaluate.library import evaluate as evaluate
from ebmctl.evaluate.plots import save_grid, save_image01, save_tiles
from ebmctl.errors import (
    ArtifactError,
    ConfigError,
    EbmctlError,
    InputError,
    NotAvailableError,
    NumericalError,
    PluginError,
)
from ebmctl.hookspecs import hookimpl
from ebmctl.images import announce_image_notes, read_image01, read_label_map
from ebmctl.config import Config, Fraction, setting
from ebmctl.contracts import DataRequest, DatasetBundle, DatasetSpec, ModelSpec, Split, Task
from ebmctl.seeds import derive_seed, make_generator
from ebmctl.units import format_radius

__all__ = [
    "Artifact", "ArtifactError", "Attack", "AttackOutcome", "Config", "ConfigError",
    "DataRequest", "DatasetBundle", "DatasetSpec", "Defense", "EbmctlError", "EnergyModel",
    "IMAGE_EXTENSIONS", "InputError", "IterativeAttack", "ModelSpec", "NotAvailableError",
    "NumericalError", "PluginError", "Split", "SteppedAttack", "Task", "TaskModel", "adapt_images",
    "ascent_step", "atomic_path", "atomic_write_json", "average_outputs", "derive_seed",
    "hookimpl", "load_artifact", "load_image_folder", "make_bundle", "make_generator",
    "project", "random_start", "save_artifact", "save_grid", "save_image01",
    "split_indices",
    "announce_image_notes", "read_image01", "read_label_map",
    "format_radius", "save_tiles",
    # purifiers (``ebmctl_register_purifiers``): subclass Purifier, or wrap a function
    "CallablePurifier", "Purifier", "PurifierContext",
    # profile sections declared as dataclasses (``add(MySection)`` in ebmctl_profile_schema),
    # and the core sections plugins read (``config.section(ModelConfig).width``)
    "Fraction", "setting", "DefenseConfig", "ModelConfig",
    # the library API for users who bring their own classifier (docs/python-api.md)
    "DefendedModel", "defend", "evaluate", "load_ebm",
]

#: the library API for users (not part of the plugin contract above)
LIBRARY = ["DefendedModel", "defend", "evaluate", "load_ebm"]
