"""The Langevin chain made differentiable w.r.t. its start, with bounded memory: the exact
gradient of K steps of :func:`ebmctl.sampling.langevin.langevin` (docs/algorithms.md#gradient-modes).

Segment checkpointing keeps only every S-th state; a segment is recomputed with its graph
during the backward pass (create_graph=True through ``backward_net``, so a smoothed copy of the
EBM can supply the second derivatives). The EBM purifier (:class:`ebmctl.defense.
LangevinPurifier`) differentiates through it; :mod:`ebmctl.attacks.gradients` re-exports it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ebmctl.device import autocast
from ebmctl.errors import NumericalError
from ebmctl.sampling.langevin import LangevinSettings, frozen
from ebmctl.seeds import make_generator


class _ChainRunner:
    """Runs steps [start, end) of one chain: ``fast`` (no graph, the plain sampler's arithmetic)
    or ``with_graph`` (create_graph=True through ``backward_net``)."""

    def __init__(
        self,
        net,
        backward_net,
        settings: LangevinSettings,
        steps: int,
        segment: int,
        noise: Callable[[int, torch.Tensor], torch.Tensor],
    ):
        self.net, self.backward_net, self.settings = net, backward_net, settings
        self.steps, self.segment, self.noise = steps, segment, noise

    def bounds(self, s: int) -> tuple[int, int]:
        return s * self.segment, min(self.steps, (s + 1) * self.segment)

    def fast(self, x: torch.Tensor, s: int) -> torch.Tensor:
        drift, scale = self.settings.drift, self.settings.eta * self.settings.tau
        a, b = self.bounds(s)
        for k in range(a, b):
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                with autocast(self.settings.precision, x.device):
                    energy = self.net(xg)
                (g,) = torch.autograd.grad(energy.sum(), xg)
            x = x - drift * g.to(x.dtype) + scale * self.noise(k, x)
        return x

    def with_graph(self, x: torch.Tensor, s: int) -> torch.Tensor:
        drift, scale = self.settings.drift, self.settings.eta * self.settings.tau
        a, b = self.bounds(s)
        with frozen(self.backward_net):  # no parameter graphs on the recomputation
            for k in range(a, b):
                energy = self.backward_net(x)
                (g,) = torch.autograd.grad(energy.sum(), x, create_graph=True)
                x = x - drift * g + scale * self.noise(k, x)
        return x


class _Segment(torch.autograd.Function):
    """Checkpointed segment: forward keeps only its input; backward recomputes with a graph."""

    @staticmethod
    def forward(ctx, x, runner, s):
        ctx.runner, ctx.s = runner, s
        ctx.save_for_backward(x)
        return runner.fast(x.detach(), s)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)
            y = ctx.runner.with_graph(xi, ctx.s)
            (gx,) = torch.autograd.grad(y, xi, grad_out)
        return gx, None, None


def auto_segment(steps: int) -> int:
    """√K segments balance stored states (K/S) against the recomputed graph (S steps)."""
    return max(1, int(math.ceil(math.sqrt(max(1, steps)))))


def langevin_differentiable(
    net: nn.Module,
    x: torch.Tensor,
    steps: int,
    settings: LangevinSettings,
    *,
    key: tuple | None = None,
    noise: Callable[[int], torch.Tensor] | None = None,
    backward_net: nn.Module | None = None,
    segment: int = 0,
) -> torch.Tensor:
    """K Langevin steps from ``x`` (internal units) whose output is differentiable w.r.t. ``x``.

    The forward values equal :func:`ebmctl.sampling.langevin.langevin` given the same noise. Noise comes
    from ``noise(k)`` if given, else from generators derived from ``key`` per segment. The
    backward pass differentiates through ``backward_net`` (default ``net``; a
    :func:`smoothed_copy` for the smoothed attack). Memory: about K/S stored states plus one
    S-step graph, S = ``segment`` (0 = √K)."""
    if steps <= 0:
        return x
    seg = segment or auto_segment(steps)
    if noise is None:
        if key is None:
            raise ValueError("langevin_differentiable needs a noise function or a seed key")
        gens: dict[int, torch.Generator] = {}

        def step_noise(k: int, like: torch.Tensor) -> torch.Tensor:
            s = k // seg
            if k % seg == 0 or s not in gens:  # a fresh generator at each segment start
                gens[s] = make_generator(like.device, *key, "seg", s)
            return torch.randn(like.shape, generator=gens[s], device=like.device, dtype=like.dtype)
    else:

        def step_noise(k: int, like: torch.Tensor) -> torch.Tensor:
            return noise(k).to(like.dtype)

    runner = _ChainRunner(net, backward_net or net, settings, steps, seg, step_noise)
    n_seg = (steps + seg - 1) // seg
    with frozen(net), frozen(backward_net or net):
        for s in range(n_seg):
            x = _Segment.apply(x, runner, s)
        if not torch.isfinite(x).all():
            raise NumericalError("Langevin chain produced NaN/Inf; lower langevin.tau")
    return x
