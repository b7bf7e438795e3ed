"""Accountant: basic vs PLD composition, grouping, caching, budget checks."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.privacy.accountant import Accountant, BudgetCheck, epsilon_for_delta
from gateway.privacy.calibration import analytic_gaussian_sigma
from gateway.privacy.events import (
    ApproxDpEvent,
    DiscreteLaplaceEvent,
    GaussianEvent,
    LaplaceEvent,
    PrivacyEvent,
    SubsampledGaussianEvent,
)

SIGMA = analytic_gaussian_sigma(0.3, 1e-7, 1.0)
MIXED: list[PrivacyEvent] = [
    LaplaceEvent(0.1),
    LaplaceEvent(0.05),
    DiscreteLaplaceEvent(0.2, 2),
    GaussianEvent(SIGMA, 0.3, 1e-7),
    ApproxDpEvent(0.1, 1e-9),
    SubsampledGaussianEvent(1.5, 0.02, 200, 0.8, 1e-7),
]


def test_330_laplace_releases_fit_in_epsilon_10() -> None:
    acc = Accountant([LaplaceEvent(0.1)] * 330)
    assert acc.basic() == (Decimal("33.0"), Decimal("0.0"))
    eps, delta = acc.spent(1e-6)
    assert 9.4 < eps < 9.6 and delta == 1e-6
    check = acc.check([LaplaceEvent(0.1)], 10.0, 1e-6)
    assert check.fits and check.method == "pld"
    assert not acc.fits([LaplaceEvent(0.1)] * 100, 10.0, 1e-6)


def test_pure_epsilon_budget_uses_exact_basic_composition() -> None:
    acc = Accountant([LaplaceEvent(0.1), LaplaceEvent(0.2)])
    check = acc.check([], 0.3, 0.0)
    # 0.1 + 0.2 > 0.3 in float, but the ledger's arithmetic is exact.
    assert check.fits and check.method == "basic" and check.pld_epsilon is None
    assert check.basic_epsilon == Decimal("0.3")
    assert acc.spent(0.0) == (0.3, 0.0)
    assert not acc.fits([LaplaceEvent(0.01)], 0.3, 0.0)
    # Any δ > 0 event cannot fit a pure-ε budget.
    assert not acc.fits([ApproxDpEvent(0.01, 1e-9)], 10.0, 0.0)


def test_basic_wins_when_tighter() -> None:
    # ε = 0.0015 sits between PLD grid points (1e-3): the pessimistic PLD says 0.002.
    acc = Accountant([ApproxDpEvent(0.0015)])
    check = acc.check([], 5.0, 1e-6)
    assert check.pld_epsilon is not None and check.pld_epsilon > 0.0015
    assert check.method == "basic" and check.epsilon == 0.0015 and check.delta == 0.0


def test_approx_events_exceeding_delta_budget() -> None:
    acc = Accountant([ApproxDpEvent(0.5, 1e-6)] * 3)
    check = acc.check([], 10.0, 1e-6)  # Σδ = 3e-6 > 1e-6 and PLD is infinite
    assert not check.fits and check.method == "basic" and check.pld_epsilon == math.inf
    assert acc.spent(1e-6) == (1.5, 3e-6)
    check = acc.check([], 10.0, 1e-5)
    assert check.fits and check.epsilon <= 1.5


def test_grouping_equals_one_by_one_composition() -> None:
    events = [MIXED[i % len(MIXED)] for i in range(40)]
    grouped = Accountant(events)
    one_by_one = Accountant()
    for e in events:
        one_by_one.add(e)
    assert len(grouped) == len(one_by_one) == 40
    assert grouped.counts == one_by_one.counts
    assert grouped.basic() == one_by_one.basic()
    for delta in (1e-7, 1e-5, 1e-3):
        assert grouped.pld_epsilon(delta) == pytest.approx(one_by_one.pld_epsilon(delta), abs=1e-6)


def test_check_then_add_reuses_the_composition() -> None:
    acc = Accountant(MIXED * 5)
    new = [LaplaceEvent(0.3), GaussianEvent(SIGMA, 0.3, 1e-7)]
    check = acc.check(new, 50.0, 1e-5)
    fresh = Accountant(MIXED * 5 + new)
    acc.add(new)
    assert acc.spent(1e-5) == pytest.approx((check.epsilon, check.delta))
    assert acc.pld_epsilon(1e-5) == pytest.approx(fresh.pld_epsilon(1e-5), abs=1e-9)


def test_check_accepts_ledger_basic_totals() -> None:
    acc = Accountant([LaplaceEvent(0.5)] * 2)
    check = acc.check([LaplaceEvent(0.5)], 2.0, 0.0, basic_spent=(Decimal("1.6"), Decimal(0)))
    assert check.basic_epsilon == Decimal("2.1") and not check.fits


def test_empty_accountant() -> None:
    acc = Accountant()
    assert acc.spent(1e-6) == (0.0, 0.0)
    assert acc.pld_epsilon(1e-6) == 0.0
    assert len(acc) == 0


def test_bad_arguments_rejected() -> None:
    with pytest.raises(ValueError):
        Accountant(value_discretization_interval=0.0)
    with pytest.raises(ValueError):
        Accountant(["not an event"])  # type: ignore[list-item]
    acc = Accountant()
    with pytest.raises(ValueError):
        acc.check([], -1.0, 1e-6)
    with pytest.raises(ValueError):
        acc.check([], 1.0, 1.0)
    with pytest.raises(ValueError):
        acc.pld_epsilon(-0.1)


@given(
    st.lists(st.sampled_from(MIXED), min_size=1, max_size=25),
    st.sampled_from([0.0, 1e-8, 1e-6, 1e-4]),
)
@settings(max_examples=25, deadline=None)
def test_reported_spend_is_never_above_basic(events: list[PrivacyEvent], delta: float) -> None:
    acc = Accountant(events)
    basic_eps, basic_delta = acc.basic()
    check = acc.check([], math.inf, delta)
    assert isinstance(check, BudgetCheck)
    if basic_delta <= Decimal(repr(delta)):
        assert check.epsilon <= float(basic_eps)
    assert check.delta <= max(delta, float(basic_delta))
    if check.method == "pld":
        assert check.epsilon == check.pld_epsilon and check.delta == delta


@pytest.mark.parametrize("delta", [1e-12, 1e-9, 1e-6, 1e-3, 0.1, 0.6])
def test_vectorised_epsilon_matches_dp_accounting(delta: float) -> None:
    plds = [
        Accountant(MIXED * 30)._composed,
        pld_lib.from_laplace_mechanism(2.0, value_discretization_interval=1e-3).self_compose(50),
        LaplaceEvent(1.0).to_pld(1e-3),
        ApproxDpEvent(0.3, 1e-4).to_pld(1e-3),
    ]
    for pld in plds:
        assert pld is not None
        ours = epsilon_for_delta(pld, delta)
        theirs = pld.get_epsilon_for_delta(delta)
        assert ours == theirs or abs(ours - theirs) <= 1e-9 * max(1.0, theirs)
