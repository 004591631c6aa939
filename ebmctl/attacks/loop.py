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

The loop's bookkeeping (alive mask, breaking points, current iterates) lives in a run object
made per call of :meth:`SteppedAttack.run`, never on the attack, so an instance holds settings
only and may run several batches at once.
"""

from __future__ import annotations

import weakref
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ebmctl.attacks.base import Attack, AttackOutcome
from ebmctl.attacks.gradients import (
    CommonNoise,
    RowNoise,
    check_backward,
    energy_and_input_gradient,
    eot_gradient,
    predict_with_noise,
    purify_with_noise,
    smoothed_copy,
)
from ebmctl.attacks.losses import LOSSES, LossFn, resolve_loss
from ebmctl.attacks.threat import ascent_step, project, random_start
from ebmctl.defense import Defense, average_outputs
from ebmctl.errors import ConfigError
from ebmctl.contracts import Task
from ebmctl.seeds import make_generator


#: the run in progress in this thread (or task): :meth:`SteppedAttack.run` sets it for the
#: duration of the loop. The hooks keep their plugin-facing signatures (``estimate(defense,
#: task, x_adv, y, key)``, ``verify(defense, x_adv, rows, key)``), so the fixed-noise
#: coordinates they need (the alive images' rows, the batch's size) reach them through this
#: context variable rather than through attributes of the attack.
_ACTIVE_RUN: ContextVar[_Run | None] = ContextVar("ebmctl_attack_run", default=None)


@dataclass
class _Run:
    """The state of one :meth:`SteppedAttack.run` over a batch of B images.

    Attributes:
        key: the run's seed key; evaluation point n of restart r uses ``(*key, r, n)``.
        x: clean images [B,C,H,W] in [0,1].
        y: targets [B,...].
        clean_score: float [B], the natural check's scores (the reference of ``robust_ok``).
        alive: bool [B], not broken yet (rule 4 of the module docstring); updated in place.
        x_best: [B,C,H,W], each broken image's breaking point; survivors get their last
            iterate at the end of each restart.
        x_adv: [B,C,H,W], the current restart's iterates.
        restart: r, the current restart.
        rows: long [b], batch positions of the images the current evaluation point attacks.
    """

    key: tuple
    x: torch.Tensor
    y: torch.Tensor
    clean_score: torch.Tensor
    alive: torch.Tensor
    x_best: torch.Tensor
    x_adv: torch.Tensor
    restart: int = 0
    rows: torch.Tensor | None = None

    def attacker_noise(self, tag: str) -> CommonNoise:
        """The attacker's fixed Langevin noise of this restart (``common_noise``): one stream
        per restart and ``tag`` (``eot`` | ``chain``), independent of the attack step n."""
        return CommonNoise((*self.key, self.restart, "common", tag), *self._batch())

    def defender_noise(self) -> CommonNoise:
        """The defender's fixed verification noise (``common_noise_defender``): one stream
        per batch, independent of n and of the restart."""
        return CommonNoise((*self.key, "common-verify"), *self._batch())

    def _batch(self) -> tuple[int, torch.device, torch.dtype]:
        return self.x.shape[0], self.x.device, self.x.dtype


class SteppedAttack(Attack):
    """Alg. 1 with a pluggable gradient estimate and update rule (default: PGD, Eq. 2.8).

    Args (beyond :class:`~ebmctl.attacks.base.Attack`'s):
        loss: ``ce`` (the task's attack loss) | ``margin`` | ``dlr`` (see
            :mod:`ebmctl.attacks.losses`).
        smooth_temperature: softplus temperature of the smoothed backward pass (``smooth``),
            in pre-activation units.
        checkpoint_segment: Langevin steps per checkpoint segment of the differentiable chain
            (0 = √K); memory vs recomputation only, never the gradient.
        final_iterate_only: the MEFA protocol (Du, Hill & Cai 2026): no per-step screening or
            verification; each restart's last iterate is verified once with H_def (rule 3 of
            the module docstring applies at n = N only, to every alive image). Default: broken
            at any step (the thesis' Alg. 1).
        common_noise: fix the Langevin noise of the attacker's H_adv replicates for a whole
            restart (Liu & Wei 2025): the noise of (image, replicate, chain step) is drawn
            from a key independent of the attack step n (:class:`~ebmctl.attacks.gradients.
            CommonNoise`, one stream per restart). Screening then reuses that noise too.
        common_noise_defender: also fix the H_def verification noise (one stream per batch,
            independent of n and of the restart). A *diagnostic*: the defense no longer draws
            fresh randomness, so a report marks the attack's row and keeps it out of the
            headline.
        energy_weight: λ ≥ 0 of the defense-aware loss (Tramèr et al. 2020): the attacker
            maximises loss − λ·U(x_adv), U = :meth:`EnergyModel.energy01` of the defending EBM
            (energy units of U_net/T, so useful λ are small), i.e. it also seeks images of low
            energy that purification barely moves. Applies to every attack's objective
            (:meth:`objective`).

    Raises:
        ConfigError: an unknown loss, a non-positive temperature, a negative segment or λ.
    """

    gradient = "bpda"
    config_fields = ("smooth_temperature", "checkpoint_segment")
    options = frozenset({"loss", "final_iterate_only", "common_noise", "common_noise_defender",
                         "energy_weight"})
    #: K' of the surrogate chain the gradient differentiates through (0 = K); set only by the
    #: attacks whose gradient passes the chain (``gradient_steps`` constructor argument)
    gradient_steps = 0

    def __init__(self, *, loss: str = "ce", smooth_temperature: float = 0.1,
                 checkpoint_segment: int = 0, final_iterate_only: bool = False,
                 common_noise: bool = False, common_noise_defender: bool = False,
                 energy_weight: float = 0.0, **kw: Any):
        super().__init__(**kw)
        if energy_weight < 0:
            raise ConfigError(f"attack.energy_weight must be >= 0 (got {energy_weight}): the "
                              "attacker minimises the EBM's energy")
        self.final_iterate_only = bool(final_iterate_only)
        if self.final_iterate_only:  # only the last point of each restart is measured
            self.per_step_curve = False
        self.common_noise, self.common_noise_defender = bool(common_noise), \
            bool(common_noise_defender)
        self.energy_weight = float(energy_weight)
        if loss not in LOSSES:
            raise ConfigError(f"unknown attack.loss {loss!r}; choose from {', '.join(LOSSES)}")
        if smooth_temperature <= 0:
            raise ConfigError("attack.smooth_temperature must be > 0")
        if checkpoint_segment < 0:
            raise ConfigError("attack.checkpoint_segment must be >= 0 (0 = sqrt(K))")
        self.loss, self.smooth_temperature = loss, float(smooth_temperature)
        self.checkpoint_segment = int(checkpoint_segment)
        # a cache, not run state: the smoothed copy of each EBM network this attack has met,
        # dropped with the network
        self._smooth_nets: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = \
            weakref.WeakKeyDictionary()

    def _set_gradient_steps(self, steps: int) -> None:
        """Validate and keep ``gradient_steps`` (K' ≥ 0; only for ``full``/``smooth``)."""
        if steps < 0:
            raise ConfigError("attack.gradient_steps must be >= 0 (0 = defense.steps)")
        if steps and self.gradient_mode() not in ("full", "smooth"):
            raise ConfigError(f"attack.gradient_steps = {steps} needs a gradient through the "
                              f"chain (attack.gradient = full | smooth), not "
                              f"{self.gradient_mode()!r}")
        self.gradient_steps = int(steps)

    @property
    def diagnostic(self) -> bool:
        """True when the defender's own randomness was fixed: not a robustness figure."""
        return self.common_noise_defender

    def check_defense(self, defense: Defense) -> None:
        """Reject settings this defense cannot honour, before any work.

        Raises:
            ConfigError: a gradient mode the purifier cannot give (``full``/``exact`` without
                a backward pass, ``smooth`` without an EBM chain; :func:`~ebmctl.attacks.
                gradients.check_backward`); ``gradient_steps`` > the defense's K or without an
                EBM chain; fixed noise the purifier cannot take, or a deterministic purifier
                (nothing to fix); ``energy_weight`` without an EBM.
        """
        mode = self.gradient_mode()
        check_backward(defense, mode, self.name)
        p = defense.purifier if defense.purifies else None
        if p is not None and self.gradient_steps and "steps" not in p.chain_options:
            raise ConfigError(f"attack.gradient_steps = {self.gradient_steps} shortens the "
                              f"EBM's Langevin chain; purifier {p.name!r} has none")
        if defense.stochastic and not p.fixed_noise and (self.common_noise
                                                         or self.common_noise_defender):
            raise ConfigError(f"attack.common_noise fixes the EBM's Langevin noise; purifier "
                              f"{p.name!r} takes no fixed noise")
        if p is not None and not defense.stochastic and (self.common_noise
                                                         or self.common_noise_defender):
            # nothing random to fix: the setting would be silently ignored
            raise ConfigError(f"attack.common_noise fixes a random defense's noise; purifier "
                              f"{p.name!r} is deterministic here")
        if defense.stochastic and self.gradient_steps > defense.steps:
            raise ConfigError(f"attack.gradient_steps = {self.gradient_steps} exceeds "
                              f"defense.steps = {defense.steps}: the surrogate chain must not "
                              "be longer than the defense's")
        if self.energy_weight and defense.ebm is None:
            raise ConfigError(f"attack.energy_weight = {self.energy_weight} needs a defense "
                              "with an EBM (its energy is the extra loss term)")

    def loss_fn(self, task: Task) -> LossFn:
        """The per-image loss [B] the attack maximises (``loss``, for ``task``)."""
        return resolve_loss(self.loss, task)

    def _backward_net(self, defense: Defense):
        if self.gradient_mode() != "smooth" or defense.ebm is None:
            return None
        net = defense.ebm.net
        if net not in self._smooth_nets:
            self._smooth_nets[net] = smoothed_copy(net, self.smooth_temperature)[0]
        return self._smooth_nets[net]

    # -- randomness ------------------------------------------------------------------------
    def attacker_noise(self, reps: int, tag: str) -> RowNoise | None:
        """Fixed noise for ``reps`` replicates of the images the current evaluation point
        attacks (``common_noise``, inside :meth:`run`), else None (fresh noise from the
        step's key)."""
        run = _ACTIVE_RUN.get()
        if not self.common_noise or run is None or run.rows is None:
            return None
        return run.attacker_noise(tag).for_rows(run.rows, reps)

    def replicates(self, defense: Defense, x_adv: torch.Tensor, reps: int, key: tuple
                   ) -> torch.Tensor:
        """H purified copies [H,B,...] of the alive images for the attacker (screening and
        gradient-free estimates), honouring ``common_noise``."""
        noise = self.attacker_noise(reps, "eot") if defense.stochastic else None
        if noise is None:
            return defense.replicates(x_adv, reps, key)
        return purify_with_noise(defense, x_adv, reps, noise)

    def verify(self, defense: Defense, x_adv: torch.Tensor, rows: torch.Tensor, key: tuple
               ) -> torch.Tensor:
        """H_def-averaged outputs [b,...] of candidates ``x_adv`` [b,C,H,W] (batch positions
        ``rows``, long [b]) with fresh noise from ``(*key, "verify")``, or with fixed noise
        under ``common_noise_defender`` (inside :meth:`run`)."""
        run = _ACTIVE_RUN.get()
        if self.common_noise_defender and defense.stochastic and run is not None:
            return predict_with_noise(defense, x_adv, self.verify_reps, run.defender_noise(),
                                      rows)
        return defense.predict(x_adv, self.verify_reps, (*key, "verify"))

    # -- hooks ---------------------------------------------------------------------------
    def estimate(self, defense: Defense, task: Task, x_adv: torch.Tensor, y: torch.Tensor,
                 key: tuple) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(gradient [B,...] or None, screening outputs [B,...] of the same replicates or None
        to verify every alive image directly, per-image loss [B]) at ``x_adv``.

        With ``gradient_steps`` = K' < K the gradient passes a K'-step surrogate chain, while
        screening outputs and loss come from H_adv replicates of the defense's own K steps."""
        mode, loss_fn = self.gradient_mode(), self.loss_fn(task)
        chain = self.gradient_steps if (defense.stochastic and mode in ("full", "smooth")) else 0
        grad, out, loss = eot_gradient(
            defense, x_adv, y, self.eot_reps, key, loss_fn, mode,
            backward_net=self._backward_net(defense), segment=self.checkpoint_segment,
            chain_steps=chain,
            noise=self.attacker_noise(self.eot_reps, "eot" if mode == "bpda" else "chain"))
        if 0 < chain < defense.steps:
            with torch.no_grad():
                reps = self.replicates(defense, x_adv, self.eot_reps, (*key, "eot"))
                out = average_outputs(defense.outputs_of(reps), defense.average)
                loss = loss_fn(out, y)
        return grad, out, loss

    def objective(self, defense: Defense, task: Task, x_adv: torch.Tensor, y: torch.Tensor,
                  key: tuple) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """:meth:`estimate` plus the defense-aware term: loss − λ·U(x_adv) [B] and gradient
        − λ·∇U(x_adv) [B,C,H,W] (U: the defending EBM's energy of the [0,1] images)."""
        grad, out, loss = self.estimate(defense, task, x_adv, y, key)
        if self.energy_weight:
            u, grad_u = energy_and_input_gradient(defense, x_adv)
            loss = loss - self.energy_weight * u.to(loss.dtype)
            if grad is not None:
                grad = grad - self.energy_weight * grad_u.to(grad.dtype)
        return grad, out, loss

    def init_state(self, x: torch.Tensor, x_start: torch.Tensor, key: tuple) -> dict:
        """The update rule's state for one restart (default: none), handed to every
        :meth:`propose` of that restart: ``x`` the clean images [B,C,H,W], ``x_start`` the
        restart's start [B,C,H,W], ``key`` ``(*run_key, "state", r)``."""
        return {}

    def propose(self, state: dict, idx: torch.Tensor, x_nat: torch.Tensor, x_cur: torch.Tensor,
                grad: torch.Tensor | None, loss: torch.Tensor, n: int, key: tuple
                ) -> torch.Tensor:
        """Next points [b,C,H,W] of the alive images ``idx`` (long [b], batch positions) from
        their clean images ``x_nat`` and current points ``x_cur`` [b,C,H,W], the
        :meth:`objective`'s gradient and loss [b] there, at evaluation point n (key
        ``(*run_key, r, n)``); must stay in the ε-ball and [0,1]. Default: PGD, one projected
        ascent step of size ``step_size`` (thesis Eq. 2.8)."""
        return project(ascent_step(x_cur, grad, self.step_size, self.norm), x_nat, self.eps,
                       self.norm)

    def start_point(self, x: torch.Tensor, r: int, key: tuple) -> torch.Tensor:
        """Restart r's first iterate [B,C,H,W]: a uniform point of the ε-ball around ``x``
        drawn from ``(*key, "start", r)``, or ``x`` itself without ``random_start``."""
        if not self.random_start:
            return x.clone()
        return random_start(x, self.eps, self.norm, make_generator(x.device, *key, "start", r))

    def evaluated(self, n: int) -> bool:
        """Whether evaluation point n is checked against the defense (default: every one;
        ``final_iterate_only``: only n = N)."""
        return not self.final_iterate_only or n == self.steps

    # -- the loop --------------------------------------------------------------------------
    def run(self, defense: Defense, task: Task, x: torch.Tensor, y: torch.Tensor, key: tuple,
            progress: Callable[[int], None] | None = None) -> AttackOutcome:
        """Alg. 1 over the batch ``x`` [B,C,H,W] in [0,1] (rules 1-4 of the module docstring);
        arguments, returns and errors as :meth:`Attack.run`."""
        self.check_defense(defense)
        clean_out = defense.predict(x, self.verify_reps, (*key, "natural"))
        clean_score = task.score(clean_out, y).float()
        natural_ok = task.natural_ok(clean_score).clone()
        run = _Run(key, x, y, clean_score, alive=natural_ok.clone(), x_best=x.clone(), x_adv=x)
        ok_by_step = torch.zeros(self.restarts, self.steps + 1, x.shape[0], dtype=torch.bool)
        token = _ACTIVE_RUN.set(run)
        try:
            for r in range(self.restarts):
                run.restart, run.x_adv = r, self.start_point(x, r, key)
                state = self.init_state(x, run.x_adv, (*key, "state", r))
                for n in range(self.steps + 1):
                    self._step(run, defense, task, state, n)
                    ok_by_step[r, n] = run.alive.cpu()
                    if progress is not None:
                        progress(1)
                keep = run.alive.nonzero().flatten()
                run.x_best[keep] = run.x_adv[keep]
        finally:
            _ACTIVE_RUN.reset(token)
        return AttackOutcome(natural_ok.cpu(), run.alive.cpu(), clean_score.cpu(),
                             run.x_best.cpu(), ok_by_step, {"gradient": self.gradient_mode()})

    def _step(self, run: _Run, defense: Defense, task: Task, state: dict, n: int) -> None:
        """Evaluation point n of the current restart: screen, verify and (unless n = N) move
        the alive images; updates ``run.x_adv``, ``run.x_best`` and ``run.alive`` in place."""
        idx = run.alive.nonzero().flatten()
        if not idx.numel():
            return
        run.rows, key = idx, (*run.key, run.restart, n)
        xa, ya = run.x_adv[idx], run.y[idx]
        if self.final_iterate_only and n == self.steps:
            grad = screen_out = loss = None  # nothing to propose and no screening: skip it
        else:
            grad, screen_out, loss = self.objective(defense, task, xa, ya, key)
        if self.evaluated(n):
            if screen_out is None or self.final_iterate_only:
                cand = torch.arange(len(idx), device=idx.device)
            else:
                screen_ok = task.robust_ok(task.score(screen_out, ya).float(),
                                           run.clean_score[idx])
                cand = (~screen_ok).nonzero().flatten()
            if cand.numel():
                verify_out = self.verify(defense, xa[cand], idx[cand], key)
                v_ok = task.robust_ok(task.score(verify_out, ya[cand]).float(),
                                      run.clean_score[idx[cand]])
                broken = idx[cand[~v_ok]]
                run.alive[broken] = False
                run.x_best[broken] = run.x_adv[broken]
        if n < self.steps:
            still = run.alive[idx]
            nxt = self.propose(state, idx, run.x[idx], xa, grad, loss, n, key)
            run.x_adv[idx[still]] = nxt[still].to(run.x_adv.dtype)


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
