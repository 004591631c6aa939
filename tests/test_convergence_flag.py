"""The converged flag against a stochastic defense: a curve that falls over its last 20% of
steps is "not converged" when the attack found points the defense misreads more often than
not, and converged when its tail losses were the repeated verification's chance (the
re-verification of :mod:`ebmctl.evaluate.convergence`); a deterministic defense keeps the plain
rule."""

from __future__ import annotations

import random
import zlib

import torch

from ebmctl.evaluate.convergence import TAIL_REVERIFICATIONS, check_tail, tail_losses
from ebmctl.evaluate.results import SeedResult, TailCheck
from ebmctl.evaluate.stats import still_falling, tail_steps
from ebmctl.evaluate.worst_case import only_chance_losses, summarise_attack


class CoinDefense:
    """A stochastic two-class defense: each H-averaged prediction of an image is right with
    the probability its first pixel holds (drawn from the key, so runs repeat)."""

    stochastic = True

    def __init__(self, reps: int = 8):
        self.reps = reps
        self.calls = 0

    def predict(self, x, reps, key):
        self.calls += 1
        g = torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))
        right = torch.rand(len(x), generator=g) < x[:, 0, 0, 0]
        return torch.stack([right.float(), (~right).float()], 1)  # class 0 is the target


class TwoClassTask:
    def score(self, outputs, targets):
        return (outputs.argmax(1) == targets).float()

    def robust_ok(self, adv_score, clean_score):
        return adv_score > 0.5


def _rows(broken_at: list[int | None]) -> list[dict]:
    return [{"index": i, "natural_ok": True, "robust_ok": b is None,
             "broken_at": None if b is None else [0, b]} for i, b in enumerate(broken_at)]


def _check(p_right: list[float], broken_at: list[int | None], steps: int = 10):
    n = len(p_right)
    x_adv = torch.tensor(p_right).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    x = torch.ones(n, 1, 2, 2)  # clean images: always right
    return check_tail(CoinDefense(), TwoClassTask(), x_adv, x, torch.zeros(n, dtype=torch.long),
                      _rows(broken_at), steps + 1, key=(0, "defended", "bpda-eot"),
                      batch_size=4, device=torch.device("cpu"))


def test_tail_losses_are_exactly_the_breaks_that_make_the_curve_fall():
    rnd = random.Random(0)
    for _ in range(200):
        steps = rnd.randint(1, 40)
        breaks = [rnd.choice([None, rnd.randint(0, steps)]) for _ in range(12)]
        curve = [sum(b is None or b > n for b in breaks) / 12 for n in range(steps + 1)]
        assert bool(tail_losses(_rows(breaks), steps + 1)) == still_falling(curve), (breaks,
                                                                                     steps)
    assert tail_steps(41) == 8 and tail_steps(2) == 1


def test_a_tail_loss_the_defense_gets_right_most_of_the_time_is_chance():
    c = _check([1.0, 1.0, 0.97], [None, 2, 10])  # image 2 lost at the last step, p(right) 0.97
    assert c == TailCheck(tail_steps(11), 1, 0, TAIL_REVERIFICATIONS)


def test_a_tail_loss_the_defense_gets_wrong_most_of_the_time_is_attack_progress():
    c = _check([1.0, 0.03, 0.03], [None, 9, 3])  # image 1 in the tail, image 2 before it
    assert c == TailCheck(tail_steps(11), 1, 1, TAIL_REVERIFICATIONS)


def test_no_tail_loss_reverifies_nothing():
    d = CoinDefense()
    c = check_tail(d, TwoClassTask(), torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2),
                   torch.zeros(2, dtype=torch.long), _rows([None, 1]), 11, key=(0,),
                   batch_size=4, device=torch.device("cpu"))
    assert c.lost == 0 and c.confirmed == 0 and d.calls == 0


def _seed(curve: list[float], tail_check: TailCheck | None) -> SeedResult:
    return SeedResult(seed=0, natural=1.0, adversarial=curve[-1], robust_by_step=[curve],
                      accuracy_curve=curve, natural_ok=[True] * 4, robust_ok=[True] * 4,
                      per_image=[], seconds=0.0, image_steps=0, chunks_reused=0, x_adv=None,
                      tail_check=tail_check)


class _Attack:
    name, description, per_step_curve, diagnostic = "bpda-eot", "", True, False

    def gradient_mode(self):
        return "bpda"


def test_the_flag_reads_the_reverification_and_only_for_a_stochastic_defense():
    falling = [1.0, 0.75, 0.75, 0.75, 0.75, 0.5]
    chance = TailCheck(1, 1, 0, TAIL_REVERIFICATIONS)
    progress = TailCheck(1, 1, 1, TAIL_REVERIFICATIONS)
    assert summarise_attack(_Attack(), [_seed(falling, chance)], 4).converged is True
    assert summarise_attack(_Attack(), [_seed(falling, progress)], 4).converged is False
    # a deterministic defense is never re-verified: the plain rule
    assert summarise_attack(_Attack(), [_seed(falling, None)], 4).converged is False
    # every seed must be chance for the mean curve to count as converged
    assert not only_chance_losses([_seed(falling, chance), _seed(falling, progress)])
    flat = [1.0, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert summarise_attack(_Attack(), [_seed(flat, None)], 4).converged is True


def test_the_check_survives_the_report_round_trip():
    s = _seed([1.0, 0.5], TailCheck(1, 2, 1, TAIL_REVERIFICATIONS))
    assert SeedResult.from_json(s.to_json()).tail_check == s.tail_check
    assert "tail_check" not in _seed([1.0, 0.5], None).to_json()
