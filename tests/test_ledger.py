"""The ledger: atomic charges, exact composition, concurrency, repeats, fail-closed."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway import Gateway
from gateway.errors import BudgetExceeded, LedgerUnavailable, QueryRejected
from gateway.privacy.events import LaplaceEvent
from gateway.state.ledger import Cost, Ledger
from tests.support import web_policy


def _ledger(tmp_path: Path, analyst: tuple[float, float], dataset: tuple[float, float] = (1e9, 0.5),
            renyi_share: float = 0.0) -> Ledger:
    led = Ledger(tmp_path / "state.db", "web", dataset, analyst, renyi_share)
    led.ensure_analyst("alice")
    return led


def _fill(led: Ledger, cost: Cost, limit: int = 1000) -> int:
    alice = led.analyst("alice")
    assert alice is not None
    n = 0
    with pytest.raises(BudgetExceeded):
        while n < limit:
            led.reserve(alice, f"q{n}", "query", "q", cost)
            n += 1
    return n


def test_ten_charges_of_point_one_fit_exactly_one(tmp_path: Path) -> None:
    led = _ledger(tmp_path, (1.0, 0.0))
    alice = led.analyst("alice")
    assert alice is not None
    cost = Cost(0.1, 0.0, (LaplaceEvent(0.1),))
    for i in range(10):  # 0.1 is not exact in binary; the ledger sums decimals
        led.reserve(alice, f"q{i}", "query", "SELECT 1", cost)
    with pytest.raises(BudgetExceeded) as err:
        led.reserve(alice, "q10", "query", "SELECT 1", cost)
    assert "remaining epsilon=0" in err.value.message
    mine, _ = led.spent(alice)
    assert mine.epsilon_spent == pytest.approx(1.0) and mine.epsilon_remaining == 0.0


def test_admission_is_basic_composition_by_default(tmp_path: Path) -> None:
    """Basic composition is a valid filter when each ε is chosen after earlier answers:
    exactly 100 Laplace releases of ε = 0.1 fit in (10, 1e-6).  The PLD composition
    (~330) holds only for parameters fixed in advance: reported, labelled, not used."""
    led = _ledger(tmp_path, (10.0, 1e-6), (10.0, 1e-6))
    n = _fill(led, Cost(0.1, 0.0, (LaplaceEvent(0.1),)))
    assert n == 100
    alice = led.analyst("alice")
    assert alice is not None
    mine, dataset = led.spent(alice)
    assert mine.epsilon_spent == pytest.approx(10.0) and dataset.charges == n
    assert mine.epsilon_nonadaptive is not None and 4.0 < mine.epsilon_nonadaptive < 5.0
    assert "epsilon_pld_nonadaptive" in mine.to_dict()


def test_a_renyi_share_admits_more_small_queries(tmp_path: Path) -> None:
    """With half of δ reserved for the Rényi branch, the filter admits far more small
    queries, each still certified within (10, 1e-6)."""
    led = _ledger(tmp_path, (10.0, 1e-6), (10.0, 1e-6), renyi_share=0.5)
    n = _fill(led, Cost(0.1, 0.0, (LaplaceEvent(0.1),)))
    assert 230 <= n <= 330  # 239: more than twice basic composition
    alice = led.analyst("alice")
    assert alice is not None
    mine, _ = led.spent(alice)
    assert mine.epsilon_spent <= 10.0 and mine.delta_spent <= 1e-6


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_an_adaptively_chosen_second_query_is_refused(tmp_path: Path, share: float) -> None:
    """Budget (1, 0.01): after a COUNT at ε = 0.02 the PLD accountant admitted a second
    query at ε = 1.007 (Laplace) or (1.15, 0.005) (Gaussian) chosen from the first
    answer; that transcript is only (1, 0.0144)-DP.  The filter refuses both."""
    from gateway.privacy.calibration import analytic_gaussian_sigma
    from gateway.privacy.events import GaussianEvent

    led = _ledger(tmp_path, (1.0, 0.01), (1e9, 0.5), renyi_share=share)
    alice = led.analyst("alice")
    assert alice is not None
    led.reserve(alice, "first", "query", "q", Cost(0.02, 0.0, (LaplaceEvent(0.02),)))
    with pytest.raises(BudgetExceeded):
        led.reserve(alice, "second", "query", "q", Cost(1.007, 0.0, (LaplaceEvent(1.007),)))
    sigma = analytic_gaussian_sigma(1.15, 0.005, 1.0)
    with pytest.raises(BudgetExceeded):
        led.reserve(alice, "third", "query", "q",
                    Cost(1.15, 0.005, (GaussianEvent(sigma, 1.15, 0.005),)))


def test_dataset_budget_limits_all_analysts(tmp_path: Path) -> None:
    led = _ledger(tmp_path, (1.0, 0.0), dataset=(1.5, 0.0))
    led.ensure_analyst("bob")
    alice, bob = led.analyst("alice"), led.analyst("bob")
    assert alice is not None and bob is not None
    cost = Cost(1.0, 0.0, (LaplaceEvent(1.0),))
    led.reserve(alice, "a", "query", "q", cost)
    with pytest.raises(BudgetExceeded) as err:
        led.reserve(bob, "b", "query", "q", cost)
    assert "dataset" in err.value.message


def test_answer_key_charges_once(tmp_path: Path) -> None:
    led = _ledger(tmp_path, (1.0, 0.0))
    alice = led.analyst("alice")
    assert alice is not None
    cost = Cost(0.5, 0.0, (LaplaceEvent(0.5),))
    first = led.reserve(alice, "a", "query", "q", cost, answer_key="k")
    assert first.charged
    led.complete("k", '{"x": 1}')
    again = led.reserve(alice, "b", "query", "q", cost, answer_key="k")
    assert not again.charged and again.cached_result == '{"x": 1}'
    assert len(led.charges()) == 1


def _worker(args: tuple[str, str, int]) -> int:
    policy, state, offset = args
    ok = 0
    with Gateway.open(policy, state) as gw:
        for i in range(10):
            try:
                gw.query(f"SELECT COUNT(*) FROM visits WHERE age > {offset + i}", analyst="alice",
                         epsilon=0.1)
                ok += 1
            except BudgetExceeded:
                pass
    return ok


def test_threads_never_overspend(tmp_path: Path) -> None:
    policy = web_policy(tmp_path, analyst_budget=(1.0, 0.0), dataset_budget=(100.0, 0.0))
    with Gateway.open(policy, tmp_path / "s.db") as gw:
        results: list[str] = []

        def run(i: int) -> None:
            try:
                gw.query(f"SELECT COUNT(*) FROM visits WHERE age > {i}", analyst="alice",
                         epsilon=0.1)
                results.append("ok")
            except BudgetExceeded:
                results.append("denied")

        threads = [threading.Thread(target=run, args=(i,)) for i in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count("ok") == 10 and results.count("denied") == 20
        assert gw.budget("alice")["epsilon_spent"] == pytest.approx(1.0)
        assert len(gw.ledger.charges("alice")) == 10


def test_processes_never_overspend(tmp_path: Path) -> None:
    policy = web_policy(tmp_path, analyst_budget=(1.0, 0.0), dataset_budget=(100.0, 0.0))
    state = tmp_path / "s.db"
    Gateway.open(policy, state).close()
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        oks = pool.map(_worker, [(str(policy), str(state), k * 100) for k in range(3)])
    assert sum(oks) == 10
    with Gateway.open(policy, state) as gw:
        assert len(gw.ledger.charges("alice")) == 10


def test_identical_concurrent_queries_are_charged_once(tmp_path: Path) -> None:
    policy = web_policy(tmp_path, analyst_budget=(1.0, 0.0), dataset_budget=(100.0, 0.0))
    with Gateway.open(policy, tmp_path / "s.db") as gw:
        answers: list[Any] = []

        def run() -> None:
            answers.append(gw.query("SELECT COUNT(*) FROM visits", analyst="alice",
                                    epsilon=0.5).rows)

        threads = [threading.Thread(target=run) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(answers) == 8 and all(a == answers[0] for a in answers)
        assert len(gw.ledger.charges()) == 1


def test_ledger_fails_closed(tmp_path: Path) -> None:
    """If the ledger cannot be written, no query runs (and nothing is released)."""
    policy = web_policy(tmp_path)
    state = tmp_path / "s.db"
    with Gateway.open(policy, state) as gw:
        gw.query("SELECT COUNT(*) FROM visits", analyst="alice", epsilon=0.1)
        blocker = sqlite3.connect(state, timeout=0.1)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            gw.ledger._local.con.execute("PRAGMA busy_timeout=200")
            with pytest.raises(LedgerUnavailable):
                gw.query("SELECT SUM(spend) FROM visits", analyst="alice", epsilon=0.1)
        finally:
            blocker.rollback()
            blocker.close()
        assert len(gw.ledger.charges()) == 1


def test_audit_records_every_request(tmp_path: Path) -> None:
    with Gateway.open(web_policy(tmp_path), tmp_path / "s.db") as gw:
        gw.query("SELECT COUNT(*) FROM visits", analyst="alice", epsilon=0.1)
        with pytest.raises(QueryRejected):
            gw.query("SELECT user_id FROM visits", analyst="alice")
        log = gw.audit(analyst="alice")
        assert [e["outcome"] for e in log] == ["ok", "query_rejected"]
        assert log[0]["epsilon"] == 0.1 and log[1]["epsilon"] == 0.0


def test_filter_sums_are_rebuilt_for_old_state_files(tmp_path: Path) -> None:
    led = _ledger(tmp_path, (100.0, 1e-6))
    alice = led.analyst("alice")
    assert alice is not None
    for i in range(3):
        led.reserve(alice, f"q{i}", "query", "q", Cost(0.5, 0.0, (LaplaceEvent(0.5),)))
    before = led._filter(led._con(), "analyst:web:alice", (100.0, 1e-6))
    led._con().execute("DROP TABLE filters")
    led.close()
    again = Ledger(tmp_path / "state.db", "web", (1e9, 0.5), (100.0, 1e-6))
    assert again._filter(again._con(), "analyst:web:alice", (100.0, 1e-6)) == before


def test_settling_admits_the_exact_events_or_keeps_the_reservation(tmp_path: Path) -> None:
    """A settled charge must still fit the filter with its exact events: their Rényi
    bounds need not lie below the reserved ones at every order."""
    from gateway.privacy.events import ApproxDpEvent, SubsampledGaussianEvent

    led = _ledger(tmp_path, (2.0, 1e-3), (1e9, 0.5), renyi_share=0.5)
    alice = led.analyst("alice")
    assert alice is not None
    for i in range(60):  # Σε = 3 > 2: only the Rényi branch admits more
        led.reserve(alice, f"q{i}", "query", "q", Cost(0.05, 0.0, (LaplaceEvent(0.05),)))
    r = led.reserve(alice, "train", "train", "q", Cost(0.01, 0.0, (ApproxDpEvent(0.01),)))
    before = led.charges("alice")[-1]
    greedy = SubsampledGaussianEvent(0.3, 1.0, 50, 0.01, 0.0)  # far more Rényi cost
    with pytest.raises(BudgetExceeded, match="reserved charge stays"):
        led.settle(r, Cost(0.01, 0.0, (greedy,)))
    assert led.charges("alice")[-1] == before
    led.settle(r, Cost(0.005, 0.0, (LaplaceEvent(0.005),)))  # cheaper: settles
    assert led.charges("alice")[-1]["epsilon"] == 0.005
