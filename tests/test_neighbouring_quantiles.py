"""DP quantiles and COUNT(DISTINCT col) end to end on neighbouring datasets.

D holds an adversarial unit with 600 rows at a value far outside the bounds, in
every group; D' does not.  The engine's histograms (what leaves the engine) must
differ by at most the unit's weight M in total over all groups — the bound the
exponential mechanism is calibrated for — and the released quantiles must pass
the empirical privacy check, which fails when the utilities are scaled as if
the sensitivity were half of what it is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlglot import exp

from gateway import Gateway
from gateway.privacy.random import SeededRandom
from gateway.query.noise import Calibration, calibrate
from gateway.query.perturb import _choose, _histograms
from gateway.sql.rewrite import rewrite
from tests.privacy.dp_check import privacy_loss_lower_bound
from tests.support import read_permit, write_parquet, write_policy

M, L0 = 4, 2
DEVICES = ["desktop", "mobile", "tv"]
ATTACKER = 10_000_000
DRAWS = 100_000


def _dataset(path: Path, attacker: bool) -> None:
    rng = np.random.default_rng(11)
    rows = []
    for user in range(1, 201):
        for _ in range(int(rng.integers(1, 6))):
            score = float(rng.uniform(-100, 10))
            rows.append((user, str(rng.choice(DEVICES)), f"c{int(rng.integers(0, 3))}",
                         score, round(score)))
    if attacker:
        rows += [(ATTACKER, DEVICES[i % 3], f"c{i % 3}", -1e6 - i, -10**9) for i in range(600)]
    write_parquet(path, "user_id BIGINT, device VARCHAR, city VARCHAR, score DOUBLE, "
                  "level BIGINT", rows)


def _policy(folder: Path, attacker: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "t.parquet"
    _dataset(data, attacker)
    return write_policy(folder, {
        "dataset": "quantiles",
        "tables": {"t": {
            "source": str(data), "privacy_unit": "user_id", "max_rows_per_unit": M,
            "max_groups_per_unit": L0,
            "columns": {
                "user_id": {"type": "int", "role": "privacy_unit"},
                "device": {"type": "text", "public_values": DEVICES},
                "city": {"type": "text"},
                "score": {"type": "float", "bounds": [-100, 10]},
                "level": {"type": "int", "bounds": [-100, 10]},  # 111 bins, one per integer
            }}},
        "budget": {"dataset": {"epsilon": 1e9, "delta": 0.5},
                   "per_analyst": {"epsilon": 1e9, "delta": 0.5}},
    })


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("quantiles")
    gws = [Gateway.open(_policy(root / name, attacker), state=root / name / "s.db")
           for name, attacker in (("d", True), ("d_prime", False))]
    yield gws
    for g in gws:
        g.close()


def _engine_histograms(gw: Gateway, sql: str, epsilon: float = 1.0, delta: float = 0.0
                       ) -> tuple[Any, Calibration, dict[Any, np.ndarray]]:
    """Per group key, the weights the engine returns (what leaves the engine)."""
    plan = gw.plan(sql)
    cal = calibrate(plan, epsilon, delta, "laplace")
    tree = rewrite(plan, cal.grids, gw.executor)
    salted = any(True for _ in tree.find_all(exp.Placeholder))
    res = gw.executor.execute(tree, permit=read_permit(gw),
                              params={"salt": 7} if salted else None)
    cols = dict(zip(res.names, res.columns, strict=True))
    q = plan.quantiles[0]
    keys = [tuple(cols[k.name][i] for k in plan.keys) for i in range(res.num_rows)]
    hists = _histograms(q, cols, np.arange(res.num_rows), res.num_rows)
    return plan, cal, {k: hists[i] for i, k in enumerate(keys)}


@pytest.mark.parametrize("sql", [
    "SELECT MEDIAN(score) FROM t",
    "SELECT device, MEDIAN(score) FROM t GROUP BY device",
    "SELECT device, city, MIN(score), MAX(score) FROM t GROUP BY device, city",
    "SELECT device, MEDIAN(level) FROM t GROUP BY device",
])
def test_one_unit_moves_the_histograms_by_at_most_m(pair: Any, sql: str) -> None:
    d, d_prime = pair
    _, _, a = _engine_histograms(d, sql, delta=1e-3)
    _, _, b = _engine_histograms(d_prime, sql, delta=1e-3)
    bins = len(next(iter(a.values())))
    moved = sum(np.abs(a.get(k, np.zeros(bins)) - b.get(k, np.zeros(bins))).sum()
                for k in set(a) | set(b))
    assert 0 < moved <= M + 1e-9
    # The adversary's rows far below the bounds land in the lowest bin, never outside.
    assert all(len(h) == bins for h in (*a.values(), *b.values()))


def _released(gw: Gateway, sql: str, scale: float, seed: int) -> np.ndarray:
    plan, cal, hists = _engine_histograms(gw, sql)
    q, noise = plan.quantiles[0], cal.quantiles[0]
    if scale != 1.0:
        noise = dataclasses.replace(noise, sensitivity=noise.sensitivity * scale)
    weights = np.repeat(hists[()][None, :], DRAWS, axis=0)
    return _choose(q, noise, weights, SeededRandom(seed))


@pytest.mark.parametrize("sql", ["SELECT MEDIAN(level) FROM t",
                                 "SELECT PERCENTILE_CONT(0.05) WITHIN GROUP (ORDER BY level) "
                                 "FROM t"])
def test_released_quantiles_are_epsilon_dp(pair: Any, sql: str) -> None:
    """ε = 1 over the real engine's histograms: within ε; with a quarter of the
    sensitivity (utilities scaled ×4) the adversary's shift shows beyond ε."""
    d, d_prime = pair
    edges = np.arange(-100, 12) - 0.5
    for scale, ok in ((1.0, True), (0.25, False)):
        a = _released(d, sql, scale, seed=1 + int(4 * scale))
        b = _released(d_prime, sql, scale, seed=2 + int(4 * scale))
        assert bool(privacy_loss_lower_bound(a, b, edges) <= 1.0) is ok, (sql, scale)


def test_quantiles_with_partition_selection(pair: Any) -> None:
    """city has no public values: its groups come from DP partition selection (δ > 0),
    the median of each kept group is a DP quantile, and the charge composes both."""
    gw = pair[1]
    r = gw.query("SELECT city, MEDIAN(score) AS m FROM t GROUP BY city", analyst="ps",
                 epsilon=3.0, delta=1e-3)
    assert {row[0] for row in r.rows} <= {"c0", "c1", "c2"} and r.rows
    assert all(-100 <= row[1] <= 10 for row in r.rows)
    assert r.epsilon_spent == pytest.approx(3.0) and r.delta_spent == pytest.approx(1e-3)
    with pytest.raises(Exception, match="delta"):
        gw.query("SELECT city, MEDIAN(score) AS m FROM t GROUP BY city", analyst="ps",
                 epsilon=3.0, delta=0.0)


@pytest.mark.parametrize("sql", [
    "SELECT COUNT(DISTINCT score) FROM t",
    "SELECT device, COUNT(DISTINCT score) FROM t GROUP BY device",
    "SELECT city, device, COUNT(DISTINCT score), COUNT(*) FROM t GROUP BY city, device",
])
def test_one_unit_moves_distinct_counts_by_at_most_m(pair: Any, sql: str) -> None:
    """The adversary has 600 distinct values in every group; it keeps M (group, value)
    pairs, so all distinct counts together move by at most M, the sensitivity charged."""
    counts = []
    for gw in pair:
        plan = gw.plan(sql)
        cal = calibrate(plan, 1.0, 1e-3, "laplace")
        stat = next(s for s in plan.stats if s.kind == "distinct")
        assert stat.sensitivity(plan.max_rows, plan.max_groups) == (M, M)
        tree = rewrite(plan, cal.grids, gw.executor)
        res = gw.executor.execute(tree, permit=read_permit(gw), params={"salt": 5})
        cols = dict(zip(res.names, res.columns, strict=True))
        keys = [tuple(cols[k.name][i] for k in plan.keys) for i in range(res.num_rows)]
        counts.append({k: float(cols[stat.name][i]) for i, k in enumerate(keys)})
    a, b = counts
    moved = sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))
    assert 0 < moved <= M
