"""DP quantiles through the gateway: accuracy against the exact quantile at a large ε,
the charge, explain, caching, NULL/NaN values, and what is refused.

With max_rows_per_unit at least every user's row count and max_groups_per_unit at
least the number of groups, no row is scaled down or dropped, so at ε = 1e4 the
exponential mechanism picks the exact quantile's bin: the answer is within one bin
(1 for integers, (hi - lo)/1024 for real values) of DuckDB's own quantile.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import duckdb
import pytest

from gateway import Gateway
from gateway.errors import QueryRejected
from tests.support import SAMPLE, web_policy

BIG = 1e4
SPEND_BIN = 500 / 1024


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("quantiles")
    g = Gateway.open(web_policy(folder, max_rows_per_unit=700, max_groups_per_unit=40),
                     state=folder / "s.db")
    yield g
    g.close()


@pytest.fixture(scope="module")
def raw() -> Any:
    con = duckdb.connect()
    con.execute(f"CREATE VIEW visits AS SELECT * FROM '{SAMPLE / 'visits.parquet'}'")
    yield con
    con.close()


def _near_quantile(raw: Any, column: str, value: float, alpha: float, where: str,
                   tol: float) -> bool:
    exact = raw.execute(f"SELECT quantile_cont({column}, {alpha}) FROM visits WHERE {where}"
                        ).fetchone()[0]
    return bool(abs(value - exact) <= tol)


def test_median_by_device_at_large_epsilon(gw: Gateway, raw: Any) -> None:
    r = gw.query("SELECT device, MEDIAN(spend) AS m, PERCENTILE_CONT(0.9) WITHIN GROUP "
                 "(ORDER BY age) AS p90 FROM visits GROUP BY device", analyst="acc",
                 epsilon=BIG)
    assert [c.name for c in r.columns] == ["device", "m", "p90"]
    assert [c.type for c in r.columns] == ["text", "float", "int"]
    for device, m, p90 in r.rows:
        where = f"device = '{device}'"
        assert _near_quantile(raw, "spend", m, 0.5, where, SPEND_BIN)
        assert _near_quantile(raw, "age", p90, 0.9, where, 1)


def test_min_and_max_are_near_the_extreme_ranks(gw: Gateway, raw: Any) -> None:
    r = gw.query("SELECT MIN(visit_date) AS lo, MAX(visit_date) AS hi, MIN(age), MAX(age) "
                 "FROM visits", analyst="acc", epsilon=BIG)
    lo, hi, amin, amax = r.rows[0]
    assert isinstance(lo, dt.date) and isinstance(hi, dt.date) and lo < hi
    q01, q99 = raw.execute("SELECT quantile_disc(visit_date, 0.01), "
                           "quantile_disc(visit_date, 0.99) FROM visits").fetchone()
    assert abs((lo - q01).days) <= 1 and abs((hi - q99).days) <= 1
    a01, a99 = raw.execute("SELECT quantile_disc(age, 0.01), quantile_disc(age, 0.99) "
                           "FROM visits").fetchone()
    assert abs(amin - a01) <= 1 and abs(amax - a99) <= 1
    assert [a.mechanism for a in r.accuracy] == ["exponential"] * 4
    assert all(a.rank_error95 and a.rank_error95 > 0 for a in r.accuracy)


def test_approx_quantiles_is_a_sorted_list(gw: Gateway, raw: Any) -> None:
    r = gw.query("SELECT APPROX_QUANTILES(age, 4) AS q FROM visits", analyst="acc",
                 epsilon=BIG)
    q = r.rows[0][0]
    assert len(q) == 5 and q == sorted(q)
    exact = raw.execute("SELECT quantile_disc(age, [0.25, 0.5, 0.75]) FROM visits").fetchone()[0]
    assert all(abs(a - b) <= 1 for a, b in zip(q[1:4], exact, strict=True))
    assert r.to_dict()["rows"][0][0] == q  # JSON-ready


def test_quantile_arguments_are_clamped_and_nulls_skipped(gw: Gateway) -> None:
    r = gw.query("SELECT MEDIAN(CASE WHEN spend > 100 THEN spend * 1000 END) AS m, "
                 "MEDIAN(spend) FILTER (WHERE spend > 0) AS f FROM visits", analyst="acc",
                 epsilon=BIG)
    m, f = r.rows[0]
    assert 100 * 1000 <= m <= 500 * 1000  # clamped into the argument's bounds
    assert f > 0 and math.isfinite(f)


def test_charge_explain_and_cache(gw: Gateway) -> None:
    sql = "SELECT country, MEDIAN(spend) AS m, COUNT(*) AS n FROM visits GROUP BY country"
    e = gw.explain(sql, epsilon=1.0)
    assert e.epsilon_cost == pytest.approx(1.0)
    entry = next(a for a in e.aggregates if a["function"] == "quantile")
    stat = entry["statistics"][0]
    assert stat["kind"] == "quantile" and stat["rank"] == 0.5 and stat["bins"] == 1024
    assert stat["epsilon"] == pytest.approx(0.5) and stat["sensitivity"] == pytest.approx(350)
    first = gw.query(sql, analyst="cache", epsilon=1.0)
    again = gw.query(sql, analyst="cache", epsilon=1.0)
    assert first.epsilon_spent == pytest.approx(1.0) and not first.cached
    assert again.cached and again.epsilon_spent == 0 and again.rows == first.rows
    assert len(first.rows) == 33  # every public country


def test_refusals_say_what_to_do(gw: Gateway) -> None:
    for sql, words in [
        ("SELECT MEDIAN(country) FROM visits", "MEDIAN"),
        ("SELECT QUANTILE_CONT(spend, 2) FROM visits", "between 0 and 1"),
        ("SELECT MIN(user_id) FROM visits", "privacy unit"),
        ("SELECT APPROX_QUANTILES(spend, 0) FROM visits", "APPROX_QUANTILES"),
    ]:
        with pytest.raises(QueryRejected, match=words) as err:
            gw.query(sql, analyst="refused", epsilon=1.0)
        assert err.value.hint
    assert gw.budget("refused")["epsilon_spent"] == 0


def test_gaussian_mechanism_splits_epsilon_with_quantiles(gw: Gateway) -> None:
    r = gw.query("SELECT MEDIAN(age), AVG(spend) FROM visits", analyst="gauss", epsilon=1.0,
                 delta=1e-6, mechanism="gaussian")
    assert r.epsilon_spent == pytest.approx(1.0) and r.delta_spent <= 1e-6
    assert 18 <= r.rows[0][0] <= 90


def test_path_of_the_fixture_data_is_the_sample() -> None:
    assert (SAMPLE / "visits.parquet").exists() and isinstance(SAMPLE, Path)
