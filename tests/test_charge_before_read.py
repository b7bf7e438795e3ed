"""Nothing reads protected rows without a committed charge (DESIGN §2, side channels).

A spy sits on the executor's one path to the data (``_run``) and records every
engine run.  Each run that names a protected table must find its charge already
committed in the state file (read through a separate connection, so only
committed rows count); queries that release nothing noisy, repeats, refused and
unaffordable queries, and queries while the ledger is down run nothing at all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

from gateway import Gateway
from gateway.errors import BudgetExceeded, InternalError, LedgerUnavailable, QueryRejected
from gateway.state.db import StateDB
from tests.support import web_policy


class Spy:
    def __init__(self, gw: Gateway, state: Path) -> None:
        self.gw = gw
        self.state = state
        self.runs: list[tuple[bool, bool]] = []  # (reads protected, charge committed)
        self._inner = gw.executor._run  # type: ignore[attr-defined]

    def __call__(self, sql: str, params: dict[str, Any], timeout_s: float | None,
                 query_id: str | None) -> Any:
        tree = sqlglot.parse_one(sql, dialect="duckdb")
        protected = any(t.name in ("visits",) for t in tree.find_all(exp.Table))
        committed = False
        if query_id is not None:
            with sqlite3.connect(self.state) as con:
                committed = con.execute("SELECT COUNT(*) FROM charges WHERE query_id = ?",
                                        (query_id,)).fetchone()[0] == 1
        self.runs.append((protected, committed))
        return self._inner(sql, params, timeout_s, query_id)

    def protected_runs(self) -> list[bool]:
        return [committed for protected, committed in self.runs if protected]


@pytest.fixture()
def spied(tmp_path: Path) -> Iterator[tuple[Gateway, Spy]]:
    state = tmp_path / "s.db"
    gw = Gateway.open(web_policy(tmp_path), state=state)
    spy = Spy(gw, state)
    gw.executor._run = spy  # type: ignore[attr-defined, method-assign]
    yield gw, spy
    gw.close()


def test_every_protected_read_follows_a_committed_charge(spied: tuple[Gateway, Spy]) -> None:
    gw, spy = spied
    gw.query("SELECT country, COUNT(*) FROM visits GROUP BY country", analyst="a", epsilon=1.0)
    gw.query("SELECT COUNT(*) FROM visits a JOIN visits b ON a.user_id = b.user_id",
             analyst="a", epsilon=1.0)
    gw.query("SELECT AVG(spend) FROM visits WHERE device = 'tv'", analyst="a", epsilon=0.5)
    gw.train("SELECT age, duration_s, converted FROM visits", label="converted",
             epsilon=1.0, delta=1e-6, analyst="a", epochs=1)
    gw.train("SELECT age, converted FROM visits", label="converted", delta=1e-6,
             analyst="a", epochs=1, noise_multiplier=2.0, units=5000)
    assert len(spy.protected_runs()) == 5
    assert all(spy.protected_runs())


def test_repeats_and_public_domain_answers_read_nothing(spied: tuple[Gateway, Spy]) -> None:
    gw, spy = spied
    gw.query("SELECT COUNT(*) FROM visits", analyst="a", epsilon=1.0)
    runs = len(spy.runs)
    assert gw.query("SELECT COUNT(*) FROM visits", analyst="a", epsilon=1.0).cached
    for sql in ("SELECT DISTINCT device FROM visits WHERE spend > 21.5",
                "SELECT device FROM visits WHERE age > 60 GROUP BY device",
                "SELECT DISTINCT device, converted FROM visits WHERE user_id = 3",
                "SELECT device, SUM(0) AS z FROM visits GROUP BY device"):
        r = gw.query(sql, analyst="a", epsilon=1.0)
        assert r.epsilon_spent == 0 and not r.cached
        assert {row[0] for row in r.rows} == {"desktop", "mobile", "tablet", "tv"}
    assert len(spy.runs) == runs


def test_refused_unaffordable_and_ledger_down_read_nothing(
        spied: tuple[Gateway, Spy], monkeypatch: pytest.MonkeyPatch) -> None:
    gw, spy = spied
    with pytest.raises(QueryRejected):
        gw.query("SELECT COUNT(*) FROM visits v JOIN countries c ON v.spend > 400",
                 analyst="a", epsilon=1.0)
    gw.add_analyst("poor", epsilon=0.1, delta=0.0)
    with pytest.raises(BudgetExceeded):
        gw.query("SELECT COUNT(*) FROM visits", analyst="poor", epsilon=0.5)
    with pytest.raises(BudgetExceeded):
        gw.train("SELECT age, converted FROM visits", label="converted", epsilon=1.0,
                 delta=1e-6, analyst="poor")

    def down(*_: Any, **__: Any) -> Any:
        raise LedgerUnavailable("the ledger is unavailable (test)")

    monkeypatch.setattr(StateDB, "_write", down)
    with pytest.raises(LedgerUnavailable):
        gw.query("SELECT SUM(spend) FROM visits", analyst="a", epsilon=1.0)
    with pytest.raises(LedgerUnavailable):
        gw.train("SELECT age, converted FROM visits", label="converted", epsilon=1.0,
                 delta=1e-6, analyst="a", units=5000)
    assert spy.protected_runs() == []


def test_the_executor_refuses_protected_reads_without_a_permit(
        spied: tuple[Gateway, Spy]) -> None:
    gw, spy = spied
    with pytest.raises(InternalError):
        gw.executor.execute(sqlglot.parse_one("SELECT COUNT(*) FROM visits"))
    with pytest.raises(InternalError):
        gw.executor.distinct_values("visits", "country", 100)
    gw.executor.execute(sqlglot.parse_one("SELECT COUNT(*) FROM countries"))  # public
    assert spy.protected_runs() == []
