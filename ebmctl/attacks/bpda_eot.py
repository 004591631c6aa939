"""BPDA+EOT: the thesis' primary attack (Hill 2023, Eq. 2.10 / Alg. 1; Athalye et al. 2018).

The gradient of the loss of the replicate-averaged outputs is taken w.r.t. each of the H_adv
purified replicates and the H_adv gradients are averaged; the Langevin chain is the identity on
the backward pass (the fixer and the task model keep their exact Jacobians). The update is PGD
(sign step for ℓ∞, normalised step for ℓ2) inside the shared Alg. 1 loop.
"""

from __future__ import annotations

from ebmctl.attacks.loop import SteppedAttack


class BPDAEOT(SteppedAttack):
    """BPDA+EOT PGD inside Alg. 1.

    Norms: ℓ∞, ℓ2. Arguments: those of :class:`~ebmctl.attacks.loop.SteppedAttack`
    (``eps=8/255, step_size=2/255, steps=50, restarts=1, eot_reps=1, verify_reps=1,
    random_start=True, loss="ce"``).

    Example: ``BPDAEOT(eps=8/255, step_size=2/255, steps=50, eot_reps=15, verify_reps=150)
    .run(defense, task, x, y, key=(0,))``
    """

    name = "bpda-eot"
    description = "thesis Alg. 1: BPDA through purification + EOT over H_adv replicates"
    gradient = "bpda"
