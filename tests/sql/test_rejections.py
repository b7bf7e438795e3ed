"""What the gateway refuses, and what it must keep answering.

The rejection corpus (``rejection_corpus.yaml`` plus a few generated cases) lists
queries over ``policies/web.yaml`` that are not differentially private, that could
read files, change the engine or fail on data, or that the planner cannot show to
be safe.  Every one must be refused by ``Gateway.plan`` (which never touches data)
*and* by ``Gateway.query`` without executing anything, charging anything or
changing any budget, with a message and a hint a person can act on.

The acceptance corpus is the other side of the contract: ordinary analyst SQL
(ordinals, quoted names, schemas, CTEs, joins to public tables and on the unit,
HAVING/ORDER BY/LIMIT on noisy values, date keys, clamps, ...) must plan and return
finite numbers.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import Gateway
from gateway.errors import QueryRejected
from gateway.sql.parse import MAX_NESTING, MAX_TREE_DEPTH

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data"
WEB_POLICY = ROOT / "policies" / "web.yaml"
CORPUS = Path(__file__).with_name("rejection_corpus.yaml")
MAX_SQL_LENGTH = 20_000  # policies/web.yaml keeps the default limits.max_sql_length

# What must never reach an analyst: Python internals or an engine's own words.
LEAKS = re.compile(
    r"Traceback|File \"|line \d+, in|<class '|sqlglot\.|duckdb\.|_duckdb|"
    r"(Binder|Parser|Catalog|Conversion|Invalid Input|Out of Range) Error",
)


def _generated() -> list[dict[str, Any]]:
    """Cases that are clearer built in code than written out."""
    deep = MAX_NESTING + 36
    chain = MAX_TREE_DEPTH + 40
    over = "SELECT COUNT(*) FROM visits WHERE " + " OR ".join(
        f"age = {i % 90}" for i in range(MAX_SQL_LENGTH // 8))
    return [
        {"sql": "SELECT COUNT(*) FROM visits WHERE " + "(" * 60 + "age > 30" + ")" * 60,
         "rule": "too_deep", "note": "60 nested parentheses: a clean rejection, no RecursionError"},
        {"sql": "SELECT SUM(" + "CASE WHEN age > 30 THEN " * deep + "1" + " END" * deep
                + ") FROM visits",
         "rule": "too_deep", "note": "deeply nested CASE"},
        {"sql": "SELECT SUM(" + "CASE WHEN age > 30 THEN 1 ELSE " * deep + "0" + " END" * deep
                + ") FROM visits",
         "rule": "too_deep", "note": "deeply nested CASE in ELSE branches"},
        {"sql": "SELECT COUNT(*) FROM visits WHERE country = $$'$$ OR " + "(" * 40 + "age > 1"
                + ")" * 40 + " OR country <> $$'$$",
         "rule": "too_deep", "note": "parentheses hidden from a naive scanner by a $$ string"},
        {"sql": "SELECT SUM(" + " + ".join(["age"] * chain) + ") FROM visits",
         "rule": "too_deep", "note": "a long operator chain builds a deep tree"},
        {"sql": "SELECT COUNT(*) FROM visits WHERE age" + "::BIGINT" * chain + " > 1",
         "rule": "too_deep", "note": "a long chain of casts"},
        {"sql": "SELECT COUNT(*) FROM visits WHERE " + "NOT " * 3000 + "converted",
         "rule": "too_deep", "note": "thousands of NOTs overflow a recursive parser"},
        {"sql": "SELECT SUM(" + "- " * 3000 + "age) FROM visits",
         "rule": "too_deep", "note": "thousands of unary minuses"},
        {"sql": "SELECT COUNT(*) FROM visits WHERE " + " AND ".join(["age > 1"] * chain),
         "rule": "too_deep", "note": "a very long AND chain"},
        {"sql": over, "rule": "too_long", "note": "over-long SQL text"},
        {"sql": "SELECT COUNT(*) FROM visits\x00", "rule": "parse", "note": "NUL byte"},
        {"sql": "SELECT COUNT(*) FROM visits WHERE country = 'a\x00b'", "rule": "parse",
         "note": "NUL byte inside a string literal"},
        {"sql": "", "rule": "parse", "note": "empty text"},
        {"sql": "  \n\t  ", "rule": "parse", "note": "only whitespace"},
        {"sql": ";", "rule": "parse", "note": "only a semicolon"},
    ]


def _load_cases() -> list[dict[str, Any]]:
    data = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))
    cases = list(data["cases"]) + _generated()
    for case in cases:
        assert set(case) <= {"sql", "rule", "message", "note"}, case
        assert isinstance(case["sql"], str) and case.get("rule") and case.get("note"), case
    return cases


CASES = _load_cases()


def _case_id(i: int, case: dict[str, Any]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", case["note"].lower()).strip("-")[:40]
    return f"{i:03d}-{case['rule']}-{slug}"


def big_policy(folder: Path) -> Path:
    """policies/web.yaml with absolute sources and budgets that never run out."""
    data = yaml.safe_load(WEB_POLICY.read_text())
    data["tables"]["visits"]["source"] = str(SAMPLE / "visits.parquet")
    data["tables"]["countries"]["source"] = str(SAMPLE / "countries.csv")
    data["budget"] = {"dataset": {"epsilon": 1e9, "delta": 0.01},
                      "per_analyst": {"epsilon": 1e9, "delta": 0.01}}
    path = folder / "web-big.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("rejections")
    with Gateway.open(big_policy(folder), state=folder / "state.db") as g:
        yield g


@pytest.fixture(scope="module")
def sample_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The sample policy itself, with its real (small) budgets."""
    folder = tmp_path_factory.mktemp("sample")
    with Gateway.open(WEB_POLICY, state=folder / "state.db") as g:
        yield g


@contextlib.contextmanager
def nothing_runs(gw: Gateway) -> Iterator[list[str]]:
    """Make any attempt to run SQL on the engine fail loudly (and be recorded)."""
    calls: list[str] = []
    ex = gw.executor

    def refuse(name: str) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"executor.{name} was called for a query that must be "
                                 "refused before execution")
        return run

    saved = {name: ex.__dict__.get(name) for name in ("execute", "check")}
    for name in saved:
        if hasattr(ex, name):
            setattr(ex, name, refuse(name))
    try:
        yield calls
    finally:
        for name, value in saved.items():
            if value is None:
                ex.__dict__.pop(name, None)
            else:
                setattr(ex, name, value)


def check_rejection(err: QueryRejected, sql: str, case: dict[str, Any] | None = None) -> None:
    """The error is one an analyst can read and act on, and reveals nothing internal."""
    assert isinstance(err.message, str) and err.message.strip(), "empty message"
    assert isinstance(err.hint, str) and len(err.hint.strip()) >= 8, \
        f"no actionable hint for {err.message!r}: {err.hint!r}"
    assert err.hint.strip() != err.message.strip()
    for text in (err.message, err.hint, err.detail):
        assert not LEAKS.search(text), f"internal detail leaked: {text!r}"
        assert len(text) < 1000
    assert isinstance(err.rule, str) and re.fullmatch(r"[a-z_]+", err.rule)
    if err.span is not None:
        s = err.span
        assert 0 <= s.start <= s.end <= len(sql), s
        assert sql[s.start:s.end] == s.text, (s, sql[s.start:s.end])
    body = err.to_dict()
    json.dumps(body)
    assert body["status"] == 400 and body["rule"] == err.rule
    if case is not None:
        assert err.rule == case["rule"], f"rule {err.rule!r} ({err.message}) for: {sql[:200]}"
        if "message" in case:
            assert case["message"].lower() in err.message.lower(), err.message


def test_corpus_is_large_and_unique() -> None:
    sqls = [c["sql"] for c in CASES]
    assert len(sqls) >= 70
    assert len(set(sqls)) == len(sqls), "duplicate cases"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(i, c) for i, c in enumerate(CASES)])
def test_refused_before_execution_at_no_cost(gw: Gateway, case: dict[str, Any]) -> None:
    sql = case["sql"]
    # 1. Planning (parse, validate, analyze) refuses it; planning never reads data.
    with nothing_runs(gw) as calls, pytest.raises(QueryRejected) as planned:
        gw.plan(sql)
    assert not calls
    check_rejection(planned.value, sql, case)

    # 2. So does a real query, which charges nothing and runs nothing.
    analyst = "mallory-" + str(abs(hash(sql)) % 10**9)
    gw.ledger.ensure_analyst(analyst)
    charges = gw.ledger.charges()
    budget = gw.budget(analyst)
    with nothing_runs(gw) as calls, pytest.raises(QueryRejected) as queried:
        gw.query(sql, analyst=analyst, epsilon=1.0, delta=1e-6)
    assert not calls
    check_rejection(queried.value, sql, case)
    assert queried.value.message == planned.value.message
    assert gw.ledger.charges() == charges
    assert gw.budget(analyst) == budget
    assert gw.budget(analyst)["epsilon_spent"] == 0

    # 3. The refusal is audited, with nothing charged.
    entries = gw.audit(analyst=analyst)
    assert entries, "the rejection was not audited"
    last = entries[-1]
    assert last["outcome"] == QueryRejected.code
    assert last["epsilon"] == 0 and last["delta"] == 0


def test_explain_refuses_the_same_way(gw: Gateway) -> None:
    for case in CASES[::7]:
        with nothing_runs(gw), pytest.raises(QueryRejected) as err:
            gw.explain(case["sql"], epsilon=1.0, delta=1e-6)
        check_rejection(err.value, case["sql"], case)


def test_rejections_are_deterministic(gw: Gateway) -> None:
    """The same text is refused the same way every time (nothing depends on state)."""
    for case in CASES[::5]:
        seen = set()
        for _ in range(2):
            with pytest.raises(QueryRejected) as err:
                gw.plan(case["sql"])
            seen.add((err.value.rule, err.value.message, err.value.hint))
        assert len(seen) == 1


def test_sample_policy_refuses_at_no_cost(sample_gw: Gateway) -> None:
    """The corpus holds against the shipped policy file too (its real budgets)."""
    before = sample_gw.budget("eve")
    for case in CASES[::3]:
        with nothing_runs(sample_gw), pytest.raises(QueryRejected) as err:
            sample_gw.query(case["sql"], analyst="eve", epsilon=0.5)
        check_rejection(err.value, case["sql"], case)
    assert sample_gw.budget("eve") == before
    assert sample_gw.ledger.charges() == []


# -- casts become TRY_CAST ----------------------------------------------------------

CAST_QUERIES = [
    "SELECT COUNT(*) AS n FROM visits WHERE CAST(country AS INT) > 1",
    "SELECT COUNT(*) AS n FROM visits WHERE country::DATE > DATE '2020-01-01'",
    "SELECT SUM(CAST(spend AS BIGINT)) AS s FROM visits",
    "SELECT COUNT(*) AS n FROM visits WHERE CAST(spend * 1e300 AS BIGINT) > 1",
    "SELECT COUNT(*) AS n FROM visits WHERE CAST(spend AS DECIMAL(3, 1)) > 1",
    "SELECT COUNT(*) AS n FROM (SELECT CAST(country AS INT) AS c FROM visits) t WHERE c > 0",
]


@pytest.mark.parametrize("sql", CAST_QUERIES)
def test_casts_of_data_become_try_cast(gw: Gateway, sql: str) -> None:
    """A cast that can fail on some value is not refused but made total: TRY_CAST
    (NULL on failure), so no error can reveal that such a value exists."""
    rewritten = gw.explain(sql, epsilon=1.0).rewritten_sql
    assert "TRY_CAST(" in rewritten.upper()
    bare_casts = re.findall(r"(?<![A-Z_])CAST\((\w+)", rewritten.upper())
    assert not [c for c in bare_casts if c in ("COUNTRY", "SPEND")], rewritten
    r = gw.query(sql, analyst="caster", epsilon=2.0)
    assert r.epsilon_spent > 0
    assert all(isinstance(v, numbers.Real) and math.isfinite(v) for v in r.rows[0])


def test_cast_of_a_constant_stays_a_cast(gw: Gateway) -> None:
    """Constants are not data: their cast is left alone (and fails, if it fails, on the
    constant alone, before anything is charged)."""
    tree = gw.plan("SELECT COUNT(*) FROM visits WHERE age > CAST('20' AS INT)").relation
    sql = tree.sql(dialect="duckdb").upper()
    assert "CAST('20' AS INT" in sql and "TRY_CAST('20'" not in sql


# -- the acceptance corpus -------------------------------------------------------------

# (sql, delta, expected number of rows or None, note)
ACCEPTED: list[tuple[str, float, int | None, str]] = [
    ("SELECT device, COUNT(*) AS n FROM visits GROUP BY 1", 0.0, 4, "GROUP BY ordinal"),
    ("SELECT COUNT(*) FILTER (WHERE converted) AS conv, COUNT(*) AS n FROM visits", 0.0, 1,
     "FILTER clause"),
    ('SELECT "device", COUNT(*) AS "N" FROM "visits" GROUP BY "device"', 0.0, 4,
     "quoted identifiers"),
    ("SELECT COUNT(*) AS n FROM public.visits", 0.0, 1, "public schema"),
    ("SELECT COUNT(*) AS n FROM main.visits", 0.0, 1, "main schema"),
    ("SELECT COUNT(*) AS n FROM web.visits", 0.0, 1, "dataset as schema"),
    ('SELECT COUNT(*) AS n FROM "web"."public"."visits"', 0.0, 1, "dataset.schema.table"),
    ("SELECT public.visits.device, COUNT(*) AS n FROM public.visits "
     "GROUP BY public.visits.device", 0.0, 4, "schema-qualified columns"),
    ("SELECT TOP 2 device, COUNT(*) AS n FROM visits GROUP BY device ORDER BY n DESC", 0.0, 2,
     "T-SQL TOP"),
    ("SELECT VAR(spend) AS v, STD(spend) AS s, STDEV(age) AS t, VARP(age) AS p, "
     "STDEVP(age) AS q FROM visits", 0.0, 1, "VAR, STD, STDEV, VARP, STDEVP"),
    ("SELECT device, COUNT(*) AS n FROM visits GROUP BY device ORDER BY n * 2 DESC", 0.0, 4,
     "ORDER BY an expression over an alias"),
    ("SELECT AVG(spend) * PI() AS a FROM visits WHERE duration_s > PI()", 0.0, 1, "PI()"),
    ("SELECT COUNT(*) AS n FROM (SELECT * FROM visits WHERE age > 30)", 0.0, 1,
     "subquery without an alias"),
    ("SELECT device, AVG(spend) AS a FROM (SELECT * FROM visits WHERE age > 30) t "
     "GROUP BY device", 0.0, 4, "row-wise subquery"),
    ("WITH adults AS (SELECT device, spend FROM visits WHERE age >= 21) "
     "SELECT device, SUM(spend) AS s FROM adults GROUP BY device", 0.0, 4, "CTE"),
    ("SELECT c.region, COUNT(*) AS n FROM visits v JOIN countries c ON v.country = c.country "
     "GROUP BY c.region", 0.0, 6, "join to a public table"),
    ("SELECT region, COUNT(*) AS n FROM visits JOIN countries USING (country) GROUP BY region",
     0.0, 6, "JOIN ... USING"),
    ("SELECT v.device, c.region, COUNT(*) AS n FROM visits AS v LEFT JOIN countries AS c "
     "ON v.country = c.country GROUP BY v.device, c.region", 0.0, 24, "LEFT JOIN, two keys"),
    ("SELECT COUNT(*) AS n FROM visits a JOIN visits b ON a.user_id = b.user_id", 0.0, 1,
     "protected self-join on the unit"),
    ("SELECT device, COUNT(*) AS n FROM visits GROUP BY device HAVING COUNT(*) > 0", 0.0, None,
     "HAVING on a noisy count"),
    ("SELECT device, COUNT(*) AS n FROM visits GROUP BY device ORDER BY n DESC", 0.0, 4,
     "ORDER BY alias"),
    ("SELECT device, COUNT(*) AS n FROM visits GROUP BY device ORDER BY 2 DESC", 0.0, 4,
     "ORDER BY ordinal"),
    ("SELECT device, COUNT(*) AS n FROM visits GROUP BY device ORDER BY COUNT(*) DESC "
     "LIMIT 2 OFFSET 1", 0.0, 2, "ORDER BY aggregate, LIMIT/OFFSET"),
    ("SELECT SUM(CASE WHEN converted THEN spend ELSE 0 END) AS s FROM visits", 0.0, 1,
     "CASE inside SUM"),
    ("SELECT device, SUM(spend) / COUNT(*) AS avg_spend FROM visits GROUP BY device", 0.0, 4,
     "arithmetic over aggregates"),
    ("SELECT date_trunc('month', visit_date) AS m, COUNT(*) AS n FROM visits GROUP BY 1 "
     "ORDER BY 1", 0.0, 12, "date_trunc key"),
    ("SELECT extract(month FROM visit_date) AS m, COUNT(*) AS n FROM visits GROUP BY 1", 0.0, 12,
     "extract key"),
    ("SELECT year(visit_date) AS y, COUNT(*) AS n FROM visits GROUP BY y", 0.0, 1, "year key"),
    ("SELECT date_part('quarter', visit_date) AS q, COUNT(*) AS n FROM visits GROUP BY 1",
     0.0, 4, "date_part key"),
    ("SELECT DISTINCT country FROM visits", 0.0, 33,
     "country has public values: DISTINCT lists them all, needs no delta"),
    ("SELECT COUNT(DISTINCT user_id) AS users FROM visits", 0.0, 1, "count units"),
    ("SELECT STDDEV(spend) AS sd, VARIANCE(age) AS v, STDDEV_POP(duration_s) AS sdp, "
     "VAR_SAMP(spend) AS vs FROM visits", 0.0, 1, "spread"),
    ("SELECT SUM(COALESCE(spend, 0)) AS s FROM visits", 0.0, 1, "COALESCE"),
    ("SELECT SUM(LEAST(GREATEST(LN(age - 18), 0), 3)) AS s FROM visits", 0.0, 1,
     "LEAST/GREATEST clamp an unbounded expression"),
    ("SELECT COUNT(*) AS n FROM visits WHERE age BETWEEN 20 AND 30", 0.0, 1, "BETWEEN"),
    ("SELECT COUNT(*) AS n FROM visits WHERE device IN ('tv', 'tablet')", 0.0, 1, "IN list"),
    ("SELECT COUNT(*) AS n FROM visits WHERE country LIKE 'U%' OR country ILIKE 'g%'", 0.0, 1,
     "LIKE / ILIKE"),
    ("SELECT COUNT(*) AS n FROM visits WHERE spend IS NULL", 0.0, 1, "IS NULL"),
    ("SELECT AVG(converted::int) AS rate FROM visits", 0.0, 1, "boolean cast in AVG"),
    ("SELECT AVG(CASE WHEN converted THEN 1 ELSE 0 END) AS rate FROM visits", 0.0, 1,
     "boolean CASE in AVG"),
    ("FROM visits SELECT COUNT(*) AS n", 0.0, 1, "FROM-first syntax"),
    ("SELECT converted, AVG(duration_s) AS d FROM visits GROUP BY converted", 0.0, 2,
     "boolean key has a public domain"),
    ("SELECT FLOOR(duration_s / 600) AS bucket, COUNT(*) AS n FROM visits GROUP BY 1", 1e-6,
     None, "partition selection with delta"),
    ("SELECT ROUND(AVG(spend), 2) AS a FROM visits", 0.0, 1, "ROUND over a noisy value"),
    ("SELECT COUNT(*) AS n FROM visits; -- trailing comment", 0.0, 1,
     "a trailing semicolon and comment"),
]


@pytest.mark.parametrize("sql,delta,n_rows,note", ACCEPTED, ids=[a[3] for a in ACCEPTED])
def test_accepted(gw: Gateway, sql: str, delta: float, n_rows: int | None, note: str) -> None:
    plan = gw.plan(sql)
    assert plan.public_query is None
    r = gw.query(sql, analyst="alice", epsilon=5.0, delta=delta)
    assert r.rows, "no rows released"
    if n_rows is not None:
        assert len(r.rows) == n_rows
    for row in r.rows:
        assert len(row) == len(r.columns)
    numeric = [v for row in r.rows for v in row
               if isinstance(v, numbers.Real) and not isinstance(v, bool)]
    assert all(math.isfinite(v) for v in numeric), r.rows
    if plan.aggs:
        assert numeric, "no numbers released"
        assert r.epsilon_spent > 0 or r.cached
    else:  # only keys of a public domain: nothing data-dependent is released
        assert r.epsilon_spent == 0


def test_accepted_order_by_is_applied_to_noisy_values(gw: Gateway) -> None:
    r = gw.query("SELECT device, COUNT(*) AS n FROM visits GROUP BY device ORDER BY n DESC",
                 analyst="alice", epsilon=5.0)
    counts = [row[1] for row in r.rows]
    assert counts == sorted(counts, reverse=True)


def test_public_only_query_is_free(gw: Gateway) -> None:
    r = gw.query("SELECT region, COUNT(*) AS n FROM countries GROUP BY region ORDER BY region",
                 analyst="alice")
    assert r.epsilon_spent == 0 and r.delta_spent == 0
    assert len(r.rows) == 6 and sum(int(n) for _, n in r.rows) == 33


def test_constant_query_without_from_is_refused(gw: Gateway) -> None:
    """``SELECT 1`` reads nothing private, but the gateway only answers queries over the
    policy's tables; it says so and suggests one (it does not run arbitrary SQL)."""
    with pytest.raises(QueryRejected) as err:
        gw.plan("SELECT 1")
    assert "FROM" in err.value.message
    assert "visits" in (err.value.hint or "")


# -- extreme bounds and public values -----------------------------------------------------------

HUGE_SENSITIVITY = [
    "SELECT SUM(COALESCE(spend, 1e308)) AS s FROM visits",
    "SELECT SUM(spend * 1e305) AS s FROM visits",
    "SELECT AVG(COALESCE(spend, 1e308)) AS a FROM visits",
    "SELECT VARIANCE(exp(spend)) AS v FROM visits",
]


@pytest.mark.parametrize("sql", HUGE_SENSITIVITY)
def test_overflowing_sensitivity_is_a_rejection(gw: Gateway, sql: str) -> None:
    charges = gw.ledger.charges()
    with nothing_runs(gw), pytest.raises(QueryRejected) as err:
        gw.query(sql, analyst="mallory", epsilon=1.0)
    check_rejection(err.value, sql)
    assert gw.ledger.charges() == charges


def test_public_query_values_are_plain_python(gw: Gateway) -> None:
    r = gw.query("SELECT CAST(NULL AS INT) AS x, region, COUNT(*) AS n FROM countries "
                 "GROUP BY region ORDER BY region", analyst="alice")
    assert r.rows[0][0] is None
    assert all(type(v) in (int, float, str, bool, type(None)) for row in r.rows for v in row)
