"""APGD (Croce & Hein 2020) with EOT gradients, inside the thesis' evaluation loop.

Step size η starts at 2ε and is halved at checkpoints w_j when (1) fewer than ρ·(w_j − w_{j−1})
steps since the last checkpoint increased the loss, or (2) neither η nor the best loss changed
since the last checkpoint; on halving, the iterate restarts from the best point. Updates use
momentum α = 0.75. Against a stochastic defense the gradient and the loss come from the same
H_adv replicates (``attack.gradient`` = bpda | full | smooth chooses how the gradient passes the
purifier), so the loss values that drive the schedule are EOT estimates.
"""

from __future__ import annotations

import math

import torch

from ebmctl.attacks.chain import dlr_loss
from ebmctl.attacks.engine import SteppedAttack
from ebmctl.attacks.threat import ascent_step, project


def apgd_checkpoints(steps: int) -> set[int]:
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return {int(math.ceil(q * steps)) for q in p[1:] if 0 < math.ceil(q * steps) < steps}


class APGD(SteppedAttack):
    name = "apgd-ce"
    description = "APGD with cross-entropy loss and EOT gradients (attack.gradient)"
    rho, momentum = 0.75, 0.75

    def gradient_mode(self) -> str:
        self.gradient = str(self.option("attack.gradient", "bpda"))
        return super().gradient_mode()

    def init_state(self, x, x_start, key):
        b = x.shape[0]
        return {"eta": torch.full((b,), 2.0 * self.eps, device=x.device),
                "x_prev": x_start.clone(), "x_max": x_start.clone(),
                "g_max": torch.zeros_like(x), "f_max": torch.full((b,), -math.inf, device=x.device),
                "f_prev": torch.full((b,), -math.inf, device=x.device),
                "inc": torch.zeros(b, device=x.device),
                "eta_ckpt": torch.full((b,), 2.0 * self.eps, device=x.device),
                "fmax_ckpt": torch.full((b,), -math.inf, device=x.device),
                "last_ckpt": 0, "ckpts": apgd_checkpoints(self.steps)}

    def propose(self, state, idx, x_nat, x_cur, grad, loss, n, key):
        s = state
        loss = loss.to(s["f_max"].dtype)
        if n > 0:
            s["inc"][idx] += (loss > s["f_prev"][idx]).float()
        better = loss > s["f_max"][idx]
        bi = idx[better]
        s["f_max"][bi], s["x_max"][bi], s["g_max"][bi] = loss[better], x_cur[better], grad[better]
        s["f_prev"][idx] = loss
        x_cur, grad = x_cur.clone(), grad.clone()
        if n in s["ckpts"]:
            span = n - s["last_ckpt"]
            cond1 = s["inc"][idx] < self.rho * span
            cond2 = (s["eta_ckpt"][idx] == s["eta"][idx]) & (s["fmax_ckpt"][idx] == s["f_max"][idx])
            halve = cond1 | cond2
            hi = idx[halve]
            s["eta"][hi] = s["eta"][hi] / 2
            x_cur[halve], grad[halve] = s["x_max"][hi], s["g_max"][hi]
            s["x_prev"][hi] = s["x_max"][hi]
            s["eta_ckpt"][idx], s["fmax_ckpt"][idx] = s["eta"][idx], s["f_max"][idx]
            s["inc"][idx] = 0
            s["last_ckpt"] = n
        eta = s["eta"][idx].view(-1, *([1] * (x_cur.dim() - 1)))
        z = project(ascent_step_sized(x_cur, grad, eta, self.norm), x_nat, self.eps, self.norm)
        if n == 0:
            nxt = z
        else:
            a = self.momentum
            nxt = project(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - s["x_prev"][idx]),
                          x_nat, self.eps, self.norm)
        s["x_prev"][idx] = x_cur
        return nxt


def ascent_step_sized(x, grad, eta, norm):
    """``ascent_step`` with a per-image step size tensor."""
    return x + (ascent_step(torch.zeros_like(x), grad, 1.0, norm)) * eta


class APGDDLR(APGD):
    name = "apgd-dlr"
    description = "APGD with the difference-of-logits-ratio loss and EOT gradients"

    def loss_fn(self, task):
        return dlr_loss
