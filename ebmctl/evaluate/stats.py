"""Small statistics every accuracy in a report carries: Wilson intervals, convergence flags."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) of a binomial proportion: (low, high) in [0, 1].

    ``successes`` may be fractional (a mean over seeds times n). n = 0 gives (0, 1).

    Raises:
        ValueError: successes outside [0, n].
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n + 1e-9:
        raise ValueError(f"successes={successes} outside [0, {n}]")
    p = min(1.0, successes / n)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(fraction: float, n: int) -> list[float]:
    """95% Wilson interval [low, high] of an accuracy measured on n images, rounded to 4 places."""
    lo, hi = wilson_interval(fraction * n, n)
    return [round(lo, 4), round(hi, 4)]


def tail_steps(points: int, tail: float = 0.2) -> int:
    """Evaluation points in the tail of a curve with ``points`` entries (n = 0..N) that
    :func:`still_falling` judges: ``max(1, ceil(tail·N))``."""
    return max(1, math.ceil(tail * (points - 1)))


def still_falling(curve: list[float], tail: float = 0.2) -> bool:
    """True when an accuracy-vs-step curve (entries n = 0..N) fell over its last ``tail``
    share of steps (at least one step): more steps would likely lower it further."""
    n = len(curve) - 1
    if n < 1:
        return False
    return curve[n] < curve[n - tail_steps(len(curve), tail)] - 1e-12


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation; the std is None for a single value (n = 1)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
