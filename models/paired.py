"""Paired comparison of two classifiers on the same faces: McNemar's mid-p test and Newcombe's interval.

Both models label the same faces, so each face falls in one cell of a 2x2 table:

    both right (a)  | only the current model right (b)
    only the candidate right (c) | both wrong (d)

Only the discordant faces (b and c) say which model is better.  Two statistics
on that table, both recommended for paired proportions by Fagerland, Lydersen
and Laake (2013, "The McNemar test for binary matched-pairs data: mid-p and
asymptotic are better than exact conditional", BMC Med Res Methodol 13:91):

* :func:`mcnemar_mid_p`: the two-sided mid-p value of McNemar's exact
  conditional test (binomial test of c against b + c trials at 1/2);
* :func:`newcombe_interval`: Newcombe's (1998, Stat Med 17:2635, method 10)
  square-and-add Wilson score interval for the paired difference of
  accuracies, candidate minus current.

Standard library only: the gate's rule must be cheap to test, without TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class PairedCounts:
    """The 2x2 table of two models' correctness on the same faces."""

    both_right: int  # a
    current_only: int  # b: the current model right, the candidate wrong
    candidate_only: int  # c: the candidate right, the current model wrong
    both_wrong: int  # d

    def __post_init__(self) -> None:
        if min(self.both_right, self.current_only, self.candidate_only, self.both_wrong) < 0:
            raise ValueError(f"counts must be non-negative, got {self}")

    @classmethod
    def of(cls, labels: np.ndarray, candidate: np.ndarray, current: np.ndarray) -> "PairedCounts":
        """The table for predicted classes of both models against the true labels."""
        labels, candidate, current = (np.asarray(array, np.int64) for array in (labels, candidate, current))
        if not labels.shape == candidate.shape == current.shape:
            raise ValueError(f"shapes differ: labels {labels.shape}, candidate {candidate.shape}, current {current.shape}")
        candidate_right, current_right = candidate == labels, current == labels
        return cls(
            both_right=int(np.sum(candidate_right & current_right)),
            current_only=int(np.sum(current_right & ~candidate_right)),
            candidate_only=int(np.sum(candidate_right & ~current_right)),
            both_wrong=int(np.sum(~candidate_right & ~current_right)),
        )

    @property
    def total(self) -> int:
        return self.both_right + self.current_only + self.candidate_only + self.both_wrong

    @property
    def candidate_accuracy(self) -> float:
        return (self.both_right + self.candidate_only) / self.total

    @property
    def current_accuracy(self) -> float:
        return (self.both_right + self.current_only) / self.total

    @property
    def difference(self) -> float:
        """Candidate accuracy minus current accuracy: (c - b) / n."""
        return (self.candidate_only - self.current_only) / self.total


def binomial_half_pmf(successes: int, trials: int) -> float:
    """P(X = successes) for X ~ Binomial(trials, 1/2), exact (integers) so large trials never underflow early."""
    return math.comb(trials, successes) / 2**trials


def binomial_half_cdf(successes: int, trials: int) -> float:
    """P(X <= successes) for X ~ Binomial(trials, 1/2)."""
    return sum(math.comb(trials, value) for value in range(successes + 1)) / 2**trials


def mcnemar_exact_p(counts: PairedCounts) -> float:
    """Two-sided p-value of McNemar's exact conditional test (1.0 without discordant faces)."""
    discordant = counts.current_only + counts.candidate_only
    if discordant == 0:
        return 1.0
    smaller = min(counts.current_only, counts.candidate_only)
    return min(1.0, 2.0 * binomial_half_cdf(smaller, discordant))


def mcnemar_mid_p(counts: PairedCounts) -> float:
    """Two-sided mid-p value of McNemar's exact conditional test (Fagerland et al. 2013).

    The exact p-value minus the probability of the observed split; for a tie
    (b == c) it is 1 - P(X = b) / 2.  1.0 without discordant faces.
    """
    discordant = counts.current_only + counts.candidate_only
    if discordant == 0:
        return 1.0
    observed = binomial_half_pmf(counts.current_only, discordant)
    if counts.current_only == counts.candidate_only:
        return 1.0 - 0.5 * observed
    return mcnemar_exact_p(counts) - observed


def wilson_interval(successes: int, trials: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    proportion = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (proportion + z * z / (2 * trials)) / denominator
    half_width = z * math.sqrt(proportion * (1 - proportion) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def _correlation(counts: PairedCounts) -> float:
    """Newcombe's estimate of the correlation between the two accuracies (phi, shrunk towards 0)."""
    a, b, c, d = counts.both_right, counts.current_only, counts.candidate_only, counts.both_wrong
    n = counts.total
    margins = (a + c) * (b + d) * (a + b) * (c + d)
    if margins == 0:
        return 0.0
    cross = a * d - b * c
    if cross > n / 2:
        return (cross - n / 2) / math.sqrt(margins)
    if cross >= 0:
        return 0.0
    return cross / math.sqrt(margins)


def newcombe_interval(counts: PairedCounts, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided interval for the paired difference candidate - current accuracy (Newcombe 1998, method 10).

    For the Cavo et al. (2012) table a=59, b=16, c=6, d=80 (candidate 65 of
    161 right, current 75) it gives -0.1186 to -0.0046, as published.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = counts.total
    if n == 0:
        raise ValueError("no faces: no interval")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    candidate = counts.candidate_accuracy
    current = counts.current_accuracy
    candidate_low, candidate_high = wilson_interval(counts.both_right + counts.candidate_only, n, z)
    current_low, current_high = wilson_interval(counts.both_right + counts.current_only, n, z)
    phi = _correlation(counts)
    below = (candidate - candidate_low) ** 2 + (current_high - current) ** 2
    below -= 2 * phi * (candidate - candidate_low) * (current_high - current)
    above = (current - current_low) ** 2 + (candidate_high - candidate) ** 2
    above -= 2 * phi * (current - current_low) * (candidate_high - candidate)
    difference = candidate - current
    return max(-1.0, difference - math.sqrt(max(below, 0.0))), min(1.0, difference + math.sqrt(max(above, 0.0)))


__all__ = [
    "PairedCounts", "binomial_half_cdf", "binomial_half_pmf", "mcnemar_exact_p", "mcnemar_mid_p",
    "newcombe_interval", "wilson_interval",
]
