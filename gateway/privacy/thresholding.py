"""Partition selection by thresholding a noisy count.

Two mechanisms, both (ε, δ)-DP for a privacy unit in up to L0 partitions
(docs/privacy.md, "Partition selection", has the argument in full):

* **Thresholding a released count** (Wilson, Zhang, Lam, Desfontaines,
  Simmons-Marengo & Gipson, "Differentially private SQL with bounded user
  contribution", PoPETs 2020; PipelineDP's post-aggregation thresholding).  The
  query already releases a noisy count per group (of units, or of rows), with the
  noise X its own ε (and δ) pays for.  A group is kept iff its noisy count is
  ≥ τ, where τ is the smallest integer with L0 · P(c_max + X ≥ τ) ≤ δ_thr and
  c_max bounds one unit's contribution to one group's count.  Outside the event
  "one of the added unit's own new groups passes τ" (probability ≤ δ_thr by the
  union bound over its ≤ L0 groups) the output is post-processing of the noisy
  counts of the groups present without it, so the threshold costs (0, δ_thr) on
  top of the count's own event.

* **Gaussian thresholding** (Gopi, Gulhane, Kulkarni, Shen, Shokouhi & Yekhanin,
  "Differentially private set union", ICML 2020; Google's and PipelineDP's
  GAUSSIAN_THRESHOLDING).  A separate noisy unit count per group, Gaussian with σ
  calibrated to the L2 sensitivity √L0 at (ε, δ_1) (analytic Gaussian, Balle &
  Wang 2018), kept iff ≥ τ with L0 · P(1 + N ≥ τ) ≤ δ_2.  Its cost grows with
  √L0 instead of L0, which wins when units touch many groups.

Noise is always integer-valued as the samplers produce it (discrete Laplace,
Laplace or Gaussian rounded to the integers in the statistic's grid units), and
the tails here are those exact distributions: for k ≥ 1

    discrete Laplace, scale b, α = e^(−1/b):  P(X ≥ k) = α^k / (1 + α)
    Laplace(b) rounded to the nearest integer: P(X ≥ k) = ½ e^(−(k − ½)/b)
    N(0, σ²) rounded to the nearest integer:   P(X ≥ k) = Φ(−(k − ½)/σ)

τ is required to satisfy the bound with a relative margin of 1e-9, which covers
the samplers' float error (gateway/privacy/samplers.py: relative ~|k|·2^-50 on an
output's probability; their tail cut-offs only remove mass).  τ is never below
c_max + 1 (a threshold inside the noise's central half would only matter for
δ_thr/L0 ≥ ½).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import special

from gateway.privacy.calibration import analytic_gaussian_sigma
from gateway.privacy.random import RandomSource, default_random
from gateway.privacy.samplers import MAX_GRID_RATIO, rounded_gaussian

__all__ = [
    "NOISE_KINDS",
    "GaussianThreshold",
    "gaussian_threshold",
    "gaussian_threshold_select",
    "noise_tail",
    "select_above_threshold",
    "threshold_delta",
    "threshold_for",
    "units_for_half",
]

NOISE_KINDS = ("discrete_laplace", "laplace", "gaussian")

# τ must meet L0·P(...) ≤ δ·(1 − MARGIN): float error of the tails and the samplers.
MARGIN = 1e-9

# Fractions of the selection's δ given to the Gaussian noise (δ_1); the rest (δ_2)
# bounds the threshold.  A fixed public list, so the choice depends on (ε, δ, L0) only.
SPLITS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7,
          0.75, 0.8, 0.85, 0.9, 0.95)


def _check_kind(kind: str) -> None:
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")


def _check_scale(scale: float) -> float:
    s = float(scale)
    if not math.isfinite(s) or s <= 0.0:
        raise ValueError(f"noise scale must be a finite number > 0, got {scale!r}")
    return s


def _check_l0(max_partitions: int) -> int:
    if isinstance(max_partitions, bool) or not isinstance(max_partitions, int | np.integer) \
            or max_partitions < 1:
        raise ValueError(f"max_partitions must be an integer >= 1, got {max_partitions!r}")
    return int(max_partitions)


def _check_delta(delta: float) -> float:
    d = float(delta)
    if not 0.0 < d < 1.0:
        raise ValueError(
            f"thresholding needs 0 < delta < 1 (got {delta!r}): with delta = 0 no group "
            "without public values could ever be released")
    return d


def noise_tail(kind: str, scale: float, k: int) -> float:
    """P(X ≥ k) for the integer noise X the samplers add (in grid units)."""
    _check_kind(kind)
    b = _check_scale(scale)
    k = int(k)
    if k <= 0:  # symmetric: P(X ≥ k) = 1 − P(X ≥ 1 − k)
        return 1.0 - noise_tail(kind, b, 1 - k)
    if kind == "discrete_laplace":
        log_alpha = -1.0 / b
        return math.exp(k * log_alpha) / (1.0 + math.exp(log_alpha))
    if kind == "laplace":
        return 0.5 * math.exp(-(k - 0.5) / b)
    return float(special.ndtr(-(k - 0.5) / b))


def _first_k(kind: str, scale: float, target: float) -> int:
    """Smallest k ≥ 1 with P(X ≥ k) ≤ target."""
    b = scale
    if kind == "discrete_laplace":
        alpha = math.exp(-1.0 / b)
        guess = math.log(target * (1.0 + alpha)) / (-1.0 / b)
    elif kind == "laplace":
        guess = 0.5 + b * math.log(0.5 / target)
    else:
        guess = 0.5 - b * float(special.ndtri(target))
    k = max(1, math.ceil(guess) if math.isfinite(guess) else 1)
    while k > 1 and noise_tail(kind, b, k - 1) <= target:
        k -= 1
    while noise_tail(kind, b, k) > target:
        k += 1
    return k


def threshold_for(kind: str, scale: float, contribution: int, max_partitions: int,
                  delta: float) -> int:
    """Smallest integer τ ≥ c_max + 1 with L0 · P(c_max + X ≥ τ) ≤ δ (with the margin).

    ``contribution`` is c_max, one unit's largest contribution to one group's count,
    in the count's grid units; ``scale`` is the noise's Laplace b or Gaussian σ in
    the same units."""
    _check_kind(kind)
    b = _check_scale(scale)
    l0 = _check_l0(max_partitions)
    d = _check_delta(delta)
    c = int(contribution)
    if c < 1 or c != contribution:
        raise ValueError(f"contribution must be an integer >= 1, got {contribution!r}")
    return c + _first_k(kind, b, d * (1.0 - MARGIN) / l0)


def threshold_delta(kind: str, scale: float, contribution: int, max_partitions: int,
                    threshold: int) -> float:
    """L0 · P(c_max + X ≥ τ): the δ a threshold really costs (≤ the δ it was set for)."""
    return _check_l0(max_partitions) * noise_tail(kind, scale, int(threshold) -
                                                  int(contribution))


def units_for_half(threshold: int, per_unit: float) -> int:
    """The number n of units, each adding ``per_unit`` to the count (grid units), at which
    a group is kept with probability ≥ ½: the smallest n with n·per_unit ≥ τ.

    Exact for our noise: it is symmetric on the integers with P(X = 0) > 0, so
    P(X ≥ 0) ≥ ½ > P(X ≥ 1), and P(v + X ≥ τ) ≥ ½ iff v ≥ τ (v real: the count
    v + X is compared with the integer τ, and P(X ≥ τ − v) ≥ ½ iff ⌈τ − v⌉ ≤ 0)."""
    if not per_unit > 0:
        raise ValueError(f"per_unit must be > 0, got {per_unit!r}")
    n = max(0, math.ceil(threshold / per_unit - 1e-12))
    while n * per_unit < threshold:
        n += 1
    while n > 0 and (n - 1) * per_unit >= threshold:
        n -= 1
    return n


def select_above_threshold(noisy: np.ndarray, threshold: int) -> np.ndarray:
    """Keep a group iff its noisy count (grid units) is ≥ τ: the whole mechanism of
    thresholding a released count, whose noise the count's own sampler drew."""
    values = np.asarray(noisy, dtype=np.float64)
    return values >= float(threshold)


@dataclass(frozen=True)
class GaussianThreshold:
    """Gaussian thresholding at (ε, δ_1 + δ_2) for units in up to L0 groups."""

    epsilon: float
    delta_noise: float  # δ_1: the Gaussian noise's δ at ε
    delta_threshold: float  # δ_2: the union bound over the unit's own groups
    max_partitions: int
    sigma: float  # of the noisy unit count, in units
    threshold: int

    @property
    def noise_multiplier(self) -> float:
        """σ / Δ2, Δ2 = √L0 (one unit adds 1 to each of at most L0 counts)."""
        return self.sigma / math.sqrt(self.max_partitions)

    @property
    def units_for_half(self) -> int:
        return units_for_half(self.threshold, 1.0)


@lru_cache(maxsize=256)
def gaussian_threshold(epsilon: float, delta: float, max_partitions: int) -> GaussianThreshold:
    """Parameters of Gaussian thresholding at (ε, δ) in all: δ = δ_1 + δ_2, with the
    split (from the fixed list SPLITS) that gives the smallest τ (ties: the smaller
    δ_1).  σ is the analytic Gaussian for L2 sensitivity √L0 at (ε, δ_1); τ is the
    smallest integer with L0 · P(1 + round(N(0, σ²)) ≥ τ) ≤ δ_2."""
    eps = float(epsilon)
    if not math.isfinite(eps) or eps <= 0.0:
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    d = _check_delta(delta)
    l0 = _check_l0(max_partitions)
    best: GaussianThreshold | None = None
    for f in SPLITS:
        d1 = d * f
        d2 = d - d1
        sigma = analytic_gaussian_sigma(eps, d1, math.sqrt(l0))
        if sigma > MAX_GRID_RATIO:
            continue
        tau = threshold_for("gaussian", sigma, 1, l0, d2)
        if best is None or tau < best.threshold:
            best = GaussianThreshold(eps, d1, d2, l0, sigma, tau)
    if best is None:
        raise ValueError(f"epsilon={eps:g} is too small for Gaussian thresholding with "
                         f"{l0} groups per unit")
    return best


def gaussian_threshold_select(unit_counts: np.ndarray, sigma: float, threshold: int,
                              rng: RandomSource | None = None) -> np.ndarray:
    """Keep each group iff its unit count plus rounded N(0, σ²) noise is ≥ τ.

    ``unit_counts`` are the distinct units per group after each unit was limited to
    L0 groups; the noisy counts are not released, only the decision."""
    counts = np.asarray(unit_counts)
    if counts.size and (not np.issubdtype(counts.dtype, np.integer)):
        if not np.all(np.isfinite(counts)) or not np.all(counts == np.floor(counts)):
            raise ValueError("unit_counts must be non-negative integers")
        counts = counts.astype(np.int64)
    if counts.size and counts.min() < 0:
        raise ValueError("unit_counts must be non-negative integers")
    noise = rounded_gaussian(sigma, 1.0, int(counts.size),
                             rng if rng is not None else default_random())
    return (counts.astype(np.int64) + noise) >= int(threshold)
