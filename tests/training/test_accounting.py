"""Accounting: ε of a run, solving σ for a target, composition in the ledger."""

from __future__ import annotations

import json

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import Gateway
from gateway.errors import BudgetExceeded, InvalidRequest
from gateway.privacy.accountant import Accountant
from gateway.privacy.events import dp_sgd_epsilon, event_from_dict
from gateway.training.accounting import plan_sgd, split_epsilon
from gateway.training.hyper import Hyper


def _direct_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """dp-accounting's own PLD accountant, independently of our helpers."""
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize(("sigma", "units", "batch", "epochs", "delta"), [
    (1.0, 200_000, 1000, 3, 1e-5),
    (2.5, 20_000, 1000, 5, 1e-6),
    (0.8, 5_000, 250, 2, 1e-5),
])
def test_reported_epsilon_equals_dp_accounting(sigma: float, units: int, batch: int,
                                               epochs: float, delta: float) -> None:
    p = plan_sgd(units, "public", Hyper(epochs=epochs, batch_size=batch,
                                        noise_multiplier=sigma), None, delta)
    assert p.sampling_rate == batch / units and p.steps == round(epochs * units / batch)
    direct = _direct_epsilon(sigma, p.sampling_rate, p.steps, delta)
    # Our discretisation is coarser but pessimistic: never below, at most 1% above.
    assert direct - 1e-3 <= p.epsilon <= direct * 1.01
    assert p.epsilon_rdp >= p.epsilon * 0.99  # RDP cross-check: looser, same ballpark
    assert p.epsilon_rdp <= p.epsilon * 1.6


@settings(max_examples=4, deadline=None, derandomize=True)
@given(target=st.floats(0.3, 4.0), units=st.integers(2_000, 30_000),
       batch=st.integers(128, 2_000), epochs=st.floats(1.0, 4.0))
def test_solved_sigma_never_overshoots(target: float, units: int, batch: int,
                                       epochs: float) -> None:
    p = plan_sgd(units, "public", Hyper(epochs=epochs, batch_size=batch), target, 1e-5)
    assert p.epsilon <= target
    assert dp_sgd_epsilon(p.noise_multiplier, p.sampling_rate, p.steps, 1e-5) <= target
    # ... and is not needlessly conservative: 1% less noise would overshoot (or σ hit its floor).
    assert p.noise_multiplier <= 0.1 or dp_sgd_epsilon(
        p.noise_multiplier * 0.99, p.sampling_rate, p.steps, 1e-5) > target


def test_given_sigma_must_fit_the_target() -> None:
    with pytest.raises(InvalidRequest, match="more than"):
        plan_sgd(20_000, "public", Hyper(noise_multiplier=0.5), 0.5, 1e-5)


def test_epsilon_split() -> None:
    s = split_epsilon(1.0, Hyper())
    assert (s.count, s.evaluation, s.sgd) == (0.02, 0.0, 0.98)
    s = split_epsilon(1.0, Hyper(holdout=0.1))
    assert (s.count, s.evaluation) == (0.02, 0.1) and s.sgd == pytest.approx(0.88)
    s = split_epsilon(1.0, Hyper(units=1000))
    assert (s.count, s.sgd) == (0.0, 1.0)
    with pytest.raises(InvalidRequest):
        split_epsilon(0.01, Hyper(count_epsilon=0.02))


def test_ledger_composes_training_with_queries(gw: Gateway) -> None:
    m = gw.train("SELECT x1, x2, y FROM events", label="y", model="logistic", epsilon=1.0,
                 delta=1e-5, analyst="carol", epochs=2)
    assert m.epsilon_spent <= 1.0 and m.delta_spent == 1e-5
    gw.query("SELECT COUNT(*) FROM events", analyst="carol", epsilon=0.5)
    charges = gw.ledger.charges("carol")
    assert [c["kind"] for c in charges] == ["train", "query"]
    assert sum(c["epsilon"] for c in charges) == pytest.approx(m.epsilon_spent + 0.5)
    # The same accountant composes all of them: recompute it from the stored events.
    rows = gw.ledger._con().execute(
        "SELECT events FROM charges WHERE analyst = 'carol' ORDER BY id").fetchall()
    events = [event_from_dict(e) for (text,) in rows for e in json.loads(text)]
    assert [e.kind for e in events] == ["discrete_laplace", "subsampled_gaussian",
                                        "discrete_laplace"]
    acc = Accountant()
    acc.add(events)
    budget = gw.budget("carol")
    # Reported: basic composition, or the PLD total once it matters; never above basic.
    basic = m.epsilon_spent + 0.5
    assert min(basic, acc.pld_epsilon(1e-3)) - 1e-6 <= budget["epsilon_spent"] <= basic + 1e-9
    assert budget["charges"] == 2


def test_training_is_refused_before_anything_is_charged(gw: Gateway) -> None:
    gw.add_analyst("dave", epsilon=0.5, delta=1e-5)
    with pytest.raises(BudgetExceeded, match="dave"):
        gw.train("SELECT x1, y FROM events", label="y", epsilon=1.0, delta=1e-5,
                 analyst="dave")
    assert gw.ledger.charges("dave") == []
