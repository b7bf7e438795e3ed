"""End-to-end privacy tests on neighbouring datasets.

D' is a small synthetic table; D is D' plus one adversarial unit whose bounded
contribution is as large as the policy allows (hundreds of rows of values far
above the bounds).  Each query is planned, calibrated and rewritten by the
gateway and its bounded statistics computed by the real engine on both
datasets; then the gateway's own noise code releases the answer 200,000 times
per dataset (vectorised over draws), the outputs are histogrammed, and the
empirical privacy loss is bounded from below with simultaneous Clopper-Pearson
intervals (tests/privacy/dp_check.py).

A correct mechanism passes with probability > 1 - 1e-6 per check.  Each test
also halves the noise (or doubles ε for partition selection) and asserts that
the same check then detects the violation, so a calibration bug that halved the
noise would fail the suite.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlglot import exp

from gateway import Gateway
from gateway.privacy.partition_selection import select_partitions
from gateway.privacy.random import SeededRandom
from gateway.query.noise import Calibration, calibrate
from gateway.query.perturb import _add_noise, _aggregate
from gateway.sql.rewrite import rewrite
from tests.privacy.dp_check import edges_with_tails, privacy_loss_lower_bound
from tests.support import read_permit, write_parquet, write_policy

DRAWS = 200_000
ATTACKER = 10_000_000


def _dataset(path: Path, attacker: bool) -> None:
    rng = np.random.default_rng(3)
    rows = []
    for user in range(1, 301):
        for _ in range(int(rng.integers(1, 6))):
            rare = "rare" if user <= 2 else "common"
            rows.append((user, str(rng.choice(["desktop", "mobile", "tv"])),
                         float(rng.uniform(0, 100)), rare))
    if attacker:
        rows += [(ATTACKER, "tv", 1e6, "rare")] * 500
    write_parquet(path, "user_id BIGINT, device VARCHAR, spend DOUBLE, tag VARCHAR", rows)


def _policy(folder: Path, attacker: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "t.parquet"
    _dataset(data, attacker)
    return write_policy(folder, {
        "dataset": "neighbours",
        "tables": {"t": {
            "source": str(data), "privacy_unit": "user_id", "max_rows_per_unit": 5,
            "max_groups_per_unit": 1,
            "columns": {
                "user_id": {"type": "int", "role": "privacy_unit"},
                "device": {"type": "text", "public_values": ["desktop", "mobile", "tv"]},
                "spend": {"type": "float", "bounds": [0, 100]},
                "tag": {"type": "text"},
            }}},
        "budget": {"dataset": {"epsilon": 1e9, "delta": 0.5},
                   "per_analyst": {"epsilon": 1e9, "delta": 0.5}},
    })


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("neighbours")
    gws = [Gateway.open(_policy(root / name, attacker), state=root / name / "s.db")
           for name, attacker in (("d", True), ("d_prime", False))]
    yield gws
    for g in gws:
        g.close()


def _halved(cal: Calibration) -> Calibration:
    stats = {n: dataclasses.replace(s, scale=s.scale / 2) for n, s in cal.stats.items()}
    return dataclasses.replace(cal, stats=stats)


def _releases(gw: Gateway, sql: str, epsilon: float, key: Any, *, halve: bool = False,
              delta: float = 0.0, seed: int = 0, joint: bool = False) -> np.ndarray:
    """DRAWS released values of the first aggregate, for the group with key ``key``
    (``joint``: the index of the 2-D bin of its first two noisy statistics)."""
    plan = gw.plan(sql)
    cal = calibrate(plan, epsilon, delta, "laplace")
    tree = rewrite(plan, cal.grids, gw.executor)
    salted = any(True for _ in tree.find_all(exp.Placeholder))
    res = gw.executor.execute(tree, permit=read_permit(gw),
                              params={"salt": 12345} if salted else None)
    cols = dict(zip(res.names, res.columns, strict=True))
    row = 0
    if plan.keys:
        keys = list(cols[plan.keys[0].name])
        row = keys.index(key) if key in keys else -1
    if halve:
        cal = _halved(cal)
    rng = SeededRandom(seed)
    noisy = {}
    for s in plan.stats:
        exact = float(cols[s.name][row]) if row >= 0 else 0.0
        noisy[s.name] = _add_noise(np.full(DRAWS, exact), cal.stats[s.name], rng)
    if joint:
        first, second = (noisy[name] for name in plan.aggs[0].stats[:2])
        return np.stack([first, second], axis=1)
    values, _ = _aggregate(plan.aggs[0], noisy, cal.stats)
    return values


def _binned(a: np.ndarray, b: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray,
                                                              np.ndarray]:
    """Outputs as bin indices (2-D outputs: a grid of bins per coordinate)."""
    both = np.concatenate([a, b])
    if a.ndim == 1:
        lo, hi = np.quantile(both, [0.02, 0.98])
        return a, b, edges_with_tails(np.linspace(lo, hi, bins))
    idx = []
    for x in (a, b):
        cell = np.zeros(len(x), dtype=np.int64)
        for j in range(x.shape[1]):
            lo, hi = np.quantile(both[:, j], [0.05, 0.95])
            cell = cell * (bins + 2) + np.digitize(x[:, j], np.linspace(lo, hi, bins + 1))
        idx.append(cell)
    top = (bins + 2) ** a.shape[1]
    return idx[0], idx[1], np.arange(top + 1) - 0.5


def _check(pair: Any, sql: str, epsilon: float, key: Any = None, bins: int = 40,
           joint: bool = False) -> None:
    d, d_prime = pair
    a = _releases(d, sql, epsilon, key, seed=1, joint=joint)
    b = _releases(d_prime, sql, epsilon, key, seed=2, joint=joint)
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    x, y, edges = _binned(a, b, bins)
    assert privacy_loss_lower_bound(x, y, edges) <= epsilon
    # The same check catches a mechanism with half the noise.
    a2 = _releases(d, sql, epsilon, key, halve=True, seed=3, joint=joint)
    b2 = _releases(d_prime, sql, epsilon, key, halve=True, seed=4, joint=joint)
    x, y, edges = _binned(a2, b2, bins)
    assert privacy_loss_lower_bound(x, y, edges) > epsilon


def test_count(pair: Any) -> None:
    _check(pair, "SELECT COUNT(*) FROM t", 1.0)


def test_sum(pair: Any) -> None:
    _check(pair, "SELECT SUM(spend) FROM t", 1.0)


def test_avg(pair: Any) -> None:
    """AVG releases a noisy count and a noisy centred sum (the average is computed
    from them: post-processing), so the privacy loss is checked on their joint
    distribution; the attacker moves both as far as the policy allows."""
    _check(pair, "SELECT AVG(spend) FROM t", 1.0, bins=10, joint=True)
    a = _releases(pair[0], "SELECT AVG(spend) FROM t", 1.0, None, seed=5)
    assert np.all((a >= 0) & (a <= 100))


def test_count_distinct_units(pair: Any) -> None:
    _check(pair, "SELECT COUNT(DISTINCT user_id) FROM t", 1.0)


def test_group_by_public_keys(pair: Any) -> None:
    _check(pair, "SELECT device, COUNT(*) FROM t GROUP BY device", 1.0, key="tv")


def test_partition_selection(pair: Any) -> None:
    """P[release 'rare' | D] <= e^eps P[release | D'] + delta, for the keep decision."""
    d, d_prime = pair
    epsilon, delta = 1.0, 0.05
    keep = {}
    for name, gw in (("d", d), ("d_prime", d_prime)):
        plan = gw.plan("SELECT tag, COUNT(*) FROM t GROUP BY tag")
        # The truncated geometric mechanism (the other strategies: test_neighbouring_partition).
        cal = calibrate(plan, epsilon, delta, "laplace", selection="truncated_geometric")
        assert cal.partition is not None
        res = gw.executor.execute(rewrite(plan, cal.grids, gw.executor),
                                  permit=read_permit(gw), params={"salt": 7})
        cols = dict(zip(res.names, res.columns, strict=True))
        units = int(cols["__dp_units"][list(cols[plan.keys[0].name]).index("rare")])
        keep[name] = (units, cal.partition)
    assert keep["d"][0] == keep["d_prime"][0] + 1
    for factor, ok in ((1.0, True), (2.0, False)):
        rates = []
        for i, (units, part) in enumerate(keep.values()):
            chosen = select_partitions(np.full(DRAWS, units), part.epsilon * factor,
                                       part.delta, part.max_partitions, SeededRandom(10 + i))
            rates.append(chosen.astype(float))
        eps_ps = keep["d"][1].epsilon
        p, q = rates[0].mean(), rates[1].mean()
        slack = 5 * np.sqrt(0.25 / DRAWS) * (1 + np.exp(eps_ps))
        within = p <= np.exp(eps_ps) * q + keep["d"][1].delta + slack
        assert within == ok, (p, q, factor)
