"""A general stepped attack: the thesis' evaluation loop (SPEC §3.3) with pluggable gradient
estimates and update rules.

Every attack built on :class:`SteppedAttack` keeps Alg. 1's rules exactly: natural check with
H_def replicates; per restart a random start; N+1 evaluation points, each screened with the
H_adv replicates of the estimate and each candidate break verified with fresh H_def replicates;
an image is broken if any evaluated point of any restart breaks it. Subclasses choose

* :meth:`estimate`: (gradient or None, screening outputs, per-image loss) at the current points;
* :meth:`init_state` / :meth:`propose`: the next points (PGD step, APGD, random search, ...).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ebmctl.attacks.base import Attack, AttackOutcome
from ebmctl.attacks.chain import GRADIENT_MODES, eot_gradient, smoothed_copy
from ebmctl.attacks.threat import ascent_step, project, random_start
from ebmctl.defense import Defense
from ebmctl.errors import ConfigError
from ebmctl.protocols import Task
from ebmctl.seeds import make_generator


class SteppedAttack(Attack):
    #: gradient estimate against a stochastic defense: bpda | full | smooth (see chain.py)
    gradient = "bpda"

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self._smooth_nets: dict[int, torch.nn.Module] = {}

    # -- options: explicit keyword, else the resolved profile, else the default --------------
    def option(self, key: str, default: Any) -> Any:
        short = key.split(".", 1)[1]
        if short in self.options:
            return self.options[short]
        cfg = self.options.get("config")
        if cfg is not None and cfg.get(key) is not None:
            return cfg.get(key)
        return default

    def gradient_mode(self) -> str:
        mode = self.gradient
        if mode not in GRADIENT_MODES:
            raise ConfigError(f"unknown gradient {mode!r}; choose from bpda, full, smooth")
        return mode

    def loss_fn(self, task: Task) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return task.attack_loss

    def _backward_net(self, defense: Defense):
        if self.gradient_mode() != "smooth" or defense.ebm is None:
            return None
        net = defense.ebm.net
        if id(net) not in self._smooth_nets:
            twin, _ = smoothed_copy(net, float(self.option("attack.smooth_temperature", 0.1)))
            self._smooth_nets[id(net)] = twin
        return self._smooth_nets[id(net)]

    def estimate(self, defense: Defense, task: Task, x_adv: torch.Tensor, y: torch.Tensor,
                 key: tuple) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        return eot_gradient(defense, x_adv, y, self.eot_reps, key, self.loss_fn(task),
                            self.gradient_mode(), backward_net=self._backward_net(defense),
                            segment=int(self.option("attack.checkpoint_segment", 0)))

    # -- update rule (default: PGD, SPEC §3.2) -----------------------------------------------
    def init_state(self, x: torch.Tensor, x_start: torch.Tensor, key: tuple) -> dict:
        return {}

    def propose(self, state: dict, idx: torch.Tensor, x_nat: torch.Tensor, x_cur: torch.Tensor,
                grad: torch.Tensor | None, loss: torch.Tensor, n: int, key: tuple
                ) -> torch.Tensor:
        return project(ascent_step(x_cur, grad, self.step_size, self.norm), x_nat, self.eps,
                       self.norm)

    def start_point(self, x: torch.Tensor, r: int, key: tuple) -> torch.Tensor:
        if not self.random_start:
            return x.clone()
        return random_start(x, self.eps, self.norm, make_generator(x.device, *key, "start", r))

    def run(self, defense: Defense, task: Task, x: torch.Tensor, y: torch.Tensor, key: tuple,
            progress: Callable[[int], None] | None = None) -> AttackOutcome:
        clean_out = defense.predict(x, self.verify_reps, (*key, "natural"))
        clean_score = task.score(clean_out, y).float()
        alive = task.natural_ok(clean_score).clone()
        natural_ok = alive.clone()
        x_best = x.clone()
        n_eval = self.steps + 1
        ok_by_step = torch.zeros(self.restarts, n_eval, x.shape[0], dtype=torch.bool)
        for r in range(self.restarts):
            x_adv = self.start_point(x, r, key)
            state = self.init_state(x, x_adv, (*key, "state", r))
            for n in range(n_eval):
                idx = alive.nonzero().flatten()
                if idx.numel():
                    xa, ya = x_adv[idx], y[idx]
                    grad, screen_out, loss = self.estimate(defense, task, xa, ya, (*key, r, n))
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
                        nxt = self.propose(state, idx, x[idx], xa, grad, loss, n, (*key, r, n))
                        x_adv[idx[still]] = nxt[still].to(x_adv.dtype)
                ok_by_step[r, n] = alive.cpu()
                if progress is not None:
                    progress(1)
            keep = alive.nonzero().flatten()
            x_best[keep] = x_adv[keep]
        return AttackOutcome(natural_ok.cpu(), alive.cpu(), clean_score.cpu(), x_best.cpu(),
                             ok_by_step, {"gradient": self.gradient_mode()})


class FullGradientEOT(SteppedAttack):
    """PGD + EOT with the exact gradient through all K Langevin steps (checkpointed). For a
    piecewise-linear EBM it equals BPDA+EOT; for a smooth EBM (SiLU) it carries the Hessian."""

    name = "full-eot"
    description = "PGD+EOT, exact gradient through the Langevin chain (checkpointed)"
    gradient = "full"


class SmoothedGradientEOT(SteppedAttack):
    """PGD + EOT through the chain with a smoothed backward pass: each (Leaky)ReLU's slope is
    differentiated as a softplus with temperature ``attack.smooth_temperature``."""

    name = "smooth-eot"
    description = "PGD+EOT through the chain, softplus-smoothed second derivatives"
    gradient = "smooth"
