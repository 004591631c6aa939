"""PGD+EOT with the gradient *through* the Langevin chain (Du, Hill & Cai 2026, "Memory
Efficient Full-gradient Attacks"), and its smoothed-backward variant.

``full-eot`` differentiates exactly through all K_def Langevin steps, checkpointed every S steps
(``checkpoint_segment``, 0 = √K) so memory stays bounded. For a piecewise-linear (LeakyReLU) EBM
each step's Jacobian is the identity almost everywhere and the result equals BPDA+EOT; for a
smooth EBM the Hessian term −d·∇²U(X) enters. ``smooth-eot`` keeps the forward chain exact and
differentiates each (Leaky)ReLU's slope as a softplus with temperature ``smooth_temperature``, so
that term appears for piecewise-linear EBMs too.
"""

from __future__ import annotations

from ebmctl.attacks.loop import SteppedAttack


class FullGradientEOT(SteppedAttack):
    """PGD+EOT with the exact chain gradient (checkpointed). Norms: ℓ∞, ℓ2.

    Arguments: those of :class:`~ebmctl.attacks.loop.SteppedAttack` (``checkpoint_segment=0``).

    Example: ``FullGradientEOT(eps=8/255, step_size=2/255, steps=100, eot_reps=20)
    .run(defense, task, x, y, key=(0,))``
    """

    name = "full-eot"
    description = "PGD+EOT, exact gradient through the Langevin chain (checkpointed)"
    gradient = "full"


class SmoothedGradientEOT(SteppedAttack):
    """PGD+EOT through the chain with a softplus-smoothed backward pass. Norms: ℓ∞, ℓ2.

    Arguments: those of :class:`~ebmctl.attacks.loop.SteppedAttack`
    (``smooth_temperature=0.1``).

    Example: ``SmoothedGradientEOT(eps=8/255, steps=50, eot_reps=8, smooth_temperature=0.1)``
    """

    name = "smooth-eot"
    description = "PGD+EOT through the chain, softplus-smoothed second derivatives"
    gradient = "smooth"
