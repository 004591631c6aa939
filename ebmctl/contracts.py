"""Data types of the plugin contract: datasets, models, tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ebmctl.errors import InputError


@dataclass
class Split:
    """Images (float [N,C,H,W] in [0,1]) and targets (labels [N] or masks [N,H,W])."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index) -> "Split":
        return Split(self.x[index], self.y[index])


@dataclass
class DataRequest:
    root: str = ""
    image_size: int = 0
    channels: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    max_train: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetBundle:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.x.shape[-1])

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise InputError(f"unknown split {name!r}; choose from train, val, test")
        return getattr(self, name)


@dataclass
class DatasetSpec:
    name: str
    load: Callable[[DataRequest], DatasetBundle]
    task: str = "classification"
    description: str = ""
    needs_root: bool = False


#: Reads an architecture's constructor arguments from the resolved profile (a ``Config``; read
#: the keys through their section, ``profile.section(MySection).width``) and the dataset:
#: ``reader(profile, bundle) -> dict`` of JSON values.
ArgsReader = Callable[[Any, DatasetBundle], dict]


@dataclass
class ModelSpec:
    """A registered architecture: ``build(**arch_args)`` returns the ``nn.Module``.

    ``args_from`` maps a *role* the architecture can play in a run to the reader of its
    arguments in that role (the pattern of timm's model entrypoints: the architecture, not its
    callers, knows which profile keys it reads). Roles: ``ebm`` (``ebm.arch``), ``hat`` (the hat
    network H of a Hat EBM, ``hat.arch``), ``generator`` (``hat.generator_arch``), ``fixer``
    (``fix.arch``) and ``task`` (``model.arch``). A role the spec does not list uses that role's
    default arguments (:data:`ebmctl.architectures.ROLES`). The arguments are recorded in every
    artifact as ``arch_args`` and the model is rebuilt from them, so they must be JSON values.
    """

    name: str
    kind: str  # ebm, classifier, segmenter, generator, fixer, hat-ebm, ...
    build: Callable[..., nn.Module]
    description: str = ""
    args_from: dict[str, ArgsReader] = field(default_factory=dict)


class Task:
    """A task pairs a dataset's targets with a model kind, its losses and its success rule.

    Attacks and the defense call only these methods; they never test the task's name.
    ``outputs`` are the model's raw outputs (logits); EOT averages them over replicates.
    """

    name: str = ""
    model_kind: str = "classifier"
    default_dataset: str = ""
    default_arch: str = ""
    metric_name: str = "accuracy"
    description: str = ""

    def configured(self, config) -> "Task":
        """Return the task to use for a run with this resolved profile (default: ``self``).

        The registered instance is shared by every run; a task whose losses or success rule
        read profile keys (thresholds, modes) returns a configured copy here instead of
        mutating itself. Commands call it once per run (``ebmctl.context.get_task``).
        """
        return self

    def model_args(self, config, bundle: DatasetBundle) -> tuple[str, dict[str, Any]] | None:
        """(architecture name, JSON-able arguments) of the task model to train, or None (the
        default): the architecture named by ``model.arch`` reads its own arguments (its
        :class:`ModelSpec`'s ``args_from["task"]``). Override only when the task itself decides
        them (e.g. a task that reuses a classifier with its own number of outputs)."""
        return None

    def train_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar loss minimised when training the task model."""
        raise NotImplementedError

    def attack_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-example loss [B] an attacker maximises."""
        return self.train_loss_per_example(outputs, targets)

    def train_loss_per_example(self, outputs, targets) -> torch.Tensor:
        raise NotImplementedError

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-example quality [B] (1/0 correctness, Dice, ...)."""
        raise NotImplementedError

    def natural_ok(self, clean_score: torch.Tensor) -> torch.Tensor:
        """Bool [B]: the clean example counts as handled correctly."""
        return clean_score > 0.5

    def robust_ok(self, adv_score: torch.Tensor, clean_score: torch.Tensor) -> torch.Tensor:
        """Bool [B]: the attacked example is still handled correctly (not broken)."""
        return adv_score > 0.5

    def augment(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, config,
                flip: torch.Tensor | None = None):
        """Training-time augmentation of a batch (default: none). ``flip`` (bool [B]), when the
        training loop passes it (``model.flip_mode = alternating``), says which images to
        mirror instead of a random draw; a task that flips must honour it."""
        return x, y

    def prepare_model(self, net: nn.Module, config) -> None:
        """Initialise a freshly built task model before training (e.g. load local pretrained
        encoder weights). Not called when an artifact is rebuilt. Default: nothing."""

    def evaluation_extras(self, x: torch.Tensor, y: torch.Tensor, runs: dict[str, dict],
                          out, key: tuple) -> dict[str, Any]:
        """Task-specific figures for an `ebmctl attack` report (default: none).

        ``runs`` maps a run label (undefended, defended) to ``{"defense", "x_adv", "result"}``
        (``result``: the run's summary for its last seed). May return ``results`` (label →
        dict merged into that run's results), ``files`` (paths written), ``table``
        (``title``, ``columns``, ``rows`` printed by the CLI) and any other JSON-able keys,
        stored in the report under ``task_report``."""
        return {}
