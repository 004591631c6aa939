"""Square attack (Andriushchenko et al. 2020): gradient-free random search, so it cannot be
fooled by obfuscated gradients. Each evaluation point is one query of the defended model
(margin loss of the H_adv-replicate averaged outputs); a candidate that raises the loss is kept.

l∞: vertical-stripe initialisation, then square windows set to ±ε per channel with the square
side shrinking on the original schedule. l2: a simplified variant (not the paper's l2 proposal
distribution): a square window gets a ±δ update and the perturbation is projected back onto
the ε-ball.
"""

from __future__ import annotations

import math

import torch

from ebmctl.attacks.losses import resolve_loss
from ebmctl.attacks.loop import SteppedAttack
from ebmctl.attacks.threat import project
from ebmctl.defense import average_outputs
from ebmctl.errors import ConfigError
from ebmctl.seeds import make_generator


def square_fraction(step: int, total: int, p_init: float) -> float:
    """The paper's piecewise-constant schedule of the window's share of pixels (for 10k steps)."""
    it = int(step / max(1, total) * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32),
                       (4000, 64), (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


class Square(SteppedAttack):
    """Square attack (gradient-free) inside Alg. 1. Norms: ℓ∞ (the paper's), ℓ2 (simplified).

    Args (beyond :class:`~ebmctl.attacks.loop.SteppedAttack`'s):
        p_init: initial share of pixels in the square window, in (0, 1] (paper: 0.8 for ℓ∞;
            ``attack.square_p_init``).
        loss: ``margin`` (default for classification) | ``ce`` | ``dlr``; tasks whose outputs
            are not [B,C] logits use their own attack loss.

    Raises:
        ConfigError: ``p_init`` outside (0, 1], or what
            :class:`~ebmctl.attacks.loop.SteppedAttack` refuses.

    Example: ``Square(eps=8/255, steps=1000, eot_reps=8).run(defense, task, x, y, (0,))``
    """

    name = "square"
    description = "Square attack: gradient-free random search on the EOT margin"
    gradient = "none"
    options = SteppedAttack.options | {"square_p_init"}

    def __init__(self, *, p_init: float = 0.8, loss: str = "margin", **kw):
        super().__init__(loss=loss, **kw)
        if not 0 < p_init <= 1:
            raise ConfigError("attack.square_p_init must be in (0, 1]")
        self.p_init = float(p_init)

    def loss_fn(self, task):
        chosen = resolve_loss(self.loss, task)

        def loss(out, y):
            return chosen(out, y) if out.dim() == 2 else task.attack_loss(out, y)
        return loss

    def estimate(self, defense, task, x_adv, y, key):
        reps = self.replicates(defense, x_adv, self.eot_reps, (*key, "eot"))
        with torch.no_grad():
            avg = average_outputs(defense.outputs_of(reps), defense.average)
        return None, avg, self.loss_fn(task)(avg, y)

    def start_point(self, x, r, key):
        g = make_generator(x.device, *key, "start", r)
        if self.norm == "linf":
            stripes = torch.randint(0, 2, (x.shape[0], x.shape[1], 1, x.shape[3]), generator=g,
                                    device=x.device).to(x.dtype) * 2 - 1
            return (x + self.eps * stripes).clamp(0, 1)
        return super().start_point(x, r, key)

    def init_state(self, x, x_start, key):
        return {"best": x_start.clone(),
                "f_best": torch.full((x.shape[0],), -math.inf, device=x.device,
                                     dtype=x.dtype)}

    def propose(self, state, idx, x_nat, x_cur, grad, loss, n, key):
        s = state
        better = loss > s["f_best"][idx]
        bi = idx[better]
        s["best"][bi], s["f_best"][bi] = x_cur[better], loss[better]
        base = s["best"][idx]
        b, c, h, w = base.shape
        p = square_fraction(n, self.steps, self.p_init)
        side = max(1, min(h, w, int(round(math.sqrt(p * h * w)))))
        g = make_generator(base.device, *key, "square")
        r0 = torch.randint(0, h - side + 1, (b,), generator=g, device=base.device)
        c0 = torch.randint(0, w - side + 1, (b,), generator=g, device=base.device)
        rows = torch.arange(h, device=base.device).view(1, h, 1)
        cols = torch.arange(w, device=base.device).view(1, 1, w)
        window = ((rows >= r0.view(b, 1, 1)) & (rows < (r0 + side).view(b, 1, 1))
                  & (cols >= c0.view(b, 1, 1)) & (cols < (c0 + side).view(b, 1, 1)))
        window = window.unsqueeze(1)  # [B,1,H,W]
        signs = torch.randint(0, 2, (b, c, 1, 1), generator=g,
                              device=base.device).to(base.dtype) * 2 - 1
        if self.norm == "linf":
            cand = torch.where(window, x_nat + self.eps * signs, base)
        else:
            # δ so that one window can carry the whole budget: ε / side (per channel)
            delta = self.eps / (side * math.sqrt(c))
            cand = base + window.to(base.dtype) * signs * delta * 2
        return project(cand, x_nat, self.eps, self.norm)
