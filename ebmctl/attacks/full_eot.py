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

    Arguments: those of :class:`~ebmctl.attacks.loop.SteppedAttack` (``checkpoint_segment=0``)
    and ``gradient_steps=0``: K' ≤ K of a surrogate chain the gradient differentiates through
    (Lee & Kim 2023) while screening and verification still run the defense's K steps
    (0 = K; ``attack.gradient_steps``).

    Raises:
        ConfigError: a negative ``gradient_steps``; at the run, a purifier without a backward
            pass or K' > K (:meth:`~ebmctl.attacks.loop.SteppedAttack.check_defense`).

    Example: ``FullGradientEOT(eps=8/255, step_size=2/255, steps=100, eot_reps=20,
    final_iterate_only=True, random_start=False).run(defense, task, x, y, key=(0,))`` (MEFA's
    protocol)
    """

    name = "full-eot"
    description = ("PGD+EOT, exact gradient through the Langevin chain (checkpointed); "
                   "attack.gradient_steps, attack.final_iterate_only, attack.common_noise, "
                   "attack.energy_weight")
    gradient = "full"
    options = SteppedAttack.options | {"gradient_steps"}

    def __init__(self, *, gradient_steps: int = 0, **kw):
        super().__init__(**kw)
        self._set_gradient_steps(gradient_steps)


class SmoothedGradientEOT(SteppedAttack):
    """PGD+EOT through the chain with a softplus-smoothed backward pass. Norms: ℓ∞, ℓ2.

    Arguments: those of :class:`~ebmctl.attacks.loop.SteppedAttack`
    (``smooth_temperature=0.1``) and ``gradient_steps=0`` (as :class:`FullGradientEOT`).

    Example: ``SmoothedGradientEOT(eps=8/255, steps=50, eot_reps=8, smooth_temperature=0.1)``
    """

    name = "smooth-eot"
    description = ("PGD+EOT through the chain, softplus-smoothed second derivatives; "
                   "attack.gradient_steps")
    gradient = "smooth"
    options = SteppedAttack.options | {"gradient_steps"}

    def __init__(self, *, gradient_steps: int = 0, **kw):
        super().__init__(**kw)
        self._set_gradient_steps(gradient_steps)
