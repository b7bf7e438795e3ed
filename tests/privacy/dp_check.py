"""Statistical privacy checks on samples from neighbouring datasets.

Both checks turn histogram counts into Clopper-Pearson confidence intervals
(exact binomial, Clopper & Pearson 1934) that hold *simultaneously* for all
bins of both samples with probability ≥ 1 − ``false_failure`` (Bonferroni over
2·bins intervals).  On that event:

* pure ε-DP implies lower(P[bin]) ≤ p ≤ e^ε q ≤ e^ε upper(Q[bin]) for every bin,
  so :func:`privacy_loss_lower_bound` ≤ ε;
* (ε, δ)-DP implies Σ_bins max(0, p − e^ε q) ≤ δ (the hockey-stick divergence
  can only shrink under binning, a post-processing), and
  :func:`hockey_stick_lower_bound` never exceeds that sum.

So a correct mechanism fails a check with probability < ``false_failure``
(1e-6 by default).  The slack ε + log(p̂/lower) + log(upper/q̂) is implicit in
the intervals rather than a hand-picked constant.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

FALSE_FAILURE = 1e-6


def clopper_pearson(k: np.ndarray, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided exact binomial interval for each count in ``k`` at level 1 − alpha."""
    k = np.asarray(k, dtype=np.float64)
    lo = np.where(k > 0, stats.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
    hi = np.where(k < n, stats.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return lo, hi


def _intervals(
    a: np.ndarray, b: np.ndarray, edges: np.ndarray, false_failure: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ca, _ = np.histogram(a, bins=edges)
    cb, _ = np.histogram(b, bins=edges)
    assert ca.sum() == a.size and cb.sum() == b.size, "bins must cover all outputs"
    alpha = false_failure / (2 * len(ca))
    lo_a, hi_a = clopper_pearson(ca, a.size, alpha)
    lo_b, hi_b = clopper_pearson(cb, b.size, alpha)
    return lo_a, hi_a, lo_b, hi_b


def privacy_loss_lower_bound(
    a: np.ndarray, b: np.ndarray, edges: np.ndarray, false_failure: float = FALSE_FAILURE
) -> float:
    """A lower confidence bound on max over bins of |log P(bin)/Q(bin)|."""
    lo_a, hi_a, lo_b, hi_b = _intervals(a, b, edges, false_failure)
    with np.errstate(divide="ignore"):
        forward = np.log(lo_a) - np.log(hi_b)
        backward = np.log(lo_b) - np.log(hi_a)
    return float(max(forward.max(), backward.max()))


def hockey_stick_lower_bound(
    a: np.ndarray,
    b: np.ndarray,
    edges: np.ndarray,
    epsilon: float,
    false_failure: float = FALSE_FAILURE,
) -> float:
    """A lower confidence bound on the binned δ(ε), the max of both directions."""
    lo_a, hi_a, lo_b, hi_b = _intervals(a, b, edges, false_failure)
    e = np.exp(epsilon)
    forward = np.maximum(0.0, lo_a - e * hi_b).sum()
    backward = np.maximum(0.0, lo_b - e * hi_a).sum()
    return float(max(forward, backward))


def edges_with_tails(inner: np.ndarray) -> np.ndarray:
    """Bin edges ``inner`` plus two open-ended tail bins."""
    return np.concatenate([[-np.inf], np.asarray(inner, dtype=np.float64), [np.inf]])
