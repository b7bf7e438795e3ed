"""Red team: partition selection (threshold / truncated_geometric / gaussian_threshold).

Attacks tried on D (victim 999 alone in its own groups, touching many groups, with many
rows, NaN/NULL/Infinity keys and values that max out the bounds) against D′ (no victim).
None of them broke the defence; these tests pin what held:

* the premise of the threshold's union bound, checked on the engine's own bounded
  output: the victim makes at most L0 candidate groups, and its count in each, in the
  count's grid units, is at most the c_max τ was computed for (row counts scaled over
  groups and put on a grid, the count behind AVG/STDDEV, FILTER, NaN/Infinity keys,
  expression keys, with quantile and COUNT(DISTINCT col) stages beside it);
* the δ the threshold claims is at least L0·P(c_max + X ≥ τ) for the sampler actually
  given to the count;
* groups the engine sees only in quantile / COUNT(DISTINCT col) stages are not returned;
* the strategy, τ and the charge are the same on D and D′, explain agrees with what
  runs, the strategy is in the answer key, and the ledger charges the events'
  composition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.privacy.thresholding import threshold_delta
from gateway.query.noise import STRATEGIES, calibrate
from gateway.sql.rewrite import rewrite
from tests.redteam.worlds import VICTIM, open_world
from tests.support import read_permit

L0, M = 3, 7
COLUMNS = {"uid": {"type": "int", "role": "privacy_unit"}, "tag": {"type": "text"},
           "f": {"type": "float", "bounds": [-1e6, 1e6]},
           "x": {"type": "float", "bounds": [0, 10]}, "c": {"type": "text"}}


def _victim_rows() -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for g in range(20):  # 20 groups, 30 rows each: far beyond L0 and M
        for r in range(30):
            f = f"{g}.5" if g % 3 else "'NaN'::DOUBLE"
            x = "'NaN'::DOUBLE" if r % 7 == 0 else ("1e308" if r % 2 else "NULL")
            rows.append((str(VICTIM), f"'v{g}'", f, x, f"'c{r}'"))
    rows.append((str(VICTIM), "NULL", "'NaN'::DOUBLE", "10", "'z'"))
    rows.append((str(VICTIM), "NULL", "'Infinity'::DOUBLE", "10", "'z'"))
    return rows


def _others() -> list[tuple[str, ...]]:
    return [(str(u), f"'o{u % 4}'", "1.0", "5.0", "'a'") for u in range(40)]


@pytest.fixture(scope="module")
def victim_only(tmp_path_factory: pytest.TempPathFactory) -> Any:
    gw = open_world(tmp_path_factory.mktemp("ps_victim"), COLUMNS, _victim_rows(),
                    max_rows=M, max_groups=L0)
    yield gw
    gw.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("ps_pair")
    d = open_world(root / "d", COLUMNS, [*_others(), *_victim_rows()], max_rows=M,
                   max_groups=L0)
    dp = open_world(root / "dp", COLUMNS, _others(), max_rows=M, max_groups=L0)
    yield d, dp
    d.close()
    dp.close()


THRESHOLDED = [
    "SELECT tag, COUNT(*) AS n FROM t GROUP BY tag",
    "SELECT tag, COUNT(x) AS n FROM t GROUP BY tag",
    "SELECT tag, COUNT(DISTINCT uid) AS n FROM t GROUP BY tag",
    "SELECT tag, AVG(x) AS a FROM t GROUP BY tag",
    "SELECT tag, STDDEV(x) AS a, COUNT(*) AS n FROM t GROUP BY tag",
    "SELECT tag, COUNT(*) FILTER (WHERE x > 1) AS n FROM t GROUP BY tag",
    "SELECT f, COUNT(*) AS n FROM t GROUP BY f",
    "SELECT tag, COUNT(*) AS n, MEDIAN(x) AS m, COUNT(DISTINCT c) AS d FROM t GROUP BY tag",
    "SELECT ROUND(f / 7) AS k, AVG(x) AS a FROM t GROUP BY ROUND(f / 7)",
]


def _engine(gw: Any, sql: str, cal: Any) -> dict[str, Any]:
    plan = gw.plan(sql)
    res = gw.executor.execute(rewrite(plan, cal.grids, gw.executor), permit=read_permit(gw),
                              params={"salt": 7})
    return dict(zip(res.names, res.columns, strict=True))


@pytest.mark.parametrize("mechanism,epsilon", [("laplace", 0.05), ("laplace", 30.0),
                                               ("gaussian", 1.0)])
@pytest.mark.parametrize("sql", THRESHOLDED)
def test_victim_groups_within_union_bound_premise(victim_only: Any, sql: str,
                                                  mechanism: str, epsilon: float) -> None:
    """Held: ≤ L0 candidate groups, each count ≤ c_max in grid units, and the δ charged
    covers L0·P(c_max + X ≥ τ) for the sampler the count really gets."""
    plan = victim_only.plan(sql)
    cal = calibrate(plan, epsilon, 1e-6, mechanism, selection="threshold")
    p = cal.partition
    assert p is not None and p.strategy == "threshold" and p.statistic is not None
    cols = _engine(victim_only, sql, cal)
    units = np.asarray(cols["__dp_units"], dtype=np.int64)
    stat = np.asarray(cols[p.statistic], dtype=np.float64)
    candidates = units > 0
    assert candidates.sum() <= p.max_partitions == plan.max_groups
    assert np.all(stat[candidates] <= p.contribution)
    assert np.all(stat[candidates] == np.floor(stat[candidates]))
    noise = cal.stats[p.statistic]
    assert threshold_delta(noise.kind, noise.scale, p.contribution, p.max_partitions,
                           p.threshold) <= p.delta_threshold * (1 + 1e-9)


def test_quantile_and_distinct_only_groups_are_not_returned(victim_only: Any) -> None:
    """Held: the victim is in 21 groups; the quantile and COUNT(DISTINCT col) stages see
    all of them, but only the ≤ L0 groups of the L0-bounded stage come back."""
    sql = "SELECT tag, MEDIAN(x) AS m, COUNT(DISTINCT c) AS d FROM t GROUP BY tag"
    for strategy in STRATEGIES[1:]:
        plan = victim_only.plan(sql)
        cal = calibrate(plan, 1.0, 1e-6, "laplace", selection=strategy)
        cols = _engine(victim_only, sql, cal)
        assert len(cols[plan.keys[0].name]) <= L0
        assert np.all(np.asarray(cols["__dp_units"], dtype=np.int64) >= 1)


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_choice_and_charge_same_on_neighbours(pair: Any, mechanism: str) -> None:
    """Held: strategy, τ, explain and the charge do not depend on the victim."""
    for sql in [*THRESHOLDED[:4], "SELECT DISTINCT tag FROM t",
                "SELECT tag, SUM(x) AS s FROM t GROUP BY tag"]:
        ex = [g.explain(sql, epsilon=1.0, delta=1e-6, mechanism=mechanism) for g in pair]
        assert ex[0].partition_selection == ex[1].partition_selection
        assert (ex[0].epsilon_cost, ex[0].delta_cost) == (ex[1].epsilon_cost, ex[1].delta_cost)
        cal = [calibrate(g.plan(sql), 1.0, 1e-6, mechanism) for g in pair]
        assert cal[0].fingerprint() == cal[1].fingerprint()
        assert ex[0].partition_selection["strategy"] == cal[0].partition.strategy
        assert ex[0].partition_selection["threshold"] in (cal[0].partition.threshold, None)


def test_strategy_is_in_answer_key(victim_only: Any) -> None:
    plan = victim_only.plan("SELECT tag, COUNT(DISTINCT uid) AS n FROM t GROUP BY tag")
    keys = {calibrate(plan, 1.0, 1e-6, "laplace", selection=s).fingerprint()
            for s in STRATEGIES}
    assert len(keys) == len(STRATEGIES)


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_ledger_charges_the_events(tmp_path: Path, mechanism: str) -> None:
    """Held: what the ledger records is the composition of the samplers' events, for the
    strategy explain reports; a wrapper / HAVING over the same release is not charged
    again and releases no other group set (served from the same answer)."""
    gw = open_world(tmp_path, COLUMNS, [*_others(), *_victim_rows()], max_rows=M,
                    max_groups=L0)
    try:
        for i, sql in enumerate(THRESHOLDED[:4]):
            cal = calibrate(gw.plan(sql), 1.0, 1e-6, mechanism)
            r = gw.query(sql, analyst=f"a{i}", epsilon=1.0, delta=1e-6, mechanism=mechanism)
            (charge,) = gw.ledger.charges(f"a{i}")
            assert (charge["epsilon"], charge["delta"]) == pytest.approx(
                (cal.epsilon, cal.delta), rel=1e-12)
            assert (r.epsilon_spent, r.delta_spent) == pytest.approx((cal.epsilon, cal.delta))
            assert sum(e.delta for e in cal.events) == pytest.approx(1e-6)
        base = "SELECT tag, COUNT(*) AS n FROM t GROUP BY tag"
        first = gw.query(base, analyst="w", epsilon=1.0, delta=1e-6, mechanism=mechanism)
        wrapped = gw.query(f"SELECT tag, n FROM ({base}) s WHERE n > 0 ORDER BY n LIMIT 3",
                           analyst="w", epsilon=1.0, delta=1e-6, mechanism=mechanism)
        # a0 already paid for this release (same answer key): served again, uncharged
        assert gw.ledger.charges("w") == [] and first.cached and wrapped.cached
        assert {r[0] for r in wrapped.rows} <= {r[0] for r in first.rows}
    finally:
        gw.close()
