"""The one place that estimates a gradient through the defense: ``bpda | full | smooth | exact``.

Every mode goes through the purifier contract (:class:`ebmctl.defense.Purifier`): ``bpda``
purifies without a graph and passes the gradient w.r.t. each purified copy to its input (any
purifier); ``full`` and ``exact`` differentiate through the purifier's own backward pass (only a
``differentiable`` one; :func:`check_backward` refuses the others before any work); ``smooth``
differentiates the EBM purifier's chain through a smoothed copy of its network.

For the EBM purifier: the thesis' EBMs are piecewise linear (LeakyReLU, no normalisation): the Hessian of U is zero
almost everywhere, so each Langevin step X ← X − d·∇U(X) + s·Z has Jacobian I and exact autograd
through all K steps returns the BPDA gradient. :func:`langevin_differentiable` computes that
exact chain gradient with bounded memory (segment checkpointing: only every S-th state is kept;
a segment is recomputed with its graph during the backward pass), so the equality can be tested
rather than assumed. Two things can make the chain gradient genuinely differ from BPDA:

* a *smoothed backward pass*: the forward chain stays exact, but on the backward pass the
  derivative of each piecewise-linear activation's slope is taken from a smooth surrogate
  (the slope of a softplus with temperature t), so the Hessian term −d·∇²U appears;
* an EBM with smooth activations (``ebm.activation = "silu"``), where the exact gradient
  already carries the Hessian term.

Noise of segment s is drawn from ``make_generator(device, *key, "seg", s)`` and redrawn
identically on recomputation, so the global RNG is never touched. :class:`CommonNoise` instead
fixes the noise of each (image, replicate, chain step) for a whole restart (Liu & Wei 2025's
fixed-randomness attack, ``attack.common_noise``); ``chain_steps`` differentiates through a
shorter surrogate chain (Lee & Kim 2023, ``attack.gradient_steps``).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ebmctl.defense import Defense, RowNoise, average_outputs
from ebmctl.errors import ConfigError
from ebmctl.sampling.differentiable import auto_segment, langevin_differentiable  # noqa: F401
from ebmctl.sampling.langevin import frozen
from ebmctl.seeds import make_generator

GRADIENT_MODES = ("bpda", "full", "smooth", "exact")


# --- smoothed backward pass -------------------------------------------------------------

class _SurrogateSlope(torch.autograd.Function):
    """Forward: the exact slope of LeakyReLU (1 or ``leak``). Backward: the derivative of the
    slope of ``leak·z + (1−leak)·t·softplus(z/t)``, i.e. (1−leak)·σ'(z/t)/t."""

    @staticmethod
    def forward(ctx, z, leak, temperature):
        ctx.save_for_backward(z)
        ctx.leak, ctx.temperature = leak, temperature
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, leak))

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        s = torch.sigmoid(z / ctx.temperature)
        return grad * (1.0 - ctx.leak) * s * (1 - s) / ctx.temperature, None, None


class _SmoothBackwardLeaky(torch.autograd.Function):
    """LeakyReLU whose value and first derivative are exact and whose second derivative comes
    from the surrogate (double backward records :class:`_SurrogateSlope`)."""

    @staticmethod
    def forward(ctx, z, leak, temperature):
        ctx.save_for_backward(z)
        ctx.leak, ctx.temperature = leak, temperature
        return F.leaky_relu(z, leak)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad * _SurrogateSlope.apply(z, ctx.leak, ctx.temperature), None, None


class SmoothBackwardLeakyReLU(nn.Module):
    def __init__(self, leak: float, temperature: float):
        super().__init__()
        self.leak, self.temperature = float(leak), float(temperature)

    def forward(self, z):
        return _SmoothBackwardLeaky.apply(z, self.leak, self.temperature)


def smoothed_copy(net: nn.Module, temperature: float) -> tuple[nn.Module, int]:
    """A copy of ``net`` with every (Leaky)ReLU module replaced by its smoothed-backward twin.
    Returns (copy, number replaced); 0 means the net has no such modules (already smooth, or
    using functional activations the copy cannot see)."""
    if temperature <= 0:
        raise ConfigError("attack.smooth_temperature must be > 0")
    twin = copy.deepcopy(net)
    replaced = 0
    for parent in twin.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LeakyReLU):
                setattr(parent, name, SmoothBackwardLeakyReLU(child.negative_slope, temperature))
                replaced += 1
            elif isinstance(child, nn.ReLU):
                setattr(parent, name, SmoothBackwardLeakyReLU(0.0, temperature))
                replaced += 1
    return twin, replaced


# --- fixed (common) noise -------------------------------------------------------------

class CommonNoise:
    """Langevin noise fixed per (image of an attacked batch, replicate, chain step k).

    Step k's draw is one standard normal tensor [reps, batch, *shape] from a generator keyed
    ``(*key, reps, k)``; each image takes its own rows. The noise an image sees therefore
    depends neither on the attack step n nor on which other images are still unbroken, which
    is what fixing the purifier's randomness (Liu & Wei 2025) requires: the attacker then
    optimises one deterministic function per restart.

    Args:
        key: seed key of the stream (e.g. ``(*chunk_key, restart, "common")``).
        batch: B, images in the attacked batch (row indices given later are < B).
        device: where the noise is drawn.
        dtype: the float type it is drawn in, that of the chains it feeds (float64 under
            ``run.dtype``: drawn in float64 directly, since float32 normal draws differ
            between CPU kernels).
    """

    def __init__(self, key: tuple, batch: int, device: torch.device,
                 dtype: torch.dtype = torch.float32):
        self.key, self.batch, self.device, self.dtype = tuple(key), int(batch), device, dtype

    def for_rows(self, idx: torch.Tensor, reps: int) -> RowNoise:
        """Noise for ``reps`` replicates of the images ``idx`` (long [b], positions in the
        batch): ``noise(k, shape)`` returns [reps·b, *shape] (internal EBM units: N(0, I))."""
        idx = idx.to(self.device)

        def noise(k: int, shape: torch.Size) -> torch.Tensor:
            g = make_generator(self.device, *self.key, reps, k)
            z = torch.randn((reps, self.batch, *shape), generator=g, device=self.device,
                            dtype=self.dtype)
            return z[:, idx].reshape(reps * len(idx), *shape)

        return noise


def purify_with_noise(defense: Defense, x01: torch.Tensor, reps: int, noise: RowNoise
                      ) -> torch.Tensor:
    """H purified copies [H,B,...] of [0,1] images [B,C,H,W] (no gradient, no fixer) whose
    randomness is ``noise`` (e.g. :meth:`CommonNoise.for_rows`) instead of the key's; same
    purifier settings as :meth:`Defense.replicates`.

    Raises:
        ConfigError: the purifier takes no fixed noise (:attr:`Purifier.fixed_noise`).
    """
    if not defense.stochastic:
        return x01.detach().unsqueeze(0)
    flat = x01.detach().repeat(reps, *([1] * (x01.dim() - 1)))
    return defense.purifier.purify_with_noise(flat, noise).view(reps, *x01.shape)


def predict_with_noise(defense: Defense, x01: torch.Tensor, reps: int, common: CommonNoise,
                       rows: torch.Tensor, batch_rows: int = 4096) -> torch.Tensor:
    """EOT-averaged outputs [B,...] as :meth:`Defense.predict`, with the Langevin noise of
    each image fixed by ``common`` (``rows``: the images' positions in its batch)."""
    per = max(1, batch_rows // max(1, reps))
    outs = []
    with torch.no_grad():
        for part, r in zip(torch.split(x01, per), torch.split(rows, per)):
            reps_out = purify_with_noise(defense, part, reps, common.for_rows(r, reps))
            outs.append(average_outputs(defense.outputs_of(reps_out), defense.average))
    return torch.cat(outs)


# --- purification and EOT gradients ----------------------------------------------------

def purify_differentiable(defense: Defense, x01: torch.Tensor, key: tuple, *,
                          backward_net: nn.Module | None = None, segment: int = 0,
                          steps: int | None = None, noise: RowNoise | None = None
                          ) -> torch.Tensor:
    """The defense's purifier on [0,1] images [B,C,H,W], differentiable w.r.t. ``x01``
    (:meth:`Purifier.purify_differentiable`). The fixer is not applied here:
    :meth:`Defense.outputs_of` applies it, so every gradient mode keeps its Jacobian.

    Args:
        backward_net, segment, steps, noise: options of the EBM's Langevin chain (the net the
            backward pass differentiates, the checkpoint length, K' of a surrogate chain,
            fixed per-row noise such as :class:`CommonNoise`'s); given only when set.

    Raises:
        ConfigError: the purifier has no backward pass or does not take an option given.
    """
    if not defense.purifies:
        return x01
    options = {"backward_net": backward_net, "segment": segment or None, "steps": steps,
               "noise": noise}
    return defense.purifier.purify_differentiable(
        x01, key, **{k: v for k, v in options.items() if v is not None})


def check_backward(defense: Defense, mode: str, attack: str = "") -> None:
    """Refuse a gradient mode the defense's purifier cannot give, before any work: ``full``
    and ``exact`` need a backward pass (:attr:`Purifier.differentiable`); ``smooth`` needs a
    chain with activations to smooth (the EBM purifier's ``backward_net``). BPDA always
    applies.

    Raises:
        ConfigError: one line naming the attack, the mode and the purifier.
    """
    if not defense.purifies or mode not in ("full", "smooth", "exact"):
        return
    p, who = defense.purifier, f"attack {attack!r}" if attack else "the attack"
    if not p.differentiable:
        raise ConfigError(f"{who} needs a gradient through the purifier (attack.gradient = "
                          f"{mode}), but purifier {p.name!r} has no backward pass: use BPDA "
                          "(bpda-eot, or attack.gradient = bpda)")
    if mode == "smooth" and "backward_net" not in p.chain_options:
        raise ConfigError(f"{who}: attack.gradient = smooth smooths the EBM's activations; "
                          f"purifier {p.name!r} has none: use full or bpda")


def energy_and_input_gradient(defense: Defense, x01: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The defending EBM's energy U(x) = U_net(x)/T [B] of [0,1] images [B,C,H,W]
    (:meth:`EnergyModel.energy01`) and its gradient ∇_x U [B,C,H,W] w.r.t. those images: the
    defense-aware loss term of Tramèr et al. (2020, "On Adaptive Attacks to Adversarial
    Example Defenses").

    Raises:
        ConfigError: the defense has no EBM.
    """
    if defense.ebm is None:
        raise ConfigError("attack.energy_weight needs a defense with an EBM")
    with torch.enable_grad(), frozen(defense.ebm.net):
        xg = x01.detach().requires_grad_(True)
        u = defense.ebm.energy01(xg).reshape(len(xg), -1).sum(1)
        (g,) = torch.autograd.grad(u.sum(), xg)
    return u.detach(), g


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def eot_gradient(defense: Defense, x_adv: torch.Tensor, y: torch.Tensor, reps: int,
                 key: tuple, loss_fn: LossFn, mode: str = "bpda", *,
                 backward_net: nn.Module | None = None, segment: int = 0,
                 chain_steps: int = 0, noise: RowNoise | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EOT gradient of ``loss_fn`` of the replicate-averaged outputs (thesis Eq. 2.9/2.10).

    Args:
        defense: the defense; its fixer (if any) is differentiable and kept in every mode.
        x_adv: [B,C,H,W] images in [0,1].
        y: targets [B,...].
        reps: H_adv, the replicates averaged (ignored when the defense is deterministic).
        key: seed key; the replicates' noise is derived from ``(*key, "eot")`` (bpda) or
            ``(*key, "chain")`` (full/smooth).
        loss_fn: per-example loss [B] to maximise, of averaged outputs [B,...].
        mode: ``bpda``: the purifier is the identity on the backward pass (BPDA, Athalye
            et al. 2018); the gradient of L(mean_h f(x̂_h)) w.r.t. each replicate x̂_h is taken
            and the H gradients are averaged (Eq. 2.10). ``full``: exact autograd through the
            purifier (for the EBM: all K Langevin steps, checkpointed,
            :func:`langevin_differentiable`). ``smooth``: as full, through ``backward_net`` (a
            :func:`smoothed_copy`). ``exact``: plain autograd through a deterministic
            defense (none, or a differentiable deterministic purifier). Without a purifier
            every mode is ``exact``.
        chain_steps: K' of a surrogate chain for ``full``/``smooth`` (0 = the defense's K); the
            outputs and loss returned are then those of the K'-step replicates.
        noise: fixed per-row Langevin noise for the H replicates (:class:`CommonNoise`) in
            place of the noise derived from ``key``.

    Returns:
        (gradient [B,C,H,W] w.r.t. ``x_adv``, averaged outputs [B,...] of the same replicates,
        per-image loss [B]).

    Raises:
        ConfigError: unknown ``mode``, or one the purifier cannot give (:func:`check_backward`).
    """
    if mode not in GRADIENT_MODES:
        raise ConfigError(f"unknown gradient mode {mode!r}; choose from {', '.join(GRADIENT_MODES)}")
    if not defense.purifies:
        mode = "exact"
    check_backward(defense, mode)
    with torch.enable_grad():
        if mode == "bpda":
            r = (defense.replicates(x_adv, reps, (*key, "eot")) if noise is None
                 else purify_with_noise(defense, x_adv, reps, noise))
            r = r.detach().requires_grad_(True)
            avg = average_outputs(defense.outputs_of(r), defense.average)
            loss = loss_fn(avg, y)
            (g,) = torch.autograd.grad(loss.sum(), r)
            return g.mean(0), avg.detach(), loss.detach()
        xg = x_adv.detach().requires_grad_(True)
        if not defense.purifies:
            h, purified = 1, xg.unsqueeze(0)
        else:
            h = reps if defense.stochastic else 1
            flat = xg.repeat(h, *([1] * (xg.dim() - 1)))
            purified = purify_differentiable(defense, flat, (*key, "chain"),
                                             backward_net=backward_net, segment=segment,
                                             steps=chain_steps or None, noise=noise)
            purified = purified.view(h, *xg.shape)
        avg = average_outputs(defense.outputs_of(purified), defense.average)
        loss = loss_fn(avg, y)
        (g,) = torch.autograd.grad(loss.sum(), xg)
    # Eq. 2.10 averages the H per-replicate gradients; the chain gradient of the averaged loss
    # is their sum, so divide by H to keep the two on the same scale.
    return g / h, avg.detach(), loss.detach()
