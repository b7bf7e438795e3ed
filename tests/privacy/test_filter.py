"""The admission filter (gateway/privacy/accountant.py: fits): valid when each ε is
chosen after seeing earlier answers.

The statistical test plays an adaptive adversary against the Rényi branch: it
watches the privacy loss of Laplace releases on neighbouring datasets and asks for
a bigger ε whenever the loss runs high, until the filter refuses.  The stopped loss
must exceed ε_B with probability at most δ_R (Ville + union over orders); a rule
that drops the conversion slack (what a non-adaptive accountant would allow)
fails the same check, so the test has the power to see a wrong filter.
"""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest

from gateway.privacy.accountant import FilterBudget, Sums, certified, fits, renyi_epsilon
from gateway.privacy.calibration import analytic_gaussian_sigma
from gateway.privacy.events import (
    ORDERS,
    ApproxDpEvent,
    DiscreteLaplaceEvent,
    GaussianEvent,
    LaplaceEvent,
    SubsampledGaussianEvent,
    pure_rdp,
)

RUNS = 10_000
EPS_B, DELTA_B, SHARE = 1.0, 0.1, 0.999
STEPS = (0.03, 0.2)  # the adversary's choice of ε per release
CURVES = {e: np.asarray(LaplaceEvent(e).rdp()) for e in STEPS}


def _admits(budget: FilterBudget, eps_sum: np.ndarray, rdp_sum: np.ndarray,
            slack: bool = True) -> np.ndarray:
    """``fits`` for many states at once (pure events, so δ plays no part); checked
    against the real function below."""
    basic = eps_sum <= budget.epsilon + 1e-12
    extra = np.log(len(ORDERS) / budget.renyi_delta) / (np.asarray(ORDERS) - 1.0)
    renyi = (rdp_sum + (extra if slack else 0.0)).min(axis=1) <= budget.epsilon
    return basic | renyi if slack else renyi


def _play(budget: FilterBudget, seed: int, slack: bool = True) -> float:
    """Fraction of runs whose stopped privacy loss exceeds ε_B."""
    rng = np.random.default_rng(seed)
    loss = np.zeros(RUNS)
    eps_sum = np.zeros(RUNS)
    rdp_sum = np.zeros((RUNS, len(ORDERS)))
    alive = np.ones(RUNS, dtype=bool)
    for _ in range(2000):
        if not alive.any():
            break
        # Push when ahead: a bigger release when the loss so far is high.
        eps = np.where(loss > 0.3, STEPS[1], STEPS[0])
        curve = np.where((loss > 0.3)[:, None], CURVES[STEPS[1]], CURVES[STEPS[0]])
        ok = alive & _admits(budget, eps_sum + eps, rdp_sum + curve, slack)
        alive &= ok
        eps_sum[ok] += eps[ok]
        rdp_sum[ok] += curve[ok]
        # A Laplace release of a sensitivity-1 value: D has 0, D' has 1; loss under D.
        x = rng.laplace(0.0, 1.0 / eps[ok])
        loss[ok] += eps[ok] * (np.abs(x - 1.0) - np.abs(x))
    return float(np.mean(loss > EPS_B))


def test_the_vectorised_rule_is_the_real_filter() -> None:
    budget = FilterBudget(EPS_B, DELTA_B, SHARE)
    rng = np.random.default_rng(3)
    for _ in range(300):
        counts = rng.integers(0, 40, size=2)
        s = Sums()
        for e, n in zip(STEPS, counts, strict=True):
            for _ in range(int(n)):
                s = s.plus([LaplaceEvent(e)])
        eps_sum = np.asarray([sum(e * n for e, n in zip(STEPS, counts, strict=True))])
        rdp_sum = sum(CURVES[e] * n for e, n in zip(STEPS, counts, strict=True))[None, :]
        assert bool(_admits(budget, eps_sum, rdp_sum)[0]) == fits(s, budget)


def test_stopped_loss_respects_the_filter_under_an_adaptive_adversary() -> None:
    budget = FilterBudget(EPS_B, DELTA_B, SHARE)
    delta_r = budget.renyi_delta
    bound = delta_r + 5 * math.sqrt(delta_r / RUNS)  # false failure < 1e-6 if p <= δ_R
    assert _play(budget, seed=1) <= bound
    # Without the conversion slack (as if a non-adaptive figure were used) the same
    # adversary breaks the guarantee: the test can see a wrong filter.
    assert _play(budget, seed=2, slack=False) > bound


def test_basic_composition_is_exact_and_caps_delta() -> None:
    budget = FilterBudget(0.3, 0.0)
    s = Sums().plus([LaplaceEvent(0.1)]).plus([LaplaceEvent(0.2)])
    assert s.epsilon == Decimal("0.3") and fits(s, budget)  # 0.1 + 0.2 in decimal
    assert not fits(s.plus([LaplaceEvent(0.01)]), budget)
    assert not fits(Sums().plus([ApproxDpEvent(0.01, 1e-9)]), FilterBudget(10.0, 0.0))


def test_the_renyi_share_is_taken_from_the_events_delta() -> None:
    budget = FilterBudget(10.0, 1e-6, 0.5)
    assert fits(Sums().plus([ApproxDpEvent(0.1, 5e-7)]), budget)
    assert not fits(Sums().plus([ApproxDpEvent(0.1, 6e-7)]), budget)
    assert renyi_epsilon(Sums().rdp, 0.0) == math.inf


def test_certified_is_the_smaller_of_the_two_branches() -> None:
    budget = FilterBudget(10.0, 1e-6, 0.5)
    many = Sums()
    for _ in range(200):
        many = many.plus([LaplaceEvent(0.1)])
    eps, delta = certified(many, budget)
    assert eps < 20.0 and delta == pytest.approx(5e-7)
    few = Sums().plus([LaplaceEvent(1.0)])
    assert certified(few, budget) == (1.0, 0.0)


def test_rdp_bounds_of_events() -> None:
    for e in (LaplaceEvent(0.1), LaplaceEvent(2.0), DiscreteLaplaceEvent(0.5, 2),
              ApproxDpEvent(0.3, 1e-6)):
        curve = e.rdp()
        assert len(curve) == len(ORDERS)
        assert all(0 <= r <= pure_rdp(e.epsilon, a) + 1e-12 for r, a in zip(curve, ORDERS,
                                                                              strict=True))
        assert list(curve) == sorted(curve)  # Rényi divergence grows with the order
    sigma = analytic_gaussian_sigma(1.0, 1e-6, 1.0)
    g = GaussianEvent(sigma, 1.0, 1e-6)
    # Converting the Gaussian's Rényi curve back never claims less than (1, 1e-6).
    assert renyi_epsilon(g.rdp(), 1e-6 / len(ORDERS) * len(ORDERS)) >= 1.0
    sgd = SubsampledGaussianEvent(1.0, 0.01, 100, 1.0, 1e-5)
    assert all(r > 0 for r in sgd.rdp())


def test_sums_survive_a_round_trip() -> None:
    s = Sums().plus([LaplaceEvent(0.1), GaussianEvent(5.0, 0.9, 1e-3)], 1.0, 1e-3)
    assert Sums.from_json(s.to_json()) == s
