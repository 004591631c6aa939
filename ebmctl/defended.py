"""Bring your own classifier: :func:`defend` wraps any ``nn.Module`` in a purification defense
(the EOT Langevin defense of an EBM, a registered purifier by name, or any callable) as an
ordinary PyTorch classifier, so torchattacks, AutoAttack-style code or a hand-written loop can
attack it; :func:`load_ebm` loads an EBM artifact (or a shipped one by name).

The wrapper is built from the same pieces as the CLI's defense (:class:`ebmctl.defense.Defense`
for the chain, :mod:`ebmctl.attacks.gradients` for differentiable chains), so the library and
``ebmctl attack`` purify identically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ebmctl.defense import CallablePurifier, Defense, DefenseConfig, Purifier, average_outputs
from ebmctl.models import EnergyModel
from ebmctl.errors import ConfigError, InputError
from ebmctl.shipped import SHIPPED_EBM_NAMES

#: EBMs shipped inside the package, by name (see :mod:`ebmctl.shipped`)
SHIPPED_EBMS = SHIPPED_EBM_NAMES
GRADIENTS = ("bpda", "full", "smooth")
AVERAGES = ("logits", "softmax", "logsoftmax")


def load_ebm(path_or_name: str | Path | EnergyModel,
             device: torch.device | str = "cpu",
             dtype: torch.dtype | None = None) -> EnergyModel:
    """An EBM artifact with its Langevin constants (τ, T, image size) read from the file.

    Args:
        path_or_name: a ``.safetensors`` EBM artifact, or the name of a shipped EBM
            (``"cifar10"``: the default CIFAR-10 EBM). An :class:`EnergyModel` is returned as is
            (moved to ``device`` and ``dtype``).
        device: where the network lives.
        dtype: the float type of its network (``torch.float64``: chains in float64); None
            keeps the stored one (float32).

    Raises:
        InputError: neither an existing file nor a shipped name.
        ArtifactError: the file is not an ebmctl EBM artifact.
    """
    device = torch.device(device)
    if isinstance(path_or_name, EnergyModel):
        path_or_name.net.to(device, dtype)
        return path_or_name
    text = str(path_or_name)
    if text in SHIPPED_EBMS:
        from ebmctl.shipped import default_ebm

        return EnergyModel.load(default_ebm(), device, dtype)
    path = Path(text)
    if not path.exists():
        raise InputError(f"no EBM {text!r}: give an EBM artifact (.safetensors) or a shipped "
                         f"name ({', '.join(SHIPPED_EBMS)})")
    return EnergyModel.load(path, device, dtype)


def as_purifier(purifier: Purifier | str | Callable[..., torch.Tensor],
                device: torch.device | str = "cpu") -> Purifier:
    """A :class:`~ebmctl.defense.Purifier` from a purifier, a registered name with settings
    (``"jpeg:quality=75"``, see ``ebmctl plugins``) or any callable (wrapped as a
    :class:`~ebmctl.defense.CallablePurifier`: ``fn(x)``, or ``fn(x, generator)`` when it has
    ``stochastic = True``; ``differentiable`` from its attribute, default False).

    Raises:
        ConfigError: an unknown name or setting; ``"ebm"`` (give the EBM as ``ebm=``).
    """
    if isinstance(purifier, Purifier):
        return purifier
    if isinstance(purifier, str):
        from ebmctl.defense import PurifierContext
        from ebmctl.plugins import get_registries
        from ebmctl.purifiers import build_purifier, parse_purifier_spec

        if parse_purifier_spec(purifier)[0] == "ebm":
            raise ConfigError("the EBM purifier takes its EBM as defend(model, ebm=...), with "
                              "steps= and reps=")
        return build_purifier(purifier, get_registries().purifiers,
                              PurifierContext(device=torch.device(device)))
    if callable(purifier):
        return CallablePurifier(purifier)
    raise ConfigError(f"purifier must be a Purifier, a registered name or a callable, got "
                      f"{type(purifier).__name__}")


class _StraightThrough(torch.autograd.Function):
    """BPDA (Athalye et al. 2018): forward = the purified images, computed without a graph;
    backward = the identity, so the gradient w.r.t. a purified copy is passed to its input."""

    @staticmethod
    def forward(ctx, x, purify):
        with torch.no_grad():
            return purify(x.detach())

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _FromUnit(nn.Module):
    """Feeds [0,1] images to a model that takes ``[lo, hi]`` (what :class:`Defense` expects of
    its task model)."""

    def __init__(self, model: nn.Module, lo: float, hi: float):
        super().__init__()
        self.model, self.lo, self.hi = model, float(lo), float(hi)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        if (self.lo, self.hi) == (0.0, 1.0):
            return self.model(x01)
        return self.model(self.lo + x01 * (self.hi - self.lo))


class DefendedModel(nn.Module):
    """A classifier defended by purification (the EBM's EOT Langevin purification, thesis
    Eq. 2.5, or any :class:`~ebmctl.defense.Purifier` given as ``purifier``), usable as any
    ``nn.Module``: ``forward(x)`` with ``x`` [B,C,H,W] in ``input_range`` returns
    [B,num_classes] outputs averaged over ``reps`` purified copies (one for a deterministic
    purifier; ``average``: ``logits`` = mean logits; ``softmax`` = log of the mean
    probabilities; ``logsoftmax`` = mean log-probabilities). Without a purifier (or with
    ``steps = 0``) it is the model itself.

    Every call draws fresh Langevin noise from generators keyed by ``(seed, call number)``, so
    repeated calls (an attacker's EOT) see the defense's randomness while a fresh wrapper with
    the same seed repeats the same sequence; :meth:`reseed` restarts the sequence.

    The backward pass follows ``gradient``: ``bpda`` treats the purifier as the identity
    (straight-through, an autograd Function; Athalye, Carlini & Wagner 2018); ``full``
    differentiates exactly through the purifier (the EBM's: all K steps, checkpointed,
    :func:`ebmctl.attacks.gradients.langevin_differentiable`; only a ``differentiable``
    purifier); ``smooth`` as ``full`` with a softplus-smoothed second derivative of the EBM's
    (Leaky)ReLUs. Calls without a gradient (``torch.no_grad()``, inputs not requiring grad)
    skip the graph.

    Attributes:
        defense: the :class:`ebmctl.defense.Defense` it runs (also what
            :func:`ebmctl.evaluate` attacks with ebmctl's own attacks).
        calls: forward calls so far (the noise counter).
    """

    def __init__(self, model: nn.Module, ebm: EnergyModel | None, *, steps: int, reps: int,
                 average: str = "logits", gradient: str = "bpda",
                 input_range: tuple[float, float] = (0.0, 1.0), seed: int = 0,
                 clamp: bool = False, smooth_temperature: float = 0.1, segment: int = 0,
                 chunk_size: int = 2048, purifier: Purifier | None = None):
        super().__init__()
        if ebm is not None and purifier is not None:
            raise ConfigError("give an EBM or a purifier, not both")
        lo, hi = (float(v) for v in input_range)
        if not hi > lo:
            raise ConfigError(f"input_range must be (low, high) with low < high, got {input_range}")
        if gradient not in GRADIENTS:
            raise ConfigError(f"unknown gradient {gradient!r}; choose from {', '.join(GRADIENTS)}")
        if average not in AVERAGES:
            raise ConfigError(f"unknown average {average!r}; choose from {', '.join(AVERAGES)}")
        if steps < 0 or reps < 1:
            raise ConfigError(f"steps must be >= 0 and reps >= 1, got steps={steps}, reps={reps}")
        if smooth_temperature <= 0:
            raise ConfigError("smooth_temperature must be > 0")
        self.model = model
        # not a submodule (it holds ``model``, already one): keeps state_dict keys unique
        object.__setattr__(self, "task_model", _FromUnit(model, lo, hi))
        self.ebm_net = ebm.net if ebm is not None else None  # a submodule: .to() moves it
        self.input_range, self.gradient, self.seed = (lo, hi), gradient, int(seed)
        self.smooth_temperature, self.segment = float(smooth_temperature), int(segment)
        if purifier is not None:
            self.defense = Defense(self.task_model, purifier=purifier,
                                   reps=reps if purifier.stochastic else 1, average=average,
                                   clamp=clamp, chunk_size=chunk_size)
        else:
            self.defense = Defense(self.task_model, ebm, steps=steps if ebm is not None else 0,
                                   reps=reps if ebm is not None else 1, average=average,
                                   clamp=clamp, chunk_size=chunk_size)
        if gradient != "bpda":  # a backward pass the purifier lacks: refused now, not mid-attack
            from ebmctl.attacks.gradients import check_backward

            check_backward(self.defense, gradient)
        self.calls = 0
        self._smooth_net: nn.Module | None = None

    @property
    def ebm(self) -> EnergyModel | None:
        return self.defense.ebm

    @property
    def steps(self) -> int:
        return self.defense.steps

    @property
    def reps(self) -> int:
        return self.defense.reps

    @property
    def stochastic(self) -> bool:
        return self.defense.stochastic

    @property
    def purifier(self) -> Purifier | None:
        return self.defense.purifier

    def reseed(self, seed: int | None = None) -> "DefendedModel":
        """Restart the noise sequence (optionally under a new seed)."""
        if seed is not None:
            self.seed = int(seed)
        self.calls = 0
        return self

    def train(self, mode: bool = True) -> "DefendedModel":
        super().train(mode)
        if self.ebm_net is not None:
            self.ebm_net.eval()  # the purifier never trains
        return self

    def extra_repr(self) -> str:
        return (f"steps={self.steps}, reps={self.reps}, average={self.defense.average!r}, "
                f"gradient={self.gradient!r}, input_range={self.input_range}")

    def purify(self, x: torch.Tensor, key: tuple | None = None) -> torch.Tensor:
        """One purified copy [B,C,H,W] of images ``x`` in ``input_range`` (no gradient)."""
        lo, hi = self.input_range
        key = key if key is not None else self._next_key()
        return lo + self.defense.purify((x - lo) / (hi - lo), key) * (hi - lo)

    def _next_key(self) -> tuple:
        key = (self.seed, "defend", self.calls)
        self.calls += 1
        return key

    def _chain(self, flat01: torch.Tensor, key: tuple) -> torch.Tensor:
        d = self.defense
        needs_grad = torch.is_grad_enabled() and flat01.requires_grad
        if not needs_grad:
            return d.purify(flat01.detach(), key)
        if self.gradient == "bpda":
            purify: Callable[[torch.Tensor], torch.Tensor] = lambda t: d.purify(t, key)  # noqa: E731
            return _StraightThrough.apply(flat01, purify)
        from ebmctl.attacks.gradients import purify_differentiable, smoothed_copy

        backward_net = None
        if self.gradient == "smooth" and self.ebm is not None:
            if self._smooth_net is None:
                self._smooth_net = smoothed_copy(self.ebm.net, self.smooth_temperature)[0]
            backward_net = self._smooth_net.to(flat01.device)
        return purify_differentiable(d, flat01, key, backward_net=backward_net,
                                     segment=self.segment)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """EOT-averaged outputs [B,...] of images ``x`` [B,C,H,W] in ``input_range``.

        Raises:
            InputError: ``x`` is not a 4-d image batch.
        """
        if x.dim() != 4:
            raise InputError(f"expected images [B,C,H,W], got shape {tuple(x.shape)}")
        if not self.defense.purifies:
            return self.model(x)
        lo, hi = self.input_range
        x01 = (x - lo) / (hi - lo)
        h = self.reps if self.stochastic else 1
        flat = x01.repeat(h, *([1] * (x01.dim() - 1)))  # replica r of image b: row r*B + b
        purified = self._chain(flat, self._next_key())
        out = self.task_model(purified)
        return average_outputs(out.view(h, x.shape[0], *out.shape[1:]), self.defense.average)


def defend(model: nn.Module, ebm: EnergyModel | str | Path | None = None, *,
           purifier: Purifier | str | Callable[..., torch.Tensor] | None = None,
           steps: int | None = None, reps: int | None = None, average: str = "logits",
           gradient: str = "bpda", input_range: tuple[float, float] = (0.0, 1.0),
           seed: int = 0, clamp: bool = False, smooth_temperature: float = 0.1) -> DefendedModel:
    """Wrap a classifier in a purification defense: the EBM defense (purify each input with
    ``steps`` Langevin steps, ``reps`` times with independent noise, and average the
    classifier's outputs), or any ``purifier``.

    Args:
        model: any classifier taking images [B,C,H,W] in ``input_range`` and returning
            [B,num_classes] logits. It is used as is (its own normalisation inside).
        ebm: an :class:`~ebmctl.models.EnergyModel`, an EBM artifact path, a shipped name
            (``"cifar10"``), or ``None`` for no defense (the wrapper is then ``model``).
            The EBM resizes and converts channels itself, so it may defend another resolution.
            It is moved to the model's device and, for a model converted with ``.double()``,
            to float64 (the whole defense then runs in float64).
        purifier: instead of an EBM, any purifier: a registered name with settings
            (``"jpeg:quality=75"``, ``"bit-depth:bits=3"``, ``"median:size=2"``,
            ``"gaussian-noise:sigma=0.1"``; see ``ebmctl plugins``), a
            :class:`~ebmctl.api.Purifier`, or a callable mapping [0,1] images [B,C,H,W] to
            [0,1] images (see :func:`as_purifier`). A stochastic one is averaged over ``reps``
            copies (default ``defense.eot_reps``); a non-differentiable one only takes
            ``gradient="bpda"``.
        steps: K Langevin steps per copy (default: the profile default ``defense.steps``).
        reps: H copies averaged (default: ``defense.eot_reps``).
        average: ``logits`` | ``softmax`` | ``logsoftmax`` (see :class:`DefendedModel`).
        gradient: the backward pass: ``bpda`` | ``full`` | ``smooth``.
        input_range: the pixel range (low, high) of the images ``forward`` receives and the
            model takes, e.g. (0, 1) or (0, 255); purification works on [0,1] internally.
        seed: root of the per-call noise keys.
        clamp: clamp purified images to the valid range (``defense.clamp``).
        smooth_temperature: softplus temperature of ``gradient="smooth"``.

    Returns:
        A :class:`DefendedModel` (an ``nn.Module``; ``.eval()``, ``.to(device)`` as usual; the
        EBM moves with it).

    Raises:
        ConfigError: an unknown ``gradient`` or ``average``, steps < 0, reps < 1, a bad range;
            both ``ebm`` and ``purifier``; an unknown purifier or setting; ``gradient="full"``
            or ``"smooth"`` for a purifier without that backward pass.
        InputError / ArtifactError: ``ebm`` cannot be loaded.
    """
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    if purifier is not None:
        if ebm is not None:
            raise ConfigError("give defend() an EBM or a purifier, not both")
        chosen = as_purifier(purifier, first.device if first is not None else "cpu")
        reps = DefenseConfig().eot_reps if reps is None else int(reps)
        return DefendedModel(model, None, steps=0, reps=reps, average=average,
                             gradient=gradient, input_range=input_range, seed=seed,
                             clamp=clamp, smooth_temperature=smooth_temperature,
                             purifier=chosen)
    if ebm is not None:
        first = next((p for p in model.parameters() if p.is_floating_point()), None)
        device = first.device if first is not None else torch.device("cpu")
        ebm = load_ebm(ebm, device, torch.float64 if first is not None
                       and first.dtype == torch.float64 else None)
    steps = DefenseConfig().steps if steps is None else int(steps)
    reps = DefenseConfig().eot_reps if reps is None else int(reps)
    return DefendedModel(model, ebm, steps=steps, reps=reps, average=average, gradient=gradient,
                         input_range=input_range, seed=seed, clamp=clamp,
                         smooth_temperature=smooth_temperature)
