"""Artifacts turned into runnable models: the plain EBM, the Hat EBM, the task model and the
fixer, each loaded from its safetensors artifact and working on public [0,1] images.

Every model converts [0,1] images to its own range, size and channels, so an EBM can defend a
task model of another resolution. The plain and the Hat EBM both implement
:class:`EnergyFunction` (the energy of [0,1] images and its gradient), which is all that OOD
scores and sample-quality reports need; :func:`load_energy_model` returns whichever one an
artifact holds.

The samplers behind them live in :mod:`ebmctl.sampling` (one module per family), the networks
in :mod:`ebmctl.nn` and the recipes that train them in :mod:`ebmctl.training`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ebmctl.artifacts import load_artifact, load_model, read_header
from ebmctl.units import adapt_images
from ebmctl.errors import ArtifactError, ConfigError
from ebmctl.nn.hat import HatEBM
from ebmctl.sampling.hat import HatSettings, hat_langevin, initial_state
from ebmctl.sampling.langevin import LangevinSettings, langevin_chunked
from ebmctl.seeds import make_generator
from ebmctl.units import to_internal, to_public


class EnergyFunction(Protocol):
    """What the plain EBM (:class:`EnergyModel`) and the Hat EBM (:class:`HatModel`) have in
    common: an energy over public [0,1] images (docs/algorithms.md#ood-scores).

    ``kind`` is the artifact kind (``"ebm"`` or ``"hat-ebm"``), ``temperature`` the T that
    divides the network's output, ``image_size``/``channels`` the input the network was trained
    on (other images are resized and converted first) and ``path`` the artifact file.
    """

    image_size: int
    channels: int
    path: str

    @property
    def kind(self) -> str: ...

    @property
    def temperature(self) -> float: ...

    def energy01(self, x01: torch.Tensor) -> torch.Tensor:
        """Model energies [B] = U_net(x)/T of [0,1] images [B,C,H,W]."""

    def grad01(self, x01: torch.Tensor) -> torch.Tensor:
        """∇_x of :meth:`energy01` with respect to the [0,1] images, shaped like ``x01``."""


def _input_grad(energy01, x01: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        x = x01.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(energy01(x).sum(), x)
    return g


# --- the plain EBM and the task model -------------------------------------------------------

TASK_MODEL_KINDS = ("classifier", "segmenter")


def task_model_kinds() -> tuple[str, ...]:
    """The built-in task model kinds plus the model kind of every registered task (plugins)."""
    from ebmctl.plugins import get_registries

    tasks = get_registries().tasks
    extra = sorted({tasks.get(n).model_kind for n in tasks} - set(TASK_MODEL_KINDS))
    return TASK_MODEL_KINDS + tuple(extra)


@dataclass
class EnergyModel:
    """An EBM with the Langevin constants stored in its artifact
    (docs/algorithms.md#langevin-update)."""

    net: nn.Module
    tau: float
    temperature: float
    image_size: int
    channels: int
    path: str = ""

    @classmethod
    def load(cls, path: str | Path, device: torch.device,
             dtype: torch.dtype | None = None) -> "EnergyModel":
        """The EBM artifact at ``path`` on ``device``, its network converted to ``dtype``
        (``run.dtype``: float64 runs its chains in float64) or left as stored (None).

        Raises:
            ArtifactError: not an EBM artifact, or missing/invalid τ, T or image metadata.
        """
        net, art = load_model(path, "ebm")
        extra, data = art.extra, art.data
        try:
            tau, temp = float(extra["tau"]), float(extra["temperature"])
            size, ch = int(data["image_size"]), int(data["channels"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"{path}: EBM artifact lacks tau/temperature/image size metadata") from None
        if not (tau > 0 and temp > 0):
            raise ArtifactError(f"{path}: EBM artifact has invalid tau/temperature")
        return cls(net.to(device, dtype).eval(), tau, temp, size, ch, str(path))

    def settings(self, precision: str = "fp32", eta: float = 1.0,
                 channels_last: bool = False) -> LangevinSettings:
        return LangevinSettings(self.tau, self.temperature, eta, precision, channels_last)

    @property
    def kind(self) -> str:
        return "ebm"

    def energy01(self, x01: torch.Tensor) -> torch.Tensor:
        """Model energy U = U_net / T of [0,1] images (adapted to the EBM's size/channels)."""
        z = to_internal(adapt_images(x01, self.image_size, self.channels))
        return self.net(z) / self.temperature

    def grad01(self, x01: torch.Tensor) -> torch.Tensor:
        """∇_x U of [0,1] images [B,C,H,W] (same shape; the EBM's weights get no gradient)."""
        return _input_grad(self.energy01, x01)

    def purify01(self, x01: torch.Tensor, steps: int, key: tuple, *, precision: str = "fp32",
                 chunk_size: int = 2048, eta: float = 1.0, channels_last: bool = False,
                 clamp: bool = False, native: bool = False) -> torch.Tensor:
        """K Langevin steps from [0,1] images; returns [0,1]-unit images of the input's shape,
        unclamped unless ``clamp``. Noise is derived from ``key`` (per chunk). With ``native``
        the EBM runs convolutionally at the input's own size instead of resizing."""
        in_size, in_ch = tuple(x01.shape[-2:]), x01.shape[1]
        z = to_internal(adapt_images(x01, 0 if native else self.image_size, self.channels))
        if steps > 0:
            dev = z.device
            z = langevin_chunked(self.net, z, steps, self.settings(precision, eta, channels_last),
                                 chunk_size, lambda i: make_generator(dev, *key, "chunk", i))
        out = adapt_images(to_public(z), in_size, in_ch)
        return out.clamp(0, 1) if clamp else out

    def recorded_defense_steps(self) -> int | None:
        """The K_def (``defense.steps``) recorded in this EBM's training profile, or None when
        it recorded none. An EBM is trained to stay realistic only for its own horizon, so this
        is the K to purify with when the user chose none (the thesis default is 1500).

        Raises:
            ArtifactError: the artifact cannot be read.
        """
        recorded = load_artifact(self.path, "ebm").config.get("defense", {}).get("steps")
        return recorded if isinstance(recorded, int) and recorded >= 0 else None

    def purification_steps(self, defense_steps: int, chosen: bool) -> int:
        """K_def to purify with: the profile's ``defense_steps`` when the user chose it
        (``chosen``: a profile or ``--set`` gave ``defense.steps``), else the K_def this EBM's
        training recorded (:meth:`recorded_defense_steps`), else ``defense_steps``.

        Raises:
            ArtifactError: the artifact cannot be read.
        """
        recorded = None if chosen else self.recorded_defense_steps()
        return defense_steps if recorded is None else recorded


class TaskModel(nn.Module):
    """A task network taking [0,1] images at its own size; converts to its input range."""

    def __init__(self, net: nn.Module, input_range: str = "[-1,1]", image_size: int = 0,
                 channels: int = 0, kind: str = "classifier", task: str = "classification"):
        super().__init__()
        self.net, self.input_range = net, input_range
        self.image_size, self.channels, self.kind, self.task = image_size, channels, kind, task
        self.path = ""  # the artifact it was loaded from (TaskModel.load)

    @classmethod
    def load(cls, path: str | Path, device: torch.device,
             dtype: torch.dtype | None = None) -> "TaskModel":
        """The task model artifact at ``path`` on ``device``, in eval mode, its weights
        converted to ``dtype`` (``run.dtype``) or left as stored (None).

        Raises:
            ArtifactError: not a task model artifact, or unreadable.
        """
        net, art = load_model(path, task_model_kinds())
        data = art.data
        model = cls(net, data.get("range", "[-1,1]"), int(data.get("image_size", 0)),
                    int(data.get("channels", 0)), art.kind, art.meta.get("ebmctl.task", ""))
        model.path = str(path)
        return model.to(device, dtype).eval()

    def check_task(self, task: str) -> None:
        """Refuse a model trained for another task than ``task`` (the profile's task.name); a
        model that records no task passes.

        Raises:
            ConfigError: naming the model file, its task and the profile's.
        """
        if self.task and self.task != task:
            raise ConfigError(f"{self.path or 'the task model'} is a model for task "
                              f"{self.task!r}, but the profile's task.name is {task!r}")

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        x = adapt_images(x01, self.image_size, self.channels)
        if self.input_range == "[-1,1]":
            x = to_internal(x)
        return self.net(x)



# --- the Hat EBM ---------------------------------------------------------------------------

@dataclass
class HatModel:
    """A trained Hat EBM artifact with its sampling constants."""

    net: HatEBM
    settings: HatSettings
    mcmc_steps: int
    image_size: int
    channels: int
    path: str = ""

    @classmethod
    def load(cls, path: str | Path, device: torch.device) -> "HatModel":
        net, art = load_model(path, "hat-ebm")
        extra, data = art.extra, art.data
        try:
            settings = HatSettings(float(extra["eps_y"]), float(extra["eps_z"]),
                                   float(extra["temperature"]), str(extra["mode"]),
                                   bool(extra.get("residual", True)),
                                   float(extra.get("residual_prior", 0.0)))
            steps = int(extra["mcmc_steps"])
            size, ch = int(data["image_size"]), int(data["channels"])
        except (KeyError, TypeError, ValueError, ConfigError):
            raise ArtifactError(f"{path}: Hat EBM artifact lacks valid sampling metadata") from None
        return cls(net.to(device).eval(), settings, steps, size, ch, str(path))

    @property
    def kind(self) -> str:
        return "hat-ebm"

    @property
    def temperature(self) -> float:
        return self.settings.temperature

    def energy01(self, x01: torch.Tensor) -> torch.Tensor:
        """Model energy H(x)/T of [0,1] images evaluated directly, no latent sampling (thesis
        §6.5.4)."""
        x = to_internal(adapt_images(x01, self.image_size, self.channels))
        return self.net(x) / self.settings.temperature

    def grad01(self, x01: torch.Tensor) -> torch.Tensor:
        """∇_x H(x)/T of [0,1] images [B,C,H,W] (same shape; no latent sampling)."""
        return _input_grad(self.energy01, x01)

    def sample01(self, n: int, steps: int, key: tuple, *, mode: str | None = None,
                 chunk_size: int = 1024) -> dict[str, torch.Tensor]:
        """``n`` samples in [0,1] units: ``samples`` = G(Z_K) + Y_K, ``generator`` = G(Z_0) (the
        generator alone), and the final ``z`` and ``y``. Noise is derived from ``key``."""
        settings = self.settings
        if mode and mode != settings.mode:
            settings = HatSettings(settings.eps_y, settings.eps_z, settings.temperature, mode,
                                   settings.residual, settings.residual_prior)
        dev = next(self.net.parameters()).device
        parts: dict[str, list[torch.Tensor]] = {"samples": [], "generator": [], "z": [], "y": []}
        for i, start in enumerate(range(0, n, chunk_size)):
            gen = make_generator(dev, *key, "chunk", i)
            z0, y0 = initial_state(self.net, min(chunk_size, n - start), gen, dev)
            z, y = hat_langevin(self.net, z0, y0, steps, settings, gen)
            with torch.no_grad():
                parts["generator"].append(to_public(self.net.generate(z0)))
                parts["samples"].append(to_public(self.net.generate(z) + y))
            parts["z"].append(z)
            parts["y"].append(y)
        return {k: torch.cat(v) for k, v in parts.items()}


# --- the fixer (thesis Ch. 5; docs/algorithms.md#fixer) ----------------------------------

class Fixer(nn.Module):
    """Wraps a fixer network working on [-1,1] images (tanh output) so that it maps [0,1]
    images to [0,1]-unit images of the same size. Images with another channel count are
    converted in and back, so a gray EBM's fixer can sit in an RGB pipeline and vice versa."""

    def __init__(self, net: nn.Module, channels: int = 0):
        super().__init__()
        self.net, self.channels = net, channels

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        in_ch = x01.shape[1]
        x = adapt_images(x01, 0, self.channels) if self.channels else x01
        out = to_public(self.net(to_internal(x)))
        return adapt_images(out, 0, in_ch) if out.shape[1] != in_ch else out


def load_fixer(path: str | Path, device: torch.device, dtype: torch.dtype | None = None) -> Fixer:
    """Load a fixer artifact as a frozen, eval-mode :class:`Fixer` (input gradients still flow),
    its weights converted to ``dtype`` (``run.dtype``) or left as stored (None)."""
    net, art = load_model(path, "fixer")
    fixer = Fixer(net, int(art.data.get("channels", 0) or 0)).to(device, dtype).eval()
    for p in fixer.parameters():
        p.requires_grad_(False)
    return fixer


def fix_images(fixer: Fixer, x01: torch.Tensor) -> torch.Tensor:
    """The fixer applied to [0,1] images [B,C,H,W] without gradients (``purify --fixer``)."""
    with torch.no_grad():
        return fixer(x01)


# --- loading whichever energy model an artifact holds ----------------------------------------

ENERGY_KINDS = ("ebm", "hat-ebm")


def artifact_kind(path: str | Path) -> str:
    meta, _ = read_header(path)
    kind = meta.get("ebmctl.kind", "")
    if kind not in ENERGY_KINDS:
        raise ArtifactError(f"{path} is a {kind or 'non-ebmctl'!r} artifact; synthesize and ood "
                            "need an 'ebm' or 'hat-ebm' artifact")
    return kind


def load_energy_model(path: str | Path, device) -> EnergyFunction:
    """A plain EBM (:class:`EnergyModel`) or a Hat EBM (:class:`HatModel`), whichever the
    artifact holds.

    Raises:
        ArtifactError: the file is not an ``ebm`` or ``hat-ebm`` artifact.
    """
    if artifact_kind(path) == "hat-ebm":
        return HatModel.load(path, device)
    return EnergyModel.load(path, device)


def artifact_dataset(path: str | Path) -> str:
    meta, _ = read_header(path)
    try:
        return str(json.loads(meta.get("ebmctl.data", "{}")).get("dataset", ""))
    except json.JSONDecodeError:
        return ""

