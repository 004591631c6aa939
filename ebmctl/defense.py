"""Purification and the EOT defense (docs/algorithms.md#purification-and-the-eot-defense),
the purifier contract and the EBM's Langevin purifier.

A *purifier* (:class:`Purifier`) maps [0,1] images [B,C,H,W] to [0,1] images [B,C,H,W] and
declares whether it is ``stochastic`` (it draws its randomness from the seed key the EOT
machinery hands it) and ``differentiable`` (it has a usable backward pass). The attacks see a
defense only through this contract: BPDA treats any purifier as the identity on the backward
pass, the exact-gradient modes call :meth:`Purifier.purify_differentiable`, and EOT averages
over a stochastic purifier's replicates. The EBM's Langevin purification
(:class:`LangevinPurifier`) is one purifier among them; the others are in
:mod:`ebmctl.purifiers`, and plugins register more through ``ebmctl_register_purifiers``.

Public images are [0,1]; the models of :mod:`ebmctl.models` (:class:`~ebmctl.models.EnergyModel`,
:class:`~ebmctl.models.TaskModel`) convert to their own range, size and channels with
:func:`ebmctl.units.adapt_images`, so an EBM can defend a task model of another resolution.
``adapt_images`` is still importable from here for one release.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import nn

from ebmctl.config import setting
from ebmctl.errors import ConfigError, InputError
from ebmctl.sampling.differentiable import langevin_differentiable
from ebmctl.sampling.langevin import LangevinConfig, langevin
from ebmctl.units import adapt_images, to_internal, to_public

if TYPE_CHECKING:
    from ebmctl.models import EnergyModel, TaskModel


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
    purifier: str = setting("", "purifier of the defense when --purifier is not given: "
                            "NAME[:key=value,...] (see `ebmctl plugins`); empty = the EBM's "
                            "Langevin purification ('ebm') when an EBM is given")



#: noise(k, shape) -> [rows, *shape]: the Langevin noise of chain step k for each row of a
#: flat replicate batch (replicate h of image j is row h·b + j, as in Defense.replicates)
RowNoise = Callable[[int, torch.Size], torch.Tensor]


@dataclass(frozen=True)
class PurifierContext:
    """What a purifier built by name may need beyond its own settings: the device and float
    type of the run, the EBM given (``--ebm``; None without one), the profile's ``[defense]``
    and ``[langevin]`` sections, and whether ``defense.steps`` was chosen by the user (else an
    EBM's recorded K_def applies)."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    ebm: EnergyModel | None = None
    defense: DefenseConfig = DefenseConfig()
    langevin: LangevinConfig = LangevinConfig()
    steps_chosen: bool = True


class Purifier:
    """A purification defense: [0,1] images [B,C,H,W] in, [0,1] images [B,C,H,W] out (same
    shape, same device and float type).

    Subclasses set ``name`` (the registered name), ``description``, ``stochastic`` and
    ``differentiable``, take their settings as keyword arguments of ``__init__`` (the CLI's
    ``--purifier NAME:key=value,...`` passes them, typed by their defaults) and implement
    :meth:`purify`. A stochastic purifier derives every random draw from ``key`` (e.g.
    ``make_generator(x.device, *key)``): the same key gives the same output, another key
    independent randomness; replicate h of image b is row h·B+b of the batch it receives.

    Attributes:
        stochastic: draws randomness from ``key`` (the attacks then use EOT over replicates).
        differentiable: :meth:`purify` under autograd gives a usable gradient w.r.t. its input
            (else only BPDA, the identity backward pass, applies; Athalye, Carlini & Wagner
            2018).
        chain_options: keyword options :meth:`purify_differentiable` takes beyond (x, key)
            (the EBM purifier's ``backward_net``, ``segment``, ``steps``, ``noise``).
        fixed_noise: :meth:`purify_with_noise` exists (``attack.common_noise``).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    stochastic: bool = False
    differentiable: bool = False
    chain_options: ClassVar[frozenset[str]] = frozenset()
    fixed_noise: ClassVar[bool] = False

    @property
    def identity(self) -> bool:
        """True when this purifier leaves every image unchanged (e.g. K = 0 Langevin steps)."""
        return False

    def purify(self, x01: torch.Tensor, key: tuple) -> torch.Tensor:
        """Purified images [B,C,H,W] in [0,1] of ``x01`` [B,C,H,W] in [0,1]; builds a graph
        where autograd is on and the purifier is differentiable."""
        raise NotImplementedError

    def purify_differentiable(self, x01: torch.Tensor, key: tuple, **options: Any
                              ) -> torch.Tensor:
        """:meth:`purify` with its graph w.r.t. ``x01`` (the exact-gradient attack modes).

        Raises:
            ConfigError: the purifier declares no backward pass, or an option it does not take.
        """
        if not self.differentiable:
            raise ConfigError(f"purifier {self.name!r} has no backward pass (it declares "
                              "differentiable = False): attack it with BPDA (bpda-eot, "
                              "attack.gradient = bpda)")
        unknown = sorted(set(options) - set(self.chain_options))
        if unknown:
            raise ConfigError(f"purifier {self.name!r} takes no {', '.join(unknown)} (those "
                              "are options of the EBM's Langevin chain)")
        with torch.enable_grad():
            return self.purify(x01, key, **options)

    def purify_with_noise(self, x01: torch.Tensor, noise: RowNoise) -> torch.Tensor:
        """:meth:`purify` with its randomness fixed by ``noise`` (``fixed_noise`` purifiers).

        Raises:
            ConfigError: the purifier takes no fixed noise.
        """
        raise ConfigError(f"purifier {self.name!r} takes no fixed noise (attack.common_noise "
                          "fixes the Langevin noise of the EBM purifier)")

    def settings(self) -> dict[str, Any]:
        """The settings that define this purifier (reports print them), JSON values."""
        return {}

    def describe(self) -> str:
        """``name (key=value, ...)``, as reports show it."""
        opts = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"{self.name} ({opts})" if opts else self.name

    @classmethod
    def option_types(cls) -> dict[str, type]:
        """Setting name → type of the settings ``--purifier NAME:key=value`` may give: the
        keyword arguments of ``__init__`` with their defaults' types."""
        out = {}
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            default = p.default
            out[p.name] = type(default) if default is not p.empty and default is not None \
                else str
        return out

    @classmethod
    def from_options(cls, options: dict[str, Any], context: PurifierContext) -> "Purifier":
        """The purifier ``--purifier NAME:options`` names (options already typed)."""
        return cls(**options)


class CallablePurifier(Purifier):
    """Any function as a purifier (``ebmctl.defend(model, purifier=fn)``): ``fn(x)`` maps
    [0,1] images [B,C,H,W] to [0,1] images; a stochastic one is called ``fn(x, generator)``
    with a ``torch.Generator`` derived from the EOT key. ``stochastic`` and ``differentiable``
    default to the function's attributes of those names, else False."""

    def __init__(self, fn: Callable[..., torch.Tensor], *, name: str | None = None,
                 stochastic: bool | None = None, differentiable: bool | None = None):
        self.fn = fn
        self._name = name or getattr(fn, "name", None) or getattr(fn, "__name__", None) \
            or type(fn).__name__
        self.stochastic = bool(getattr(fn, "stochastic", False) if stochastic is None
                               else stochastic)
        self.differentiable = bool(getattr(fn, "differentiable", False)
                                   if differentiable is None else differentiable)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._name

    def purify(self, x01: torch.Tensor, key: tuple) -> torch.Tensor:
        if not self.stochastic:
            return self.fn(x01)
        from ebmctl.seeds import make_generator

        return self.fn(x01, make_generator(x01.device, *key, "purifier"))

    def settings(self) -> dict[str, Any]:
        return {"stochastic": self.stochastic, "differentiable": self.differentiable}


def _bound_noise(noise: RowNoise, z: torch.Tensor) -> Callable[[int], torch.Tensor]:
    shape = z.shape[1:]

    def step(k: int) -> torch.Tensor:
        out = noise(k, shape).to(z.device)
        if out.shape[0] != z.shape[0]:
            raise ValueError(f"noise for {out.shape[0]} rows, chain has {z.shape[0]}")
        return out

    return step


class LangevinPurifier(Purifier):
    """EBM Langevin purification (Hill, Mitchell & Zhu 2021; thesis Eq. 2.5's T): K steps of
    X ← X − (τ²/2T)·∇U(X) + τZ from each image in the EBM's units, resized to and from the
    EBM's size and channels, optionally clamped to [0,1]. Stochastic (the Langevin noise comes
    from the key) and differentiable: exactly through all K steps with checkpointed segments
    (:func:`ebmctl.sampling.differentiable.langevin_differentiable`). ``image_steps`` counts
    the image-steps computed (rows × K; the differentiable chain counts its recomputation).

    Registered as ``ebm``: ``--ebm FILE`` is the short form of ``--purifier ebm``, whose
    settings ``steps`` (K_def, default ``defense.steps`` or the EBM's recorded K_def) and
    ``clamp`` (default ``defense.clamp``) a profile's ``[defense]`` also gives.
    """

    name = "ebm"
    description = ("EBM Langevin purification, K_def steps (Hill, Mitchell & Zhu 2021); the "
                   "EBM from --ebm; settings steps, clamp")
    differentiable = True
    chain_options = frozenset({"backward_net", "segment", "steps", "noise"})
    fixed_noise = True

    def __init__(self, ebm: EnergyModel, steps: int, *, precision: str = "fp32",
                 chunk_size: int = 2048, clamp: bool = False, channels_last: bool = False):
        if steps < 0:
            raise ConfigError(f"purifier 'ebm': steps must be >= 0, got {steps}")
        self.ebm, self.steps, self.precision = ebm, int(steps), precision
        self.chunk_size, self.clamp, self.channels_last = chunk_size, clamp, channels_last
        self.image_steps = 0

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.steps > 0

    @property
    def identity(self) -> bool:
        return self.steps == 0

    @classmethod
    def option_types(cls) -> dict[str, type]:
        return {"steps": int, "clamp": bool}

    @classmethod
    def from_options(cls, options: dict[str, Any], context: PurifierContext) -> "Purifier":
        if context.ebm is None:
            raise ConfigError("purifier 'ebm' needs an EBM: give --ebm FILE (or a shipped "
                              "name such as cifar10, or defense.ebm)")
        steps = options.get("steps")
        if steps is None:
            steps = context.ebm.purification_steps(context.defense.steps, context.steps_chosen)
        return cls(context.ebm, steps, precision=context.langevin.precision_on(
            context.device, context.dtype), chunk_size=context.langevin.chunk_size,
            clamp=options.get("clamp", context.defense.clamp),
            channels_last=context.langevin.channels_last)

    def settings(self) -> dict[str, Any]:
        return {"ebm": str(self.ebm.path) if getattr(self.ebm, "path", "") else None,
                "steps": self.steps, "precision": self.precision, "clamp": self.clamp}

    def purify(self, x01: torch.Tensor, key: tuple, **chain: Any) -> torch.Tensor:
        if self.identity:
            return x01
        if torch.is_grad_enabled() and (x01.requires_grad or chain):
            return self._differentiable(x01, key, **chain)
        self.image_steps += int(x01.shape[0]) * self.steps
        with torch.no_grad():
            return self.ebm.purify01(x01, self.steps, key, precision=self.precision,
                                     chunk_size=self.chunk_size, clamp=self.clamp,
                                     channels_last=self.channels_last)

    def _ebm_input(self, x01: torch.Tensor) -> torch.Tensor:
        return to_internal(adapt_images(x01, self.ebm.image_size, self.ebm.channels))

    def purify_with_noise(self, x01: torch.Tensor, noise: RowNoise) -> torch.Tensor:
        """K Langevin steps (no gradient) whose noise is ``noise`` (e.g. :meth:`ebmctl.attacks.
        gradients.CommonNoise.for_rows`) instead of generators derived from a key."""
        in_size, in_ch = tuple(x01.shape[-2:]), x01.shape[1]
        z = self._ebm_input(x01.detach())
        settings = self.ebm.settings(self.precision, channels_last=self.channels_last)
        with torch.no_grad():
            z = langevin(self.ebm.net, z, self.steps, settings, noise=_bound_noise(noise, z))
        self.image_steps += z.shape[0] * self.steps
        out = adapt_images(to_public(z), in_size, in_ch)
        return out.clamp(0, 1) if self.clamp else out

    def _differentiable(self, x01: torch.Tensor, key: tuple, *, backward_net: nn.Module | None = None,
                        segment: int = 0, steps: int | None = None,
                        noise: RowNoise | None = None) -> torch.Tensor:
        """The chain on [0,1] images, differentiable w.r.t. ``x01``; ``steps`` K' < K gives a
        surrogate chain, ``noise`` fixed per-row noise, ``backward_net`` the net the backward
        pass differentiates (a smoothed copy), ``segment`` the checkpoint length (0 = √K)."""
        steps = self.steps if steps is None else int(steps)
        if steps <= 0:
            return x01
        in_size, in_ch = tuple(x01.shape[-2:]), x01.shape[1]
        z = self._ebm_input(x01)
        # fp32 throughout: the recomputed segments take second derivatives, which reduced
        # precision would make inconsistent with the forward chain
        z = langevin_differentiable(self.ebm.net, z, steps, self.ebm.settings("fp32"), key=key,
                                    noise=None if noise is None else _bound_noise(noise, z),
                                    backward_net=backward_net, segment=segment)
        # forward once, recomputed with a graph once on the backward pass
        self.image_steps += 2 * z.shape[0] * steps
        out = adapt_images(to_public(z), in_size, in_ch)
        return out.clamp(0, 1) if self.clamp else out


class Defense:
    """The EOT defense F̂_H(x) = mean_h f(φ(T_h(x))) (thesis Eq. 2.5): T_h a purifier (the
    EBM's K-step Langevin purification, or any :class:`Purifier`) with independent randomness
    per replicate, φ an optional fixer, f the task model. Without a purifier it is the
    deterministic model f∘φ; a deterministic purifier gives one replicate.

    ``Defense(model, ebm, steps=K, ...)`` builds the EBM purifier (:class:`LangevinPurifier`);
    ``Defense(model, purifier=p, reps=H)`` takes any purifier. :meth:`replicates` is the
    purification (no graph); :meth:`outputs_of` the differentiable rest (fixer and task model),
    so BPDA replaces only the purifier. ``image_steps`` counts the Langevin image-steps (rows ×
    K) the EBM purifier computed (0 for other purifiers).

    Raises:
        ValueError: both ``ebm`` and ``purifier`` given.
    """

    def __init__(self, model: TaskModel, ebm: EnergyModel | None = None, *, steps: int = 0,
                 reps: int = 1, average: str = "logits", clamp: bool = False,
                 precision: str = "fp32", chunk_size: int = 2048, channels_last: bool = False,
                 fixer: nn.Module | None = None, purifier: Purifier | None = None):
        if ebm is not None and purifier is not None:
            raise ValueError("give the EBM or a purifier, not both")
        if ebm is not None:
            purifier = LangevinPurifier(ebm, steps, precision=precision, chunk_size=chunk_size,
                                        clamp=clamp, channels_last=channels_last)
        self.model, self.purifier, self.reps = model, purifier, reps
        self.average, self.clamp, self.precision = average, clamp, precision
        self.chunk_size, self.channels_last, self.fixer = chunk_size, channels_last, fixer

    @classmethod
    def from_config(cls, model: TaskModel, ebm: EnergyModel | None, defense: DefenseConfig,
                    langevin: LangevinConfig, device: torch.device,
                    fixer: nn.Module | None = None,
                    dtype: torch.dtype = torch.float32,
                    purifier: Purifier | None = None) -> Defense:
        """The defense a profile describes: with ``purifier``, that purifier (H_def =
        ``defense.eot_reps`` replicates when it is stochastic); else K_def and H_def from
        ``defense`` when there is an EBM (else the deterministic f∘φ), the chain's precision
        (resolved on ``device`` for chains in ``dtype``, ``run.dtype``), batching and memory
        layout from ``langevin``.

        Raises:
            ConfigError: a reduced ``langevin.precision`` with ``dtype`` float64.
        """
        if purifier is not None:
            return cls(model, purifier=purifier,
                       reps=defense.eot_reps if purifier.stochastic else 1,
                       average=defense.average, clamp=defense.clamp, fixer=fixer,
                       precision=langevin.precision_on(device, dtype))
        return cls(model, ebm, steps=defense.steps if ebm else 0,
                   reps=defense.eot_reps if ebm else 1, average=defense.average,
                   clamp=defense.clamp, precision=langevin.precision_on(device, dtype),
                   chunk_size=langevin.chunk_size, channels_last=langevin.channels_last,
                   fixer=fixer)

    @property
    def ebm(self) -> EnergyModel | None:
        """The EBM of an EBM purifier (its energy is the defense-aware loss term), else None."""
        return getattr(self.purifier, "ebm", None)

    @property
    def steps(self) -> int:
        """K of an EBM purifier (0 for any other)."""
        return int(getattr(self.purifier, "steps", 0)) if self.ebm is not None else 0

    @property
    def purifies(self) -> bool:
        """A purifier stands in front of the model and changes images."""
        return self.purifier is not None and not self.purifier.identity

    @property
    def stochastic(self) -> bool:
        return self.purifies and bool(self.purifier.stochastic)

    @property
    def image_steps(self) -> int:
        return int(getattr(self.purifier, "image_steps", 0))

    def count_image_steps(self, n: int) -> None:
        if hasattr(self.purifier, "image_steps"):
            self.purifier.image_steps += int(n)

    def purify(self, x01: torch.Tensor, key: tuple) -> torch.Tensor:
        """One purified copy [B,...] per row of [0,1] images (no gradient, no fixer).

        Raises:
            InputError: the purifier returned another shape than it was given.
        """
        if not self.purifies:
            return x01
        with torch.no_grad():
            out = self.purifier.purify(x01, key)
        if out.shape != x01.shape:
            raise InputError(f"purifier {self.purifier.name!r} returned shape "
                             f"{tuple(out.shape)} for images {tuple(x01.shape)}")
        return out

    def transform(self, x01: torch.Tensor, key: tuple) -> torch.Tensor:
        """One purified and fixed copy per row (no gradient): what the task model sees."""
        out = self.purify(x01, key)
        if self.fixer is not None:
            with torch.no_grad():
                out = self.fixer(out)
        return out

    def replicates(self, x01: torch.Tensor, reps: int, key: tuple) -> torch.Tensor:
        """H purified copies [H,B,...] (purifier only; the fixer is applied by
        :meth:`outputs_of`); replica h of image b is row h*B+b of the flat batch. A
        deterministic defense gives one copy (the input itself without a purifier)."""
        if not self.purifies:
            return x01.detach().unsqueeze(0)
        if not self.stochastic:
            return self.purify(x01.detach(), key).unsqueeze(0)
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
