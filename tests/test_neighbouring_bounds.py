"""Neighbouring-dataset checks for what the first suite did not reach (each of these
survived a mutation of the code before): SUM with a negative lower bound, unit
counts released jointly over a unit's L0 > 1 groups, the Gaussian path, NaN
cleaning through every aggregate, the secure default random source and a fresh
keyed-hash salt per execution.

Same method as tests/test_neighbouring.py: the gateway plans and bounds each
query on D (with an adversarial unit) and D' in the real engine, its own noise
code releases the answer many times, and the empirical privacy loss (or the
hockey-stick δ for Gaussian noise) must stay within the budget; with the noise
halved the same check must fail.  A correct mechanism passes with probability
> 1 − 1e-6 per check.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlglot import exp

from gateway import Gateway
from gateway.privacy.random import SecureRandom, SeededRandom, default_random
from gateway.query.noise import Calibration, calibrate
from gateway.query.perturb import _add_noise, _aggregate
from gateway.sql.rewrite import rewrite
from tests.privacy.dp_check import hockey_stick_lower_bound, privacy_loss_lower_bound
from tests.support import read_permit, write_parquet, write_policy
from tests.test_neighbouring import _binned

DRAWS = 200_000
ATTACKER = 10_000_000
M, L0 = 4, 3
DEVICES = ["desktop", "mobile", "tv"]


def _dataset(path: Path, attacker: bool) -> None:
    rng = np.random.default_rng(5)
    rows = []
    for user in range(1, 301):
        for _ in range(int(rng.integers(1, 6))):
            rows.append((user, str(rng.choice(DEVICES)), float(rng.uniform(-100, 10))))
    if attacker:  # in every device, far below the lower bound
        rows += [(ATTACKER, DEVICES[i % 3], -1e6) for i in range(600)]
    write_parquet(path, "user_id BIGINT, device VARCHAR, score DOUBLE", rows)


def _policy(folder: Path, attacker: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "t.parquet"
    _dataset(data, attacker)
    return write_policy(folder, {
        "dataset": "bounds",
        "tables": {"t": {
            "source": str(data), "privacy_unit": "user_id", "max_rows_per_unit": M,
            "max_groups_per_unit": L0,
            "columns": {
                "user_id": {"type": "int", "role": "privacy_unit"},
                "device": {"type": "text", "public_values": DEVICES},
                "score": {"type": "float", "bounds": [-100, 10]},
            }}},
        "budget": {"dataset": {"epsilon": 1e9, "delta": 0.5},
                   "per_analyst": {"epsilon": 1e9, "delta": 0.5}},
    })


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("bounds")
    gws = [Gateway.open(_policy(root / name, attacker), state=root / name / "s.db")
           for name, attacker in (("d", True), ("d_prime", False))]
    yield gws
    for g in gws:
        g.close()


def _stats(gw: Gateway, sql: str, epsilon: float, delta: float, mechanism: str
           ) -> tuple[Any, Calibration, dict[str, np.ndarray]]:
    plan = gw.plan(sql)
    cal = calibrate(plan, epsilon, delta, mechanism)
    tree = rewrite(plan, cal.grids, gw.executor)
    salted = any(True for _ in tree.find_all(exp.Placeholder))
    res = gw.executor.execute(tree, permit=read_permit(gw),
                              params={"salt": 99} if salted else None)
    cols = dict(zip(res.names, res.columns, strict=True))
    return plan, cal, cols


def _halved(cal: Calibration) -> Calibration:
    stats = {n: dataclasses.replace(s, scale=s.scale / 2) for n, s in cal.stats.items()}
    return dataclasses.replace(cal, stats=stats)


def _releases(gw: Gateway, sql: str, *, epsilon: float = 1.0, delta: float = 0.0,
              mechanism: str = "laplace", halve: bool = False, seed: int = 0,
              joint_groups: bool = False) -> np.ndarray:
    """DRAWS released values of the first aggregate (``joint_groups``: of every group,
    as one vector per draw)."""
    plan, cal, cols = _stats(gw, sql, epsilon, delta, mechanism)
    if halve:
        cal = _halved(cal)
    rng = SeededRandom(seed)
    agg = plan.aggs[0]
    if not plan.keys:
        noisy = {s.name: _add_noise(np.full(DRAWS, float(cols[s.name][0])), cal.stats[s.name],
                                    rng) for s in plan.stats}
        return _aggregate(agg, noisy, cal.stats)[0]
    keys = list(cols[plan.keys[0].name])
    out = []
    for device in DEVICES:
        row = keys.index(device)
        noisy = {s.name: _add_noise(np.full(DRAWS, float(cols[s.name][row])),
                                    cal.stats[s.name], rng) for s in plan.stats}
        out.append(_aggregate(agg, noisy, cal.stats)[0])
    return np.stack(out, axis=1) if joint_groups else out[0]


def _check_pure(pair: Any, sql: str, epsilon: float = 1.0, bins: int = 40,
                joint_groups: bool = False) -> None:
    d, d_prime = pair
    for halve, ok in ((False, True), (True, False)):
        a = _releases(d, sql, epsilon=epsilon, halve=halve, seed=1 + halve * 2,
                      joint_groups=joint_groups)
        b = _releases(d_prime, sql, epsilon=epsilon, halve=halve, seed=2 + halve * 2,
                      joint_groups=joint_groups)
        x, y, edges = _binned(a, b, bins)
        assert (privacy_loss_lower_bound(x, y, edges) <= epsilon) is ok, (sql, halve)


def test_sum_with_a_negative_lower_bound(pair: Any) -> None:
    """Bounds [-100, 10]: the sensitivity is M·100, not M·10.  The adversary sits at -1e6."""
    _check_pure(pair, "SELECT SUM(score) FROM t")


def test_unit_counts_over_l0_groups_released_jointly(pair: Any) -> None:
    """One unit moves COUNT(DISTINCT unit) in each of its L0 = 3 groups: the release of
    all three together must still be ε-DP (the sensitivity is L0, not 1)."""
    _check_pure(pair, "SELECT device, COUNT(DISTINCT user_id) FROM t GROUP BY device",
                bins=6, joint_groups=True)


def test_gaussian_path(pair: Any) -> None:
    """(ε, δ) = (1, 0.01): the binned hockey-stick divergence stays within δ; with half
    the noise it does not."""
    d, d_prime = pair
    sql, eps, delta = "SELECT SUM(score) FROM t", 1.0, 0.01
    for halve, ok in ((False, True), (True, False)):
        a = _releases(d, sql, epsilon=eps, delta=delta, mechanism="gaussian", halve=halve,
                      seed=11 + 2 * halve)
        b = _releases(d_prime, sql, epsilon=eps, delta=delta, mechanism="gaussian",
                      halve=halve, seed=12 + 2 * halve)
        x, y, edges = _binned(a, b, 60)
        assert (hockey_stick_lower_bound(x, y, edges, eps) <= delta) is ok


def test_nan_is_cleaned_in_every_aggregate(tmp_path: Path) -> None:
    """NaN values are NULL to every aggregate: at a huge ε each answer equals the one
    computed without the NaN rows (a NaN reaching a sum would make it NaN, or, clamped,
    the upper bound)."""
    clean = [(u, float(u % 7)) for u in range(1, 201)]
    dirty = clean + [(u, math.nan) for u in range(1, 201)]
    answers = []
    for name, rows in (("clean", clean), ("dirty", dirty)):
        folder = tmp_path / name
        folder.mkdir()
        write_parquet(folder / "t.parquet", "u BIGINT, x DOUBLE", rows)
        policy = write_policy(folder, {
            "dataset": "nan", "tables": {"t": {
                "source": str(folder / "t.parquet"), "privacy_unit": "u",
                "max_rows_per_unit": 2, "columns": {
                    "u": {"type": "int", "role": "privacy_unit"},
                    "x": {"type": "float", "bounds": [0, 10]}}}},
            "budget": {"dataset": {"epsilon": 1e12, "delta": 0.5},
                       "per_analyst": {"epsilon": 1e12, "delta": 0.5}}})
        with Gateway.open(policy, state=folder / "s.db") as gw:
            r = gw.query("SELECT COUNT(x), SUM(x), AVG(x), VAR_POP(x), STDDEV_SAMP(x), "
                         "SUM(x * 2 + 1), AVG(CASE WHEN x > 3 THEN x END) FROM t",
                         epsilon=1e7)
            answers.append(r.rows[0])
    for got, want in zip(*answers, strict=True):
        assert got is not None and math.isfinite(got)
        assert got == pytest.approx(want, rel=1e-3, abs=1e-2)


def test_the_default_random_source_is_secure(pair: Any) -> None:
    assert isinstance(default_random(), SecureRandom)
    assert isinstance(pair[0]._rng, SecureRandom)
    # Two releases of the same statistic are not the same draws (no fixed seed).
    gw = pair[1]
    a = gw.query("SELECT SUM(score) FROM t", analyst="r1", epsilon=0.37).rows[0][0]
    b = gw.query("SELECT SUM(score) FROM t", analyst="r1", epsilon=0.371).rows[0][0]
    assert a != b


def test_each_execution_gets_a_fresh_salt(pair: Any) -> None:
    """The keyed hash that picks a unit's groups (and rows before a join) takes a new
    secret salt at every execution."""
    gw = pair[0]
    seen: list[Any] = []
    inner = gw.executor._run

    def spy(sql: str, params: dict[str, Any], *rest: Any) -> Any:
        seen.append(params.get("salt"))
        return inner(sql, params, *rest)

    gw.executor._run = spy  # type: ignore[method-assign]
    try:
        for eps in (0.5, 0.51, 0.52):
            # Groups without a public domain: each unit's L0 groups are chosen by the
            # keyed hash before partition selection.
            gw.query("SELECT score, COUNT(*) FROM t GROUP BY score", analyst="salt",
                     epsilon=eps, delta=1e-3)
    finally:
        gw.executor._run = inner  # type: ignore[method-assign]
    assert len(seen) == 3 and None not in seen and len(set(seen)) == 3
