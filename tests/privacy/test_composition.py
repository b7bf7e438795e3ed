"""Advanced composition from running sums (the ledger's O(1) middle tier)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.privacy.accountant import Accountant
from gateway.privacy.composition import Moments, advanced_epsilon
from gateway.privacy.events import LaplaceEvent


def test_matches_the_homogeneous_formula() -> None:
    # k-fold composition of eps: k·eps·tanh(eps/2) + eps·sqrt(2k·ln(1/δ)) (Kairouz et al.).
    m = Moments()
    for _ in range(330):
        m = m.plus(0.1, 0.0)
    expected = 330 * 0.1 * math.tanh(0.05) + 0.1 * math.sqrt(2 * 330 * math.log(1e6))
    assert advanced_epsilon(m, 1e-6) == pytest.approx(expected, rel=1e-9)


def test_no_room_for_delta_prime() -> None:
    assert advanced_epsilon(Moments().plus(1.0, 1e-6), 1e-6) == math.inf


@settings(max_examples=15, deadline=None)
@given(st.lists(st.sampled_from([0.01, 0.05, 0.1, 0.3]), min_size=5, max_size=200))
def test_never_tighter_than_pld(epsilons: list[float]) -> None:
    """PLD is (near) optimal for these events: advanced composition, a valid but looser
    bound, must never claim less."""
    m = Moments()
    for e in epsilons:
        m = m.plus(e, 0.0)
    pld = Accountant([LaplaceEvent(e) for e in epsilons]).pld_epsilon(1e-6)
    assert advanced_epsilon(m, 1e-6) >= pld - 1e-3
