"""DP quantiles: the exponential mechanism over the bins of a bounded histogram.

The engine reduces a column to a histogram over ``B`` public bins of its
declared bounds, each privacy unit's weights scaled so that together they are at
most ``M`` (the contribution bound).  For a rank ``α`` in [0, 1] every bin ``j``
gets the utility

    u_j = -| (1 - α) · below_j - α · above_j |

where ``below_j`` / ``above_j`` are the weights in the bins strictly below /
above ``j``: the bin holding the α-quantile has utility near 0, and the
utility falls by one per unit of weight between a bin and that quantile.  This
is the score of Smith (2011) and of OpenDP's discrete quantile (there over
candidate points rather than bins).  Adding or removing a unit whose weights
total ``c`` moves ``below_j`` by some ``b <= c`` and ``above_j`` by at most
``c - b``, so every utility moves by at most ``max(α, 1-α) · c``: the
sensitivity is ``Δ = max(α, 1-α) · M``.  Choosing ``j`` with probability
proportional to ``exp(ε u_j / (2Δ))`` is ε-DP (McSherry & Talwar 2007); a
unit split over several groups with weights ``c_g`` (Σ c_g ≤ M) loses at most
``ε c_g / M`` in each, ε in all, so all groups share one ε.

The exponential mechanism is also ε-bounded-range, hence (ε²/8)-zCDP (Cesar &
Rogers 2021), which the Rényi filter uses (:class:`ExponentialEvent`).

With probability 0.95 the chosen bin's utility is within
``(2Δ/ε) · ln(B / 0.05)`` of the best (McSherry & Talwar, Thm 8): the rank error
the accuracy report states.  It depends on ε, M and B only, never on data.
"""

from __future__ import annotations

import math

import numpy as np

from gateway.privacy.random import RandomSource, default_random, uniform_open

__all__ = ["quantile_sensitivity", "quantile_utilities", "rank_error95", "select_quantile_bins"]


def quantile_sensitivity(alpha: float, max_weight: float) -> float:
    """Δ of the utilities for rank ``alpha`` when one unit weighs at most ``max_weight``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"a quantile rank must be in [0, 1], got {alpha!r}")
    if not max_weight > 0:
        raise ValueError(f"max_weight must be > 0, got {max_weight!r}")
    return max(alpha, 1.0 - alpha) * float(max_weight)


def quantile_utilities(weights: np.ndarray, alpha: float) -> np.ndarray:
    """Utility of every bin, per row of ``weights`` (groups × bins, non-negative)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = w[None, :]
    below = np.cumsum(w, axis=1) - w
    above = w.sum(axis=1, keepdims=True) - below - w
    out: np.ndarray = -np.abs((1.0 - alpha) * below - alpha * above)
    return out


def select_quantile_bins(weights: np.ndarray, alpha: float, epsilon: float,
                         sensitivity: float, rng: RandomSource | None = None) -> np.ndarray:
    """One bin index per row of ``weights``, by the exponential mechanism at ``epsilon``.

    Sampling is by inverse CDF: the weights exp(ε(u_j - max u)/(2Δ)) are summed and one
    secure 64-bit uniform per group picks a bin, so bins whose probability underflows
    to 0 (more than ~745 scale units below the best) are never chosen.
    """
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon!r}")
    if not (sensitivity > 0 and math.isfinite(sensitivity)):
        raise ValueError(f"sensitivity must be finite and > 0, got {sensitivity!r}")
    rng = rng if rng is not None else default_random()
    u = quantile_utilities(weights, alpha)
    logits = u * (epsilon / (2.0 * sensitivity))
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    cdf = np.cumsum(p, axis=1)
    draw = uniform_open(rng, cdf.shape[0]) * cdf[:, -1]
    chosen = (cdf < draw[:, None]).sum(axis=1)
    out: np.ndarray = np.minimum(chosen, cdf.shape[1] - 1)
    return out


def rank_error95(epsilon: float, sensitivity: float, bins: int) -> float:
    """Weight (≈ rows) by which the chosen bin's utility may fall short of the best,
    with probability 0.95: (2Δ/ε)·ln(B/0.05)."""
    return 2.0 * sensitivity / epsilon * math.log(max(bins, 1) / 0.05)
