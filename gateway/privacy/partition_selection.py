"""Differentially private selection of GROUP BY keys that have no public list.

Releasing a group key reveals that at least one privacy unit has it, so keys
without public values must themselves be chosen with DP.  We use the optimal
mechanism of Desfontaines, Voss, Gipson & Mandayam, "Differentially private
partition selection", PoPETs 2022 (arXiv:2006.03684), Section 3: a partition
with n distinct privacy units is kept with probability π_n, where π_0 = 0 and

    π_n = min( e^ε π_{n−1} + δ,  1 + e^{−ε} (π_{n−1} + δ − 1),  1 ).

Each step takes the largest probability allowed by the two (ε, δ)-DP
constraints between neighbours n−1 and n:
    π_n ≤ e^ε π_{n−1} + δ              (keeping is not much likelier with one unit more)
    1 − π_{n−1} ≤ e^ε (1 − π_n) + δ    (dropping is not much likelier with one unit less)
and the reverse constraints hold because π is non-decreasing.  Since δ > 0 the
sequence reaches 1 after finitely many steps N: partitions with ≥ N units are
always kept.  δ = 0 would force π ≡ 0, hence the requirement δ > 0.

Float precision: probabilities near 1 are stored (and compared with a
uniform) to ~2^-53, and the drop constraint multiplies that error by e^ε, so
the guarantee carries an extra δ of at most ~e^ε·2^-50 per partition:
< 1e-11 for ε ≤ 5 and < 1e-6 even for ε = 20.

When a unit may touch up to L0 = ``max_partitions`` partitions, removing it
changes up to L0 of these independent coin flips; the paper (Section 5)
handles this by running the mechanism with ε/L0 and δ/L0 and composing, which
is what we do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from gateway.privacy.random import RandomSource, default_random
from gateway.privacy.samplers import bernoulli

__all__ = [
    "MAX_TABLE_SIZE",
    "keep_probabilities",
    "min_units",
    "select_partitions",
    "threshold_summary",
]

# π is tabulated up to the count N where it reaches 1.  N ≈ 2 ln(ε/2δ)/ε, so
# only absurdly small per-partition ε hit this cap.
MAX_TABLE_SIZE = 50_000_000


def _check(epsilon: float, delta: float, max_partitions: int) -> tuple[float, float, int]:
    try:
        eps = float(epsilon)
        dlt = float(delta)
    except (TypeError, ValueError):
        raise ValueError("epsilon and delta must be numbers") from None
    if not math.isfinite(eps) or eps <= 0.0:
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    if not dlt > 0.0:
        raise ValueError(
            f"partition selection needs delta > 0 (got {delta!r}): with delta = 0 no "
            "key without public values could ever be released"
        )
    if not dlt < 1.0:
        raise ValueError(f"delta must be < 1, got {delta!r}")
    if (
        isinstance(max_partitions, bool)
        or not isinstance(max_partitions, int | np.integer)
        or max_partitions < 1
    ):
        raise ValueError(f"max_partitions must be an integer >= 1, got {max_partitions!r}")
    return eps, dlt, int(max_partitions)


@dataclass(frozen=True)
class _Phases:
    """The keep curve π_0..π_N in closed form (see :func:`_table`)."""

    eps: float
    dlt: float
    n_a: int  # first n with π_n ≥ p* (end of the growth phase)
    q_a: float  # 1 − π_{n_a}
    c: float  # δ / (e^ε − 1)
    steps: int  # saturation steps before the jump to 1

    @property
    def length(self) -> int:
        """Entries of the table before it is cut at its first 1.0 (an upper bound)."""
        return self.n_a + self.steps + 2

    def grow(self, n: np.ndarray | float) -> np.ndarray | float:
        return self.dlt * np.expm1(np.asarray(n) * self.eps) / math.expm1(self.eps)


@lru_cache(maxsize=256)
def _phases(eps: float, dlt: float) -> _Phases:
    em1 = math.expm1(eps)
    p_star = (1.0 - dlt) / (math.exp(eps) + 1.0)
    # Growth phase: n = 0..n_a where n_a is the first n with π_n ≥ p*.
    n_a = max(1, math.ceil(math.log1p(p_star * em1 / dlt) / eps))
    while n_a > 1 and dlt * math.expm1((n_a - 1) * eps) / em1 >= p_star:
        n_a -= 1
    while dlt * math.expm1(n_a * eps) / em1 < p_star:
        n_a += 1
    if n_a + 1 > MAX_TABLE_SIZE:
        raise ValueError(
            f"epsilon={eps:g}, delta={dlt:g} per partition is too small: a partition would need "
            f"more than {MAX_TABLE_SIZE} privacy units to be kept"
        )
    # Saturation phase from n_a: q_{n_a + j} = (q_a + c) e^{−jε} − c.  The
    # recursion jumps to π = 1 at the first step where q_{n−1} ≤ δ; comparing
    # with a 1e-12 relative tolerance absorbs float noise at exact ties (its
    # cost is an extra δ·1e-12 at most).
    q_a = 1.0 - dlt * math.expm1(n_a * eps) / em1
    c = dlt / em1
    stop = dlt * (1.0 + 1e-12)
    steps = 0
    if q_a > stop:
        steps = max(0, math.floor(math.log((q_a + c) / (stop + c)) / eps) - 1)
        while steps > 0 and (q_a + c) * math.exp(-steps * eps) - c <= stop:
            steps -= 1
        while (q_a + c) * math.exp(-steps * eps) - c > stop:
            steps += 1
        # now q_{steps} <= stop < q_{steps - 1}
    if n_a + steps + 2 > MAX_TABLE_SIZE:
        raise ValueError(
            f"epsilon={eps:g}, delta={dlt:g} per partition is too small for partition selection"
        )
    return _Phases(eps, dlt, n_a, q_a, c, steps)


@lru_cache(maxsize=64)
def _table(eps: float, dlt: float) -> np.ndarray:
    """π_0..π_N for one partition at (ε, δ), vectorised phase by phase.

    The recursion has two regimes (the crossover is where both terms of the min
    are equal, at π_{n−1} = p* = (1 − δ)/(e^ε + 1)):
      * growth, π_{n−1} < p*: π_n = e^ε π_{n−1} + δ, so π_n = δ (e^{nε} − 1)/(e^ε − 1);
      * saturation: q_n = 1 − π_n satisfies q_n = e^{−ε}(q_{n−1} − δ), i.e.
        q_n + c = e^{−ε}(q_{n−1} + c) with c = δ/(e^ε − 1), until q_n ≤ 0.
    Closed forms make tables with 10^6 entries cheap; tests check them against
    the plain recursion and the DP inequalities.
    """
    ph = _phases(eps, dlt)
    grow = np.asarray(ph.grow(np.arange(ph.n_a + 1)), dtype=np.float64)
    j = np.arange(1, ph.steps + 1)
    q = (ph.q_a + ph.c) * np.exp(-j * eps) - ph.c
    table = np.concatenate([grow, 1.0 - q, [1.0]])
    np.clip(table, 0.0, 1.0, out=table)
    np.maximum.accumulate(table, out=table)  # guard against float wobble
    table[0] = 0.0
    # Large ε can round 1 − q to exactly 1.0 before the recursion formally
    # saturates; the table ends at the first 1.0 either way.
    table = table[: int(np.argmax(table >= 1.0)) + 1].copy()
    table.setflags(write=False)
    return table


def min_units(epsilon: float, delta: float, max_partitions: int = 1,
              probability: float = 0.5) -> int:
    """The smallest unit count n with π_n ≥ ``probability``, without building the table
    (equal to ``argmax(keep_probabilities(...) >= probability)``; tests check it)."""
    eps, dlt, l0 = _check(epsilon, delta, max_partitions)
    p = float(probability)
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability!r}")
    ph = _phases(eps / l0, dlt / l0)
    e = ph.eps
    grow_end = float(ph.grow(ph.n_a))
    if grow_end >= p:  # reached in the growth phase
        n = max(1, math.ceil(math.log1p(p * math.expm1(e) / ph.dlt) / e))
        while n > 1 and float(ph.grow(n - 1)) >= p:
            n -= 1
        while float(ph.grow(n)) < p:
            n += 1
        return n

    def pi(j: int) -> float:
        return 1.0 - ((ph.q_a + ph.c) * math.exp(-j * e) - ph.c)

    if ph.steps == 0 or pi(ph.steps) < p:
        return ph.n_a + ph.steps + 1  # only the final 1.0 reaches p
    j = min(ph.steps, max(1, math.floor(math.log((ph.q_a + ph.c) / (1.0 - p + ph.c)) / e)))
    while j > 1 and pi(j - 1) >= p:
        j -= 1
    while pi(j) < p:
        j += 1
    return ph.n_a + j


def keep_probabilities(epsilon: float, delta: float, max_partitions: int = 1) -> np.ndarray:
    """π_0..π_N: probability of keeping a partition with n privacy units (π_N = 1).

    With ``max_partitions`` = L0 > 1 the table is the one for ε/L0, δ/L0.
    The returned array is read-only (it is cached).
    """
    eps, dlt, l0 = _check(epsilon, delta, max_partitions)
    return _table(eps / l0, dlt / l0)


def select_partitions(
    unit_counts: np.ndarray,
    epsilon: float,
    delta: float,
    max_partitions: int = 1,
    rng: RandomSource | None = None,
) -> np.ndarray:
    """Decide which partitions to release given their distinct-unit counts.

    ``unit_counts[i]`` must be the number of distinct privacy units in partition
    i *after* contribution bounding (each unit in at most ``max_partitions``
    partitions).  Counts ≥ N are kept with probability 1.
    """
    table = keep_probabilities(epsilon, delta, max_partitions)
    counts = np.asarray(unit_counts)
    if counts.size and not np.issubdtype(counts.dtype, np.integer):
        if not np.all(np.isfinite(counts)) or not np.all(counts == np.floor(counts)):
            raise ValueError("unit_counts must be non-negative integers")
        counts = counts.astype(np.int64)
    if counts.size and counts.min() < 0:
        raise ValueError("unit_counts must be non-negative integers")
    idx = np.minimum(counts, len(table) - 1).astype(np.intp, copy=False)
    return bernoulli(table[idx], rng if rng is not None else default_random())


def threshold_summary(epsilon: float, delta: float, max_partitions: int = 1) -> dict[str, float]:
    """Public facts about the keep curve, for ``explain`` output.

    Keys: per-partition ε and δ, the probability a single-unit partition is
    kept, and the smallest unit counts kept with probability ≥ 50%, ≥ 99% and
    with certainty.
    """
    eps, dlt, l0 = _check(epsilon, delta, max_partitions)
    table = _table(eps / l0, dlt / l0)
    return {
        "epsilon_per_partition": eps / l0,
        "delta_per_partition": dlt / l0,
        "max_partitions": l0,
        "keep_probability_1_unit": float(table[1]),
        "min_units_50pct": int(np.argmax(table >= 0.5)),
        "min_units_99pct": int(np.argmax(table >= 0.99)),
        "min_units_always": len(table) - 1,
    }
