"""PGD (Madry et al. 2018; thesis Eq. 2.8) and FGSM (Goodfellow et al. 2015; Eq. 1.2) with the
model's exact gradients, for deterministic models (no purifier, or a deterministic differentiable
one, differentiated through; a fixer is allowed)."""

from __future__ import annotations

from ebmctl.attacks.gradients import eot_gradient
from ebmctl.attacks.loop import SteppedAttack
from ebmctl.errors import ConfigError


class PGD(SteppedAttack):
    """Projected gradient descent with exact gradients inside Alg. 1. Norms: ℓ∞, ℓ2.

    Arguments: those of :class:`~ebmctl.attacks.loop.SteppedAttack`.

    Raises:
        ConfigError: run against a stochastic (Langevin) defense; use ``bpda-eot`` there.

    Example: ``PGD(eps=8/255, step_size=2/255, steps=20).run(Defense(model), task, x, y, (0,))``
    """

    name = "pgd"
    description = "projected gradient descent with exact model gradients (undefended models)"
    gradient = "exact"

    def check_defense(self, defense) -> None:
        super().check_defense(defense)
        self._check_deterministic(defense)

    def _check_deterministic(self, defense) -> None:
        if defense.stochastic:
            raise ConfigError(f"attack {self.name!r} needs exact gradients of a deterministic "
                              f"defense and purifier {defense.purifier.name!r} is stochastic; "
                              "use attack.method = 'bpda-eot' (or full-eot)")

    def estimate(self, defense, task, x_adv, y, key):
        self._check_deterministic(defense)
        return eot_gradient(defense, x_adv, y, 1, key, self.loss_fn(task), "exact")


class FGSM(PGD):
    """Single-step FGSM: one step of size ε from the clean image. Norms: ℓ∞, ℓ2.

    Arguments: those of :class:`PGD`; ``steps``, ``step_size``, ``restarts`` and
    ``random_start`` are fixed (1, ε, 1, False) whatever is given.

    Example: ``FGSM(eps=8/255).run(Defense(model), task, x, y, (0,))``
    """

    name = "fgsm"
    description = "fast gradient sign method: one step of size eps"

    def __init__(self, **kw):
        kw.update(steps=1, random_start=False, restarts=1)
        kw["step_size"] = kw.get("eps", 8 / 255)
        super().__init__(**kw)
