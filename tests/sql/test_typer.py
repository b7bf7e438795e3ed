"""The gateway's own typing of row-level expressions (gateway/sql/typer.py).

Every implicit conversion of a *data* value is refused before anything runs, in
every clause; what the typer calls total really cannot raise; the types it
assigns agree with DuckDB's where both have one; and the last check on the
finished engine tree (verify.py) refuses an unguarded function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlglot import exp

from gateway import Gateway
from gateway.errors import InternalError, QueryRejected
from gateway.sql.verify import verify_total
from tests.support import web_policy


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("typer")
    g = Gateway.open(web_policy(folder), state=folder / "s.db")
    yield g
    g.close()


MISMATCHES = [
    # the red-team examples
    "SELECT DISTINCT CASE visit_date WHEN age THEN 'x' ELSE 'y' END AS k FROM visits",
    "SELECT COUNT(*) FROM visits WHERE CASE WHEN country THEN TRUE END",
    "SELECT device, COUNT(*) FROM visits GROUP BY device HAVING SUM(CASE WHEN visit_date = age "
    "THEN 1 ELSE 0 END) > 3",
    "SELECT device FROM visits GROUP BY device ORDER BY COUNT(*) FILTER (WHERE visit_date = age)",
    "SELECT SUM(YEAR(age)) FROM visits",
    # every clause
    "SELECT COUNT(*) FROM visits WHERE country = 5",
    "SELECT COUNT(*) FROM visits WHERE age = 'abc'",
    "SELECT COUNT(*) FROM visits WHERE visit_date > age",
    "SELECT COUNT(*) FROM visits WHERE converted = 'maybe'",
    "SELECT COUNT(*) FROM visits WHERE country AND converted",
    "SELECT COUNT(*) FROM visits WHERE NOT age",
    "SELECT COUNT(*) FROM visits WHERE age IN ('a', 'b')",
    "SELECT COUNT(*) FROM visits WHERE country BETWEEN 1 AND 2",
    "SELECT COUNT(*) FROM visits WHERE age LIKE 'a%'",
    "SELECT COUNT(*) FROM visits v JOIN countries c ON v.country = c.country AND v.age = c.country",
    "SELECT SUM(CASE WHEN converted THEN age ELSE 'none' END) FROM visits",
    "SELECT SUM(COALESCE(age, country)) FROM visits",
    "SELECT AVG(NULLIF(age, country)) FROM visits",
    "SELECT COUNT(LEAST(visit_date, age)) FROM visits",
    "SELECT COUNT(*) FILTER (WHERE device) FROM visits",
    "SELECT COUNT(*) FROM visits GROUP BY visit_date + country",
    "SELECT COUNT(*) FROM (SELECT country = age AS b, user_id FROM visits) t",
    "SELECT SUM(MONTH(spend)) FROM visits",
    "SELECT COUNT(*) FROM visits WHERE LOWER(age) = 'x'",
    "SELECT COUNT(*) FROM visits WHERE visit_date = 'not a date'",
]


@pytest.mark.parametrize("sql", MISMATCHES)
def test_data_conversions_are_refused_before_anything_runs(gw: Gateway, sql: str) -> None:
    charges = len(gw.ledger.charges())
    with pytest.raises(QueryRejected) as err:
        gw.query(sql, analyst="typer", epsilon=1.0, delta=1e-6)
    assert err.value.rule in ("type_mismatch", "constant"), err.value.message
    assert err.value.hint
    assert len(gw.ledger.charges()) == charges


ACCEPTED_TOTAL = [
    # comparisons of matching types stay visible to the optimizer (no guard)
    ("SELECT COUNT(*) FROM visits WHERE age > 30 AND country = 'DE' AND converted",
     "TRY(", False),
    ("SELECT COUNT(*) FROM visits WHERE visit_date >= '2024-03-01'", "TRY(", False),
    ("SELECT COUNT(*) FROM visits WHERE spend > age", "TRY(", False),
    # arithmetic and functions are guarded
    ("SELECT COUNT(*) FROM visits WHERE age + 1 > 30", "TRY(", True),
    ("SELECT COUNT(*) FROM visits WHERE LOWER(country) = 'de'", "TRY(", True),
    # an int column against a decimal literal converts the column: guarded
    ("SELECT COUNT(*) FROM visits WHERE age = 0.00000000000000000000000000000000001", "TRY(",
     True),
]


@pytest.mark.parametrize("sql,marker,present", ACCEPTED_TOTAL)
def test_guards_sit_exactly_where_totality_is_not_proven(gw: Gateway, sql: str, marker: str,
                                                         present: bool) -> None:
    rows = gw.explain(sql, epsilon=1.0).rewritten_sql.split('"__dp_groups"')[0]
    assert (marker in rows) is present


# Expressions whose type the gateway assigns by its own rules; DuckDB must agree.
AGREE = [
    "i", "f", "s", "d", "ts", "b", "i + 1", "i * 2", "i / 2", "i + f", "f * f", "-f",
    "d + 1", "d - d", "d + INTERVAL 1 DAY", "ts - ts",
    "CASE WHEN b THEN i ELSE f END", "CASE WHEN b THEN s END", "COALESCE(i, 2)",
    "LEAST(i, f)", "GREATEST(d, d)", "NULLIF(s, 'x')", "TRY_CAST(s AS BIGINT)",
    "TRY_CAST(i AS VARCHAR)", "TRY_CAST(f AS DATE)", "YEAR(d)", "MONTH(ts)",
    "EXTRACT(year FROM d)", "date_part('epoch', ts)", "date_trunc('month', d)",
    "strftime(d, '%Y')", "LOWER(s)", "LENGTH(s)", "SUBSTRING(s, 1, 2)", "s || 'x'",
    "ABS(i)", "ROUND(f)", "SQRT(f)", "LN(f)", "POWER(f, 2)", "i > 3", "s LIKE 'a%'",
    "b AND i > 1", "i IN (1, 2)", "d BETWEEN '2024-01-01' AND '2024-02-01'", "ISNAN(f)",
]
_DUCK = {"BIGINT": "int", "INTEGER": "int", "HUGEINT": "int", "DOUBLE": "float",
         "VARCHAR": "text", "BOOLEAN": "bool", "DATE": "date", "TIMESTAMP": "timestamp",
         "INTERVAL": "interval"}


def test_types_agree_with_duckdb(tmp_path: Path) -> None:
    from gateway.sql.relations import FromAnalyzer
    from gateway.sql.typer import TO_POLICY

    folder = tmp_path
    (folder / "t.csv").write_text("u,i,f,s,d,ts,b\n1,2,1.5,a,2024-01-01,2024-01-01 10:00:00,true\n")
    from tests.support import write_policy
    policy = write_policy(folder, {
        "dataset": "ty", "tables": {"t": {"source": str(folder / "t.csv"), "privacy_unit": "u",
                                          "columns": {
            "u": {"type": "int"}, "i": {"type": "int"}, "f": {"type": "float"},
            "s": {"type": "text"}, "d": {"type": "date"}, "ts": {"type": "timestamp"},
            "b": {"type": "bool"}}}},
        "budget": {"dataset": {"epsilon": 10}, "per_analyst": {"epsilon": 10}}})
    con = duckdb.connect()
    con.execute("CREATE TABLE t (u BIGINT, i BIGINT, f DOUBLE, s VARCHAR, d DATE, "
                "ts TIMESTAMP, b BOOLEAN)")
    with Gateway.open(policy, state=folder / "s.db") as g:
        for text in AGREE:
            sql = f"SELECT COUNT(*) FROM t WHERE {text} IS NULL"
            tree = g.plan(sql)  # types every row-level expression on the way
            assert tree is not None
            rel = FromAnalyzer(sql, g._context)
            select = exp.maybe_parse(f"SELECT {text} FROM t", dialect="duckdb")
            scope = rel.scope(select, {})
            ours = rel.typer(scope).type_of(select.expressions[0]).kind
            (duck,), = con.execute(f"SELECT typeof({text}) FROM t").fetchall() or \
                [(None,)]
            if duck is None:
                con.execute("INSERT INTO t VALUES (NULL, NULL, NULL, NULL, NULL, NULL, NULL)")
                (duck,), = con.execute(f"SELECT typeof({text}) FROM t").fetchall()
            duck_kind = "float" if str(duck).startswith("DECIMAL") else _DUCK.get(str(duck))
            assert TO_POLICY.get(ours, ours) == duck_kind, (text, ours, duck)


def test_last_check_refuses_an_unguarded_function() -> None:
    tree = exp.maybe_parse(
        'WITH "__dp_rows" AS (SELECT LOWER(country) AS k FROM visits) SELECT * FROM __dp_rows',
        dialect="duckdb")
    with pytest.raises(InternalError):
        verify_total(tree)
    guarded = exp.maybe_parse(
        'WITH "__dp_rows" AS (SELECT TRY(LOWER(country)) AS k FROM visits WHERE age > 3) '
        "SELECT * FROM __dp_rows", dialect="duckdb")
    verify_total(guarded)


@pytest.mark.parametrize("sql", [
    "SELECT COUNT(*) FROM visits WHERE country || country = 'DEDE'",
    "SELECT COUNT(*) FROM (SELECT user_id, CONCAT(country, device) AS s FROM visits) t",
])
def test_concatenating_two_values_is_refused(gw: Gateway, sql: str) -> None:
    """Joining a value with itself doubles it; chained through subqueries one unit's long
    strings would make the work grow exponentially."""
    with pytest.raises(QueryRejected) as err:
        gw.plan(sql)
    assert err.value.rule == "concatenation"
    gw.plan("SELECT COUNT(*) FROM visits WHERE country || '-x' = 'DE-x'")


def test_decimal_comparisons_are_guarded(gw: Gateway) -> None:
    sql = ("SELECT COUNT(*) FROM visits WHERE TRY_CAST(age AS DECIMAL(38,0)) > "
           "TRY_CAST(spend AS DECIMAL(38,37))")
    rows = gw.explain(sql, epsilon=1.0).rewritten_sql.split('"__dp_groups"')[0]
    assert "TRY(" in rows
