"""Which architecture a run builds, with which arguments: one factory for every model family.

A profile names an architecture per *role* (``ebm.arch``, ``hat.arch``, ``hat.generator_arch``,
``fix.arch``, ``model.arch``); the registered :class:`ebmctl.contracts.ModelSpec` reads its own
constructor arguments for that role (``spec.args_from[role]``), the way a timm entrypoint owns
its ``model_args``. Callers never branch on architecture names: :func:`build_model` does the
registry lookup, the kind check, the argument reading and the seeded initialisation once, and the
arguments it returns are what the artifact records as ``arch_args`` (the model is rebuilt from
them by :func:`ebmctl.artifacts.build_model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ebmctl.contracts import ArgsReader, DatasetBundle, ModelSpec, Task
from ebmctl.errors import ConfigError
from ebmctl.nn.ebm import lightweight_args
from ebmctl.nn.fixer import fixer_args
from ebmctl.nn.sngan import generator_args, sngan_hat_args
from ebmctl.seeds import derive_seed


def task_model_args(profile, bundle: DatasetBundle) -> dict:
    """A task model that declares no arguments: the data's channels and number of classes."""
    return {"in_channels": bundle.channels, "num_classes": bundle.num_classes}


@dataclass(frozen=True)
class Role:
    """A place a model takes in a run: the profile key naming its architecture, the
    :attr:`ModelSpec.kind` it needs (empty: the task decides), how messages name it, and the
    arguments of an architecture that declares none for this role."""

    key: str
    kind: str
    noun: str
    default: ArgsReader


#: The roles. The ``hat`` default is the one the thesis uses for any hat network other than the
#: lightweight EBM: the network at width ``hat.width`` without spectral norm (§6.5.1).
ROLES: dict[str, Role] = {
    "ebm": Role("ebm.arch", "ebm", "EBM", lightweight_args),
    "hat": Role("hat.arch", "ebm", "EBM", sngan_hat_args),
    "generator": Role("hat.generator_arch", "generator", "generator", generator_args),
    "fixer": Role("fix.arch", "fixer", "fixer", fixer_args),
    "task": Role("model.arch", "", "task model", task_model_args),
}


def _registry():
    from ebmctl.plugins import get_registries

    return get_registries().models


def _article(noun: str) -> str:
    return ("an " if noun[0].lower() in "aeiou" else "a ") + noun


def role_spec(role: str, arch: str, task: Task | None = None) -> ModelSpec:
    """The registered spec of ``arch``, checked against the kind ``role`` needs (the task's
    model kind for ``task``). Raises ConfigError naming the profile key."""
    r = ROLES[role]
    spec = _registry().get(arch)
    if role == "task" and task is not None and spec.kind != task.model_kind:
        raise ConfigError(f"model.arch {arch!r} is a {spec.kind!r}; task {task.name!r} needs a "
                          f"{task.model_kind!r}")
    if r.kind and spec.kind != r.kind:
        raise ConfigError(f"{r.key} {arch!r} is a {spec.kind!r} architecture, not "
                          f"{_article(r.noun)}")
    return spec


def model_args(role: str, profile, bundle: DatasetBundle,
               task: Task | None = None) -> tuple[str, dict[str, Any]]:
    """(architecture name, JSON-able constructor arguments) of the ``role`` model the resolved
    ``profile`` asks for at ``bundle``'s channels and size. For ``task``, a task that chooses
    its model itself (:meth:`Task.model_args` not None) wins."""
    if task is not None:
        chosen = task.model_args(profile, bundle)
        if chosen is not None:
            role_spec(role, chosen[0], task)
            return chosen
    arch = profile[ROLES[role].key]
    spec = role_spec(role, arch, task)
    return arch, spec.args_from.get(role, ROLES[role].default)(profile, bundle)


def instantiate(arch: str, args: dict[str, Any], init: tuple, what: str) -> nn.Module:
    """``arch`` built from ``args`` with torch's global RNG seeded from ``init`` (the run seed
    and a label) and restored afterwards: the initial weights depend on the seed only and no
    other random stream shifts. A constructor's ValueError/TypeError becomes a ConfigError
    naming ``what``."""
    spec = _registry().get(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(*init))
        try:
            return spec.build(**args)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"cannot build {what}: {exc}") from None


@dataclass(frozen=True)
class ModelChoice:
    """The ``role`` model a run builds: the architecture name and its JSON-able constructor
    arguments (what the artifact records as ``arch`` and ``arch_args``). The command reads it
    from the profile once (:func:`choose_model`, where the architecture's own reader sees the
    whole profile); a recipe builds the network from it with :meth:`build`."""

    role: str
    arch: str
    args: dict[str, Any]

    def build(self, init: tuple) -> nn.Module:
        """The freshly initialised network (on the CPU), its weights keyed by ``init`` (e.g.
        ``(seed, "ebm-init")``; see :func:`instantiate`)."""
        return instantiate(self.arch, self.args, init, f"{ROLES[self.role].noun} {self.arch!r}")


def choose_model(role: str, profile, bundle: DatasetBundle,
                 task: Task | None = None) -> ModelChoice:
    """The ``role`` model the resolved ``profile`` asks for at ``bundle``'s channels and size
    (:func:`model_args`). Raises ConfigError naming the profile key."""
    return ModelChoice(role, *model_args(role, profile, bundle, task))


def build_model(role: str, profile, bundle: DatasetBundle, init: tuple,
                task: Task | None = None) -> tuple[nn.Module, str, dict[str, Any]]:
    """The freshly initialised ``role`` model of a run: (network on the CPU, architecture name,
    arguments to record as the artifact's ``arch_args``). ``init`` keys the initial weights
    (e.g. ``(seed, "ebm-init")``); ``task`` is the run's task for the ``task`` role."""
    choice = choose_model(role, profile, bundle, task)
    return choice.build(init), choice.arch, choice.args
