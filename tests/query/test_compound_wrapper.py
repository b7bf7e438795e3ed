"""A SELECT over a compound DP statement: ``SELECT ... FROM (A UNION ALL B) AS t ...``.

BI tools and users wrap a statement of several DP SELECTs in an outer query (filters,
ORDER BY, LIMIT, projections, arithmetic, aggregates over its rows).  When every SELECT
of the set operation is a DP query of its own, the outer query reads released noisy
rows only: post-processing.  The charge, the explanation and the cached release are
exactly those of the same statement unwrapped; a set operation of raw rows in FROM,
and a join of the released rows with another table, are refused before anything runs.
Real components throughout: the sample data and an in-process Gateway.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

from gateway import Gateway
from gateway.errors import QueryRejected
from tests.query.test_compound import MOBILE_TV, charges, ledger_events
from tests.sidechannel.compare import Mismatch, differences, report, run
from tests.sidechannel.data import VICTIM, write_world
from tests.sidechannel.shapes import Query, union_query
from tests.support import web_policy

BY_DEVICE = ("SELECT device, COUNT(*) AS n, AVG(spend) AS s FROM visits GROUP BY device "
             "UNION ALL SELECT 'all', COUNT(*), AVG(spend) FROM visits")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("wrapper")
    with Gateway.open(web_policy(folder), state=folder / "s.db") as g:
        yield g


# -- answers: post-processing of the unwrapped statement's release ------------------------

def test_wrappers_answer_from_the_unwrapped_release(gw: Gateway) -> None:
    plain = gw.query(MOBILE_TV, analyst="bi", epsilon=1.0)
    assert plain.epsilon_spent == 1.0 and not plain.cached
    n = dict(plain.rows)
    ci = plain.ci95[0][1]
    assert ci is not None

    def ask(sql: str) -> Any:
        r = gw.query(sql, analyst="bi", epsilon=1.0)
        assert r.cached and r.epsilon_spent == 0 and r.delta_spent == 0  # the same release
        return r

    star = ask(f"SELECT * FROM ({MOBILE_TV}) AS t")
    assert [(c.name, c.type) for c in star.columns] == [("device", "text"), ("n", "int")]
    assert star.rows == plain.rows and star.ci95 == plain.ci95 and star.noisy == (False, True)
    assert [a.column for a in star.accuracy] == ["n"]
    assert star.accuracy == plain.accuracy

    top = ask(f"SELECT * FROM ({MOBILE_TV}) t WHERE n > -1000 ORDER BY n DESC LIMIT 1")
    assert top.rows == [max(plain.rows, key=lambda row: row[1])]

    doubled = ask(f"SELECT device, n * 2 AS m FROM ({MOBILE_TV}) t ORDER BY m DESC")
    assert [c.name for c in doubled.columns] == ["device", "m"]
    assert sorted(doubled.rows) == sorted((d, 2 * v) for d, v in n.items())
    assert all(c == (None, 2 * ci) for c in doubled.ci95)  # |c|·h, exact

    total = ask(f"SELECT SUM(n) AS total, COUNT(*) AS k FROM ({MOBILE_TV}) t")
    assert total.rows == [(sum(n.values()), 2)]
    assert total.ci95 == [(None, None)] and total.noisy == (True, False)
    assert any("'total' has no per-cell ci95" in note for note in total.notes)

    for sql in (f"SELECT * FROM (({MOBILE_TV})) t",  # nested parentheses
                f"SELECT * FROM ({MOBILE_TV})",  # no alias
                f"SELECT * FROM (SELECT * FROM ({MOBILE_TV}) u WHERE n >= -1000) t",
                f"({MOBILE_TV}) ORDER BY n",  # the parenthesised statement, ordered
                f"(({MOBILE_TV}) ORDER BY 2 LIMIT 5)",
                f"SELECT t.device, t.n FROM ({MOBILE_TV}) t ORDER BY 1"):
        got = ask(sql)
        assert sorted(got.rows) == sorted(plain.rows), sql
        assert sorted(got.ci95) == sorted(plain.ci95), sql
    assert ask(f"({MOBILE_TV}) ORDER BY n").rows == sorted(plain.rows, key=lambda r: r[1])
    assert len(charges(gw, "bi")) == 1


def test_a_wrapper_first_pays_what_the_statement_costs(gw: Gateway) -> None:
    wrapped = f"SELECT * FROM ({BY_DEVICE}) AS t ORDER BY n DESC LIMIT 3"
    first = gw.query(wrapped, analyst="first", epsilon=0.8, delta=1e-6, mechanism="gaussian")
    assert not first.cached and len(first.rows) == 3
    alone = gw.explain(BY_DEVICE, epsilon=0.8, delta=1e-6, mechanism="gaussian")
    assert (first.epsilon_spent, first.delta_spent) == (alone.epsilon_cost, alone.delta_cost)
    [charge] = charges(gw, "first")
    assert charge["epsilon"] == alone.epsilon_cost and charge["delta"] == alone.delta_cost
    # The ledger holds the inner statement's events: each branch at its share.
    cplan = gw.compounds.plan(BY_DEVICE)
    assert cplan is not None
    cprep = gw.compounds.prepare(cplan, 0.8, 1e-6, "gaussian")
    events = [e.to_dict() for i in cprep.fresh for e in cprep.preps[i].cal.events]  # type: ignore[union-attr]
    assert ledger_events(gw, first.query_id) == events
    plain = gw.query(BY_DEVICE, analyst="first", epsilon=0.8, delta=1e-6,
                     mechanism="gaussian")
    assert plain.cached and plain.epsilon_spent == 0
    assert sorted(plain.rows, key=lambda r: -r[1])[:3] == first.rows
    assert len(charges(gw, "first")) == 1


def test_explain_itemises_the_inner_statement(gw: Gateway) -> None:
    wrapped = f"SELECT device, n * 10 AS n10, s FROM ({BY_DEVICE}) t WHERE n > 0"
    ex = gw.explain(wrapped, epsilon=0.5).to_dict()
    inner = gw.explain(BY_DEVICE, epsilon=0.5).to_dict()
    assert ex["branches"] == inner["branches"]
    assert (ex["epsilon_cost"], ex["delta_cost"]) == (inner["epsilon_cost"],
                                                      inner["delta_cost"])
    assert ex["aggregates"] == inner["aggregates"]
    assert ex["rewritten_sql"].startswith(inner["rewritten_sql"])
    assert "-- the SELECT over the UNION ALL (post-processing" in ex["rewritten_sql"]
    assert [a["column"] for a in ex["accuracy"]] == ["s"]  # passed through unchanged
    assert any("post-processing, no further charge" in n for n in ex["notes"])
    assert gw.output_columns(wrapped) == (["device", "n10", "s"], [False, True, True])


def test_a_with_in_front_is_read_by_the_branches(gw: Gateway) -> None:
    with_ = "WITH v AS (SELECT * FROM visits WHERE age > 30) "
    body = ("SELECT 'mobile' AS device, COUNT(*) AS n FROM v WHERE device = 'mobile' "
            "UNION ALL SELECT 'tv', COUNT(*) FROM v WHERE device = 'tv'")
    plain = gw.query(with_ + body, analyst="with", epsilon=0.6)
    for sql in (f"{with_}SELECT * FROM ({body}) AS t ORDER BY n",
                f"SELECT * FROM ({with_}{body}) AS t ORDER BY n",  # its own WITH, in FROM
                f"{with_}SELECT device FROM ({body}) t WHERE n >= -1000 ORDER BY n"):
        got = gw.query(sql, analyst="with", epsilon=0.6)
        assert got.cached, sql
        assert [r[0] for r in got.rows] == [r[0] for r in sorted(plain.rows,
                                                                   key=lambda r: r[1])], sql
    assert len(charges(gw, "with")) == 1


def test_postgres_dialect(gw: Gateway) -> None:
    sql = (f"SELECT device, n::float / 1000 AS k FROM ({MOBILE_TV}) AS t "
           "ORDER BY k DESC LIMIT 1")
    r = gw.query(sql, analyst="pg", epsilon=0.9, dialect="postgres")
    assert [c.name for c in r.columns] == ["device", "k"] and len(r.rows) == 1
    plain = gw.query(MOBILE_TV, analyst="pg", epsilon=0.9, dialect="postgres")
    assert plain.cached
    best = max(plain.rows, key=lambda row: row[1])
    assert r.rows == [(best[0], pytest.approx(best[1] / 1000))]
    h = plain.ci95[0][1]
    assert h is not None and r.ci95[0][1] == pytest.approx(h / 1000)


# -- half-widths: propagated when exact, never understated -------------------------------

def test_half_widths_through_the_outer_select(gw: Gateway) -> None:
    plain = gw.query(MOBILE_TV, analyst="cells", epsilon=1.0)
    h = plain.ci95[0][1]
    assert h is not None
    sql = (f"SELECT device, n, -n AS neg, n / 4 AS q, n + 7 AS p, ROUND(n, -1) AS r, "
           f"CAST(n AS BIGINT) AS c, n * n AS sq, CASE WHEN n > 0 THEN n END AS w "
           f"FROM ({MOBILE_TV}) t")
    r = gw.query(sql, analyst="cells", epsilon=1.0)
    assert r.cached
    for ci in r.ci95:
        assert ci == (None, h, h, h / 4, h, h + 10, h + 1, None, None)
    assert r.noisy == (False, True, True, True, True, True, True, True, True)
    for name in ("sq", "w"):
        assert any(f"{name!r} has no per-cell ci95" in note for note in r.notes)
    # A star with modifiers hides which value is which: no half-width at all.
    for sql in (f"SELECT * REPLACE (n * 1000 AS n) FROM ({MOBILE_TV}) t",
                f"SELECT * EXCLUDE (device) FROM ({MOBILE_TV}) t"):
        got = gw.query(sql, analyst="cells", epsilon=1.0)
        assert all(v is None for ci in got.ci95 for v in ci), sql
    # DISTINCT, GROUP BY over the rows: no row of its own, no half-width.
    grouped = gw.query(f"SELECT device, MAX(n) AS n FROM ({MOBILE_TV}) t GROUP BY device",
                       analyst="cells", epsilon=1.0)
    assert all(ci == (None, None) for ci in grouped.ci95)
    # INTERSECT / UNION compare rows: no per-row half-width, as unwrapped.
    both = ("SELECT device, COUNT(*) AS n FROM visits GROUP BY device INTERSECT "
            "SELECT device, COUNT(*) AS n FROM visits GROUP BY device")
    got = gw.query(f"SELECT device, n * 2 AS m FROM ({both}) t", analyst="cells",
                   epsilon=1.0)
    assert len(got.rows) == 4 and all(ci == (None, None) for ci in got.ci95)


# -- refusals: nothing runs, nothing is charged --------------------------------------------

REFUSED = [
    # a set operation of raw rows in FROM: the existing reason
    ("SELECT COUNT(*) FROM (SELECT country FROM visits UNION SELECT country FROM countries) t",
     "one user's rows could count in several branches"),
    ("SELECT COUNT(*) FROM (SELECT user_id FROM visits UNION ALL "
     "SELECT COUNT(*) FROM visits) t", "one user's rows could count in several branches"),
    ("SELECT * FROM (SELECT device FROM visits UNION ALL SELECT device FROM visits) t "
     "JOIN visits v ON v.device = t.device", "one user's rows could count in several branches"),
    ("(SELECT user_id FROM visits UNION ALL SELECT user_id FROM visits) ORDER BY 1",
     "only SELECT queries are allowed"),
    # released rows joined with a protected (or any other) table
    (f"SELECT * FROM ({MOBILE_TV}) t JOIN visits v ON v.device = t.device",
     "may read only its released rows"),
    (f"SELECT t.n FROM visits v JOIN ({MOBILE_TV}) t ON v.device = t.device",
     "may read only its released rows"),
    (f"SELECT * FROM ({MOBILE_TV}) t, countries", "may read only its released rows"),
    (f"SELECT * FROM (SELECT * FROM ({MOBILE_TV}) u JOIN visits v USING (device)) t",
     "may read only its released rows"),
    (f"SELECT * FROM ({MOBILE_TV}) a JOIN ({MOBILE_TV}) b ON a.device = b.device",
     "may read only its released rows"),
    (f"WITH u AS ({MOBILE_TV}) SELECT * FROM u", "cannot be a CTE"),
    # the outer SELECT is validated as any query, and bound before any charge
    (f"SELECT * FROM ({MOBILE_TV}) t WHERE n > (SELECT COUNT(*) FROM visits)",
     "subqueries are only allowed in FROM and JOIN"),
    (f"SELECT read_parquet('x') FROM ({MOBILE_TV}) t", "is not allowed"),
    (f"SELECT __dp_row FROM ({MOBILE_TV}) t", "reserved"),
    (f"SELECT nope FROM ({MOBILE_TV}) t", "cannot be applied to its columns"),
    (f"SELECT device, SUM(n) OVER () FROM ({MOBILE_TV}) t", "window functions"),
    # a refusal of a SELECT inside is said of that SELECT
    ("SELECT * FROM (SELECT COUNT(*) AS n FROM visits UNION ALL "
     "SELECT device FROM visits GROUP BY device) t", "is int in SELECT 1 but text in SELECT 2"),
    ("SELECT * FROM (SELECT COUNT(*) FROM visits UNION ALL SELECT 1) t",
     "SELECT 2 of the UNION ALL"),
]


@pytest.mark.parametrize(("sql", "reason"), REFUSED)
def test_refusals_run_and_charge_nothing(gw: Gateway, sql: str, reason: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    monkeypatch.setattr(gw.executor, "_run", lambda *a, **k: ran.append("run"))
    before = gw.ledger.charges()
    for call in (lambda: gw.query(sql, analyst="mallory", epsilon=1.0),
                 lambda: gw.explain(sql, epsilon=1.0),
                 lambda: gw.output_columns(sql)):
        with pytest.raises(QueryRejected) as err:
            call()
        assert reason in err.value.message, err.value.message
        assert err.value.hint and err.value.rule
        if err.value.span is not None:
            assert sql[err.value.span.start:err.value.span.end] == err.value.span.text
    assert ran == [] and gw.ledger.charges() == before


def test_the_join_refusal_says_what_to_do(gw: Gateway) -> None:
    with pytest.raises(QueryRejected) as err:
        gw.query(f"SELECT * FROM ({MOBILE_TV}) t JOIN visits v ON v.device = t.device",
                 analyst="mallory", epsilon=1.0)
    assert err.value.rule == "set_operation"
    assert "join inside each of its SELECTs" in (err.value.hint or "")
    with pytest.raises(QueryRejected) as raw:
        gw.query("SELECT * FROM (SELECT device FROM visits UNION ALL "
                 "SELECT device FROM visits) t", analyst="mallory", epsilon=1.0)
    assert raw.value.rule == "set_operation"
    assert "aggregate each part on its own" in (raw.value.hint or "")


# -- charge before read -------------------------------------------------------------------

def test_every_read_finds_the_one_charge(tmp_path: Path) -> None:
    state = tmp_path / "s.db"
    with Gateway.open(web_policy(tmp_path), state=state) as g:
        runs: list[tuple[bool, bool]] = []
        inner = g.executor._run  # type: ignore[attr-defined]

        def spy(sql: str, params: dict[str, Any], timeout_s: float | None,
                query_id: str | None) -> Any:
            tree = sqlglot.parse_one(sql, dialect="duckdb")
            committed = False
            if query_id is not None:
                with sqlite3.connect(state) as con:
                    committed = con.execute("SELECT COUNT(*) FROM charges WHERE query_id = ?",
                                            (query_id,)).fetchone()[0] == 1
            runs.append((any(t.name == "visits" for t in tree.find_all(exp.Table)),
                         committed))
            return inner(sql, params, timeout_s, query_id)

        g.executor._run = spy  # type: ignore[attr-defined]
        r = g.query(f"SELECT SUM(n) AS total FROM ({BY_DEVICE} UNION ALL "
                    "SELECT country, 0, 0.0 FROM countries) t", analyst="a", epsilon=1.0)
        assert r.epsilon_spent == 1.0 and len(r.rows) == 1
        protected = [c for p, c in runs if p]
        assert len(protected) == 2 and all(protected)
        assert len(g.ledger.charges()) == 1


# -- neighbouring datasets: D and D′ = D + one hostile unit --------------------------------

@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Gateway]]:
    root = tmp_path_factory.mktemp("wrapper_dd")
    gws = []
    for name, victim in (("d", False), ("d_prime", True)):
        policy = write_world(root / name, victim=victim)
        gws.append(Gateway.open(policy, state=root / name / "state.db"))
    try:
        yield gws[0], gws[1]
    finally:
        for g in gws:
            g.close()


AGGREGATES = {"t": ["COUNT(*)", "SUM(t.i)", "AVG(t.f)", "MEDIAN(t.k)", "STDDEV(t.f)",
                    "COUNT(DISTINCT t.uid)", "AVG(CASE WHEN t.s = 'abc' THEN 1 ELSE 0 END)",
                    "MAX(t.i)"],
              "t2": ["COUNT(*)", "SUM(t2.x)", "AVG(t2.j)", "QUANTILE_CONT(t2.x, 0.9)"]}
KEYS = {"t": "t.cat", "t2": "t2.tag"}  # public values (t2.tag's include NULL)
PREDICATES = ["t.s <> 'abc'", "t.g > 0", "TRY_CAST(t.s AS INT) > 3", "t.b",
              "LENGTH(t.s) > 2", "t.d < DATE '2024-01-01'"]


def plain_union(rng: random.Random) -> Query:
    """A compound statement of gated DP SELECTs that planning accepts (tables t and t2,
    bounded aggregates, public keys), with a shared WITH at times."""
    n_keys = rng.choice([0, 1])
    shared = rng.random() < 0.25
    parts = []
    for b in range(rng.randint(2, 3)):
        table = rng.choice(["t", "t", "t2"])
        conds = [f"{table}.uid = {VICTIM}"]
        if table == "t" and rng.random() < 0.5:
            conds.append(rng.choice(PREDICATES))
        items = [f"{KEYS[table]} AS k0"] if n_keys else []
        items += [f"{rng.choice(AGGREGATES[table])} AS a0", f"'b{b}' AS part"]
        source = f"v AS {table}" if shared and table == "t" else table
        group = " GROUP BY 1" if n_keys else ""
        parts.append(f"SELECT {', '.join(items)} FROM {source} "
                     f"WHERE {' AND '.join(conds)}{group}")
    op = rng.choice(["UNION ALL", "UNION ALL", "UNION ALL", "UNION", "EXCEPT"])
    sql = f" {op} ".join(parts)
    if shared:
        sql = "WITH v AS (SELECT * FROM t WHERE t.i > -2000) " + sql
    return Query(sql, f"plain {op.lower()}", n_keys, op == "UNION ALL",
                 rng.choice(["laplace", "laplace", "gaussian"]))


def wrapped_queries(seed: int, count: int) -> Iterator[tuple[Query, str]]:
    """Generated gated compound statements (tests/sidechannel/shapes.py's hostile grammar,
    and plain ones planning accepts), wrapped the ways BI tools and users wrap them; plus
    raw-row unions and joins, refused alike.  Each comes with the statement it wraps."""
    rng = random.Random(seed)
    gate = f"t.uid = {VICTIM}"
    for _ in range(count):
        q = union_query(rng) if rng.random() < 0.4 else plain_union(rng)
        inner, same = q.sql, q.keys_public
        shape = rng.randrange(9)
        if shape == 0:
            yield Query(f"SELECT * FROM ({inner}) AS w", f"star|{q.shape}", q.n_keys, same,
                        q.mechanism), inner
        elif shape == 1:
            yield Query(f"SELECT * FROM ({inner}) w ORDER BY 1 DESC LIMIT 3",
                        f"limit|{q.shape}", 0, same, q.mechanism), inner
        elif shape == 2:
            yield Query(f"SELECT part, a0 * 2 + 1 AS m, a0 FROM ({inner}) w ORDER BY m",
                        f"scaled|{q.shape}", 0, same, q.mechanism), inner
        elif shape == 3:
            yield Query(f"SELECT COUNT(*) AS c, SUM(a0) AS s, MAX(part) AS p FROM ({inner}) w",
                        f"aggregate|{q.shape}", 0, True, q.mechanism), inner
        elif shape == 4:
            yield Query(f"SELECT * FROM ({inner}) w WHERE a0 > 1", f"noisy filter|{q.shape}",
                        0, False, q.mechanism), inner
        elif shape == 5:
            yield Query(f"SELECT * FROM (SELECT * FROM (({inner})) u) w",
                        f"nested|{q.shape}", q.n_keys, same, q.mechanism), inner
        elif shape == 6:
            tail = "" if inner.startswith("WITH") else " ORDER BY 1"
            yield Query(f"({inner}){tail}", f"parenthesised|{q.shape}", q.n_keys, same,
                        q.mechanism), inner
        elif shape == 7:
            raw = (f"SELECT t.uid AS u FROM t WHERE {gate} UNION ALL "
                   f"SELECT t2.uid FROM t2 WHERE t2.uid = {VICTIM}")
            yield Query(f"SELECT COUNT(*) FROM ({raw}) w", "raw rows", 0, True,
                        q.mechanism), raw
        else:
            yield Query(f"SELECT * FROM ({inner}) w JOIN t ON t.uid = {VICTIM}",
                        f"join|{q.shape}", 0, True, q.mechanism), inner


def test_wrappers_look_alike_on_neighbouring_datasets(pair: tuple[Gateway, Gateway]) -> None:
    """The charge, the outcome's class (and refusal text), the columns and, when the
    public keys fix it, the released row count are the same on D and D′; the charge is
    the wrapped statement's."""
    d, d_prime = pair
    mismatches: list[Mismatch] = []
    accepted = count = 0
    kinds: set[str] = set()
    for q, inner in wrapped_queries(20240917, 64):
        count += 1
        on_d, on_d_prime = (run(g, q.sql, mechanism=q.mechanism, delta=q.delta,
                                n_keys=q.n_keys, keys_public=q.keys_public)
                            for g in (d, d_prime))
        accepted += on_d.accepted
        reasons = differences(on_d, on_d_prime)
        if reasons:
            mismatches.append(Mismatch(q.sql, q.shape, tuple(reasons), on_d, on_d_prime))
        if not on_d.accepted:
            continue
        kinds.add(q.shape.split("|")[0])
        for g in (d, d_prime):  # the cost is the unwrapped statement's, from planning alone
            wrapped = g.explain(q.sql, epsilon=1.0, delta=q.delta, mechanism=q.mechanism)
            alone = g.explain(inner, epsilon=1.0, delta=q.delta, mechanism=q.mechanism)
            assert (wrapped.epsilon_cost, wrapped.delta_cost) == \
                (alone.epsilon_cost, alone.delta_cost), q.sql
            assert wrapped.branches == alone.branches, q.sql
        assert (on_d.epsilon, on_d.delta) in ((wrapped.epsilon_cost, wrapped.delta_cost),
                                              (0.0, 0.0)), q.sql
    if mismatches:
        pytest.fail(report(mismatches, count, accepted), pytrace=False)
    assert accepted >= count // 4, f"only {accepted} of {count} accepted"
    assert {"star", "scaled", "aggregate", "nested", "parenthesised", "limit"} <= kinds, kinds
