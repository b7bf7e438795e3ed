"""Dialect gaps: real queries from T-SQL, MySQL, DuckDB and PostgreSQL users that used
to be refused for reasons unrelated to privacy.

TOP n, every engine's spelling of variance and standard deviation, ORDER BY an
expression over a SELECT alias, constant functions (PI()), a subquery in FROM without
an alias, and a CSV column that is entirely empty (typed by the policy, not by the
CSV sniffer).  All run through the real Gateway over the census data of test_names.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from sqlglot import exp

from gateway import Gateway
from gateway.errors import PolicyError, QueryRejected
from gateway.sql.parse import parse
from tests.sql.test_names import DEVICES, census_policy
from tests.support import web_policy, write_policy

HUGE = 1e7  # noise negligible: released values are the bounded truth


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("dialects")
    with Gateway.open(census_policy(folder), state=folder / "state.db") as g:
        yield g


def answer(gw: Gateway, sql: str, epsilon: float = HUGE, **kw: object) -> list[tuple]:
    return [tuple(r) for r in gw.query(sql, analyst="dee", epsilon=epsilon,
                                       **kw).rows]  # type: ignore[arg-type]


def refused(gw: Gateway, sql: str, rule: str, **kw: str) -> QueryRejected:
    with pytest.raises(QueryRejected) as err:
        gw.plan(sql, **kw)
    assert err.value.rule == rule, err.value
    assert err.value.hint
    return err.value


# -- TOP n ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dialect", ["duckdb", "postgres"])
def test_top_is_a_limit_on_the_noisy_result(gw: Gateway, dialect: str) -> None:
    sql = "SELECT TOP 2 device, COUNT(*) AS n FROM visits GROUP BY device ORDER BY n DESC"
    plan = gw.plan(sql, dialect=dialect)
    assert plan.post.args["limit"].expression.name == "2"
    rows = answer(gw, sql, dialect=dialect)
    assert len(rows) == 2 and rows[0][1] >= rows[1][1]
    full = answer(gw, "SELECT device, COUNT(*) AS n FROM visits GROUP BY device "
                      "ORDER BY n DESC")
    assert rows == full[:2]  # the same release, cut after ORDER BY


def test_top_forms(gw: Gateway) -> None:
    assert len(answer(gw, "SELECT DISTINCT TOP (1) device FROM visits")) == 1
    assert len(answer(gw, "SELECT ALL TOP 1 sex, COUNT(*) AS n FROM PUMS GROUP BY sex")) == 1
    assert len(answer(gw, "select top 2 * from (select device, count(*) as n from visits "
                          "group by device) t order by n")) == 2
    # A column alias named top is not TOP.
    r = gw.query("SELECT COUNT(*) AS top FROM visits", analyst="dee", epsilon=1.0)
    assert [c.name for c in r.columns] == ["top"]
    assert isinstance(parse("SELECT top FROM visits").expressions[0], exp.Column)


def test_top_refusals(gw: Gateway) -> None:
    err = refused(gw, "SELECT TOP 2 device, COUNT(*) FROM visits GROUP BY device LIMIT 1",
                  "parse")
    assert "TOP" in err.message and "LIMIT" in err.message
    refused(gw, "SELECT TOP 10 PERCENT device, COUNT(*) FROM visits GROUP BY device",
            "syntax")
    refused(gw, "SELECT TOP 2 WITH TIES device, COUNT(*) AS n FROM visits GROUP BY device "
                "ORDER BY n", "syntax")
    refused(gw, "SELECT TOP 1.5 device, COUNT(*) FROM visits GROUP BY device", "syntax")
    # Inside a subquery over protected rows TOP picks rows by their values: refused.
    refused(gw, "SELECT COUNT(*) FROM (SELECT TOP 5 * FROM visits) t", "subquery")


# -- variance and standard deviation, as every engine spells them ----------------------------

SPREAD = [
    ("VAR", "var_samp"), ("VAR_SAMP", "var_samp"), ("VARIANCE", "var_samp"),
    ("VARIANCE_SAMP", "var_samp"), ("VAR_POP", "var_pop"), ("VARIANCE_POP", "var_pop"),
    ("VARP", "var_pop"), ("STDEV", "stddev_samp"), ("STDDEV", "stddev_samp"),
    ("STDDEV_SAMP", "stddev_samp"), ("STD", "stddev_pop"), ("STDEVP", "stddev_pop"),
    ("STDDEV_POP", "stddev_pop"),
]


@pytest.mark.parametrize("dialect", ["duckdb", "postgres"])
@pytest.mark.parametrize("name,func", SPREAD, ids=[s[0] for s in SPREAD])
def test_every_spelling_of_variance_and_stddev(gw: Gateway, name: str, func: str,
                                               dialect: str) -> None:
    plan = gw.plan(f"SELECT {name.lower()}(age) AS s FROM visits", dialect=dialect)
    assert [a.func for a in plan.aggs] == [func]


def test_spellings_share_the_release_of_their_statistic(gw: Gateway) -> None:
    """VAR(x) and VAR_SAMP(x) are one statistic: the second is the cached release; STD
    (MySQL, population) is STDDEV_POP, never the sample figure."""
    first = gw.query("SELECT VAR(age) AS v, STD(age) AS s FROM visits", analyst="dee",
                     epsilon=3.0)
    again = gw.query("SELECT VAR_SAMP(age) AS v, STDDEV_POP(age) AS s FROM visits",
                     analyst="dee", epsilon=3.0)
    assert again.cached and again.rows == first.rows
    (v, s), = answer(gw, "SELECT VARP(age) AS v, STDEVP(age) AS s FROM visits")
    assert s == pytest.approx(math.sqrt(v), rel=1e-6)
    (samp, pop), = answer(gw, "SELECT STDEV(age), STD(age) FROM visits")
    assert samp > pop > 0


def test_spread_function_arity(gw: Gateway) -> None:
    err = refused(gw, "SELECT VAR(age, 2) FROM visits", "aggregate")
    assert "VAR" in err.message


# -- ORDER BY an expression over a SELECT alias -----------------------------------------------

@pytest.mark.parametrize("order,descending", [("n * 2 DESC", True), ("-n", True),
                                              ("n + 0", False), ("(n) / 2 ASC", False)])
def test_order_by_an_expression_over_an_alias(gw: Gateway, order: str,
                                             descending: bool) -> None:
    rows = answer(gw, f"SELECT device, COUNT(*) AS n FROM visits GROUP BY device "
                      f"ORDER BY {order}")
    counts = [r[1] for r in rows]
    assert counts == sorted(counts, reverse=descending)
    assert sorted(r[0] for r in rows) == DEVICES


def test_order_by_still_refuses_raw_columns(gw: Gateway) -> None:
    refused(gw, "SELECT device, COUNT(*) AS n FROM visits GROUP BY device ORDER BY age * n",
            "group")


# -- constant functions -----------------------------------------------------------------------

def test_pi_is_a_constant(gw: Gateway) -> None:
    (a, s, _n), = answer(gw, "SELECT AVG(age) * PI() AS a, SUM(age * PI()) AS s, "
                            "COUNT(*) AS n FROM visits WHERE age > PI() * 10")
    (avg, total), = answer(gw, "SELECT AVG(age), SUM(age) FROM visits WHERE age > 31.4159")
    assert a == pytest.approx(avg * math.pi, rel=1e-3)
    assert s == pytest.approx(total * math.pi, rel=1e-3)
    plan = gw.plan("SELECT SUM(age * PI()) AS s FROM visits")
    assert plan.aggs[0].hi == pytest.approx(90 * math.pi)
    keys = answer(gw, "SELECT FLOOR(age / PI()) AS k, COUNT(*) AS n FROM visits GROUP BY 1")
    assert {k for k, _ in keys} == {math.floor(a / math.pi) for a in range(18, 91)}


# -- a subquery in FROM without an alias --------------------------------------------------------

def test_unaliased_subquery(gw: Gateway) -> None:
    (n,), = answer(gw, "SELECT COUNT(*) FROM (SELECT * FROM visits WHERE age > 30)")
    (m,), = answer(gw, "SELECT COUNT(*) FROM visits WHERE age > 30")
    assert n == m
    # The generated alias cannot collide with a name the query uses.
    r = gw.query("SELECT COUNT(*) AS unnamed_subquery FROM (SELECT age FROM visits)",
                 analyst="dee", epsilon=HUGE)
    assert [c.name for c in r.columns] == ["unnamed_subquery"]
    # Two of them, joined on the unit.
    (k,), = answer(gw, "SELECT COUNT(*) FROM (SELECT user_id, age FROM visits) "
                       "JOIN (SELECT user_id, device FROM visits) USING (user_id)")
    assert k > 0
    # A BI wrapper without an alias.
    rows = answer(gw, "SELECT * FROM (SELECT device, COUNT(*) AS n FROM visits "
                      "GROUP BY device) ORDER BY n DESC")
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)


def test_unaliased_subquery_in_training_sql(gw: Gateway) -> None:
    from gateway.sql.selection import select_training_rows

    sel = select_training_rows("SELECT age, converted FROM (SELECT * FROM visits)",
                               "converted", gw._context, gw._tables)
    assert [f.name for f in sel.features] == ["age"]


# -- a CSV column that is entirely empty ---------------------------------------------------------

def test_empty_csv_column_is_typed_by_the_policy(gw: Gateway) -> None:
    assert gw.executor.table_columns("visits")["spend"] == "float"
    (avg, total, count), = answer(gw, "SELECT AVG(spend), SUM(spend), COUNT(spend) "
                                      "FROM visits")
    assert abs(count) < 1 and abs(total) < 1
    assert avg is None or math.isfinite(avg)
    rows = answer(gw, "SELECT device, SUM(COALESCE(spend, 1)) AS s FROM visits "
                      "GROUP BY device")
    assert len(rows) == 3


def _all_null_sources(folder: Path) -> dict[str, str]:
    con = duckdb.connect()
    try:
        con.execute(f"COPY (SELECT range AS uid, NULL AS x FROM range(5)) "
                    f"TO '{folder / 'n.parquet'}' (FORMAT parquet)")
    finally:
        con.close()
    (folder / "n.json").write_text("".join(f'{{"uid": {i}, "x": null}}\n' for i in range(5)))
    (folder / "n.csv").write_text("uid,x\n" + "".join(f"{i},\n" for i in range(5)))
    return {s: str(folder / f"n.{s}") for s in ("parquet", "json", "csv")}


@pytest.mark.parametrize("kind", ["parquet", "json", "csv"])
@pytest.mark.parametrize("declared", ["int", "float", "date", "bool", "text"])
def test_all_null_columns_load_as_declared(tmp_path: Path, kind: str, declared: str) -> None:
    source = _all_null_sources(tmp_path)[kind]
    bounds = {"int": [0, 9], "float": [0, 9], "date": ["2024-01-01", "2024-12-31"]}
    col: dict[str, object] = {"type": declared}
    if declared in bounds:
        col["bounds"] = bounds[declared]
    path = write_policy(tmp_path, {
        "dataset": "nulls",
        "tables": {"n": {"source": source, "privacy_unit": "uid",
                         "columns": {"uid": {"type": "int", "role": "privacy_unit"},
                                     "x": col}}},
        "budget": {"dataset": {"epsilon": 100.0}, "per_analyst": {"epsilon": 100.0}}})
    with Gateway.open(path, state=tmp_path / "state.db") as g:
        assert g.executor.table_columns("n")["x"] == declared
        (c,), = [tuple(r) for r in g.query("SELECT COUNT(x) FROM n", analyst="a",
                                            epsilon=50.0).rows]
        assert abs(c) < 5


def test_a_csv_value_that_does_not_fit_the_declared_type_fails_at_load(tmp_path: Path
                                                                       ) -> None:
    (tmp_path / "bad.csv").write_text("uid,x\n1,3\n2,abc\n")
    path = write_policy(tmp_path, {
        "dataset": "bad",
        "tables": {"n": {"source": str(tmp_path / "bad.csv"), "privacy_unit": "uid",
                         "columns": {"uid": {"type": "int", "role": "privacy_unit"},
                                     "x": {"type": "int", "bounds": [0, 9]}}}},
        "budget": {"dataset": {"epsilon": 1.0}, "per_analyst": {"epsilon": 1.0}}})
    with pytest.raises(PolicyError) as err:
        Gateway.open(path, state=tmp_path / "state.db")
    assert "tables.n" in str(err.value)


def test_a_parenthesized_table_is_the_table(tmp_path: Path) -> None:
    """``FROM (visits) AS v`` (SmartNoise's tests write it) is the table, not a subquery."""
    with Gateway.open(web_policy(tmp_path), state=tmp_path / "s.db") as gw:
        for sql in ["SELECT COUNT(*) FROM (web.visits) AS c", "SELECT COUNT(*) FROM (visits)",
                    "SELECT v.device, COUNT(*) FROM (visits) v JOIN (countries) k "
                    "ON v.country = k.country GROUP BY 1"]:
            assert gw.query(sql, analyst="paren", epsilon=1.0).rows


def test_a_column_merged_by_using_is_the_left_column(tmp_path: Path) -> None:
    """After ``JOIN countries USING (country)`` an unqualified ``country`` is the merged
    column (as in PostgreSQL); a FULL or RIGHT join leaves it ambiguous."""
    with Gateway.open(web_policy(tmp_path), state=tmp_path / "s.db") as gw:
        r = gw.query("SELECT country, COUNT(*) AS n FROM visits JOIN countries USING (country) "
                     "GROUP BY country", analyst="using", epsilon=1.0)
        assert len(r.rows) == 33
        r = gw.query("SELECT region, country, COUNT(*) FROM visits LEFT JOIN countries "
                     "USING (country) GROUP BY region, country", analyst="using", epsilon=1.0)
        assert r.rows
        with pytest.raises(QueryRejected):
            gw.query("SELECT country, COUNT(*) FROM visits FULL JOIN countries USING (country) "
                     "GROUP BY country", analyst="using", epsilon=1.0)
