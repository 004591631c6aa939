"""Purification and the EOT defense (docs/algorithms.md#purification-and-the-eot-defense),
and the EBM↔task-model adapter.

Public images are [0,1]; :class:`EnergyModel` and :class:`TaskModel` convert to their own
range, size and channels, so an EBM can defend a task model of another resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ebmctl.artifacts import load_model
from ebmctl.errors import ArtifactError
from ebmctl.sampling import LangevinSettings, langevin_chunked
from ebmctl.seeds import make_generator
from ebmctl.units import to_internal, to_public

TASK_MODEL_KINDS = ("classifier", "segmenter")


def task_model_kinds() -> tuple[str, ...]:
    """The built-in task model kinds plus the model kind of every registered task (plugins)."""
    from ebmctl.plugins import get_registries

    tasks = get_registries().tasks
    extra = sorted({tasks.get(n).model_kind for n in tasks} - set(TASK_MODEL_KINDS))
    return TASK_MODEL_KINDS + tuple(extra)


def adapt_images(x: torch.Tensor, size: int | tuple[int, int], channels: int) -> torch.Tensor:
    """Resize to ``size`` (int: square; 0: keep) with bilinear interpolation (antialiased when
    shrinking) and convert channels (gray↔RGB, RGBA→RGB; 0: keep)."""
    if channels and x.shape[1] != channels:
        if channels == 1:
            x = x.mean(1, keepdim=True)
        elif x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif x.shape[1] == 4 and channels == 3:
            x = x[:, :3]
        else:
            raise ArtifactError(f"cannot convert {x.shape[1]}-channel images to {channels}")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if hw[0] and tuple(x.shape[-2:]) != hw:
        shrink = x.shape[-1] > hw[1] or x.shape[-2] > hw[0]
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=shrink)
    return x


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
    def load(cls, path: str | Path, device: torch.device) -> "EnergyModel":
        net, art = load_model(path, "ebm")
        extra, data = art.extra, art.data
        try:
            tau, temp = float(extra["tau"]), float(extra["temperature"])
            size, ch = int(data["image_size"]), int(data["channels"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"{path}: EBM artifact lacks tau/temperature/image size metadata") from None
        if not (tau > 0 and temp > 0):
            raise ArtifactError(f"{path}: EBM artifact has invalid tau/temperature")
        return cls(net.to(device).eval(), tau, temp, size, ch, str(path))

    def settings(self, precision: str = "fp32", eta: float = 1.0,
                 channels_last: bool = False) -> LangevinSettings:
        return LangevinSettings(self.tau, self.temperature, eta, precision, channels_last)

    def energy01(self, x01: torch.Tensor) -> torch.Tensor:
        """Model energy U = U_net / T of [0,1] images (adapted to the EBM's size/channels)."""
        z = to_internal(adapt_images(x01, self.image_size, self.channels))
        return self.net(z) / self.temperature

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


class TaskModel(nn.Module):
    """A task network taking [0,1] images at its own size; converts to its input range."""

    def __init__(self, net: nn.Module, input_range: str = "[-1,1]", image_size: int = 0,
                 channels: int = 0, kind: str = "classifier", task: str = "classification"):
        super().__init__()
        self.net, self.input_range = net, input_range
        self.image_size, self.channels, self.kind, self.task = image_size, channels, kind, task

    @classmethod
    def load(cls, path: str | Path, device: torch.device) -> "TaskModel":
        net, art = load_model(path, task_model_kinds())
        data = art.data
        model = cls(net, data.get("range", "[-1,1]"), int(data.get("image_size", 0)),
                    int(data.get("channels", 0)), art.kind, art.meta.get("ebmctl.task", ""))
        return model.to(device).eval()

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        x = adapt_images(x01, self.image_size, self.channels)
        if self.input_range == "[-1,1]":
            x = to_internal(x)
        return self.net(x)


def average_outputs(outputs: torch.Tensor, mode: str = "logits") -> torch.Tensor:
    """Average replicate outputs [H,B,C,...] over H (thesis Eq. 2.5;
    docs/algorithms.md#purification-and-the-eot-defense)."""
    if mode == "logits":
        return outputs.mean(0)
    if mode == "softmax":
        return outputs.softmax(2).mean(0).clamp_min(1e-12).log()
    if mode == "logsoftmax":
        return outputs.log_softmax(2).mean(0)
    raise ValueError(f"unknown averaging mode {mode!r}")


class Defense:
    """The EOT defense F̂_H(x) = mean_h f(φ(T_h(x))) (thesis Eq. 2.5): T_h a K-step Langevin
    purification with independent noise, φ an optional fixer, f the task model. Without an EBM
    it is the deterministic model f∘φ.

    :meth:`replicates` is the stochastic, non-differentiable part (the chain, plus clamp);
    :meth:`outputs_of` the differentiable rest (fixer and task model), so BPDA replaces only
    the chain. ``image_steps`` counts the Langevin image-steps (rows × K) computed, by this
    object and by the differentiable chain of :mod:`ebmctl.attacks.gradients`.
    """

    def __init__(self, model: TaskModel, ebm: EnergyModel | None = None, *, steps: int = 0,
                 reps: int = 1, average: str = "logits", clamp: bool = False,
                 precision: str = "fp32", chunk_size: int = 2048, channels_last: bool = False,
                 fixer: nn.Module | None = None):
        self.model, self.ebm, self.steps, self.reps = model, ebm, steps, reps
        self.average, self.clamp, self.precision = average, clamp, precision
        self.chunk_size, self.channels_last, self.fixer = chunk_size, channels_last, fixer
        self.image_steps = 0

    @property
    def stochastic(self) -> bool:
        return self.ebm is not None and self.steps > 0

    def count_image_steps(self, n: int) -> None:
        self.image_steps += int(n)

    def purify(self, x01: torch.Tensor, key: tuple) -> torch.Tensor:
        """One purified copy [B,...] per row of [0,1] images (no gradient, no fixer)."""
        if not self.stochastic:
            return x01
        self.count_image_steps(int(x01.shape[0]) * int(self.steps))
        with torch.no_grad():
            return self.ebm.purify01(x01, self.steps, key, precision=self.precision,
                                     chunk_size=self.chunk_size, clamp=self.clamp,
                                     channels_last=self.channels_last)

    def transform(self, x01: torch.Tensor, key: tuple) -> torch.Tensor:
        """One purified and fixed copy per row (no gradient): what the task model sees."""
        out = self.purify(x01, key)
        if self.fixer is not None:
            with torch.no_grad():
                out = self.fixer(out)
        return out

    def replicates(self, x01: torch.Tensor, reps: int, key: tuple) -> torch.Tensor:
        """H purified copies [H,B,...] (chain only; the fixer is applied by
        :meth:`outputs_of`); replica h of image b is row h*B+b of the flat batch. A
        deterministic defense gives one copy, the input itself."""
        if not self.stochastic:
            return x01.detach().unsqueeze(0)
        flat = x01.detach().repeat(reps, *([1] * (x01.dim() - 1)))
        return self.purify(flat, key).view(reps, *x01.shape)

    def outputs_of(self, reps: torch.Tensor) -> torch.Tensor:
        """Task-model outputs [H,B,...] of replicate images [H,B,...], through the fixer if
        any (differentiable)."""
        h, b = reps.shape[:2]
        flat = reps.reshape(h * b, *reps.shape[2:])
        if self.fixer is not None:
            flat = self.fixer(flat)
        out = self.model(flat)
        return out.view(h, b, *out.shape[1:])

    def predict(self, x01: torch.Tensor, reps: int | None, key: tuple,
                batch_rows: int = 4096) -> torch.Tensor:
        """EOT-averaged outputs [B,...] with ``reps`` replicates (default: the defense's H)."""
        reps = reps or self.reps
        per = max(1, batch_rows // max(1, reps if self.stochastic else 1))
        outs = []
        with torch.no_grad():
            for i, part in enumerate(torch.split(x01, per)):
                r = self.replicates(part, reps, (*key, "part", i))
                outs.append(average_outputs(self.outputs_of(r), self.average))
        return torch.cat(outs)
