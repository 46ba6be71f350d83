"""Threshold calibration for pre-labelling: pure numpy, no I/O.

Given one score per calibration sample (the prediction's confidence or its
top-1 minus top-2 margin) and whether the prediction was correct, every
candidate threshold ``t`` accepts the samples with ``score >= t``; its
*coverage* is the accepted fraction and its *precision* the correct fraction
of the accepted ones.

The interval on a precision is the Wilson score interval: over repeated
calibration sets drawn from the same distribution, an interval built at
``level`` = 0.95 contains the true precision of that fixed threshold about
95% of the time. It is *not* a statement about the threshold the search
picked (see :func:`choose_threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

#: the rules :func:`choose_threshold` knows
RULES = ("wilson", "point")


def wilson_interval(successes, trials, level: float = 0.95):
    """Wilson score interval of a binomial proportion.

    Args:
        successes: int or np.ndarray[...] of counts.
        trials: same shape as ``successes``; 0 gives the interval (0, 1).
        level: two-sided confidence level in (0, 1).

    Returns:
        ``(low, high)``, floats or arrays of the broadcast shape.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError("successes must lie in [0, trials]")
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    safe_n = np.where(n > 0, n, 1.0)
    p = k / safe_n
    denom = 1.0 + z * z / safe_n
    center = (p + z * z / (2.0 * safe_n)) / denom
    half = z * np.sqrt(p * (1.0 - p) / safe_n + z * z / (4.0 * safe_n * safe_n)) / denom
    low = np.where(n > 0, np.clip(center - half, 0.0, 1.0), 0.0)
    high = np.where(n > 0, np.clip(center + half, 0.0, 1.0), 1.0)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


@dataclass(frozen=True)
class Curve:
    """Precision and coverage at every distinct score, highest first.

    Arrays are np.ndarray[T] for T distinct scores; ``thresholds`` strictly
    decrease, so ``accepted`` increases.
    """

    thresholds: np.ndarray
    accepted: np.ndarray  # int, samples with score >= threshold
    correct: np.ndarray  # int, correct among them
    total: int  # calibration samples (coverage denominator)
    level: float

    @property
    def precision(self) -> np.ndarray:
        return self.correct / np.maximum(self.accepted, 1)

    @property
    def coverage(self) -> np.ndarray:
        return self.accepted / max(self.total, 1)

    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        """Wilson interval of each precision, ``(low[T], high[T])``."""
        return wilson_interval(self.correct, self.accepted, self.level)


def precision_coverage_curve(scores, correct, level: float = 0.95) -> Curve:
    """The :class:`Curve` of one score against correctness.

    Args:
        scores: np.ndarray[N] float, higher = more sure (NaN not allowed).
        correct: np.ndarray[N] bool, whether the prediction was right.
        level: confidence level of the intervals.
    """
    s = np.asarray(scores, dtype=float).reshape(-1)
    c = np.asarray(correct, dtype=bool).reshape(-1)
    if s.shape != c.shape:
        raise ValueError(f"scores {s.shape} and correct {c.shape} differ in length")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(-s, kind="stable")
    s, c = s[order], c[order]
    cum_correct = np.cumsum(c)
    # the last index of each run of equal scores: a threshold accepts all ties
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if len(s) else np.array([], int)
    return Curve(
        thresholds=s[last],
        accepted=last + 1,
        correct=cum_correct[last] if len(s) else np.array([], int),
        total=len(s),
        level=level,
    )


def choose_threshold(
    curve: Curve, target: float, rule: str = "wilson", min_accepted: int = 1
) -> int | None:
    """Index (into the curve) of the lowest threshold that reaches ``target``.

    ``rule="wilson"``: the Wilson lower bound of the precision reaches the
    target (conservative: the true precision of the chosen threshold is
    below target rarely, roughly at the one-sided ``(1 - level) / 2`` rate
    per threshold). ``rule="point"``: the observed precision reaches it;
    because the search takes the lowest of many thresholds that pass, the
    chosen one's observed precision is biased upwards (its true precision
    falls below target about half the time), so use it only with a large
    calibration set or check on held-out data.

    Args:
        curve: from :func:`precision_coverage_curve`.
        target: precision in (0, 1].
        rule: ``"wilson"`` or ``"point"``.
        min_accepted: thresholds accepting fewer samples are not eligible.

    Returns:
        The index, or None when no threshold qualifies.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {RULES}")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target}")
    if rule == "wilson":
        measure = curve.interval()[0]
    else:
        measure = curve.precision
    ok = (measure >= target) & (curve.accepted >= max(int(min_accepted), 1))
    hits = np.flatnonzero(ok)
    return int(hits[-1]) if len(hits) else None


def subsample(n: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` indices of ``range(n)``, ends included (for plots)."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))
