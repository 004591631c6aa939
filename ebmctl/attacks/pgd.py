"""The thesis' evaluation loop (SPEC §3.3, Alg. 1) and the attacks built on it.

``IterativeAttack`` runs Alg. 1 through :class:`ebmctl.attacks.engine.SteppedAttack` (natural
check with H_def replicates; per restart a random start in the ε-ball; N+1 evaluation points, each
screening with the H_adv replicates used for the gradient and verifying a candidate break with
fresh H_def replicates; broken if any step of any restart breaks it). Subclasses supply only the
ascent direction.
"""

from __future__ import annotations

import torch

from ebmctl.attacks.engine import SteppedAttack
from ebmctl.defense import Defense, average_outputs
from ebmctl.errors import ConfigError
from ebmctl.protocols import Task


class IterativeAttack(SteppedAttack):
    """Alg. 1 with a plain PGD update where a subclass supplies only the ascent direction.

    The evaluation loop itself lives in :class:`ebmctl.attacks.engine.SteppedAttack`."""

    def direction(self, defense: Defense, task: Task, x_adv: torch.Tensor, y: torch.Tensor,
                  key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (ascent direction [B,...], screening outputs [B,...] from the same replicates)."""
        raise NotImplementedError

    def estimate(self, defense, task, x_adv, y, key):
        grad, screen_out = self.direction(defense, task, x_adv, y, key)
        return grad, screen_out, task.attack_loss(screen_out, y)


class BPDAEOT(IterativeAttack):
    """BPDA+EOT (SPEC §3.1, Eq. 2.10): the cross-entropy of the replicate-averaged outputs is
    differentiated w.r.t. each purified replicate, and the H_adv gradients are averaged; the
    purifier is the identity on the backward pass."""

    name = "bpda-eot"
    description = "thesis Alg. 1: BPDA through purification + EOT over H_adv replicates"

    def direction(self, defense, task, x_adv, y, key):
        reps = defense.replicates(x_adv, self.eot_reps, (*key, "eot")).requires_grad_(True)
        with torch.enable_grad():
            outs = defense.outputs_of(reps)
            avg = average_outputs(outs, defense.average)
            loss = task.attack_loss(avg, y).sum()
            (g,) = torch.autograd.grad(loss, reps)
        return g.mean(0), avg.detach()


class PGD(IterativeAttack):
    """PGD with exact gradients of the model (SPEC §3.1, Eq. 2.8). Against a stochastic defense
    it needs gradients through the sampler; use ``bpda-eot`` there."""

    name = "pgd"
    description = "projected gradient descent with exact model gradients (undefended models)"

    def direction(self, defense, task, x_adv, y, key):
        if defense.stochastic:
            raise ConfigError("attack 'pgd' needs exact gradients and cannot see through "
                              "Langevin purification; use attack.method = 'bpda-eot'")
        with torch.enable_grad():
            xg = x_adv.detach().requires_grad_(True)
            reps = xg.unsqueeze(0) if defense.fixer is None else defense.fixer(xg).unsqueeze(0)
            out = average_outputs(defense.outputs_of(reps), defense.average)
            loss = task.attack_loss(out, y).sum()
            (g,) = torch.autograd.grad(loss, xg)
        return g, out.detach()


class FGSM(PGD):
    """Single-step FGSM (Eq. 1.2): one step of size ε from the clean image."""

    name = "fgsm"
    description = "fast gradient sign method: one step of size eps"

    def __init__(self, **kw):
        kw.update(steps=1, random_start=False, restarts=1)
        super().__init__(**kw)
        self.step_size = self.eps
