"""The exponential mechanism for quantiles, on its own (gateway.privacy.quantiles).

Neighbouring histograms differ by one unit's weight M placed where it moves the
utilities most; the empirical privacy loss of the chosen bin must stay within ε,
and must exceed it when the utilities are scaled as if the sensitivity were
half of what it is.  A correct mechanism fails with probability < 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.privacy.events import ExponentialEvent, pure_rdp
from gateway.privacy.quantiles import (
    quantile_sensitivity,
    quantile_utilities,
    rank_error95,
    select_quantile_bins,
)
from gateway.privacy.random import SeededRandom
from tests.privacy.dp_check import privacy_loss_lower_bound

DRAWS = 200_000
M = 4.0


def _pair(alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """D: 12 bins whose α-quantile is in the middle; D': D plus one unit of weight M at the
    end that moves the utilities most (the top for α ≥ 1/2: every bin below gains M
    "above", i.e. its utility moves by α·M, down left of the quantile and up right of it)."""
    total = 24.0
    base = np.array([alpha * total / 6] * 6 + [(1 - alpha) * total / 6] * 6)
    other = base.copy()
    other[-1 if alpha >= 0.5 else 0] += M
    return base, other


def _draws(weights: np.ndarray, alpha: float, epsilon: float, sensitivity: float,
           seed: int) -> np.ndarray:
    stacked = np.repeat(weights[None, :], DRAWS, axis=0)
    return select_quantile_bins(stacked, alpha, epsilon, sensitivity, SeededRandom(seed))


def _exact(weights: np.ndarray, alpha: float, epsilon: float) -> np.ndarray:
    """The textbook exponential-mechanism distribution, computed here independently:
    utility -|(1-α)·(weight below) - α·(weight above)|, Δ = max(α, 1-α)·M."""
    u = np.array([-abs((1 - alpha) * weights[:j].sum() - alpha * weights[j + 1:].sum())
                  for j in range(len(weights))])
    p = np.exp(epsilon * u / (2 * max(alpha, 1 - alpha) * M))
    out: np.ndarray = p / p.sum()
    return out


@pytest.mark.parametrize("alpha", [0.5, 0.1, 0.9])
def test_neighbouring_histograms_stay_within_epsilon(alpha: float) -> None:
    """Privacy on a neighbouring pair, and the distribution the proof is about: with the
    utilities scaled as if Δ were half of what it is, the chosen bins follow another
    distribution (total variation far above sampling error) and the check fails."""
    epsilon = 1.0
    d, d_prime = _pair(alpha)
    edges = np.arange(len(d) + 1) - 0.5
    sens = quantile_sensitivity(alpha, M)
    for scale, ok in ((1.0, True), (0.5, False)):
        a = _draws(d, alpha, epsilon, sens * scale, seed=1 + int(scale * 4))
        b = _draws(d_prime, alpha, epsilon, sens * scale, seed=2 + int(scale * 4))
        private = privacy_loss_lower_bound(a, b, edges) <= epsilon
        # Sampling error of a 12-bin histogram of 200k draws: TV ~ 0.003; at 0.02 a
        # correct sampler fails with probability far below 1e-6 (DKW-style bound).
        tv = max(0.5 * np.abs(np.bincount(x, minlength=len(d)) / DRAWS - _exact(w, alpha,
                                                                           epsilon)).sum()
                 for x, w in ((a, d), (b, d_prime)))
        assert bool(private and tv < 0.02) is ok, (alpha, scale, tv)


def test_sensitivity_is_the_larger_side_times_the_weight() -> None:
    assert quantile_sensitivity(0.5, 20) == 10
    assert quantile_sensitivity(0.01, 20) == pytest.approx(19.8)
    with pytest.raises(ValueError):
        quantile_sensitivity(1.5, 20)
    # Adding weight c anywhere moves every utility by at most max(α, 1-α)·c.
    rng = np.random.default_rng(3)
    for _ in range(200):
        w = rng.integers(0, 5, 30).astype(float)
        alpha = float(rng.uniform())
        extra = np.zeros(30)
        extra[rng.integers(0, 30, 3)] += rng.uniform(0, 2, 3)
        moved = np.abs(quantile_utilities(w + extra, alpha) - quantile_utilities(w, alpha))
        assert moved.max() <= quantile_sensitivity(alpha, extra.sum()) + 1e-9


def test_large_epsilon_finds_the_true_quantile() -> None:
    values = np.random.default_rng(0).integers(0, 100, 5000)
    hist = np.bincount(values, minlength=100).astype(float)
    for alpha in (0.1, 0.5, 0.9):
        chosen = select_quantile_bins(hist[None, :], alpha, 1e4, quantile_sensitivity(alpha, 1),
                                      SeededRandom(7))[0]
        assert abs(chosen - np.quantile(values, alpha)) <= 1


def test_rank_error_bound_holds_in_at_least_95_percent_of_draws() -> None:
    hist = np.full(64, 5.0)
    eps, alpha = 0.5, 0.5
    sens = quantile_sensitivity(alpha, 1)
    chosen = _draws(hist, alpha, eps, sens, seed=9)
    u = quantile_utilities(hist, alpha)[0]
    shortfall = u.max() - u[chosen]
    assert np.mean(shortfall <= rank_error95(eps, sens, 64)) >= 0.95


def test_every_bin_can_be_chosen_and_empty_groups_are_uniform() -> None:
    chosen = _draws(np.zeros(8), 0.5, 1.0, 1.0, seed=3)
    counts = np.bincount(chosen, minlength=8)
    assert counts.min() > DRAWS / 8 * 0.95


def test_exponential_event_is_pure_and_tighter_than_generic_pure_dp() -> None:
    e = ExponentialEvent(0.5)
    assert e.delta == 0.0
    generic = [pure_rdp(0.5, a) for a in (2.0, 8.0)]
    assert all(x <= y for x, y in zip(e.rdp(), [pure_rdp(0.5, a) for a in
                                                 (1.25, 1.5)] + generic, strict=False))
    assert max(e.rdp()) <= 0.5 and math.isclose(e.rdp()[0], 1.25 * 0.25 / 8)
