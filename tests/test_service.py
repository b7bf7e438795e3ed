"""The in-process API (DESIGN §1.2): shapes, costs, repeats, accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway import Gateway
from gateway.errors import AuthError, BudgetExceeded, InvalidRequest, QueryRejected
from tests.support import web_policy


@pytest.fixture
def gw(tmp_path: Path) -> Any:
    g = Gateway.open(web_policy(tmp_path), state=tmp_path / "state.db")
    yield g
    g.close()


def test_query_result_contract(gw: Gateway) -> None:
    r = gw.query("SELECT country, COUNT(*) AS n FROM visits GROUP BY country",
                 analyst="alice", epsilon=0.5)
    assert [c.name for c in r.columns] == ["country", "n"]
    assert [c.type for c in r.columns] == ["text", "int"]
    assert len(r.rows) == 33  # every public country, the 3 without visits too
    assert r.epsilon_spent == 0.5 and r.delta_spent == 0.0 and r.cached is False
    assert r.accuracy[0].column == "n" and r.accuracy[0].ci95 > 0
    df = r.to_pandas()
    assert list(df.columns) == ["country", "n"] and len(df) == 33
    d = r.to_dict()
    assert set(d) >= {"query_id", "columns", "rows", "epsilon_spent", "delta_spent", "budget",
                      "accuracy", "cached"}
    assert set(d["budget"]) == {"epsilon_remaining", "delta_remaining"}
    assert set(d["accuracy"][0]) == {"column", "mechanism", "noise_scale", "ci95"}


def test_repeats_are_free_and_identical(gw: Gateway) -> None:
    a = gw.query("SELECT COUNT(*) FROM visits", analyst="alice", epsilon=0.5)
    b = gw.query("select   count(*)\nfrom VISITS", analyst="alice", epsilon=0.5)
    c = gw.query("SELECT COUNT(*) AS total FROM visits", analyst="bob", epsilon=0.5)
    assert b.cached and c.cached and b.epsilon_spent == 0 and c.epsilon_spent == 0
    assert a.rows == b.rows == c.rows
    d = gw.query("SELECT COUNT(*) FROM visits", analyst="alice", epsilon=0.25)
    assert not d.cached and d.epsilon_spent == 0.25
    assert 0.7 < gw.budget("alice")["epsilon_spent"] <= 0.75  # PLD can beat 0.5 + 0.25


def test_post_processing_shares_the_cached_statistics(gw: Gateway) -> None:
    a = gw.query("SELECT device, COUNT(*) AS n FROM visits GROUP BY device", analyst="x",
                 epsilon=1.0)
    b = gw.query("SELECT device, COUNT(*) * 2 AS twice FROM visits GROUP BY device "
                 "HAVING COUNT(*) > 5000 ORDER BY twice DESC LIMIT 2", analyst="x", epsilon=1.0)
    assert b.cached
    noisy = dict(a.rows)
    assert all(n > 5000 for n in (noisy[d] for d, _ in b.rows))
    assert [t for _, t in b.rows] == sorted((2 * n for n in noisy.values() if n > 5000),
                                           reverse=True)[:2]


def test_explain_charges_nothing(gw: Gateway) -> None:
    ex = gw.explain("SELECT device, AVG(spend) FROM visits GROUP BY device", epsilon=0.4)
    d = ex.to_dict()
    assert set(d) >= {"rewritten_sql", "aggregates", "partition_selection", "epsilon_cost",
                      "delta_cost", "accuracy"}
    assert d["epsilon_cost"] == 0.4 and d["partition_selection"] is None
    assert "__dp_contrib" in d["rewritten_sql"]
    assert gw.ledger.charges() == []


def test_partition_selection_needs_delta(gw: Gateway) -> None:
    sql = "SELECT FLOOR(duration_s / 600) AS bucket, COUNT(*) FROM visits GROUP BY 1"
    with pytest.raises(QueryRejected) as err:
        gw.query(sql, analyst="alice", epsilon=1.0, delta=0.0)
    assert "delta" in err.value.message
    r = gw.query(sql, analyst="alice", epsilon=1.0, delta=1e-6)
    assert r.delta_spent == 1e-6
    assert 0 < len(r.rows) <= 40  # keys that exist in the data, selected privately
    ps = gw.explain(sql, epsilon=1.0, delta=1e-6).partition_selection
    assert ps is not None and ps["strategy"] in ("threshold", "truncated_geometric")
    assert ps["units_for_half"] > 0 and ps["why"]


def test_budget_report_and_exhaustion(tmp_path: Path) -> None:
    with Gateway.open(web_policy(tmp_path, analyst_budget=(1.0, 0.0)), tmp_path / "s") as gw:
        gw.query("SELECT COUNT(*) FROM visits", analyst="carol", epsilon=0.75)
        with pytest.raises(BudgetExceeded) as err:
            gw.query("SELECT SUM(spend) FROM visits", analyst="carol", epsilon=0.5)
        assert "remaining epsilon=0.25" in err.value.message and err.value.hint
        b = gw.budget("carol")
        assert b["epsilon_total"] == 1.0 and b["epsilon_spent"] == 0.75
        assert b["epsilon_remaining"] == 0.25 and "dataset" in b


@pytest.mark.parametrize("kwargs", [
    {"epsilon": 0.0}, {"epsilon": -1.0}, {"epsilon": float("nan")}, {"epsilon": float("inf")},
    {"epsilon": 1e-9}, {"epsilon": 0.5, "delta": 1.0}, {"epsilon": 0.5, "delta": -0.1},
    {"epsilon": 0.5, "mechanism": "exponential"}, {"epsilon": 0.5, "mechanism": "gaussian",
                                                   "delta": 0.0},
])
def test_invalid_budget_requests(gw: Gateway, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        gw.query("SELECT COUNT(*) FROM visits", analyst="alice", **kwargs)
    assert gw.ledger.charges() == []


def test_gaussian_mechanism(gw: Gateway) -> None:
    r = gw.query("SELECT device, COUNT(*), SUM(spend) FROM visits GROUP BY device",
                 analyst="alice", epsilon=1.0, delta=1e-6, mechanism="gaussian")
    assert r.delta_spent == 1e-6 and len(r.rows) == 4
    assert {a.mechanism for a in r.accuracy} == {"gaussian"}


def test_public_tables_are_free(gw: Gateway) -> None:
    r = gw.query("SELECT region, COUNT(*) AS n FROM countries GROUP BY region ORDER BY region",
                 analyst="alice")
    assert r.epsilon_spent == 0 and sum(n for _, n in r.rows) == 33


def test_analyst_keys(gw: Gateway) -> None:
    key = gw.add_analyst("dana", epsilon=2.0)
    assert key.startswith("dpg_")
    who = gw.authenticate(key)
    assert who.name == "dana" and who.epsilon == 2.0
    stored = gw.ledger._con().execute("SELECT key_hash FROM analysts WHERE name='dana'").fetchone()
    assert key not in str(stored) and len(stored[0]) == 64
    with pytest.raises(AuthError):
        gw.authenticate(key + "x")
    with pytest.raises(InvalidRequest):
        gw.add_analyst("dana")


def test_schema_is_public_metadata(gw: Gateway) -> None:
    s = gw.schema()
    visits = s["tables"]["visits"]
    cols = {c["name"]: c for c in visits["columns"]}
    assert cols["spend"]["bounds"] == [0.0, 500.0]
    assert cols["device"]["public_values"] == ["desktop", "mobile", "tablet", "tv"]
    assert len(cols["country"]["public_values"]) == 33
    assert cols["user_id"]["role"] == "privacy_unit" and visits["max_rows_per_unit"] == 20
    assert s["tables"]["countries"]["public"] is True


def test_confidence_intervals_cover(tmp_path: Path) -> None:
    """The 95% half-width, computed from the scale alone, covers the bounded truth
    about 95% of the time for COUNT and SUM (200 fresh releases each)."""
    with Gateway.open(web_policy(tmp_path), tmp_path / "s") as gw:
        for sql in ("SELECT COUNT(*) AS v FROM visits WHERE device = 'tv'",
                    "SELECT SUM(spend) AS v FROM visits WHERE device = 'tv'"):
            truth = gw.query(sql, analyst="t", epsilon=1e7).rows[0][0]
            hits = []
            for i in range(200):
                r = gw.query(sql, analyst="t", epsilon=0.5 + i * 1e-9)
                hits.append(abs(r.rows[0][0] - truth) <= r.accuracy[0].ci95)
            # Binomial(200, 0.95): below 0.89 has probability < 1e-4.  Clamping at 0
            # only moves answers towards the truth, so coverage can be higher.
            assert np.mean(hits) >= 0.89
