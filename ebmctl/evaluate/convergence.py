"""Is an attack's accuracy curve still falling because the attack is still finding adversarial
points, or because a stochastic defense is being re-verified?

Alg. 1 calls an image broken the first time one H_def verification misreads it. Against a
stochastic defense every evaluation point is a fresh draw, so an image the attack has pushed to
the decision boundary (purified copies split close to evenly) can be lost by chance at any
step, long after the attack itself has converged: the per-image worst-case curve keeps losing
an image every few dozen steps, and whether one of those losses lands in the last 20% of steps
is luck (and differs between CPUs, whose kernels draw other floating-point bits).

:func:`check_tail` separates the two. Each image first broken in the curve's tail (the window
:func:`~ebmctl.evaluate.stats.still_falling` judges) has its breaking point re-verified
:data:`TAIL_REVERIFICATIONS` times with H_def fresh replicates each. If the defense misreads it
in a majority of them, the attack found a point the defense gets wrong more often than not:
the attack is still making progress and the curve is not converged. If not, the loss was the
verification's chance. The headline is unchanged either way: an image broken once stays broken
(the per-image worst case), only the converged flag reads the check. For a deterministic
defense a re-verification repeats the verification, so every tail loss is confirmed and the
rule is the plain "still falling" one; it is only run for stochastic defenses.
"""

from __future__ import annotations

import torch

from ebmctl.evaluate.resubmit import resubmission_correct
from ebmctl.evaluate.results import TailCheck
from ebmctl.evaluate.stats import tail_steps

#: fresh H_def verifications of each tail loss; odd, so that a majority is defined
TAIL_REVERIFICATIONS = 5


def tail_losses(per_image: list[dict], points: int) -> list[int]:
    """Indices of the images first broken in the tail of a curve with ``points`` entries
    (``per_image`` rows as :class:`~ebmctl.evaluate.results.SeedResult` holds them, with
    ``broken_at`` = [restart, step]; the worst-case curve counts an image broken from the step
    of its break, since a broken image is not attacked by later restarts)."""
    last, m = points - 1, tail_steps(points)
    return [row["index"] for row in per_image
            if row["broken_at"] is not None and row["broken_at"][1] > last - m]


def check_tail(defense, task, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
               per_image: list[dict], points: int, *, key: tuple, batch_size: int,
               device: torch.device) -> TailCheck:
    """Re-verify the tail losses of one seed of an attack on a stochastic defense.

    Args:
        defense: the defense the attack ran against (its H_def = ``defense.reps``).
        x_adv: [M,C,H,W] in [0,1], each image's breaking point (the seed's ``x_adv``).
        x, y: the M clean images [M,C,H,W] in [0,1] and their targets.
        per_image: the seed's per-image rows (``broken_at``); points: the curve's length N+1.
        key: seed key; the clean check uses ``(*key, "tail-natural")`` and re-verification j
            ``(*key, "tail", j, chunk start)``, independent of the attack's draws.
    """
    lost = tail_losses(per_image, points)
    if not lost:
        return TailCheck(tail_steps(points), 0, 0, TAIL_REVERIFICATIONS)
    idx = torch.tensor(lost)
    xs, ys = x[idx].to(device), y[idx].to(device)
    clean = task.score(defense.predict(xs, defense.reps, (*key, "tail-natural")), ys).float()
    ok = resubmission_correct(defense, task, x_adv[idx], y[idx], clean.cpu(),
                              resubmissions=TAIL_REVERIFICATIONS, reps=defense.reps,
                              key=(*key, "tail"), batch_size=batch_size, device=device)
    misread = (~ok).sum(0)  # [k]: verifications that misread each image
    confirmed = int((misread * 2 > TAIL_REVERIFICATIONS).sum())
    return TailCheck(tail_steps(points), len(lost), confirmed, TAIL_REVERIFICATIONS)
