"""The thesis' evaluation loop (Hill 2023, Alg. 1; docs/algorithms.md#alg-1-attack-evaluation),
shared by every attack.

Rules, exactly:

1. Natural check: the clean images are classified with H_def fresh replicates; an image the
   defense gets wrong counts as broken (it is never robust).
2. Per restart a start point (random in the ε-ball unless ``random_start=False``).
3. N+1 evaluation points n = 0..N. At each, every still-unbroken image is *screened* with the
   H_adv replicates that also gave the attack's gradient; a screened break is a candidate and
   is *verified* with H_def fresh replicates whose noise is independent of the screening's
   (keys ``(*key, r, n, "verify")`` vs ``(*key, r, n, "eot"|"chain")``). A candidate the
   verification rejects stays alive and keeps being attacked.
4. An image broken at any point of any restart is broken; it is not attacked again, and its
   saved adversarial image is the breaking point. Survivors keep their last iterate.

Attacks differ only through the hooks :meth:`SteppedAttack.estimate` (gradient, screening
outputs, loss at the current points), :meth:`~SteppedAttack.init_state` /
:meth:`~SteppedAttack.propose` (the next points), :meth:`~SteppedAttack.start_point` and
:meth:`~SteppedAttack.evaluated` (which points are checked against the defense).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ebmctl.attacks.base import Attack, AttackOutcome
from ebmctl.attacks.gradients import GRADIENT_MODES, eot_gradient, smoothed_copy
from ebmctl.attacks.losses import LOSSES, LossFn, resolve_loss
from ebmctl.attacks.threat import ascent_step, project, random_start
from ebmctl.defense import Defense
from ebmctl.errors import ConfigError
from ebmctl.protocols import Task
from ebmctl.seeds import make_generator


class SteppedAttack(Attack):
    """Alg. 1 with a pluggable gradient estimate and update rule (default: PGD, Eq. 2.8).

    Args (beyond :class:`~ebmctl.attacks.base.Attack`'s):
        loss: ``ce`` (the task's attack loss) | ``margin`` | ``dlr`` (see
            :mod:`ebmctl.attacks.losses`).
        smooth_temperature: softplus temperature of the smoothed backward pass (``smooth``).
        checkpoint_segment: Langevin steps per checkpoint segment of the differentiable chain
            (0 = √K); memory vs recomputation only, never the gradient.
    """

    #: how the gradient passes a stochastic defense: bpda | full | smooth (gradients.py)
    gradient = "bpda"
    #: ok_by_step[r, n] is a measurement of the defense after n steps (False: a transfer
    #: attack, whose crafting steps are not evaluated), so convergence can be judged
    per_step_curve = True

    def __init__(self, *, loss: str = "ce", smooth_temperature: float = 0.1,
                 checkpoint_segment: int = 0, **kw: Any):
        super().__init__(**kw)
        if loss not in LOSSES:
            raise ConfigError(f"unknown attack.loss {loss!r}; choose from {', '.join(LOSSES)}")
        if smooth_temperature <= 0:
            raise ConfigError("attack.smooth_temperature must be > 0")
        if checkpoint_segment < 0:
            raise ConfigError("attack.checkpoint_segment must be >= 0 (0 = sqrt(K))")
        self.loss, self.smooth_temperature = loss, float(smooth_temperature)
        self.checkpoint_segment = int(checkpoint_segment)
        self._smooth_nets: dict[int, torch.nn.Module] = {}

    def gradient_mode(self) -> str:
        if self.gradient not in GRADIENT_MODES:
            raise ConfigError(f"unknown attack.gradient {self.gradient!r}; choose from bpda, "
                              "full, smooth")
        return self.gradient

    def loss_fn(self, task: Task) -> LossFn:
        return resolve_loss(self.loss, task)

    def _backward_net(self, defense: Defense):
        if self.gradient_mode() != "smooth" or defense.ebm is None:
            return None
        net = defense.ebm.net
        if id(net) not in self._smooth_nets:
            self._smooth_nets[id(net)] = smoothed_copy(net, self.smooth_temperature)[0]
        return self._smooth_nets[id(net)]

    # -- hooks ---------------------------------------------------------------------------
    def estimate(self, defense: Defense, task: Task, x_adv: torch.Tensor, y: torch.Tensor,
                 key: tuple) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(gradient [B,...] or None, screening outputs [B,...] of the same replicates or None
        to verify every alive image directly, per-image loss [B]) at ``x_adv``."""
        return eot_gradient(defense, x_adv, y, self.eot_reps, key, self.loss_fn(task),
                            self.gradient_mode(), backward_net=self._backward_net(defense),
                            segment=self.checkpoint_segment)

    def init_state(self, x: torch.Tensor, x_start: torch.Tensor, key: tuple) -> dict:
        return {}

    def propose(self, state: dict, idx: torch.Tensor, x_nat: torch.Tensor, x_cur: torch.Tensor,
                grad: torch.Tensor | None, loss: torch.Tensor, n: int, key: tuple
                ) -> torch.Tensor:
        """Next points [len(idx),...] for images ``idx`` (PGD: one projected ascent step)."""
        return project(ascent_step(x_cur, grad, self.step_size, self.norm), x_nat, self.eps,
                       self.norm)

    def start_point(self, x: torch.Tensor, r: int, key: tuple) -> torch.Tensor:
        if not self.random_start:
            return x.clone()
        return random_start(x, self.eps, self.norm, make_generator(x.device, *key, "start", r))

    def evaluated(self, n: int) -> bool:
        """Whether evaluation point n is checked against the defense (default: every one)."""
        return True

    # -- the loop --------------------------------------------------------------------------
    def run(self, defense: Defense, task: Task, x: torch.Tensor, y: torch.Tensor, key: tuple,
            progress: Callable[[int], None] | None = None) -> AttackOutcome:
        clean_out = defense.predict(x, self.verify_reps, (*key, "natural"))
        clean_score = task.score(clean_out, y).float()
        natural_ok = task.natural_ok(clean_score).clone()
        alive = natural_ok.clone()
        x_best = x.clone()
        ok_by_step = torch.zeros(self.restarts, self.steps + 1, x.shape[0], dtype=torch.bool)
        for r in range(self.restarts):
            x_adv = self.start_point(x, r, key)
            state = self.init_state(x, x_adv, (*key, "state", r))
            for n in range(self.steps + 1):
                idx = alive.nonzero().flatten()
                if idx.numel():
                    self._step(defense, task, x, y, x_adv, x_best, alive, clean_score, state,
                               idx, (*key, r, n), n)
                ok_by_step[r, n] = alive.cpu()
                if progress is not None:
                    progress(1)
            keep = alive.nonzero().flatten()
            x_best[keep] = x_adv[keep]
        return AttackOutcome(natural_ok.cpu(), alive.cpu(), clean_score.cpu(), x_best.cpu(),
                             ok_by_step, {"gradient": self.gradient_mode()})

    def _step(self, defense, task, x, y, x_adv, x_best, alive, clean_score, state, idx, key, n):
        """Screen, verify and (unless n = N) move the alive images ``idx``; updates ``x_adv``,
        ``x_best`` and ``alive`` in place."""
        xa, ya = x_adv[idx], y[idx]
        grad, screen_out, loss = self.estimate(defense, task, xa, ya, key)
        if self.evaluated(n):
            if screen_out is None:
                cand = torch.arange(len(idx), device=idx.device)
            else:
                screen_ok = task.robust_ok(task.score(screen_out, ya).float(), clean_score[idx])
                cand = (~screen_ok).nonzero().flatten()
            if cand.numel():
                verify_out = defense.predict(xa[cand], self.verify_reps, (*key, "verify"))
                v_ok = task.robust_ok(task.score(verify_out, ya[cand]).float(),
                                      clean_score[idx[cand]])
                broken = idx[cand[~v_ok]]
                alive[broken] = False
                x_best[broken] = x_adv[broken]
        if n < self.steps:
            still = alive[idx]
            nxt = self.propose(state, idx, x[idx], xa, grad, loss, n, key)
            x_adv[idx[still]] = nxt[still].to(x_adv.dtype)


class IterativeAttack(SteppedAttack):
    """Alg. 1 with the PGD update where a subclass supplies only the ascent direction (the
    extension point for plugins: implement :meth:`direction`)."""

    def direction(self, defense: Defense, task: Task, x_adv: torch.Tensor, y: torch.Tensor,
                  key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (ascent direction [B,...], screening outputs [B,...] from the same replicates)."""
        raise NotImplementedError

    def estimate(self, defense, task, x_adv, y, key):
        grad, screen_out = self.direction(defense, task, x_adv, y, key)
        return grad, screen_out, self.loss_fn(task)(screen_out, y)
