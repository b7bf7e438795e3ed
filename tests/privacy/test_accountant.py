"""Accountant: the PLD composition reported beside the filter (grouping, caching,
the vectorised ε(δ)), never above basic composition where basic is valid."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.privacy.accountant import Accountant, epsilon_for_delta
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


def test_330_laplace_releases_compose_to_under_10_non_adaptively() -> None:
    acc = Accountant([LaplaceEvent(0.1)] * 330)
    assert acc.basic() == (Decimal("33.0"), Decimal("0.0"))
    assert 9.4 < acc.pld_epsilon(1e-6) < 9.6


def test_pld_is_pessimistic_between_grid_points() -> None:
    # ε = 0.0015 sits between PLD grid points (1e-3): the pessimistic PLD says 0.002.
    assert Accountant([ApproxDpEvent(0.0015)]).pld_epsilon(1e-6) > 0.0015


def test_approx_events_exceeding_delta() -> None:
    acc = Accountant([ApproxDpEvent(0.5, 1e-6)] * 3)
    assert acc.pld_epsilon(1e-6) == math.inf  # Σδ = 3e-6 > 1e-6
    assert acc.pld_epsilon(1e-5) <= 1.5 + 1e-9


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


def test_pld_with_new_events_then_add_reuses_the_composition() -> None:
    acc = Accountant(MIXED * 5)
    new = [LaplaceEvent(0.3), GaussianEvent(SIGMA, 0.3, 1e-7)]
    with_new = acc.pld_epsilon(1e-5, new)
    fresh = Accountant(MIXED * 5 + new)
    acc.add(new)
    assert acc.pld_epsilon(1e-5) == pytest.approx(with_new, abs=1e-9)
    assert acc.pld_epsilon(1e-5) == pytest.approx(fresh.pld_epsilon(1e-5), abs=1e-9)


def test_empty_accountant() -> None:
    acc = Accountant()
    assert acc.basic() == (Decimal(0), Decimal(0))
    assert acc.pld_epsilon(1e-6) == 0.0
    assert len(acc) == 0


def test_bad_arguments_rejected() -> None:
    with pytest.raises(ValueError):
        Accountant(value_discretization_interval=0.0)
    with pytest.raises(ValueError):
        Accountant(["not an event"])  # type: ignore[list-item]
    acc = Accountant()
    with pytest.raises(ValueError):
        acc.pld_epsilon(1.0)
    with pytest.raises(ValueError):
        acc.pld_epsilon(-0.1)


@given(
    # Not the DP-SGD event: its nominal ε above is made up (it is not checked against σ).
    st.lists(st.sampled_from(MIXED[:-1]), min_size=1, max_size=25),
    st.sampled_from([1e-8, 1e-6, 1e-4]),
)
@settings(max_examples=25, deadline=None)
def test_pld_is_never_far_above_basic(events: list[PrivacyEvent], delta: float) -> None:
    """Where basic composition is valid at this δ, the PLD figure does not exceed it by
    more than its discretisation (it is a tighter bound of the same quantity)."""
    acc = Accountant(events)
    basic_eps, basic_delta = acc.basic()
    if basic_delta <= Decimal(repr(delta)):
        assert acc.pld_epsilon(delta) <= float(basic_eps) + 1e-3 * len(events)


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
