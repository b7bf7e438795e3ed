"""Privacy events (validation, JSON round trip, PLDs) and DP-SGD accounting."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.privacy.calibration import analytic_gaussian_sigma
from gateway.privacy.events import (
    ApproxDpEvent,
    DiscreteLaplaceEvent,
    GaussianEvent,
    LaplaceEvent,
    PrivacyEvent,
    SubsampledGaussianEvent,
    dp_sgd_epsilon,
    dp_sgd_epsilon_rdp,
    event_from_dict,
    solve_noise_multiplier,
)

SIGMA = analytic_gaussian_sigma(0.5, 1e-6, 1.0)
EVENTS: list[PrivacyEvent] = [
    LaplaceEvent(0.1),
    DiscreteLaplaceEvent(0.7, sensitivity=3),
    GaussianEvent(SIGMA, 0.5, 1e-6),
    ApproxDpEvent(0.2, 1e-8),
    ApproxDpEvent(0.0, 1e-9),
    SubsampledGaussianEvent(1.1, 0.01, 500, 1.2, 1e-6),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.kind)
def test_json_round_trip(event: PrivacyEvent) -> None:
    d = event.to_dict()
    assert d["kind"] == event.kind
    back = event_from_dict(json.loads(json.dumps(d)))
    assert back == event and hash(back) == hash(event)
    assert back.epsilon == event.epsilon and back.delta == event.delta


def test_nominal_parameters() -> None:
    assert LaplaceEvent(0.3).delta == 0.0
    assert DiscreteLaplaceEvent(0.3).sensitivity == 1
    assert DiscreteLaplaceEvent(0.3).delta == 0.0
    assert ApproxDpEvent(0.3, 1e-6).delta == 1e-6
    assert LaplaceEvent(1) == LaplaceEvent(1.0)  # ints from JSON are normalised


@pytest.mark.parametrize(
    "d",
    [
        {"epsilon": 0.1},
        {"kind": "nope", "epsilon": 0.1},
        {"kind": "laplace", "epsilon": 0.1, "delta": 0.0},
        {"kind": "laplace"},
        {"kind": "laplace", "epsilon": -1},
        {"kind": "discrete_laplace", "epsilon": 1, "sensitivity": 1.5},
        {"kind": "approx_dp", "epsilon": 0.0, "delta": 0.0},
        {"kind": "approx_dp", "epsilon": 1.0, "delta": 1.0},
        {
            "kind": "subsampled_gaussian",
            "noise_multiplier": 1,
            "sampling_rate": 2,
            "steps": 3,
            "epsilon": 1,
            "delta": 1e-6,
        },
        {
            "kind": "subsampled_gaussian",
            "noise_multiplier": 1,
            "sampling_rate": 0.1,
            "steps": 0,
            "epsilon": 1,
            "delta": 1e-6,
        },
    ],
)
def test_invalid_dicts_rejected(d: dict) -> None:
    with pytest.raises(ValueError):
        event_from_dict(d)


@pytest.mark.parametrize("bad", [0.0, -0.1, math.nan, math.inf, True, "0.1"])
def test_invalid_epsilon_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        LaplaceEvent(bad)  # type: ignore[arg-type]


def test_gaussian_event_checks_its_nominal_guarantee() -> None:
    GaussianEvent(SIGMA, 0.5, 1e-6)
    with pytest.raises(ValueError, match="more than the stated delta"):
        GaussianEvent(SIGMA * 0.9, 0.5, 1e-6)


def test_event_plds_match_nominal_guarantees() -> None:
    """A single event's PLD ε at its own δ never exceeds nominal ε by more than the grid."""
    for event in EVENTS[:4]:
        delta = max(event.delta, 1e-12)
        eps = event.to_pld(1e-4).get_epsilon_for_delta(delta)
        assert eps <= event.epsilon + 2e-4, event


# --------------------------------------------------------------------------- DP-SGD


@pytest.mark.parametrize(
    ("sigma", "q", "steps"), [(1.0, 0.01, 1000), (3.0, 0.001, 10_000), (1.0, 1.0, 10)]
)
def test_dp_sgd_pld_is_at_most_rdp(sigma: float, q: float, steps: int) -> None:
    pld = dp_sgd_epsilon(sigma, q, steps, 1e-5)
    rdp = dp_sgd_epsilon_rdp(sigma, q, steps, 1e-5)
    assert 0 < pld <= rdp * 1.02  # PLD is the tighter accountant


def test_dp_sgd_full_batch_matches_gaussian_composition() -> None:
    """q = 1, T steps of σ is one Gaussian with σ/√T: the exact δ(ε) must agree."""
    from gateway.privacy.calibration import gaussian_delta

    eps = dp_sgd_epsilon(2.0, 1.0, 4, 1e-5, value_discretization_interval=1e-4)
    assert gaussian_delta(1.0, eps, 1.0) == pytest.approx(1e-5, rel=0.05)


def test_dp_sgd_rejects_bad_parameters() -> None:
    for args in [
        (0, 0.1, 10, 1e-5),
        (1, 0, 10, 1e-5),
        (1, 1.1, 10, 1e-5),
        (1, 0.1, 0, 1e-5),
        (1, 0.1, 10, 0.0),
    ]:
        with pytest.raises(ValueError):
            dp_sgd_epsilon(*args)
    with pytest.raises(ValueError):
        solve_noise_multiplier(0.0, 1e-5, 0.1, 10)


@pytest.mark.slow
@given(
    target=st.floats(0.3, 8.0),
    q=st.sampled_from([0.001, 0.01, 0.05]),
    steps=st.sampled_from([100, 1000]),
)
@settings(max_examples=4, deadline=None)
def test_solve_noise_multiplier_never_overshoots(target: float, q: float, steps: int) -> None:
    sigma = solve_noise_multiplier(target, 1e-5, q, steps)
    assert dp_sgd_epsilon(sigma, q, steps, 1e-5) <= target
    if sigma > 0.1:  # and it is nearly the smallest such σ
        assert dp_sgd_epsilon(sigma * 0.99, q, steps, 1e-5) > target
