"""``random-walk``: a gradient-free baseline attack on the same evaluation loop as PGD.

Each step moves along a random direction (derived from the attack key, so runs reproduce) and
projects back into the eps-ball. If a defense looks robust against PGD but not against this,
the gradients are being masked.
"""

from __future__ import annotations

import torch

from ebmctl.api import IterativeAttack, make_generator


class RandomWalk(IterativeAttack):
    name = "random-walk"
    description = "gradient-free baseline: random steps in the eps-ball (checks gradient masking)"

    def direction(self, defense, task, x_adv, y, key):
        gen = make_generator(x_adv.device, *key, "random-walk")
        step = torch.randn(x_adv.shape, generator=gen, device=x_adv.device)
        # screening outputs: the same EOT average the other attacks screen with
        screen = defense.predict(x_adv, self.eot_reps, (*key, "screen"))
        return step, screen
