"""Red team (issue 10): schema-qualified / quoted names, UNION [ALL] of DP SELECTs, per-cell
ci95, NULL group keys and ``limits.max_public_groups``, USING-merged join columns and
parenthesized tables, DP quantiles and COUNT(DISTINCT col).

D and D' are neighbouring datasets: D' is D plus one victim (uid 999) with hostile values
(int64 extremes, NULL, NaN, ±inf, the largest DATE, text that fails casts, undeclared and
NULL public keys, hundreds of rows).

Findings (tests that FAIL until fixed):

* ``test_using_join_is_not_a_data_dependent_error`` / ``test_using_join_oracle_*`` /
  ``test_using_join_recovers_a_victims_exact_value`` (critical): ``JOIN ... USING (c)``
  makes the engine compare the two ``c`` columns with DuckDB's *implicit* casts, and the
  gateway's typer never sees that comparison (it types and guards ``ON`` conditions only:
  ``relations.FromAnalyzer.scope`` calls ``typer.condition`` on ``join.args["on"]``).  A
  protected DATE met with a public TIMESTAMP key is cast DATE -> TIMESTAMP, which fails
  for years > 294276; a protected VARCHAR met with an INTEGER is cast to INTEGER, which
  fails on text that is not a number.  The public side can be any public subquery
  (``SELECT DISTINCT TIMESTAMP '2024-01-05' AS d FROM p`` is a key), and the protected side
  a row-wise subquery (``CASE WHEN <predicate> THEN DATE '5881580-07-10' ELSE d END AS
  d``), so *any* predicate on any row becomes an error / no-error bit at the minimum ε.
  Verified on the demo server: user 42's exact age in 7 queries at ε = 1e-4 each.  Fix:
  type the equalities USING implies like ON conditions (refuse kinds that differ, or
  rewrite USING to a typed, guarded ON); the verifier should see the join condition.

What held (tests that PASS and keep it covered): the same attacks written with ON; the
charge of UNION ALL statements (one composed charge, identical SELECTs share one release,
a repeat is free and identical, 17 SELECTs and set operations inside FROM are refused
before any charge); second spellings of a table (quoted case, unknown catalogs, a CTE
hiding a qualified table are refused; accepted qualifiers share the same release);
released keys with NULL in the public values and with ``max_public_groups`` (identical on
D and D', refused at δ = 0); the per-cell ci95 of counts and sums (a function of the
calibration only) and which cells have one; RIGHT JOIN of a protected and a public table;
every other observable of a battery of queries over the new features; per-unit movement
of the engine's statistics for COUNT(DISTINCT col) under USING self-joins and NULL keys.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
import yaml
from sqlglot import exp

from gateway import Gateway
from gateway.errors import GatewayError
from gateway.query.noise import calibrate
from gateway.sql.rewrite import rewrite
from tests.support import read_permit

VICTIM = 999
M, L0 = 4, 2
ENGINE = {"int": "BIGINT", "float": "DOUBLE", "text": "VARCHAR", "date": "DATE",
          "bool": "BOOLEAN"}
FAR_DATE = "DATE '5881580-07-10'"  # a valid DATE that no TIMESTAMP can hold

COLUMNS: dict[str, dict[str, Any]] = {
    "uid": {"type": "int", "role": "privacy_unit"},
    "x": {"type": "int", "bounds": [0, 10]},
    "f": {"type": "float", "bounds": [0, 100]},
    "dev": {"type": "text", "public_values": ["a", "b", None]},
    "s": {"type": "text"},
    "d": {"type": "date", "bounds": ["2024-01-01", "2024-01-31"]},
    "k": {"type": "text", "public_values_from": "p.k"},
    "y": {"type": "int", "bounds": [0, 3]},
}


def _others() -> list[tuple[str, ...]]:
    rng = np.random.default_rng(7)
    rows: list[tuple[str, ...]] = []
    for u in range(1, 61):
        for _ in range(int(rng.integers(1, 4))):
            rows.append((str(u), str(int(rng.integers(0, 11))), repr(float(rng.uniform(0, 100))),
                         ["'a'", "'b'", "NULL"][int(rng.integers(0, 3))],
                         f"'{int(rng.integers(0, 4))}'",  # text that casts to an integer
                         f"DATE '2024-01-{int(rng.integers(1, 32)):02d}'",
                         ["'K1'", "'K2'", "'K3'"][int(rng.integers(0, 3))],
                         str(int(rng.integers(0, 4)))))
    return rows


def _victim() -> list[tuple[str, ...]]:
    xs = ["7", "7", "7", "NULL", "9223372036854775807", "-9223372036854775808"]
    fs = ["'nan'::DOUBLE", "'inf'::DOUBLE", "1.7e308", "NULL", "'-0.0'::DOUBLE", "100.0"]
    devs = ["'a'", "NULL", "'zz'", "''", "'b'", "'a'"]
    ds = [FAR_DATE, "DATE 'infinity'", "NULL", "DATE '1999-01-01'", "DATE '2024-01-31'",
          FAR_DATE]
    ks = ["'K1'", "NULL", "'KX'", "'K2'", "'K3'", "'K1'"]
    return [(str(VICTIM), xs[i % 6], fs[i % 6], devs[i % 6],
             "'abc'" if i % 2 else f"'v{i}'", ds[i % 6], ks[i % 6], xs[(i + 1) % 6])
            for i in range(300)]


def _world(folder: Path, rows: Sequence[Sequence[str]]) -> Gateway:
    """``t`` (protected, schema ``analytics``) and ``p(k unique, region)`` (public)."""
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        con.execute("CREATE TABLE t (" + ", ".join(f"{n} {ENGINE[c['type']]}"
                                                   for n, c in COLUMNS.items()) + ")")
        con.execute("INSERT INTO t VALUES " + ", ".join("(" + ", ".join(r) + ")" for r in rows))
        con.execute(f"COPY t TO '{folder / 't.parquet'}' (FORMAT parquet)")
        con.execute("COPY (SELECT * FROM (VALUES ('K1', 'north'), ('K2', 'south'), "
                    "('K3', 'north')) v(k, region)) TO "
                    f"'{folder / 'p.parquet'}' (FORMAT parquet)")
    finally:
        con.close()
    policy = {
        "dataset": "rt10",
        "tables": {
            "t": {"source": str(folder / "t.parquet"), "schema": "analytics",
                  "privacy_unit": "uid", "max_rows_per_unit": M, "max_groups_per_unit": L0,
                  "columns": COLUMNS},
            "p": {"source": str(folder / "p.parquet"), "public": True},
        },
        "budget": {"dataset": {"epsilon": 1e12, "delta": 0.5},
                   "per_analyst": {"epsilon": 1e12, "delta": 0.5}},
        "defaults": {"epsilon": 1.0, "delta": 0.0, "mechanism": "laplace"},
        "limits": {"query_timeout_s": 20.0, "min_epsilon_per_query": 1e-6,
                   "max_public_groups": 50},
    }
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return Gateway.open(path, state=folder / f"state-{time.time_ns()}.db")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Gateway]]:
    root = tmp_path_factory.mktemp("issue10")
    others = _others()
    d, d_prime = _world(root / "d", others), _world(root / "d_prime", [*others, *_victim()])
    yield d, d_prime
    d.close()
    d_prime.close()


def _outcome(fn: Callable[[], Any]) -> tuple[str, str]:
    try:
        fn()
    except GatewayError as e:
        return e.code, re.sub(r"[0-9a-f]{32}", "<id>", e.message)
    except Exception as e:  # an HTTP 500
        return "crash", f"{type(e).__name__}: {e}"
    return "ok", ""


def _run(gw: Gateway, sql: str, **kw: Any) -> tuple[str, str]:
    return _outcome(lambda: gw.query(sql, analyst="mallory", **kw))


# -- FINDING: USING compares with the engine's implicit casts, untyped and unguarded ---------

USING_ERRORS = [
    # protected DATE = public TIMESTAMP key: DATE -> TIMESTAMP fails on the victim's far date
    "SELECT COUNT(*) AS n FROM t JOIN (SELECT DISTINCT TIMESTAMP '2024-01-05' AS d FROM p) q "
    "USING (d)",
    "SELECT COUNT(*) AS n FROM t LEFT JOIN (SELECT DISTINCT TIMESTAMP '2024-01-05' AS d "
    "FROM p) q USING (d)",
    "SELECT COUNT(*) AS n FROM (SELECT DISTINCT TIMESTAMP '2024-01-05' AS d FROM p) q "
    "JOIN analytics.t USING (d)",
    # protected VARCHAR = public INTEGER key: 'abc' -> INTEGER fails (others hold digits)
    "SELECT COUNT(*) AS n FROM t JOIN (SELECT DISTINCT 5 AS s FROM p) q USING (s)",
]


@pytest.mark.parametrize("sql", USING_ERRORS)
def test_using_join_is_not_a_data_dependent_error(pair: tuple[Gateway, Gateway], sql: str
                                                  ) -> None:
    """FINDING (critical).  Whether the query fails must not depend on the victim."""
    d, d_prime = pair
    assert _run(d, sql) == _run(d_prime, sql)


ORACLES = {
    # public TIMESTAMP key, protected side made far only where the predicate holds
    "date_vs_timestamp":
        "SELECT COUNT(*) AS n FROM (SELECT uid, CASE WHEN uid = 999 AND x <= 10 AND x > {v} THEN "
        f"{FAR_DATE} ELSE DATE '2024-01-05' END AS d FROM t) a "
        "JOIN (SELECT DISTINCT TIMESTAMP '2024-01-05' AS d FROM p) q USING (d)",
    # public INTEGER key, protected text made non-numeric only where the predicate holds
    "text_vs_int":
        "SELECT COUNT(*) AS n FROM (SELECT uid, CASE WHEN uid = 999 AND x <= 10 AND x > {v} "
        "THEN 'abc' ELSE '1' END AS s FROM t) a JOIN (SELECT DISTINCT 1 AS s FROM p) q USING (s)",
}


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_using_join_oracle_does_not_depend_on_a_predicate(pair: tuple[Gateway, Gateway],
                                                          name: str) -> None:
    """FINDING (critical).  The victim's largest x in [0, 10] is 7 (its other values are
    NULL and int64 extremes): the outcome of ``x > v`` must be the same for every v."""
    _, d_prime = pair
    outcomes = {v: _run(d_prime, ORACLES[name].format(v=v), epsilon=1e-6)
                for v in (0, 6, 7, 100)}
    assert len(set(outcomes.values())) == 1, outcomes


def test_using_join_recovers_a_victims_exact_value(pair: tuple[Gateway, Gateway]) -> None:
    """FINDING (critical).  Binary search on the error bit: the victim's largest x in
    [0, 10] (7) in four queries at ε = 1e-6 each.  A safe gateway gives the same outcome
    every time, so the search ends at 0."""
    _, d_prime = pair
    lo, hi = 0, 10
    while lo < hi:
        mid = (lo + hi) // 2
        failed = _run(d_prime, ORACLES["date_vs_timestamp"].format(v=mid),
                      epsilon=1e-6)[0] != "ok"
        lo, hi = (mid + 1, hi) if failed else (lo, mid)
    assert lo != 7, "the victim's exact value was recovered through the USING error bit"


def test_using_self_join_is_not_a_membership_oracle(pair: tuple[Gateway, Gateway]) -> None:
    """FINDING (critical).  No public table needed: a self-join on the unit with a second
    USING column of another kind (VARCHAR vs BIGINT) fails iff the victim is present.  (With
    a predicate on single rows the bit is noisy only through which M rows the keyed hash
    keeps before the join.)"""
    d, d_prime = pair
    sql = ("SELECT COUNT(*) AS n FROM (SELECT uid, CASE WHEN uid = 999 THEN 'abc' ELSE '1' "
           "END AS s FROM t) a JOIN (SELECT uid, y AS s FROM t) b USING (uid, s)")
    assert _run(d, sql) == _run(d_prime, sql)


# -- HELD: the same attacks written with ON are typed and guarded --------------------------

ON_FORMS = [
    "SELECT COUNT(*) AS n FROM t JOIN (SELECT DISTINCT TIMESTAMP '2024-01-05' AS d FROM p) q "
    "ON t.d = q.d",
    "SELECT COUNT(*) AS n FROM (SELECT uid, CASE WHEN uid = 999 AND x > 0 THEN "
    f"{FAR_DATE} ELSE d END AS d FROM t) a "
    "JOIN (SELECT DISTINCT TIMESTAMP '2024-01-05' AS d FROM p) q ON a.d = q.d",
]


@pytest.mark.parametrize("sql", ON_FORMS)
def test_on_join_with_converted_kinds_is_guarded(pair: tuple[Gateway, Gateway], sql: str
                                                 ) -> None:
    d, d_prime = pair
    assert _run(d, sql) == _run(d_prime, sql) == ("ok", "")


def test_on_join_text_with_int_is_refused(pair: tuple[Gateway, Gateway]) -> None:
    d, _ = pair
    code, _ = _run(d, "SELECT COUNT(*) AS n FROM t JOIN (SELECT DISTINCT 5 AS s FROM p) q "
                      "ON t.s = q.s")
    assert code == "query_rejected"


# -- HELD: every other observable over the new features ------------------------------------

def _observe(gw: Gateway, sql: str, **kw: Any) -> dict[str, Any]:
    try:
        r = gw.query(sql, analyst="mallory", **kw)
    except GatewayError as e:
        return {"error": e.code, "message": re.sub(r"[0-9a-f]{32}", "<id>", e.message)}
    noisy = list(r.noisy)
    keys = sorted(repr([v for v, n in zip(row, noisy, strict=True) if not n])
                  for row in r.rows)
    # ci95 of counts and sums is the calibration's; of ratios, post-processing of noisy
    # values: compare which cells have one, and the values of the count/sum columns.
    return {"charge": (r.epsilon_spent, r.delta_spent),
            "columns": [(c.name, c.type) for c in r.columns], "rows": len(r.rows),
            "keys": keys, "noisy": noisy, "notes": list(r.notes),
            "ci_cells": sorted({tuple(c is None for c in ci) for ci in r.ci95}),
            "accuracy": [(a.column, a.mechanism, a.noise_scale) for a in r.accuracy]}


BATTERY = [
    ("SELECT dev, COUNT(*) AS n, SUM(x) AS sx, AVG(f) AS af FROM analytics.t GROUP BY dev", {}),
    ("SELECT COALESCE(dev, 'none') AS dd, COUNT(*) AS n FROM t GROUP BY 1", {}),
    ("SELECT NULLIF(dev, 'a') AS u, COUNT(*) AS n FROM t GROUP BY 1", {}),
    ("SELECT region, COUNT(*) AS n FROM t LEFT JOIN p USING (k) GROUP BY region", {}),
    ("SELECT k, COUNT(*) AS n, SUM(x) AS sx FROM t RIGHT JOIN p USING (k) GROUP BY k", {}),
    ("SELECT k, COUNT(*) AS n FROM p LEFT JOIN t USING (k) GROUP BY k", {}),
    ("SELECT x, d, COUNT(*) AS n FROM t GROUP BY x, d", {}),  # 341 > 50 groups, δ = 0
    ("SELECT dev, x, y, COUNT(*) AS n FROM t GROUP BY dev, x, y", {"delta": 1e-5}),
    ("SELECT dev, MEDIAN(f) AS m, MIN(x) AS mn, MAX(d) AS mx FROM t GROUP BY dev", {}),
    ("SELECT dev, APPROX_QUANTILES(f, 4) AS q, QUANTILE_CONT(x, [0.1, 0.9]) AS r FROM t "
     "GROUP BY dev", {}),
    ("SELECT dev, COUNT(DISTINCT s) AS ds, COUNT(DISTINCT k) AS dk FROM t GROUP BY dev", {}),
    ("SELECT COUNT(DISTINCT a.s) AS n FROM t a JOIN analytics.t b USING (uid)", {}),
    ("SELECT c.dev, COUNT(*) AS n FROM (analytics.t) AS c GROUP BY c.dev", {}),
    ("SELECT dev, COUNT(*) AS n FROM t GROUP BY dev UNION ALL SELECT 'zz', COUNT(*) FROM t",
     {}),
    ("SELECT dev, SUM(x) AS n FROM t GROUP BY dev EXCEPT SELECT dev, COUNT(*) FROM t "
     "GROUP BY dev ORDER BY 1", {}),
    ("SELECT MEDIAN(f) AS m FROM t UNION ALL SELECT AVG(f) FROM t UNION ALL "
     "SELECT COUNT(DISTINCT s) FROM t", {}),
    ("SELECT dev, ROUND(AVG(f), 1) AS r FROM t GROUP BY dev UNION ALL "
     "SELECT dev, STDDEV(f) FROM t GROUP BY dev", {}),
    ("SELECT x, d, COUNT(*) AS n FROM t GROUP BY x, d UNION ALL "
     "SELECT 1, DATE '2024-01-01', COUNT(*) FROM t", {"delta": 1e-5}),
    ("SELECT region AS r, COUNT(*) AS n FROM p GROUP BY region UNION ALL SELECT region, "
     "COUNT(*) FROM t JOIN p USING (k) GROUP BY region ORDER BY n DESC LIMIT 2", {}),
]


@pytest.mark.parametrize(("sql", "kw"), BATTERY)
def test_victim_changes_nothing_but_noisy_values(pair: tuple[Gateway, Gateway], sql: str,
                                                 kw: dict[str, Any]) -> None:
    d, d_prime = pair
    assert _observe(d, sql, **kw) == _observe(d_prime, sql, **kw)


def test_count_and_sum_ci95_are_the_calibrations(pair: tuple[Gateway, Gateway]) -> None:
    d, d_prime = pair
    sql = "SELECT dev, COUNT(*) AS n, SUM(x) * 2 + 1 AS s FROM t GROUP BY dev"
    a = d.query(sql, analyst="mallory", epsilon=0.7)
    b = d_prime.query(sql, analyst="mallory", epsilon=0.7)
    assert a.ci95 == b.ci95 and len({ci for ci in a.ci95}) == 1
    assert a.ci95[0][0] is None and a.ci95[0][1] is not None and a.ci95[0][2] is not None


# -- HELD: charges of compound statements --------------------------------------------------

def _spent(gw: Gateway, analyst: str) -> float:
    return float(gw.budget(analyst)["epsilon_spent"])


def test_union_all_is_one_composed_charge(pair: tuple[Gateway, Gateway]) -> None:
    d, _ = pair
    who = f"c{time.time_ns()}"
    one = "SELECT COUNT(*) AS n FROM t WHERE x > 3"
    r = d.query(f"{one} UNION ALL SELECT SUM(y) FROM t UNION ALL {one}", analyst=who,
                epsilon=0.6)
    assert r.epsilon_spent == pytest.approx(0.6) and _spent(d, who) == pytest.approx(0.6)
    assert r.rows[0] == r.rows[2]  # identical SELECTs share one release
    again = d.query(f"{one} UNION ALL SELECT SUM(y) FROM t UNION ALL {one} ORDER BY 1",
                    analyst=who, epsilon=0.6)
    assert again.cached and again.epsilon_spent == 0.0
    assert sorted(again.rows) == sorted(r.rows)
    assert _spent(d, who) == pytest.approx(0.6)


@pytest.mark.parametrize("sql", [
    " UNION ALL ".join(f"SELECT COUNT(*) AS n FROM t WHERE x > {i}" for i in range(17)),
    "WITH c AS (SELECT uid, x FROM t UNION ALL SELECT uid, x FROM t) "
    "SELECT COUNT(*) AS n FROM c",
    "SELECT COUNT(*) AS n FROM (SELECT uid FROM t UNION ALL SELECT uid FROM t) u",
])
def test_compound_refusals_charge_nothing(pair: tuple[Gateway, Gateway], sql: str) -> None:
    d, _ = pair
    who = f"r{time.time_ns()}"
    assert _run(d, sql)[0] == "query_rejected"
    assert _spent(d, who) == 0.0


# -- HELD: second spellings of a table ------------------------------------------------------

@pytest.mark.parametrize("sql", [
    'SELECT COUNT(*) AS n FROM "T"',
    "SELECT COUNT(*) AS n FROM memory.main.t",
    "SELECT COUNT(*) AS n FROM other.t",
    "SELECT COUNT(*) AS n FROM analytics.p",
    "WITH t AS (SELECT * FROM p) SELECT COUNT(*) AS n FROM main.t",
    "SELECT COUNT(*) AS n FROM information_schema.tables",
])
def test_unknown_spellings_are_refused(pair: tuple[Gateway, Gateway], sql: str) -> None:
    d, _ = pair
    assert _run(d, sql)[0] == "query_rejected"


def test_accepted_spellings_share_one_release(pair: tuple[Gateway, Gateway]) -> None:
    d, _ = pair
    who = f"n{time.time_ns()}"
    first = d.query("SELECT COUNT(*) AS n FROM T WHERE y = 2", analyst=who, epsilon=0.31)
    assert first.epsilon_spent == pytest.approx(0.31)
    for name in ("analytics.t", "main.t", "public.t", "rt10.t", "rt10.public.t",
                 "Analytics.T"):
        r = d.query(f"SELECT COUNT(*) AS n FROM {name} WHERE y = 2", analyst=who,
                    epsilon=0.31)
        assert r.cached and r.rows == first.rows, name
    assert _spent(d, who) == pytest.approx(0.31)


# -- HELD: the engine's statistics move by at most the calibrated sensitivity ---------------

def _engine(gw: Gateway, sql: str) -> tuple[Any, Any, dict[str, Any]]:
    plan = gw.plan(sql)
    cal = calibrate(plan, 1.0, 1e-3, "laplace")
    tree = rewrite(plan, cal.grids, gw.executor)
    salted = any(True for _ in tree.find_all(exp.Placeholder))
    res = gw.executor.execute(tree, permit=read_permit(gw),
                              params={"salt": 7} if salted else None)
    return plan, cal, dict(zip(res.names, res.columns, strict=True))


@pytest.mark.parametrize("sql", [
    "SELECT COUNT(*), SUM(a.x), COUNT(DISTINCT b.s) FROM t a JOIN t b USING (uid)",
    "SELECT a.dev, COUNT(*), SUM(b.f), COUNT(DISTINCT a.s) FROM t a LEFT JOIN analytics.t b "
    "USING (uid) GROUP BY a.dev",
    "SELECT k, COUNT(*), SUM(x), COUNT(DISTINCT s) FROM t RIGHT JOIN p USING (k) GROUP BY k",
    "SELECT NULLIF(dev, 'a') AS u, COUNT(*), COUNT(DISTINCT k) FROM t GROUP BY 1",
    "SELECT CASE WHEN x > 5 THEN dev END AS kk, COUNT(*), COUNT(DISTINCT s) FROM t GROUP BY 1",
])
def test_one_unit_moves_statistics_within_sensitivity(pair: tuple[Gateway, Gateway], sql: str
                                                      ) -> None:
    runs = [_engine(g, sql) for g in pair]
    plan, cal, _ = runs[0]
    for s in plan.stats:
        l1, _ = s.sensitivity(plan.max_rows, plan.max_groups)
        step = cal.stats[s.name].grid.step
        maps = []
        for p, _, cols in runs:
            n = len(next(iter(cols.values())))
            maps.append({repr(tuple(cols[k.name][i] for k in p.keys)): float(cols[s.name][i])
                         for i in range(n)})
        a, b = maps
        moved = sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b)) * step
        assert moved <= l1 + 1e-9, (s.name, s.kind, moved, l1)
