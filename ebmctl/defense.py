"""Purification and the EOT defense (docs/algorithms.md#purification-and-the-eot-defense),
and the image adapter every model uses.

Public images are [0,1]; the models of :mod:`ebmctl.models` (:class:`~ebmctl.models.EnergyModel`,
:class:`~ebmctl.models.TaskModel`) convert to their own range, size and channels with
:func:`adapt_images`, so an EBM can defend a task model of another resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ebmctl.config import setting
from ebmctl.errors import ArtifactError
from ebmctl.sampling.langevin import LangevinConfig

if TYPE_CHECKING:
    from ebmctl.models import EnergyModel, TaskModel


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


@dataclass(frozen=True)
class DefenseConfig:
    """The profile section ``[defense]``: the EOT defense's K_def and H_def, how replicate
    outputs are averaged (:func:`average_outputs`), and the EBM used when none is given."""

    section: ClassVar[str] = "defense"

    steps: int = setting(1500, "K_def purification steps", minimum=0)
    eot_reps: int = setting(150, "H_def replicates", minimum=1)
    average: str = setting("logits", "logits | softmax | logsoftmax",
                           choices=("logits", "softmax", "logsoftmax"))
    clamp: bool = setting(False, "clamp purified images to the valid range")
    ebm: str = setting("", "EBM artifact of the defense when --ebm is not given; it may come "
                       "from another dataset (e.g. a CIFAR-10 EBM in front of a segmenter)")


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

    @classmethod
    def from_config(cls, model: TaskModel, ebm: EnergyModel | None, defense: DefenseConfig,
                    langevin: LangevinConfig, device: torch.device,
                    fixer: nn.Module | None = None,
                    dtype: torch.dtype = torch.float32) -> Defense:
        """The defense a profile describes: K_def and H_def from ``defense`` when there is an
        EBM (else the deterministic f∘φ), the chain's precision (resolved on ``device`` for
        chains in ``dtype``, ``run.dtype``), batching and memory layout from ``langevin``.

        Raises:
            ConfigError: a reduced ``langevin.precision`` with ``dtype`` float64.
        """
        return cls(model, ebm, steps=defense.steps if ebm else 0,
                   reps=defense.eot_reps if ebm else 1, average=defense.average,
                   clamp=defense.clamp, precision=langevin.precision_on(device, dtype),
                   chunk_size=langevin.chunk_size, channels_last=langevin.channels_last,
                   fixer=fixer)

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
