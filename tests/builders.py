"""Random-weight artifacts for tests: real ``ebmctl`` artifacts (safetensors weights and the
metadata the commands read) of small untrained networks built from the model registry.

Each builder writes one file and returns its path. The weights come from
``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``, so one call writes the same file
every time and leaves torch's global generator as it was. ``seed=None`` draws from the global
generator as it stands instead, for a caller that seeds one stream for several networks (the
classifier first, then the EBM, as ``conftest.digits_artifacts`` does).

The defaults describe the 8×8 one-channel digits fixture (:data:`DIGITS`); the EBM's and the
classifier's input channels and image size follow ``data``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ebmctl.artifacts import save_artifact

#: Data metadata of the 8×8 one-channel digits fixture: images in [-1, 1], as trainers record it.
DIGITS: Mapping[str, Any] = {"range": "[-1,1]", "image_size": 8, "channels": 1}

#: Langevin settings an EBM artifact records (``extra``): step size τ and temperature T.
TAU, TEMPERATURE = 0.01, 5e-5


def random_weights(arch: str, arch_args: Mapping[str, Any],
                   seed: int | None = 0) -> dict[str, torch.Tensor]:
    """The ``model.``-prefixed state dict of the registry's ``arch`` built with ``arch_args``,
    freshly initialised (see the module docstring for ``seed``)."""
    from ebmctl.plugins import get_registries

    def build() -> torch.nn.Module:
        return get_registries().models.get(arch).build(**arch_args)

    if seed is None:
        net = build()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build()
    return {f"model.{k}": v.detach().clone() for k, v in net.state_dict().items()}


def random_artifact(path: str | os.PathLike, *, kind: str, arch: str,
                    arch_args: Mapping[str, Any], seed: int | None = 0, task: str = "",
                    data: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                    config: Mapping[str, Any] | None = None) -> Path:
    """An artifact of ``kind`` holding a random ``arch`` built with ``arch_args``."""
    return save_artifact(path, random_weights(arch, arch_args, seed), kind=kind, arch=arch,
                         arch_args=dict(arch_args), task=task,
                         data=dict(DIGITS if data is None else data),
                         extra=dict(extra) if extra else None,
                         config=dict(config) if config else None)


def random_ebm(path: str | os.PathLike, *, channels: int = 4,
               arch_args: Mapping[str, Any] | None = None, arch: str = "lightweight",
               data: Mapping[str, Any] = DIGITS, tau: float = TAU,
               temperature: float = TEMPERATURE, seed: int | None = 0, task: str = "",
               config: Mapping[str, Any] | None = None) -> Path:
    """An EBM artifact: by default the lightweight EBM of width ``channels`` at the data's
    channels and image size, recording Langevin step size ``tau`` and ``temperature``.
    ``arch_args`` replaces the default arguments whole (another activation, another arch)."""
    if arch_args is None:
        arch_args = {"in_channels": data["channels"], "image_size": data["image_size"],
                     "channels": channels}
    return random_artifact(path, kind="ebm", arch=arch, arch_args=arch_args, seed=seed,
                           task=task, data=data, config=config,
                           extra={"tau": tau, "temperature": temperature})


def random_classifier(path: str | os.PathLike, *, width: int = 4, num_classes: int = 10,
                      arch_args: Mapping[str, Any] | None = None, arch: str = "small-cnn",
                      data: Mapping[str, Any] = DIGITS, seed: int | None = 0,
                      task: str = "classification") -> Path:
    """A classifier artifact for ``task``: by default the small CNN of ``width`` with
    ``num_classes`` outputs at the data's channels and image size."""
    if arch_args is None:
        arch_args = {"in_channels": data["channels"], "num_classes": num_classes,
                     "width": width, "image_size": data["image_size"]}
    return random_artifact(path, kind="classifier", arch=arch, arch_args=arch_args, seed=seed,
                           task=task, data=data)


def random_fixer(path: str | os.PathLike, *, width: int = 4, n_blocks: int = 1,
                 data: Mapping[str, Any] = DIGITS, seed: int | None = 0) -> Path:
    """A fixer artifact: the image-to-image ResNet of ``width`` and ``n_blocks`` residual blocks
    at the data's channels."""
    args = {"channels": data["channels"], "width": width, "n_blocks": n_blocks}
    return random_artifact(path, kind="fixer", arch="fixer-resnet", arch_args=args, seed=seed,
                           data=data)
