"""Several DP results in one statement (UNION ALL & co), in process, real components.

Each branch is planned by the single-query pipeline; the statement's ε/δ is split over
the branches that release noisy statistics and charged once, as the composition of
every branch's events, before any branch reads a protected row.  Repeats are free,
refusals run and charge nothing, and the charge equals what the samplers were given.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

from gateway import Gateway
from gateway.errors import BackendError, BudgetExceeded, QueryRejected
from gateway.privacy import calibration
from gateway.query import perturb
from gateway.query.compound import MAX_BRANCHES
from tests.query import selection_spy
from tests.support import ROOT, web_policy

MOBILE_TV = ("SELECT 'mobile' AS device, COUNT(*) AS n FROM visits WHERE device = 'mobile' "
             "UNION ALL SELECT 'tv', COUNT(*) FROM visits WHERE device = 'tv'")
CTES = ("WITH a AS (SELECT country, COUNT(*) AS n FROM visits GROUP BY country), "
        "b AS (SELECT device, AVG(spend) AS s FROM visits GROUP BY device) "
        "SELECT * FROM a UNION ALL SELECT * FROM b ORDER BY 2 DESC LIMIT 5")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("compound")
    with Gateway.open(web_policy(folder), state=folder / "s.db") as g:
        yield g


def charges(gw: Gateway, analyst: str) -> list[dict[str, Any]]:
    return [c for c in gw.ledger.charges() if c["analyst"] == analyst]


def ledger_events(gw: Gateway, query_id: str) -> list[dict[str, Any]]:
    rows = gw.ledger._read("SELECT events FROM charges WHERE query_id = ?", (query_id,))
    assert len(rows) == 1
    return list(json.loads(rows[0][0]))


# -- answers ------------------------------------------------------------------------------

def test_union_all_answers_like_its_branches(gw: Gateway) -> None:
    r = gw.query(MOBILE_TV, analyst="answers", epsilon=2000.0)
    assert [c.name for c in r.columns] == ["device", "n"]
    assert [c.type for c in r.columns] == ["text", "int"]
    assert [row[0] for row in r.rows] == ["mobile", "tv"]
    # Each branch alone, at its share (ε/2), is (nearly) exact at this ε.
    for (_, n), device in zip(r.rows, ("mobile", "tv"), strict=True):
        alone = gw.query(f"SELECT COUNT(*) FROM visits WHERE device = '{device}'",
                         analyst="answers", epsilon=1000.0).rows[0][0]
        assert abs(n - alone) <= 3
    assert r.epsilon_spent == 2000.0 and r.delta_spent == 0.0 and not r.cached
    [acc] = r.accuracy
    assert acc.column == "n" and acc.mechanism == "discrete_laplace"
    assert acc.noise_scale == pytest.approx(20 / 1000.0)  # sensitivity M = 20 at ε/2
    assert len(r.ci95) == 2 and all(ci[1] is not None for ci in r.ci95)


def test_ctes_order_by_and_limit_run_on_the_noisy_results(gw: Gateway) -> None:
    r = gw.query(CTES, analyst="ctes", epsilon=1.0)
    assert [c.name for c in r.columns] == ["country", "n"]
    assert [c.type for c in r.columns] == ["text", "float"]  # COUNT ∪ AVG: float
    assert len(r.rows) == 5
    values = [row[1] for row in r.rows]
    assert values == sorted(values, reverse=True)
    assert r.epsilon_spent == 1.0
    assert len(charges(gw, "ctes")) == 1


def test_union_intersect_except_are_post_processing(gw: Gateway) -> None:
    both = ("SELECT device FROM visits WHERE age > 30 GROUP BY device UNION "
            "SELECT device FROM visits WHERE age <= 30 GROUP BY device ORDER BY 1")
    r = gw.query(both, analyst="sets", epsilon=1.0)
    assert r.rows == [("desktop",), ("mobile",), ("tablet",), ("tv",)]
    assert r.epsilon_spent == 0 and charges(gw, "sets") == []  # public domains: free
    gone = ("SELECT country FROM countries EXCEPT "
            "SELECT country FROM visits GROUP BY country")
    assert gw.query(gone, analyst="sets", epsilon=1.0).rows == []
    twice = ("SELECT device, COUNT(*) AS n FROM visits GROUP BY device INTERSECT "
             "SELECT device, COUNT(*) AS n FROM visits GROUP BY device")
    r = gw.query(twice, analyst="sets", epsilon=1.0)
    # Identical SELECTs share one release (and one share of ε): the same noisy rows.
    assert len(r.rows) == 4 and r.epsilon_spent == 1.0
    ex = gw.explain(twice, epsilon=1.0).to_dict()
    assert [b["epsilon_cost"] for b in ex["branches"]] == [1.0, 0.0]
    assert ex["branches"][1]["same_release_as"] == 1


def test_postgres_dialect_and_parenthesised_branches(gw: Gateway) -> None:
    sql = ("(SELECT device, COUNT(*)::float AS n FROM visits GROUP BY device ORDER BY n DESC "
           "LIMIT 2) UNION ALL (SELECT 'all', COUNT(*) FROM visits) ORDER BY n LIMIT 3")
    r = gw.query(sql, analyst="pg", epsilon=1.0, dialect="postgres")
    assert [c.name for c in r.columns] == ["device", "n"] and len(r.rows) == 3
    assert r.rows[-1][0] == "all"  # the total is the largest
    assert r.epsilon_spent == 1.0


# -- the budget ----------------------------------------------------------------------------

def test_one_charge_composed_of_every_branch(gw: Gateway) -> None:
    sql = ("SELECT device, SUM(spend) AS x FROM visits GROUP BY device UNION ALL "
           "SELECT country, AVG(age) FROM visits GROUP BY country UNION ALL "
           "SELECT CAST(duration_s AS VARCHAR), COUNT(*) FROM visits GROUP BY duration_s "
           "UNION ALL SELECT country, 0 FROM countries")
    eps, delta = 0.9, 1e-6
    r = gw.query(sql, analyst="composed", epsilon=eps, delta=delta)
    [charge] = charges(gw, "composed")
    assert charge["epsilon"] == r.epsilon_spent and charge["delta"] == r.delta_spent
    # Three DP SELECTs share ε; only the one with partition selection spends δ; the
    # public SELECT costs nothing.
    cplan = gw.compounds.plan(sql)
    assert cplan is not None
    events: list[Any] = []
    for b in cplan.branches[:3]:
        prep = gw.prepare(b.sql, eps / 3, delta if "duration_s" in b.sql else 0.0, "laplace")
        assert prep.cal is not None
        events.extend(prep.cal.events)
    assert [e.to_dict() for e in events] == ledger_events(gw, r.query_id)
    assert r.epsilon_spent == pytest.approx(sum(e.epsilon for e in events), rel=1e-12)
    assert r.delta_spent == pytest.approx(delta)
    assert r.epsilon_spent <= eps and r.delta_spent <= delta
    ex = gw.explain(sql, epsilon=eps, delta=delta).to_dict()
    assert [b["kind"] for b in ex["branches"]] == ["dp", "dp", "dp", "public"]
    assert sum(b["epsilon_cost"] for b in ex["branches"]) == pytest.approx(ex["epsilon_cost"])
    assert ex["epsilon_cost"] == r.epsilon_spent and ex["delta_cost"] == r.delta_spent
    assert {a["branch"] for a in ex["aggregates"]} == {1, 2, 3}
    assert ex["partition_selection"]["branches"][0]["branch"] == 3


def test_a_free_branch_takes_no_share(gw: Gateway) -> None:
    sql = ("SELECT device, COUNT(*) AS n FROM visits GROUP BY device UNION ALL "
           "SELECT country, 1 FROM countries UNION ALL "
           "SELECT device, SUM(0) FROM visits GROUP BY device")
    ex = gw.explain(sql, epsilon=0.5).to_dict()
    assert [b["kind"] for b in ex["branches"]] == ["dp", "public", "public_domains"]
    assert ex["branches"][0]["epsilon_cost"] == 0.5  # the whole ε: the others are free
    assert gw.query(sql, analyst="free", epsilon=0.5).epsilon_spent == 0.5


def test_repeats_are_free_and_cached(gw: Gateway) -> None:
    first = gw.query(MOBILE_TV, analyst="repeat", epsilon=0.7)
    again = gw.query(MOBILE_TV, analyst="someone-else", epsilon=0.7)
    assert again.cached and again.epsilon_spent == 0 and again.rows == first.rows
    # Other post-processing of the same SELECTs reads the same release, free.
    ordered = gw.query(MOBILE_TV + " ORDER BY n LIMIT 1", analyst="repeat", epsilon=0.7)
    assert ordered.cached and ordered.rows == [min(first.rows, key=lambda row: row[1])]
    assert len(charges(gw, "repeat")) == 1 and charges(gw, "someone-else") == []
    assert not gw.query(MOBILE_TV, analyst="repeat", epsilon=0.8).cached  # another ε


# -- refusals -------------------------------------------------------------------------------

REFUSED = [
    (" UNION ALL ".join(["SELECT COUNT(*) FROM visits"] * (MAX_BRANCHES + 1)),
     f"at most {MAX_BRANCHES} SELECTs"),
    ("SELECT COUNT(*) AS n FROM visits UNION ALL SELECT device FROM visits GROUP BY device",
     "column 1 (n) of the UNION ALL is int in SELECT 1 but text in SELECT 2"),
    ("SELECT COUNT(*) FROM visits UNION ALL SELECT COUNT(*), SUM(age) FROM visits",
     "SELECT 2 of the UNION ALL has 2 columns; the first has 1"),
    ("SELECT COUNT(*) FROM visits UNION ALL SELECT COUNT(*) FROM visits v "
     "JOIN countries c ON v.spend > 1", "SELECT 2 of the UNION ALL: "),
    ("SELECT COUNT(*) AS n FROM visits UNION ALL SELECT SUM(age) FROM visits ORDER BY m",
     "ORDER BY / LIMIT after the UNION ALL"),
    ("SELECT COUNT(*) AS n FROM visits UNION ALL SELECT SUM(age) FROM visits ORDER BY 3",
     "ORDER BY after a UNION ALL"),
    ("SELECT COUNT(*) AS n FROM visits UNION ALL SELECT SUM(age) FROM visits LIMIT n",
     "LIMIT after a UNION ALL"),
    ("SELECT country, COUNT(*) FROM visits GROUP BY country UNION ALL "
     "SELECT CAST(spend AS VARCHAR), COUNT(*) FROM visits GROUP BY spend",
     "SELECT 2 of the UNION ALL: grouping by a column without public values"),
]


@pytest.mark.parametrize(("sql", "reason"), REFUSED)
def test_refusals_run_and_charge_nothing(gw: Gateway, sql: str, reason: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    monkeypatch.setattr(gw.executor, "_run", lambda *a, **k: ran.append("run"))
    before = gw.ledger.charges()
    calls = [lambda: gw.query(sql, analyst="mallory", epsilon=1.0, delta=0.0),
             lambda: gw.explain(sql, epsilon=1.0, delta=0.0)]
    if "without public values" not in reason:  # refused for its δ, not by planning
        calls.append(lambda: gw.plan(sql))
    for call in calls:
        with pytest.raises(QueryRejected) as err:
            call()
        assert reason in err.value.message, err.value.message
        assert err.value.hint and err.value.rule
        if err.value.span is not None:
            assert sql[err.value.span.start:err.value.span.end] == err.value.span.text
    assert ran == [] and gw.ledger.charges() == before
    assert gw.budget("mallory")["epsilon_spent"] == 0


def test_unaffordable_statement_runs_nothing(gw: Gateway,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    gw.add_analyst("poor", epsilon=0.3, delta=0.0)
    ran: list[str] = []
    monkeypatch.setattr(gw.executor, "_run", lambda *a, **k: ran.append("run"))
    with pytest.raises(BudgetExceeded):
        gw.query(MOBILE_TV, analyst="poor", epsilon=0.5)
    assert ran == [] and charges(gw, "poor") == []


# -- charge before read, failures after it -----------------------------------------------

class Spy:
    """The executor's one path to the data; each protected run must find its charge."""

    def __init__(self, gw: Gateway, state: Path) -> None:
        self.state = state
        self.runs: list[tuple[bool, bool]] = []
        self.fail_at: int | None = None
        self._inner = gw.executor._run  # type: ignore[attr-defined]

    def __call__(self, sql: str, params: dict[str, Any], timeout_s: float | None,
                 query_id: str | None) -> Any:
        tree = sqlglot.parse_one(sql, dialect="duckdb")
        protected = any(t.name == "visits" for t in tree.find_all(exp.Table))
        committed = False
        if query_id is not None:
            with sqlite3.connect(self.state) as con:
                committed = con.execute("SELECT COUNT(*) FROM charges WHERE query_id = ?",
                                        (query_id,)).fetchone()[0] == 1
        self.runs.append((protected, committed))
        if protected and self.fail_at is not None and \
                sum(p for p, _ in self.runs) == self.fail_at:
            raise BackendError("the engine failed (test)")
        return self._inner(sql, params, timeout_s, query_id)


@pytest.fixture()
def spied(tmp_path: Path) -> Iterator[tuple[Gateway, Spy]]:
    state = tmp_path / "s.db"
    with Gateway.open(web_policy(tmp_path), state=state) as g:
        spy = Spy(g, state)
        g.executor._run = spy  # type: ignore[attr-defined, method-assign]
        yield g, spy


def test_every_branch_reads_after_the_one_charge(spied: tuple[Gateway, Spy]) -> None:
    gw, spy = spied
    r = gw.query(CTES + " OFFSET 1", analyst="a", epsilon=1.0)
    gw.query("SELECT COUNT(*) FROM visits a JOIN visits b ON a.user_id = b.user_id "
             "UNION ALL SELECT MEDIAN(age) FROM visits UNION ALL "
             "SELECT COUNT(*) FROM countries", analyst="a", epsilon=1.0)
    protected = [committed for p, committed in spy.runs if p]
    assert len(protected) == 4 and all(protected)
    assert len(gw.ledger.charges()) == 2 and ledger_events(gw, r.query_id)
    runs = len(spy.runs)
    assert gw.query(CTES, analyst="b", epsilon=1.0).cached  # a repeat reads nothing
    assert len(spy.runs) == runs


def test_a_failing_branch_keeps_the_charge(spied: tuple[Gateway, Spy]) -> None:
    gw, spy = spied
    spy.fail_at = 2  # the second branch's read fails, after the charge
    with pytest.raises(BackendError):
        gw.query(MOBILE_TV, analyst="a", epsilon=0.5)
    assert gw.budget("a")["epsilon_spent"] == 0.5  # budget lost, never privacy
    spy.fail_at = None
    again = gw.query(MOBILE_TV, analyst="a", epsilon=0.5)  # nothing was stored: pays again
    assert not again.cached and gw.budget("a")["epsilon_spent"] == 1.0


# -- the charge is the composition of what the samplers got -------------------------------

class Samplers:
    def __init__(self) -> None:
        self.scales: list[tuple[str, float]] = []
        self.partitions: list[tuple[str, tuple[Any, ...]]] = []  # see selection_spy.py
        self.quantiles: list[tuple[float, float, float]] = []


@pytest.fixture()
def samplers(monkeypatch: pytest.MonkeyPatch) -> Samplers:
    found = Samplers()
    for name in ("discrete_laplace", "rounded_laplace", "rounded_gaussian"):
        real = getattr(perturb, name)

        def wrapped(scale: float, *args: Any, _real: Any = real, _name: str = name) -> Any:
            found.scales.append((_name, float(scale)))
            return _real(scale, *args)

        monkeypatch.setattr(perturb, name, wrapped)
    real_q = perturb.select_quantile_bins
    selection_spy.install(monkeypatch, found.partitions)

    def quantiles(weights: Any, alpha: float, eps: float, sens: float, rng: Any) -> Any:
        found.quantiles.append((alpha, eps, sens))
        return real_q(weights, alpha, eps, sens, rng)

    monkeypatch.setattr(perturb, "select_quantile_bins", quantiles)
    return found


def _sensitivity(stat: Any, plan: Any, kind: str, step: float) -> float:
    """Sensitivity in grid units, from the plan (as tests/query/test_cost_invariant.py)."""
    l1, l2 = stat.sensitivity(plan.max_rows, plan.max_groups)
    if kind == "discrete_laplace":
        return math.ceil(l1 - 1e-9)
    if kind == "rounded_laplace":
        return calibration.grid_sensitivity(l1, step, plan.max_groups, "l1") / step
    integral = stat.kind in ("units", "distinct") or (stat.kind == "sum" and
                                                      plan.max_groups == 1)
    if step == 1.0 and integral:
        return math.ceil(l2 - 1e-9) if stat.kind == "sum" else l2
    return calibration.grid_sensitivity(l2, step, plan.max_groups, "l2") / step


COMPOSED = ("SELECT device, COUNT(*) AS n, AVG(spend) AS a FROM visits GROUP BY device "
            "UNION ALL SELECT CAST(spend AS VARCHAR), COUNT(*), SUM(age) FROM visits "
            "GROUP BY spend UNION ALL SELECT 'median', MEDIAN(age), "
            "PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY spend) FROM visits "
            "UNION ALL SELECT country, 1, 2.5 FROM countries")


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_charge_is_the_composition_of_the_samplers_parameters(
        tmp_path: Path, samplers: Samplers, mechanism: str) -> None:
    epsilon, delta = 0.9, 1e-6
    with Gateway.open(web_policy(tmp_path), state=tmp_path / "s.db") as gw:
        cplan = gw.compounds.plan(COMPOSED)
        assert cplan is not None
        cprep = gw.compounds.prepare(cplan, epsilon, delta, mechanism)
        r = gw.query(COMPOSED, analyst="inv", epsilon=epsilon, delta=delta,
                     mechanism=mechanism)
    assert not r.cached
    eps_total = delta_total = 0.0
    scales, parts, ranks = iter(samplers.scales), iter(samplers.partitions), \
        iter(samplers.quantiles)
    for i in cprep.fresh:  # the branches that released, in the order they ran
        prep = cprep.preps[i]
        plan, cal = prep.plan, prep.cal
        assert cal is not None
        noisy = [s for s in plan.stats if s.sensitivity(plan.max_rows, plan.max_groups)[0] > 0]
        got = [next(scales) for _ in noisy]
        if mechanism == "laplace":
            eps_total += sum(_sensitivity(s, plan, kind, cal.stats[s.name].grid.step) / scale
                             for s, (kind, scale) in zip(noisy, got, strict=True))
        elif got:
            ratios = [scale / _sensitivity(s, plan, kind, cal.stats[s.name].grid.step)
                      for s, (kind, scale) in zip(noisy, got, strict=True)]
            assert cal.gaussian is not None
            eps_g, delta_g = cal.gaussian.epsilon, cal.gaussian.delta
            multiplier = min(ratios) / math.sqrt(len(noisy))
            assert calibration.gaussian_delta(multiplier, eps_g, 1.0) <= delta_g * (1 + 1e-9)
            eps_total += eps_g
            delta_total += delta_g
        for _ in range(sum(len(q.alphas) for q in plan.quantiles)):
            alpha, eps_q, sens = next(ranks)
            assert sens == pytest.approx(max(alpha, 1 - alpha) * plan.max_rows)
            eps_total += eps_q
        if plan.partition_selection:
            eps_ps, delta_ps = selection_spy.selection_cost(
                next(parts), plan, cal, {s.name: sc for s, sc in zip(noisy, got, strict=True)})
            eps_total += eps_ps
            delta_total += delta_ps
    for rest in (scales, parts, ranks):
        assert next(rest, None) is None  # no sampler ran outside a charged branch
    assert len(cprep.fresh) == 3
    assert r.epsilon_spent == pytest.approx(eps_total, rel=1e-9)
    assert r.delta_spent == pytest.approx(delta_total, rel=1e-9, abs=1e-18)
    assert r.epsilon_spent <= epsilon * (1 + 1e-12) and r.delta_spent <= delta * (1 + 1e-12)


# -- the command line ----------------------------------------------------------------------

def test_cli_query_and_explain(tmp_path: Path) -> None:
    env = {"GATEWAY_POLICY": str(web_policy(tmp_path)), "GATEWAY_STATE": str(tmp_path / "s.db")}
    import os

    def gateway(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                              text=True, cwd=ROOT, env={**os.environ, **env}, timeout=120)

    q = gateway("query", MOBILE_TV, "--epsilon", "0.5", "--json")
    assert q.returncode == 0, q.stderr
    body = json.loads(q.stdout)
    assert [row[0] for row in body["rows"]] == ["mobile", "tv"]
    assert body["epsilon_spent"] == 0.5
    e = gateway("explain", MOBILE_TV, "--epsilon", "0.5")
    assert e.returncode == 0, e.stderr
    assert [b["epsilon_cost"] for b in json.loads(e.stdout)["branches"]] == [0.25, 0.25]
