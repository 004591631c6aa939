"""Transfer from the undefended classifier (SPEC §3.4, "pgd-clf"): PGD on the task network
alone (no purifier in the loop), then the defended model is evaluated on each restart's final
image with H_def replicates. Cheap and a useful lower bar: it never sees the purifier."""

from __future__ import annotations

import torch

from ebmctl.attacks.base import AttackOutcome
from ebmctl.attacks.chain import eot_gradient
from ebmctl.attacks.engine import SteppedAttack
from ebmctl.attacks.threat import ascent_step, project
from ebmctl.defense import Defense


class Transfer(SteppedAttack):
    name = "transfer"
    description = "PGD on the undefended classifier, evaluated on the defended model"

    def run(self, defense, task, x, y, key, progress=None):
        bare = Defense(defense.model, None, average=defense.average, fixer=defense.fixer)
        clean_out = defense.predict(x, self.verify_reps, (*key, "natural"))
        clean_score = task.score(clean_out, y).float()
        alive = task.natural_ok(clean_score).clone()
        natural_ok = alive.clone()
        x_best = x.clone()
        ok_by_step = torch.zeros(self.restarts, self.steps + 1, x.shape[0], dtype=torch.bool)
        for r in range(self.restarts):
            x_adv = self.start_point(x, r, key)
            for n in range(self.steps):
                g, _, _ = eot_gradient(bare, x_adv, y, 1, (*key, r, n), task.attack_loss, "exact")
                x_adv = project(ascent_step(x_adv, g, self.step_size, self.norm), x, self.eps,
                                self.norm)
                # the crafting steps are not evaluated on the defense: the curve stays flat
                ok_by_step[r, n] = alive.cpu()
                if progress is not None:
                    progress(1)
            idx = alive.nonzero().flatten()
            if idx.numel():
                out = defense.predict(x_adv[idx], self.verify_reps, (*key, r, "verify"))
                ok = task.robust_ok(task.score(out, y[idx]).float(), clean_score[idx])
                broken = idx[~ok]
                alive[broken] = False
                x_best[broken] = x_adv[broken]
            ok_by_step[r, self.steps] = alive.cpu()
            if progress is not None:
                progress(1)
            keep = alive.nonzero().flatten()
            x_best[keep] = x_adv[keep]
        return AttackOutcome(natural_ok.cpu(), alive.cpu(), clean_score.cpu(), x_best.cpu(),
                             ok_by_step, {"gradient": "classifier only"})
