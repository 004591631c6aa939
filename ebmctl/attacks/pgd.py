"""The thesis' evaluation loop (SPEC §3.3, Alg. 1) and the attacks built on it.

``IterativeAttack`` runs: natural check with H_def replicates; per restart a random start in the
ε-ball; N+1 evaluation points, each screening with the H_adv replicates used for the gradient and
verifying a candidate break with fresh H_def replicates; an image is broken if any step of any
restart breaks it. Subclasses supply only the ascent direction.
"""

from __future__ import annotations

from typing import Callable

import torch

from ebmctl.attacks.base import Attack, AttackOutcome
from ebmctl.attacks.threat import ascent_step, project, random_start
from ebmctl.defense import Defense, average_outputs
from ebmctl.errors import ConfigError
from ebmctl.protocols import Task
from ebmctl.seeds import make_generator


class IterativeAttack(Attack):
    def direction(self, defense: Defense, task: Task, x_adv: torch.Tensor, y: torch.Tensor,
                  key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (ascent direction [B,...], screening outputs [B,...] from the same replicates)."""
        raise NotImplementedError

    def run(self, defense: Defense, task: Task, x: torch.Tensor, y: torch.Tensor, key: tuple,
            progress: Callable[[int], None] | None = None) -> AttackOutcome:
        dev = x.device
        clean_out = defense.predict(x, self.verify_reps, (*key, "natural"))
        clean_score = task.score(clean_out, y).float()
        alive = task.natural_ok(clean_score).clone()
        natural_ok = alive.clone()
        x_best = x.clone()
        n_eval = self.steps + 1
        ok_by_step = torch.zeros(self.restarts, n_eval, x.shape[0], dtype=torch.bool)
        for r in range(self.restarts):
            if self.random_start:
                x_adv = random_start(x, self.eps, self.norm, make_generator(dev, *key, "start", r))
            else:
                x_adv = x.clone()
            for n in range(n_eval):
                idx = alive.nonzero().flatten()
                if idx.numel():
                    xa, ya = x_adv[idx], y[idx]
                    grad, screen_out = self.direction(defense, task, xa, ya, (*key, r, n))
                    screen_ok = task.robust_ok(task.score(screen_out, ya).float(), clean_score[idx])
                    cand = (~screen_ok).nonzero().flatten()
                    if cand.numel():
                        verify_out = defense.predict(xa[cand], self.verify_reps,
                                                     (*key, r, n, "verify"))
                        v_ok = task.robust_ok(task.score(verify_out, ya[cand]).float(),
                                              clean_score[idx[cand]])
                        broken = idx[cand[~v_ok]]
                        alive[broken] = False
                        x_best[broken] = x_adv[broken]
                    if n < self.steps:
                        still = alive[idx]
                        stepped = project(ascent_step(xa, grad, self.step_size, self.norm),
                                          x[idx], self.eps, self.norm)
                        x_adv[idx[still]] = stepped[still]
                ok_by_step[r, n] = alive.cpu()
                if progress is not None:
                    progress(1)
            keep = alive.nonzero().flatten()
            x_best[keep] = x_adv[keep]
        return AttackOutcome(natural_ok.cpu(), alive.cpu(), clean_score.cpu(), x_best.cpu(),
                             ok_by_step)


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
