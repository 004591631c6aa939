"""Transfer from the undefended classifier ("pgd-clf" in the thesis' attack list): PGD on the
task network alone (no purifier in the loop), then the defended model is evaluated on each
restart's final image with H_def replicates. It never sees the purifier, so it is a lower bar:
if it beats a white-box attack, the white-box gradients are suspect (gradient masking,
Athalye et al. 2018)."""

from __future__ import annotations

from ebmctl.attacks.gradients import eot_gradient
from ebmctl.attacks.loop import SteppedAttack
from ebmctl.defense import Defense


class Transfer(SteppedAttack):
    """PGD crafted on the bare classifier, evaluated on the defense at the last step of each
    restart only (``evaluated``). Norms: ℓ∞, ℓ2.

    Example: ``Transfer(eps=8/255, step_size=2/255, steps=50, verify_reps=150).run(defense,
    task, x, y, (0,))``
    """

    name = "transfer"
    description = "PGD on the undefended classifier, evaluated on the defended model"
    gradient = "classifier only"
    per_step_curve = False

    def estimate(self, defense, task, x_adv, y, key):
        bare = Defense(defense.model, None, average=defense.average, fixer=defense.fixer)
        g, _, loss = eot_gradient(bare, x_adv, y, 1, key, self.loss_fn(task), "exact")
        return g, None, loss  # None: no screening; the loop verifies every alive image

    def evaluated(self, n: int) -> bool:
        return n == self.steps
