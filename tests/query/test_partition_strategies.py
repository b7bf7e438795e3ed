"""Partition selection strategies: which one a query gets, what it costs, what explain says.

Three strategies (gateway/query/noise.py, docs/privacy.md "Partition selection"):
the truncated geometric mechanism (a separate share of ε), thresholding a count the
query releases anyway (no share of ε, (0, δ) for the threshold), and Gaussian
thresholding of a separate unit count (√L0 instead of L0).  The choice is made from
the plan and the budget only: the smallest number of units a group needs to be kept
half of the time (n50), ties to fewer shares of ε.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from gateway import Gateway
from gateway.errors import QueryRejected
from gateway.privacy.events import ApproxDpEvent, GaussianEvent
from gateway.privacy.partition_selection import min_units
from gateway.query.noise import calibrate
from tests.query import selection_spy
from tests.support import web_policy

KEY = "CAST(duration_s / 60 AS INT)"
EPS, DELTA = 1.0, 1e-6


@pytest.fixture(scope="module")
def gws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Gateway]]:
    """Gateways over the sample data with max_groups_per_unit 1, 4 and 100 (M = 5, and
    100 for L0 = 100: a plan's L0 is at most M)."""
    out = {}
    for l0 in (1, 4, 100):
        folder = tmp_path_factory.mktemp(f"l0_{l0}")
        out[l0] = Gateway.open(web_policy(folder, max_rows_per_unit=max(5, l0),
                                          max_groups_per_unit=l0), state=folder / "s.db")
    yield out
    for g in out.values():
        g.close()


def _cal(gw: Gateway, select: str, mechanism: str = "laplace", **kw: Any) -> Any:
    plan = gw.plan(f"SELECT {KEY} AS k, {select} FROM visits GROUP BY 1"
                   if select else f"SELECT DISTINCT {KEY} AS k FROM visits")
    return plan, calibrate(plan, EPS, DELTA, mechanism, **kw)


# -- the choice, per query shape ------------------------------------------------------------

@pytest.mark.parametrize(("l0", "select", "mechanism", "strategy", "n50"), [
    # One group per unit: thresholding a released count needs 15 units, from 26.
    (1, "COUNT(DISTINCT user_id) AS n", "laplace", "threshold", 15),
    # A row count: n50 assumes units contribute half of M = 5 rows (29 units), but the
    # threshold takes no share of epsilon from the count (the geometric's 26 units at
    # ε/2 weigh as 52).
    (1, "COUNT(*) AS n", "laplace", "threshold", 29),
    (1, "AVG(spend) AS a", "laplace", "threshold", None),
    (1, "COUNT(*) AS n, SUM(spend) AS s", "laplace", "threshold", None),
    (1, "SUM(spend) AS s", "laplace", "truncated_geometric", 26),  # nothing to threshold
    (1, "MEDIAN(spend) AS m", "laplace", "truncated_geometric", 26),
    (1, "", "laplace", "truncated_geometric", None),  # DISTINCT: all of ε
    (1, "COUNT(DISTINCT user_id) AS n", "gaussian", "threshold", None),
    # Units in many groups: √L0 wins where the selection has its own mechanism.
    (100, "COUNT(DISTINCT user_id) AS n", "laplace", "gaussian_threshold", None),
    (100, "", "laplace", "gaussian_threshold", None),
    (100, "SUM(spend) AS s", "laplace", "gaussian_threshold", None),
    # ... and under mechanism='gaussian' the released unit count has √L0 noise already.
    (100, "COUNT(DISTINCT user_id) AS n", "gaussian", "threshold", None),
])
def test_strategy_per_query_shape(gws: dict[int, Gateway], l0: int, select: str,
                                  mechanism: str, strategy: str, n50: int | None) -> None:
    _, cal = _cal(gws[l0], select, mechanism)
    p = cal.partition
    assert p is not None and p.strategy == strategy, p.why
    if n50 is not None:
        assert p.units_for_half == n50
    # The choice minimises n50 weighed by the shares of ε a strategy takes from the
    # statistics (separate mechanisms take one more).
    applicable = [a for a in p.alternatives if a.units_for_half is not None]
    own = {"truncated_geometric", "gaussian_threshold"}
    k = len([s for s in cal.stats.values() if s.kind != "none"]) + len(cal.quantiles)
    fewest = min((k + (a.strategy in own)) or 1 for a in applicable)

    def weighed(strategy: str, n: int) -> float:
        return n * max(k + (strategy in own), 1) / fewest

    assert weighed(p.strategy, p.units_for_half) == min(
        weighed(a.strategy, a.units_for_half or 0) for a in applicable)
    assert len({a.strategy for a in p.alternatives}) == 3  # every strategy is reported


def test_units_count_preferred_over_rows(gws: dict[int, Gateway]) -> None:
    """With both released, the unit count is thresholded: its n50 assumes nothing about
    rows per unit."""
    _, cal = _cal(gws[1], "COUNT(*) AS n, COUNT(DISTINCT user_id) AS u")
    p = cal.partition
    assert p.strategy == "threshold" and p.label == "COUNT(DISTINCT user_id)"
    rows = [a for a in p.alternatives if a.statistic == "COUNT(*)"]
    assert rows and rows[0].units_for_half >= p.units_for_half


def test_threshold_gives_every_statistic_a_larger_share(gws: dict[int, Gateway]) -> None:
    """No separate share: COUNT(*) and SUM get ε/2 each instead of ε/3."""
    _, cal = _cal(gws[1], "COUNT(*) AS n, SUM(spend) AS s")
    assert cal.partition.strategy == "threshold"
    assert sorted(s.epsilon for s in cal.stats.values()) == [EPS / 2, EPS / 2]
    _, forced = _cal(gws[1], "COUNT(*) AS n, SUM(spend) AS s", selection="truncated_geometric")
    assert sorted(s.epsilon for s in forced.stats.values()) == [EPS / 3, EPS / 3]
    assert forced.partition.epsilon == pytest.approx(EPS / 3)
    assert cal.epsilon == pytest.approx(EPS) and cal.delta == pytest.approx(DELTA)


def test_n50_of_the_alternatives(gws: dict[int, Gateway]) -> None:
    """At ε = 1, δ = 1e-6, L0 = 1 the truncated geometric at ε/2 needs 26 units."""
    _, cal = _cal(gws[1], "COUNT(DISTINCT user_id) AS n")
    n50 = {a.strategy: a.units_for_half for a in cal.partition.alternatives}
    assert n50["threshold"] == 15 and n50["truncated_geometric"] == 26 == min_units(0.5, DELTA)
    assert n50["gaussian_threshold"] is not None and n50["gaussian_threshold"] > 26


def test_forcing_a_strategy_that_does_not_apply_is_refused(gws: dict[int, Gateway]) -> None:
    plan = gws[1].plan(f"SELECT {KEY} AS k, SUM(spend) AS s FROM visits GROUP BY 1")
    with pytest.raises(QueryRejected):
        calibrate(plan, EPS, DELTA, "laplace", selection="threshold")
    with pytest.raises(QueryRejected):
        calibrate(plan, EPS, DELTA, "laplace", selection="no_such_strategy")


# -- what each strategy charges ---------------------------------------------------------------

def test_events_of_each_strategy(gws: dict[int, Gateway]) -> None:
    gw = gws[4]
    for mechanism in ("laplace", "gaussian"):
        _, thr = _cal(gw, "COUNT(DISTINCT user_id) AS n", mechanism, selection="threshold")
        extra = [e for e in thr.events if isinstance(e, ApproxDpEvent)]
        assert [(e.epsilon, e.delta) for e in extra] == [
            (0.0, DELTA if mechanism == "laplace" else DELTA / 2)]
        assert thr.epsilon == pytest.approx(EPS) and thr.delta == pytest.approx(DELTA)
        _, gt = _cal(gw, "COUNT(DISTINCT user_id) AS n", mechanism,
                     selection="gaussian_threshold")
        p = gt.partition
        # (ε_sel, δ_1) for the noise, (0, δ_2) for the threshold; δ_1 + δ_2 = the selection's δ
        own = [e for e in p.events(gt.stats)]
        assert isinstance(own[0], GaussianEvent) and own[0].epsilon == p.epsilon
        assert own[0].delta == p.delta_noise and own[1] == ApproxDpEvent(0.0, p.delta_threshold)
        assert p.delta_noise + p.delta_threshold == pytest.approx(
            DELTA if mechanism == "laplace" else DELTA / 2)
        assert own[0].noise_multiplier == pytest.approx(p.sigma / math.sqrt(4))
        assert gt.epsilon == pytest.approx(EPS) and gt.delta == pytest.approx(DELTA)


def test_gaussian_without_noisy_statistics_gives_selection_all_of_delta(
        gws: dict[int, Gateway]) -> None:
    for select in ("", "MEDIAN(spend) AS m"):
        _, cal = _cal(gws[4], select, "gaussian")
        assert cal.delta == pytest.approx(DELTA), select


def test_a_threshold_lower_than_its_delta_is_refused(gws: dict[int, Gateway]) -> None:
    import dataclasses
    _, cal = _cal(gws[1], "COUNT(DISTINCT user_id) AS n")
    low = dataclasses.replace(cal.partition, threshold=cal.partition.threshold - 1)
    with pytest.raises(ValueError, match="threshold"):
        low.events(cal.stats)
    name = cal.partition.statistic
    loud = {**cal.stats, name: dataclasses.replace(cal.stats[name],
                                                   scale=2 * cal.stats[name].scale)}
    with pytest.raises(ValueError, match="threshold"):
        cal.partition.events(loud)


def test_the_strategy_is_part_of_the_answer_key(gws: dict[int, Gateway]) -> None:
    fingerprints = set()
    for strategy in ("threshold", "truncated_geometric", "gaussian_threshold"):
        _, cal = _cal(gws[4], "COUNT(DISTINCT user_id) AS n", selection=strategy)
        fingerprints.add(cal.fingerprint())
    assert len(fingerprints) == 3
    _, a = _cal(gws[4], "COUNT(DISTINCT user_id) AS n")
    _, b = _cal(gws[4], "COUNT(DISTINCT user_id) AS n")
    assert a.fingerprint() == b.fingerprint()


# -- explain ------------------------------------------------------------------------------

def test_explain_of_a_threshold_on_rows(gws: dict[int, Gateway]) -> None:
    _, cal = _cal(gws[1], "COUNT(*) AS n")
    ex = cal.partition.explain()
    assert ex["strategy"] == "threshold" and ex["units_for_half"] == 29
    assert ex["epsilon"] == 0.0 and ex["delta"] == DELTA and ex["statistic"] == "COUNT(*)"
    assert ex["threshold"] == cal.partition.threshold and ex["max_contribution"] == 5
    assert "Wilson" in ex["mechanism"]
    assert "26" in ex["why"] and "2.5 rows" in ex["why"]  # the alternative, the assumption
    alts = {a["strategy"]: a for a in ex["alternatives"]}
    assert alts["truncated_geometric"]["units_for_half"] == 26
    assert alts["truncated_geometric"]["epsilon_per_statistic"] == pytest.approx(0.5)
    assert alts["threshold"]["epsilon_per_statistic"] == pytest.approx(1.0)
    assert "assumes each unit contributes 2.5 rows" in alts["threshold"]["note"]


def test_explain_of_the_other_strategies(gws: dict[int, Gateway]) -> None:
    _, cal = _cal(gws[1], "SUM(spend) AS s")
    ex = cal.partition.explain()
    assert ex["strategy"] == "truncated_geometric" and ex["threshold"] is None
    assert ex["min_units_50pct"] == ex["units_for_half"] == 26  # the keep curve's summary
    not_applicable = [a for a in ex["alternatives"] if not a["applicable"]]
    assert [a["strategy"] for a in not_applicable] == ["threshold"]
    assert "no count" in not_applicable[0]["note"]
    _, cal = _cal(gws[100], "")
    ex = cal.partition.explain()
    assert ex["strategy"] == "gaussian_threshold" and ex["units_for_half"] == ex["threshold"]
    assert ex["delta_noise"] + ex["delta_threshold"] == pytest.approx(DELTA)
    assert ex["sigma"] > 0 and "Gopi" in ex["mechanism"]


# -- the charge is the composition of what the samplers got ---------------------------------

SHAPES = [
    (1, "COUNT(DISTINCT user_id) AS n"), (1, "COUNT(*) AS n, AVG(spend) AS a"),
    (1, "SUM(spend) AS s"), (4, "AVG(spend) AS a"), (100, "COUNT(DISTINCT user_id) AS n"),
    (100, ""), (100, "MEDIAN(age) AS m, COUNT(*) AS n"),
]


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
@pytest.mark.parametrize(("l0", "select"), SHAPES)
def test_charge_is_the_composition_of_the_samplers_parameters(
        gws: dict[int, Gateway], monkeypatch: pytest.MonkeyPatch, l0: int, select: str,
        mechanism: str) -> None:
    """Every strategy, as chosen for each shape: recompose the charge from the parameters
    the samplers received (noise scales, selection parameters, thresholds)."""
    from gateway.privacy import calibration
    from gateway.query import perturb

    scales: list[tuple[str, float]] = []
    for name in ("discrete_laplace", "rounded_laplace", "rounded_gaussian"):
        real = getattr(perturb, name)

        def wrapped(scale: float, *args: Any, _real: Any = real, _name: str = name) -> Any:
            scales.append((_name, float(scale)))
            return _real(scale, *args)

        monkeypatch.setattr(perturb, name, wrapped)
    calls: list[tuple[str, tuple[Any, ...]]] = []
    selection_spy.install(monkeypatch, calls)
    gw = gws[l0]
    sql = (f"SELECT {KEY} AS k, {select} FROM visits GROUP BY 1" if select
           else f"SELECT DISTINCT {KEY} AS k FROM visits")
    prep = gw.prepare(sql, EPS, DELTA, mechanism)
    r = gw.query(sql, analyst=f"inv-{l0}-{mechanism}", epsilon=EPS, delta=DELTA,
                 mechanism=mechanism)
    assert not r.cached
    plan, cal = prep.plan, prep.cal
    noisy = [s for s in plan.stats if s.sensitivity(plan.max_rows, plan.max_groups)[0] > 0]
    assert len(scales) == len(noisy) and len(calls) == 1
    eps = delta = 0.0
    if mechanism == "laplace":
        for s, (_, scale) in zip(noisy, scales, strict=True):
            noise = cal.stats[s.name]
            eps += noise.sensitivity / scale
            l1 = s.sensitivity(plan.max_rows, plan.max_groups)[0]
            assert noise.sensitivity * noise.grid.step >= l1 * (1 - 1e-12)
    elif noisy:
        assert cal.gaussian is not None
        k = len(noisy)
        multiplier = min(scale / cal.stats[s.name].sensitivity
                         for s, (_, scale) in zip(noisy, scales, strict=True)) / math.sqrt(k)
        assert calibration.gaussian_delta(multiplier, cal.gaussian.epsilon, 1.0) <= \
            cal.gaussian.delta * (1 + 1e-9)
        eps += cal.gaussian.epsilon
        delta += cal.gaussian.delta
    eps += sum(q.epsilon for q in cal.quantiles)
    e, d = selection_spy.selection_cost(calls[0], plan, cal,
                                        {s.name: sc for s, sc in zip(noisy, scales, strict=True)})
    assert calls[0][0] == cal.partition.strategy
    assert r.epsilon_spent == pytest.approx(eps + e, rel=1e-9)
    assert r.delta_spent == pytest.approx(delta + d, rel=1e-9)
    assert r.epsilon_spent <= EPS * (1 + 1e-12) and r.delta_spent <= DELTA * (1 + 1e-12)


def test_released_groups_pass_the_threshold(gws: dict[int, Gateway]) -> None:
    """Every group released by a threshold on COUNT(DISTINCT unit) has a noisy count ≥ τ
    (the released count is the one thresholded)."""
    gw = gws[1]
    sql = f"SELECT {KEY} AS k, COUNT(DISTINCT user_id) AS n FROM visits GROUP BY 1"
    tau = gw.prepare(sql, EPS, DELTA, "laplace").cal.partition.threshold
    r = gw.query(sql, analyst="thr", epsilon=EPS, delta=DELTA)
    assert r.rows and all(n >= tau for _, n in r.rows)


def test_gateway_explain_reports_the_strategy(gws: dict[int, Gateway]) -> None:
    sql = f"SELECT {KEY} AS k, COUNT(*) AS n FROM visits GROUP BY 1"
    ex = gws[1].explain(sql, epsilon=EPS, delta=DELTA)
    prep = gws[1].prepare(sql, EPS, DELTA, "laplace")
    assert ex.partition_selection == prep.cal.partition.explain()
    assert ex.to_dict()["partition_selection"]["strategy"] == "threshold"
