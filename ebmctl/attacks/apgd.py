"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Alg. 1) with EOT gradients, inside the thesis' Alg. 1 loop.

Step size η starts at 2ε and is halved at checkpoints w_j (w_0 = 0, w_1 = 0.22·N, then shrinking
gaps of ≥ 0.06·N) when

1. fewer than ρ·(w_j − w_{j−1}) of the steps since the last checkpoint increased the loss, or
2. η was *not* reduced at the previous checkpoint and the best loss did not improve since it.

On halving the iterate restarts from the best point (x_max, with its gradient); the momentum term
then uses the iterate before the last step, as the authors' reference code does
(``grad2 = x_adv − x_adv_old`` with ``x_adv_old`` not reset). Updates use momentum α = 0.75
(α = 1 on the first step). Against a stochastic defense the gradient and the loss come from the
same H_adv replicates, so the losses that drive the schedule are EOT estimates.
"""

from __future__ import annotations

import math

import torch

from ebmctl.attacks.gradients import GRADIENT_MODES
from ebmctl.attacks.loop import SteppedAttack
from ebmctl.attacks.threat import ascent_step, project
from ebmctl.errors import ConfigError


def apgd_checkpoints(steps: int) -> set[int]:
    """Checkpoint iterations w_j of an N-step run (Croce & Hein 2020, Sec. 3.2)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return {int(math.ceil(q * steps)) for q in p[1:] if 0 < math.ceil(q * steps) < steps}


class APGD(SteppedAttack):
    """APGD with EOT gradients. Norms: ℓ∞, ℓ2 (``step_size`` is unused: η starts at 2ε).

    Registered as ``apgd-ce``, the name AutoAttack gives APGD with its default cross-entropy
    loss; ``attack.loss`` may choose another (:class:`APGDDLR` is the DLR run). Reads
    ``attack.gradient``, ``attack.gradient_steps`` and ``attack.loss`` besides the settings
    of every :class:`~ebmctl.attacks.loop.SteppedAttack`.

    Args (beyond :class:`~ebmctl.attacks.loop.SteppedAttack`'s):
        gradient: ``bpda`` | ``full`` | ``smooth``: how the gradient passes the purifier.
        gradient_steps: K' ≤ K of a surrogate chain for ``full``/``smooth`` (0 = K).
        loss: ``ce`` (default) | ``margin`` | ``dlr``.

    Raises:
        ConfigError: an unknown gradient mode, ``gradient_steps`` with ``bpda``, or what
            :class:`~ebmctl.attacks.loop.SteppedAttack` refuses.

    Example: ``APGD(eps=8/255, steps=100, loss="dlr", eot_reps=20).run(defense, task, x, y,
    (0,))``
    """

    name = "apgd-ce"
    description = ("APGD (Croce & Hein 2020) with EOT gradients; attack.loss, attack.gradient, "
                   "attack.gradient_steps")
    options = SteppedAttack.options | {"gradient", "gradient_steps"}
    #: ρ of condition 1 and the momentum α (Croce & Hein 2020, Sec. 3.2)
    rho, momentum = 0.75, 0.75

    def __init__(self, *, gradient: str = "bpda", gradient_steps: int = 0, **kw):
        super().__init__(**kw)
        if gradient not in GRADIENT_MODES:
            raise ConfigError(f"unknown attack.gradient {gradient!r}; choose from bpda, full, "
                              "smooth")
        self.gradient = gradient
        self._set_gradient_steps(gradient_steps)

    def init_state(self, x, x_start, key):
        b, dev, dt = x.shape[0], x.device, x.dtype  # step sizes and losses in x's float type
        return {"eta": torch.full((b,), 2.0 * self.eps, device=dev, dtype=dt),
                "x_prev": x_start.clone(), "x_max": x_start.clone(), "g_max": torch.zeros_like(x),
                "f_max": torch.full((b,), -math.inf, device=dev, dtype=dt),
                "f_prev": torch.full((b,), -math.inf, device=dev, dtype=dt),
                "inc": torch.zeros(b, device=dev, dtype=dt),
                # condition 2 cannot fire at the first checkpoint (reference: ones_like)
                "reduced_last": torch.ones(b, dtype=torch.bool, device=dev),
                "fmax_ckpt": torch.full((b,), -math.inf, device=dev, dtype=dt),
                "last_ckpt": 0, "ckpts": apgd_checkpoints(self.steps)}

    def propose(self, state, idx, x_nat, x_cur, grad, loss, n, key):
        s = state
        loss = loss.to(s["f_max"].dtype)
        if n > 0:
            s["inc"][idx] += (loss > s["f_prev"][idx]).to(s["inc"].dtype)
        better = loss > s["f_max"][idx]
        bi = idx[better]
        s["f_max"][bi], s["x_max"][bi], s["g_max"][bi] = loss[better], x_cur[better], grad[better]
        s["f_prev"][idx] = loss
        x_cur, grad = x_cur.clone(), grad.clone()
        if n in s["ckpts"]:
            halve = self._halve(s, idx, n)
            hi = idx[halve]
            s["eta"][hi] = s["eta"][hi] / 2
            x_cur[halve], grad[halve] = s["x_max"][hi], s["g_max"][hi]
        eta = s["eta"][idx].view(-1, *([1] * (x_cur.dim() - 1)))
        z = project(x_cur + ascent_step(torch.zeros_like(x_cur), grad, 1.0, self.norm) * eta,
                    x_nat, self.eps, self.norm)
        a = 1.0 if n == 0 else self.momentum
        nxt = project(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - s["x_prev"][idx]),
                      x_nat, self.eps, self.norm)
        s["x_prev"][idx] = x_cur
        return nxt

    def _halve(self, s: dict, idx: torch.Tensor, n: int) -> torch.Tensor:
        """Bool [len(idx)]: conditions 1 or 2 hold at checkpoint n; updates the checkpoint
        bookkeeping."""
        span = n - s["last_ckpt"]
        cond1 = s["inc"][idx] < self.rho * span
        cond2 = ~s["reduced_last"][idx] & (s["fmax_ckpt"][idx] >= s["f_max"][idx])
        halve = cond1 | cond2
        s["reduced_last"][idx] = halve
        s["fmax_ckpt"][idx] = s["f_max"][idx]
        s["inc"][idx] = 0
        s["last_ckpt"] = n
        return halve


class APGDDLR(APGD):
    """APGD with the DLR loss (Croce & Hein 2020, Eq. 6). Norms: ℓ∞, ℓ2.

    Raises:
        ConfigError: ``loss`` other than ``dlr`` (use ``apgd-ce`` with that loss).

    Example: ``APGDDLR(eps=8/255, steps=100).run(Defense(model), task, x, y, (0,))``
    """

    name = "apgd-dlr"
    description = "APGD with the difference-of-logits-ratio loss and EOT gradients"

    def __init__(self, *, loss: str = "dlr", **kw):
        if loss != "dlr":
            raise ConfigError(f"apgd-dlr uses the DLR loss; attack.loss = {loss!r} asks for "
                              "another: use apgd-ce with that loss")
        super().__init__(loss="dlr", **kw)
