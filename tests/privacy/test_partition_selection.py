"""The optimal partition-selection keep curve (Desfontaines et al., PoPETs 2022)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.privacy.partition_selection import (
    keep_probabilities,
    select_partitions,
    threshold_summary,
)
from gateway.privacy.random import SeededRandom

PARAMS = [
    (eps, delta)
    for eps in (1e-3, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 20.0)
    for delta in (1e-12, 1e-9, 1e-6, 1e-3, 0.1, 0.5)
]


def _recursion(epsilon: float, delta: float) -> np.ndarray:
    """The paper's recursion, step by step, as the reference."""
    pi = [0.0]
    while pi[-1] < 1.0:
        prev = pi[-1]
        pi.append(
            min(
                math.exp(epsilon) * prev + delta,
                1 + math.exp(-epsilon) * (prev + delta - 1),
                1.0,
            )
        )
    return np.array(pi)


@pytest.mark.parametrize(("epsilon", "delta"), PARAMS)
def test_table_matches_the_recursion(epsilon: float, delta: float) -> None:
    table = keep_probabilities(epsilon, delta)
    ref = _recursion(epsilon, delta)
    assert len(table) == len(ref)
    np.testing.assert_allclose(table, ref, rtol=1e-9, atol=1e-13)
    assert table[0] == 0.0 and table[-1] == 1.0
    assert np.all(np.diff(table) >= 0)


@pytest.mark.parametrize(("epsilon", "delta"), PARAMS)
def test_table_satisfies_the_dp_inequalities(epsilon: float, delta: float) -> None:
    """For neighbours n−1 and n, both outcomes (keep, drop) in both directions."""
    pi = keep_probabilities(epsilon, delta)
    prev, cur = pi[:-1], pi[1:]
    e = math.exp(epsilon)
    # Float rounding of the table: π near 1 is stored to ~2^-53, and the drop
    # constraint multiplies that by e^ε (documented in the module).
    slack = 1e-12 * (1 + delta) + e * 2.0**-50
    assert np.all(cur <= e * prev + delta + slack)
    assert np.all(1 - prev <= e * (1 - cur) + delta + slack)
    assert np.all(prev <= e * cur + delta + slack)
    assert np.all(1 - cur <= e * (1 - prev) + delta + slack)


@pytest.mark.parametrize(("epsilon", "delta"), [(0.1, 1e-6), (1.0, 1e-5), (0.5, 0.01)])
def test_table_is_optimal(epsilon: float, delta: float) -> None:
    """Every π_n is the largest value the two forward constraints allow."""
    pi = keep_probabilities(epsilon, delta)
    e = math.exp(epsilon)
    allowed = np.minimum.reduce(
        [e * pi[:-1] + delta, 1 - (1 - pi[:-1] - delta) / e, np.ones(len(pi) - 1)]
    )
    np.testing.assert_allclose(pi[1:], allowed, rtol=1e-9, atol=1e-15)


def test_max_partitions_splits_the_budget() -> None:
    np.testing.assert_array_equal(
        keep_probabilities(1.0, 1e-6, 4), keep_probabilities(0.25, 2.5e-7)
    )


def test_select_partitions() -> None:
    table = keep_probabilities(1.0, 1e-3)
    n_always = len(table) - 1
    counts = np.array([0, 0, n_always, n_always + 1, 10**9] * 1000)
    kept = select_partitions(counts, 1.0, 1e-3, rng=SeededRandom(1))
    assert kept.dtype == bool and kept.shape == counts.shape
    assert not kept[counts == 0].any()
    assert kept[counts >= n_always].all()
    mid = int(np.argmax(table >= 0.5))
    frac = select_partitions(np.full(100_000, mid), 1.0, 1e-3, rng=SeededRandom(2)).mean()
    assert abs(frac - table[mid]) < 6 * math.sqrt(0.25 / 100_000)
    assert select_partitions(np.array([], dtype=np.int64), 1.0, 1e-3).shape == (0,)


def test_threshold_summary() -> None:
    s = threshold_summary(1.0, 1e-5, 2)
    table = keep_probabilities(0.5, 5e-6)
    assert s["epsilon_per_partition"] == 0.5 and s["delta_per_partition"] == 5e-6
    n50, n99 = int(s["min_units_50pct"]), int(s["min_units_99pct"])
    assert table[n50] >= 0.5 > table[n50 - 1]
    assert table[n99] >= 0.99 > table[n99 - 1]
    assert s["min_units_always"] == len(table) - 1
    assert s["keep_probability_1_unit"] == pytest.approx(5e-6)


def test_delta_zero_is_rejected_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="partition selection needs delta > 0"):
        keep_probabilities(1.0, 0.0)
    with pytest.raises(ValueError, match="partition selection needs delta > 0"):
        select_partitions(np.array([3]), 1.0, 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": 0.0, "delta": 1e-6},
        {"epsilon": math.inf, "delta": 1e-6},
        {"epsilon": 1.0, "delta": 1.0},
        {"epsilon": 1.0, "delta": math.nan},
        {"epsilon": 1.0, "delta": 1e-6, "max_partitions": 0},
        {"epsilon": 1.0, "delta": 1e-6, "max_partitions": 1.5},
        {"epsilon": 1e-9, "delta": 1e-12},  # table would be absurdly long
    ],
)
def test_bad_parameters_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        keep_probabilities(**kwargs)


def test_bad_counts_rejected() -> None:
    with pytest.raises(ValueError):
        select_partitions(np.array([1, -1]), 1.0, 1e-6)
    with pytest.raises(ValueError):
        select_partitions(np.array([1.5]), 1.0, 1e-6)
