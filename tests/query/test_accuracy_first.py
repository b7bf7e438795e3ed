"""Accuracy-first queries in process, with real components (gateway/query/accuracy_first.py).

``gw.query(sql, ci95=T)`` spends the smallest ε on the grid of three significant digits
whose predicted 95% half-width is within ±T for every noisy column: the answer's own
per-value half-widths meet T, and the answer at the next smaller grid ε does not.  The
choice comes from the plan and the policy only (no engine run), the ledger charges it,
repeats are free, and what cannot be met is refused with the reason and what can be.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import Gateway
from gateway.cli.main import main as cli_main
from gateway.errors import InvalidRequest, QueryRejected
from gateway.query import accuracy_first
from gateway.query.accuracy_first import choose, grid_step_below
from gateway.query.results import QueryResult
from tests.support import web_policy

BY_COUNTRY = "SELECT country, COUNT(*) AS n FROM visits GROUP BY country"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("accuracy_first")
    with Gateway.open(web_policy(folder, dataset_budget=(1e6, 1e-3),
                                 analyst_budget=(1e5, 1e-3)), folder / "s.db") as g:
        yield g


def _max_cell(r: QueryResult) -> float:
    """The widest per-value 95% half-width of the answer's noisy columns."""
    return max(ci for row in r.ci95 for ci in row if ci is not None)


def _noisy_cells(r: QueryResult) -> list[float]:
    return [ci for row in r.ci95 for ci, noisy in zip(row, r.noisy, strict=True)
            if noisy and ci is not None]


# -- the choice meets the target, one grid step less does not ------------------------------

CASES = [
    (BY_COUNTRY, 50.0, {}),
    (BY_COUNTRY, 50.0, {"mechanism": "gaussian", "delta": 1e-7}),
    ("SELECT device, COUNT(*) AS n, SUM(spend) AS s FROM visits GROUP BY device", 20000.0, {}),
    ("SELECT device, COUNT(*) AS n, SUM(spend) AS s FROM visits GROUP BY device", 20000.0,
     {"mechanism": "gaussian", "delta": 1e-6}),
    ("SELECT COUNT(*) * 2 AS n2, ROUND(SUM(duration_s) / 1000, 1) AS k FROM visits", 40.0, {}),
    ("SELECT converted, COUNT(DISTINCT user_id) AS users FROM visits GROUP BY converted",
     30.0, {}),
    # partition selection (no public values) spends δ and a share of ε
    ("SELECT visit_date, COUNT(*) AS n FROM visits GROUP BY visit_date", 80.0,
     {"delta": 1e-6}),
]


@pytest.mark.parametrize(("sql", "target", "kw"), CASES)
def test_chosen_epsilon_meets_the_target_and_one_grid_step_less_does_not(
        gw: Gateway, sql: str, target: float, kw: dict[str, Any]) -> None:
    who = f"meet{abs(hash((sql, target, str(kw)))) % 10**8}"
    before = len(gw.ledger.charges(who))
    r = gw.query(sql, analyst=who, ci95=target, **kw)
    eps = r.epsilon_spent
    assert eps > 0 and not r.cached and r.target_ci95 == target
    # on the grid: three significant digits
    assert Decimal(repr(eps)).normalize().as_tuple().digits.__len__() <= 3
    cells = _noisy_cells(r)
    assert cells and max(cells) <= target
    ex = gw.explain(sql, epsilon=eps, **kw)
    assert all(a.ci95 is not None and a.ci95 <= target for a in ex.accuracy)
    # the ledger charged exactly the chosen ε (and whatever δ it needs)
    charges = gw.ledger.charges(who)
    assert len(charges) == before + 1
    assert charges[-1]["epsilon"] == pytest.approx(eps, rel=1e-12)
    assert charges[-1]["delta"] == pytest.approx(r.delta_spent)
    # the note names the ε and the binding column
    note = r.notes[-1]
    assert f"epsilon={eps:g}" in note and "binding column" in note
    # one grid step smaller misses the target somewhere
    below = grid_step_below(eps)
    assert below < eps and (eps - below) / eps <= 0.01
    smaller = gw.query(sql, analyst=who, epsilon=below, **kw)
    assert max(_noisy_cells(smaller)) > target


def test_count_by_country_at_50(gw: Gateway) -> None:
    """The figure the docs quote: COUNT by country at ±50 (L0 = 4 groups, M = 20)."""
    assert choose(gw, BY_COUNTRY, 50.0, None, None).epsilon == 1.21
    assert choose(gw, BY_COUNTRY, 50.0, 1e-7, "gaussian").epsilon == 4.09
    assert choose(gw, BY_COUNTRY, 100.0, None, None).epsilon == 0.602


def test_the_choice_is_deterministic_and_repeats_are_free(gw: Gateway, tmp_path: Path) -> None:
    sql = "SELECT device, COUNT(*) AS n FROM visits WHERE age > 30 GROUP BY device"
    first = gw.query(sql, analyst="rep", ci95=25)
    again = gw.query(sql, analyst="rep", ci95=25)
    assert again.cached and again.epsilon_spent == 0 and again.rows == first.rows
    assert again.notes == first.notes  # the same ε, named in the note
    # the same ε asked for directly is the same release (the cache key is the ε)
    direct = gw.query(sql, analyst="rep", epsilon=first.epsilon_spent)
    assert direct.cached and direct.rows == first.rows
    # a fresh Gateway (no memory) chooses the same ε, whatever the budget spent
    with Gateway.open(web_policy(tmp_path, dataset_budget=(1e6, 1e-3),
                                 analyst_budget=(1e5, 1e-3)), tmp_path / "other.db") as other:
        assert choose(other, sql, 25.0, None, None).epsilon == first.epsilon_spent


def test_explain_reports_the_epsilon_a_target_costs(gw: Gateway) -> None:
    ex = gw.explain(BY_COUNTRY, ci95=50)
    assert ex.epsilon_cost == pytest.approx(1.21) and ex.target_ci95 == 50
    d = ex.to_dict()
    assert d["target_ci95"] == 50 and "binding column 'n'" in d["notes"][-1]
    assert all(a["ci95"] <= 50 for a in d["accuracy"])
    assert "target_ci95" not in gw.explain(BY_COUNTRY, epsilon=1.21).to_dict()
    # `accuracy=` is the same target
    assert gw.explain(BY_COUNTRY, accuracy=50).epsilon_cost == ex.epsilon_cost


def test_result_dict_carries_the_target(gw: Gateway) -> None:
    sql = "SELECT country, COUNT(*) AS n FROM visits WHERE converted GROUP BY country"
    r = gw.query(sql, analyst="dict", accuracy=50)
    d = r.to_dict()
    assert d["target_ci95"] == 50 and d["epsilon_spent"] == pytest.approx(1.21)
    assert "epsilon=1.21 " in d["notes"][-1]
    assert r.reported("ci95").target_ci95 == 50
    assert "target_ci95" not in gw.query(BY_COUNTRY, analyst="dict", epsilon=0.7).to_dict()


def test_a_column_that_is_an_avg_is_bounded_by_its_cap(gw: Gateway) -> None:
    """AVG's predicted half-width is explain's: half the bounds' width (250 for spend)."""
    sql = "SELECT device, AVG(spend) AS a, COUNT(*) AS n FROM visits GROUP BY device"
    r = gw.query(sql, analyst="avg", ci95=300)  # the COUNT binds, the AVG is within
    assert "binding column 'n'" in r.notes[-1]
    assert max(_noisy_cells(r)) <= 300
    with pytest.raises(QueryRejected) as e:
        gw.query(sql, analyst="avg", ci95=100)
    assert e.value.rule == "accuracy_target"
    assert "±250" in e.value.detail and "'a'" in e.value.detail
    assert "noisy count" in e.value.detail and "ci95 >= 250" in e.value.detail


# -- refusals ----------------------------------------------------------------------------

@pytest.mark.parametrize(("sql", "words"), [
    ("SELECT MEDIAN(age) AS m FROM visits", ["'m'", "quantile", "rank_error95"]),
    ("SELECT device, PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY spend) AS p90 FROM visits "
     "GROUP BY device", ["'p90'", "quantile"]),
    ("SELECT SUM(spend) / COUNT(*) AS r FROM visits", ["'r'", "no 95% half-width"]),
])
def test_columns_without_a_half_width_are_refused(gw: Gateway, sql: str,
                                                  words: list[str]) -> None:
    with pytest.raises(QueryRejected) as e:
        gw.query(sql, analyst="refused", ci95=10)
    assert e.value.rule == "accuracy_target"
    for w in words:
        assert w in e.value.detail
    assert gw.ledger.charges("refused") == []
    audit = gw.audit("refused")
    assert audit and audit[-1]["outcome"] == "query_rejected"


def test_epsilon_and_a_target_together_and_bad_targets_are_refused(gw: Gateway) -> None:
    with pytest.raises(InvalidRequest, match="either epsilon or a target"):
        gw.query(BY_COUNTRY, analyst="bad", epsilon=0.5, ci95=50)
    with pytest.raises(InvalidRequest, match="either epsilon or a target"):
        gw.explain(BY_COUNTRY, epsilon=0.5, ci95=50)
    with pytest.raises(InvalidRequest, match="same target"):
        gw.query(BY_COUNTRY, analyst="bad", ci95=50, accuracy=40)
    for bad in (0, -3, math.nan, math.inf, True, "50"):
        with pytest.raises(InvalidRequest, match="ci95 must be"):
            gw.query(BY_COUNTRY, analyst="bad", ci95=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="gaussian mechanism needs delta"):
        gw.query(BY_COUNTRY, analyst="bad", ci95=50, mechanism="gaussian", delta=0.0)
    assert gw.ledger.charges("bad") == []


def test_a_target_past_max_epsilon_per_query_names_the_best_reachable(tmp_path: Path) -> None:
    path = web_policy(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["limits"] = {"min_epsilon_per_query": 1e-4, "max_epsilon_per_query": 1.0}
    path.write_text(yaml.safe_dump(data))
    with Gateway.open(path, tmp_path / "s.db") as g:
        with pytest.raises(QueryRejected) as e:
            g.query(BY_COUNTRY, analyst="x", ci95=50)
        d = e.value.detail
        assert e.value.rule == "accuracy_target"
        assert "no epsilon up to 1 (the policy's max_epsilon_per_query)" in d
        best = re.search(r"the best is ±([\d.]+), for column 'n'", d)
        assert best is not None
        assert "the target would need epsilon=1.21" in d
        # what the hint offers is met at the ε it names
        offered = float(re.search(r"ask for ci95 >= ([\d.]+) \(it needs epsilon=([\d.]+)\)",
                                  d).group(1))  # type: ignore[union-attr]
        assert 60 < offered < 61
        r = g.query(BY_COUNTRY, analyst="x", ci95=offered)
        assert r.epsilon_spent <= 1.0 and max(_noisy_cells(r)) <= offered
        # rounding to hundreds adds up to 100 whatever the noise: no ε reaches ±50
        with pytest.raises(QueryRejected) as e:
            g.query("SELECT ROUND(COUNT(*), -2) AS n FROM visits", analyst="x", ci95=50)
        assert "no epsilon reaches the target" in e.value.detail
        assert "the best is ±160" in e.value.detail  # 100 + the noise at ε = 1


def test_a_target_the_remaining_budget_cannot_pay(tmp_path: Path) -> None:
    with Gateway.open(web_policy(tmp_path), tmp_path / "s.db") as g:
        g.add_analyst("poor", epsilon=1.0)
        with pytest.raises(QueryRejected) as e:
            g.query(BY_COUNTRY, analyst="poor", ci95=50)
        d = e.value.detail
        assert e.value.rule == "accuracy_target"
        assert "needs epsilon=1.21, more than the remaining budget of the analyst 'poor' " \
               "(epsilon=1)" in d
        m = re.search(r"what is left buys at best ±([\d.]+) for column 'n' "
                      r"\(ci95=([\d.]+) costs epsilon=([\d.]+)\)", d)
        assert m is not None and float(m.group(3)) <= 1.0
        assert g.ledger.charges("poor") == []
        r = g.query(BY_COUNTRY, analyst="poor", ci95=float(m.group(2)))
        assert r.epsilon_spent == float(m.group(3))
        # the budget is spent, but an answer already paid for is still free
        g.query(BY_COUNTRY, analyst="rich", ci95=50)
        assert g.query(BY_COUNTRY, analyst="poor", ci95=50).cached


# -- no data, no engine ------------------------------------------------------------------

def test_the_search_never_runs_the_engine(tmp_path: Path) -> None:
    with Gateway.open(web_policy(tmp_path), tmp_path / "s.db") as g:
        runs: list[str] = []
        inner = g.executor._run  # type: ignore[attr-defined]

        def spy(sql: str, *args: Any) -> Any:
            runs.append(sql)
            return inner(sql, *args)

        g.executor._run = spy  # type: ignore[attr-defined, method-assign]
        sqls = [BY_COUNTRY, "SELECT device, SUM(spend) AS s FROM visits GROUP BY device",
                "SELECT 'tv' AS d, COUNT(*) AS n FROM visits WHERE device = 'tv' UNION ALL "
                "SELECT 'mobile', COUNT(*) FROM visits WHERE device = 'mobile'"]
        for sql in sqls:
            choose(g, sql, 5000.0, None, None)
            g.explain(sql, ci95=5000)
        assert runs == []
        for sql in sqls:
            g.query(sql, analyst="a", ci95=5000)
        assert len(runs) == 4  # one bounded query per SELECT, under its charge
        for sql in sqls:  # repeats: the answer cache
            g.query(sql, analyst="a", ci95=5000)
        assert len(runs) == 4


def test_the_choice_does_not_depend_on_the_data(tmp_path: Path) -> None:
    """Two datasets with different rows under the same policy shape choose the same ε."""
    path = web_policy(tmp_path)
    data = yaml.safe_load(path.read_text())
    import duckdb

    small = tmp_path / "small.parquet"
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * FROM read_parquet('{data['tables']['visits']['source']}') "
                f"WHERE user_id % 7 = 0) TO '{small}' (FORMAT parquet)")
    con.close()
    data["tables"]["visits"]["source"] = str(small)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    with Gateway.open(path, tmp_path / "a.db") as a, Gateway.open(other, tmp_path / "b.db") as b:
        for sql, t in [(BY_COUNTRY, 50.0), ("SELECT SUM(spend) AS s FROM visits", 3000.0)]:
            assert choose(a, sql, t, None, None).epsilon == choose(b, sql, t, None, None).epsilon


# -- several SELECTs ---------------------------------------------------------------------

def test_union_all_predicts_each_select_at_its_share(gw: Gateway) -> None:
    sql = ("SELECT 'tv' AS device, COUNT(*) AS n FROM visits WHERE device = 'tv' "
           "UNION ALL SELECT 'mobile', COUNT(*) FROM visits WHERE device = 'mobile'")
    single = choose(gw, "SELECT COUNT(*) AS n FROM visits WHERE device = 'tv'", 40.0, None,
                    None).epsilon
    r = gw.query(sql, analyst="union", ci95=40)
    eps = r.epsilon_spent
    # each SELECT gets ε/2, so the statement costs about twice one SELECT's ε
    assert eps == pytest.approx(2 * single, rel=0.01)
    assert max(_noisy_cells(r)) <= 40 and r.target_ci95 == 40
    assert gw.ledger.charges("union")[-1]["epsilon"] == pytest.approx(eps, rel=1e-12)
    ex = gw.explain(sql, ci95=40)
    assert ex.epsilon_cost == pytest.approx(eps) and len(ex.branches) == 2
    assert all(a.ci95 is not None and a.ci95 <= 40 for a in ex.accuracy)
    below = gw.explain(sql, epsilon=grid_step_below(eps))
    assert max(a.ci95 or 0.0 for a in below.accuracy) > 40
    with pytest.raises(QueryRejected) as e:
        gw.query("SELECT COUNT(*) AS n FROM visits UNION ALL SELECT MEDIAN(age) FROM visits",
                 analyst="union", ci95=40)
    assert e.value.rule == "accuracy_target" and "SELECT 2" in e.value.detail


def test_a_query_without_noisy_columns_costs_the_least(gw: Gateway) -> None:
    r = gw.query("SELECT DISTINCT device FROM visits", analyst="nothing", ci95=1)
    assert r.epsilon_spent == 0 and "nothing constrains epsilon" in r.notes[-1]


# -- the grid ----------------------------------------------------------------------------

@pytest.mark.parametrize("x", [1e-4, 0.05, 0.0523, 0.99999, 1.0, 1.21, 9.995, 123.4, 7e-7])
def test_grid_values_have_three_significant_digits(x: float) -> None:
    m, e = accuracy_first._grid_up(x)
    v = accuracy_first._value((m, e))
    assert 100 <= m <= 999 and v >= x
    assert accuracy_first._value(accuracy_first._prev((m, e))) < x or v == x
    assert len(Decimal(repr(v)).normalize().as_tuple().digits) <= 3


# -- the command line --------------------------------------------------------------------

def test_cli_query_and_explain_take_ci95(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    policy, state = str(web_policy(tmp_path)), str(tmp_path / "s.db")
    assert cli_main(["query", BY_COUNTRY, "--ci95", "50", "--policy", policy, "--state", state,
                     "--json"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["target_ci95"] == 50 and out["epsilon_spent"] == pytest.approx(1.21)
    assert cli_main(["explain", BY_COUNTRY, "--ci95", "50", "--policy", policy,
                     "--state", state]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["epsilon_cost"] == pytest.approx(1.21)
    assert cli_main(["query", "SELECT MEDIAN(age) FROM visits", "--ci95", "5",
                     "--policy", policy, "--state", state]) == 2
    assert "quantile" in capsys.readouterr().err
