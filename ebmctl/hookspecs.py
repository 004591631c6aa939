"""The plugin contract. A plugin is any object (usually a module) with ``@hookimpl`` functions.

Each ``register`` callable is bound to the plugin being called, so the registries know which
plugin registered what; registering a name twice is an error naming both plugins.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ebmctl")
hookimpl = pluggy.HookimplMarker("ebmctl")


@hookspec
def ebmctl_register_tasks(register):
    """Register tasks: call ``register(task)`` with a :class:`ebmctl.api.Task` instance.

    A task knows its model kind, how to build its model from the profile, the training loss,
    the loss an attacker maximises, its per-example score and when an example is broken.
    """


@hookspec
def ebmctl_register_datasets(register):
    """Register datasets: call ``register(spec)`` with a :class:`ebmctl.api.DatasetSpec`.

    ``spec.load(request)`` returns a :class:`ebmctl.api.DatasetBundle` with deterministic
    train/val/test splits, images as float tensors in [0,1], and must never download.
    """


@hookspec
def ebmctl_register_models(register):
    """Register architectures: call ``register(spec)`` with a :class:`ebmctl.api.ModelSpec`.

    ``spec.build(**arch_args)`` returns an ``nn.Module``; ``spec.args_from`` maps each role the
    architecture can play (``task``, ``ebm``, ``hat``, ``generator``, ``fixer``) to the reader of
    its arguments from the resolved profile. ``arch_args`` are stored as JSON in every artifact
    so the model can be rebuilt without pickle.
    """


@hookspec
def ebmctl_register_attacks(register):
    """Register attacks: call ``register(cls)`` with a subclass of :class:`ebmctl.api.Attack`."""


@hookspec
def ebmctl_register_purifiers(register):
    """Register purifiers: call ``register(cls)`` with a subclass of :class:`ebmctl.api.Purifier`.

    A purifier maps [0,1] images [B,C,H,W] to [0,1] images [B,C,H,W]; the class sets ``name``
    (what ``--purifier NAME`` and ``ebmctl.defend(model, purifier=NAME)`` call it),
    ``description``, ``stochastic`` (it draws its randomness from the seed key the attacks hand
    it, so they use EOT) and ``differentiable`` (it has a usable backward pass; without one the
    attacks use BPDA, and ``attack.gradient = full`` is refused). Its ``__init__`` keyword
    arguments are its settings (``--purifier NAME:key=value,...``, typed by their defaults).
    """


@hookspec
def ebmctl_profile_schema(add):
    """Declare profile keys: ``add(SectionConfig)`` with a frozen dataclass declaring a whole
    section (see :func:`ebmctl.config.section_keys`; fields made with ``ebmctl.api.setting``),
    then read them back typed with ``config.section(SectionConfig).field``.

    Deprecated: one key at a time with ``add("section.key", kind, default, help, minimum=,
    maximum=, choices=)`` (kind one of int, float, fraction, str, bool, int_list, float_list,
    str_list, bool_or_auto, int_or_auto) still works for plugins written against it; declare a
    section instead."""


@hookspec
def ebmctl_profile_dirs():
    """Return a list of folders holding bundled ``*.toml`` profiles this plugin ships."""
