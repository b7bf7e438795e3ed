"""End-to-end neighbouring tests of partition selection, every strategy.

D′ has groups g1 … g100 of a key without public values (g<s>: s units of one row
each).  D adds one unit in max_groups_per_unit = 5 groups: one row in each of four
groups of D′ and rows in a group of its own ("mine"); where the four groups are is
chosen per case from the calibration alone (where a shift shows most).  Each query
is planned, calibrated with the strategy forced, rewritten and run by the real engine
on D and D′; the engine's rows for the affected groups are repeated R times (each
copy with keys of its own) and released by the gateway's own ``perturb`` with a
SeededRandom, so one call gives R independent releases.  Restricting the input to
the affected groups projects the output onto them (each group's decision and noise
are independent of the others'): a post-processing, so as good a family of sets S
as any.

Per release the outcome is how many of the four groups are released, whether the
attacker's own group is, and, when values are released, either how many released
values reach the group's bounded value in D (the likelihood ratio of a Laplace
shift is largest there) or their sum (best for a Gaussian shift), binned.
hockey_stick_lower_bound (tests/privacy/dp_check.py; false failure < 1e-6 per
test) bounds Σ max(0, P_D(S) − e^ε P_D′(S)) from below: it must be ≤ δ.  The same
check must catch the mechanism with half of all its noise (twice the ε for the
truncated geometric) and with the threshold lowered to c_max + (τ − c_max)//2, for
each case where that is a violation of the query's (ε, δ) an attacker of this shape
can show at this sample size (the rest is covered in tests/privacy/test_thresholding.py).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from gateway import Gateway
from gateway.engine.base import ResultSet
from gateway.privacy.partition_selection import keep_probabilities
from gateway.privacy.random import SeededRandom
from gateway.query.noise import Calibration, calibrate
from gateway.query.perturb import perturb
from gateway.sql.rewrite import rewrite
from tests.privacy.dp_check import hockey_stick_lower_bound
from tests.support import read_permit, write_parquet, write_policy

R = 100_000  # releases per dataset and variant (default)
EPSILON = 1.0
L0, M = 5, 5
SIZES = 100
ATTACKER = 9_999_999
OWN = "mine"
UNITS = "SELECT tag, COUNT(DISTINCT user_id) AS n FROM t GROUP BY tag"
ROWS = "SELECT tag, COUNT(*) AS n FROM t GROUP BY tag"
KEYS = "SELECT DISTINCT tag FROM t"


def _dataset(path: Path, shared: tuple[int, ...] | None, own_rows: int) -> None:
    rows: list[tuple[Any, ...]] = []
    user = 0
    for size in range(1, SIZES + 1):
        for _ in range(size):
            user += 1
            rows.append((user, f"g{size}", 5.0))
    if shared is not None:
        rows += [(ATTACKER, OWN, 5.0)] * own_rows + [(ATTACKER, f"g{s}", 5.0) for s in shared]
    write_parquet(path, "user_id BIGINT, tag VARCHAR, spend DOUBLE", rows)


def _policy(folder: Path, shared: tuple[int, ...] | None, own_rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "t.parquet"
    _dataset(data, shared, own_rows)
    return write_policy(folder, {
        "dataset": "partition_neighbours",
        "tables": {"t": {
            "source": str(data), "privacy_unit": "user_id", "max_rows_per_unit": M,
            "max_groups_per_unit": L0,
            "columns": {
                "user_id": {"type": "int", "role": "privacy_unit"},
                "tag": {"type": "text"},
                "spend": {"type": "float", "bounds": [0, 10]},
            }}},
        "budget": {"dataset": {"epsilon": 1e9, "delta": 0.5},
                   "per_analyst": {"epsilon": 1e9, "delta": 0.5}},
    })


class Pairs:
    """A gateway over D′, and over D = D′ + the attacker placed for each case."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.open: list[Gateway] = []
        self.d_prime = self._gateway("d_prime", None, 0)
        self._d: dict[tuple[tuple[int, ...], int], Gateway] = {}

    def _gateway(self, name: str, shared: tuple[int, ...] | None, own_rows: int) -> Gateway:
        gw = Gateway.open(_policy(self.root / name, shared, own_rows),
                          state=self.root / name / "s.db")
        self.open.append(gw)
        return gw

    def d(self, shared: tuple[int, ...], own_rows: int = 1) -> Gateway:
        key = (shared, own_rows)
        if key not in self._d:
            name = "d_" + "_".join(map(str, shared)) + f"_{own_rows}"
            self._d[key] = self._gateway(name, shared, own_rows)
        return self._d[key]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    p = Pairs(tmp_path_factory.mktemp("partition_neighbours"))
    yield p
    for g in p.open:
        g.close()


def _broken(cal: Calibration, variant: str) -> Calibration:
    """The calibration as the test runs it: as calibrated, with half of all its noise
    (statistics and selection; twice the ε for the truncated geometric), or with the
    threshold halfway down to c_max."""
    p = cal.partition
    assert p is not None
    if variant == "calibrated":
        return cal
    if variant == "half-noise":
        halved = {n: dataclasses.replace(s, scale=s.scale / 2) for n, s in cal.stats.items()}
        if p.strategy == "gaussian_threshold":
            p = dataclasses.replace(p, sigma=p.sigma / 2)
        elif p.strategy == "truncated_geometric":
            p = dataclasses.replace(p, epsilon=2 * p.epsilon)
        return dataclasses.replace(cal, stats=halved, partition=p)
    assert variant == "low-threshold" and p.strategy != "truncated_geometric"
    c = p.contribution
    return dataclasses.replace(cal, partition=dataclasses.replace(
        p, threshold=c + (p.threshold - c) // 2))


def _engine_rows(gw: Gateway, sql: str, mechanism: str, strategy: str, delta: float
                 ) -> tuple[Any, Calibration, ResultSet]:
    plan = gw.plan(sql)
    cal = calibrate(plan, EPSILON, delta, mechanism, selection=strategy)
    res = gw.executor.execute(rewrite(plan, cal.grids, gw.executor), permit=read_permit(gw),
                              params={"salt": 99})
    return plan, cal, res


def _exact(gw: Gateway, sql: str, mechanism: str, strategy: str, delta: float
           ) -> dict[str, float]:
    """The bounded value of the first statistic per group, in value units (engine)."""
    plan, cal, res = _engine_rows(gw, sql, mechanism, strategy, delta)
    if not plan.aggs:
        return {}
    stat = plan.aggs[0].stats[0]
    cols = dict(zip(res.names, res.columns, strict=True))
    step = cal.stats[stat].grid.step
    return {t: float(v) * step for t, v in zip(cols[plan.keys[0].name], cols[stat],
                                                 strict=True)}


def _outcomes(gw: Gateway, case: Case, variant: str, shared: tuple[int, ...],
              exact_d: dict[str, float], seed: int) -> list[np.ndarray]:
    """``case.draws`` releases restricted to the affected groups, each encoded as one
    integer, in one or two encodings (see the module docstring)."""
    plan, cal, res = _engine_rows(gw, case.sql, case.mechanism, case.strategy, case.delta)
    draws = case.draws
    assert cal.partition is not None and cal.partition.strategy == case.strategy
    cal = _broken(cal, variant)
    key = plan.keys[0].name
    cols = dict(zip(res.names, res.columns, strict=True))
    tags = list(cols[key])
    names = [f"g{s}" for s in shared]
    affected = [tags.index(g) for g in (*names, OWN) if g in tags]
    groups = [tags[i] for i in affected]
    columns = []
    for name, typ in zip(res.names, res.types, strict=True):
        col = np.asarray(cols[name], dtype=object)[affected]
        if name == key:  # copy r of the j-th affected group is the group 8·r + j
            col = (np.arange(draws)[:, None] * 8 + np.arange(len(affected))[None, :]).ravel()
        else:
            col = np.tile(col.astype(np.float64 if typ != "text" else object), draws)
        columns.append(col)
    types = tuple("int" if n == key else t for n, t in zip(res.names, res.types, strict=True))
    tiled = ResultSet(tuple(res.names), types, tuple(columns))
    release = perturb(plan, cal, tiled, SeededRandom(seed))
    stat = plan.aggs[0].stats[0] if plan.aggs else None
    ids = np.asarray([k for (k,) in release.keys], dtype=np.int64).reshape(-1)
    copy, which = ids // 8, ids % 8
    is_own = np.asarray([groups[j] == OWN for j in range(len(groups))] + [False] * 8)[which]
    own = np.bincount(copy[is_own], minlength=draws)
    kept = np.bincount(copy[~is_own], minlength=draws)
    high: np.ndarray = np.zeros(draws, dtype=np.int64)
    total: np.ndarray = np.zeros(draws)
    if stat is not None:
        values = np.asarray(release.stats[stat])
        bound = np.asarray([exact_d.get(g, 0.0) for g in groups] + [0.0] * 8)[which]
        total = np.bincount(copy[~is_own], weights=values[~is_own], minlength=draws)
        high = np.bincount(copy[~is_own], weights=values[~is_own] >= bound[~is_own] - 1e-9,
                           minlength=draws).astype(np.int64)
    flags = kept * 2 + own
    if stat is None:
        return [flags]
    n = len(shared) + 1
    noise = cal.stats[stat]
    centre = sum(exact_d[g] for g in names)
    width = max(noise.value_scale, noise.grid.step)
    bins = np.clip(np.floor((total - centre) / width), -8, 8).astype(np.int64) + 8
    return [(kept * n + high) * 2 + own, bins * 2 * n + flags]


@dataclasses.dataclass(frozen=True)
class Case:
    sql: str
    mechanism: str
    strategy: str
    variants: tuple[str, ...]
    delta: float = 1e-3
    own_rows: int = 1  # rows of the attacker in its own group (one in each shared group)
    draws: int = R

    @property
    def id(self) -> str:
        shape = {UNITS: "units", ROWS: "rows", KEYS: "keys"}[self.sql]
        own = "" if self.own_rows == 1 else f"-own{self.own_rows}"
        return f"{self.strategy}-{self.mechanism}-{shape}{own}"


CASES = [
    Case(UNITS, "laplace", "threshold", ("calibrated", "half-noise", "low-threshold")),
    Case(ROWS, "laplace", "threshold", ("calibrated", "half-noise")),
    Case(ROWS, "laplace", "threshold", ("calibrated", "low-threshold"), own_rows=40),
    Case(UNITS, "gaussian", "threshold", ("calibrated", "half-noise", "low-threshold"),
         delta=0.05),
    Case(ROWS, "gaussian", "threshold", ("calibrated", "low-threshold"), own_rows=40),
    Case(KEYS, "laplace", "truncated_geometric", ("calibrated", "half-noise")),
    Case(UNITS, "laplace", "truncated_geometric", ("calibrated",)),
    Case(KEYS, "laplace", "gaussian_threshold", ("calibrated", "half-noise", "low-threshold"),
         delta=0.05, draws=300_000),
    Case(UNITS, "gaussian", "gaussian_threshold", ("calibrated", "low-threshold")),
]


def _keep_curve(cal: Calibration) -> np.ndarray:
    """P(a group of n units is kept), n = 0..SIZES+1, for a separate selection mechanism."""
    p = cal.partition
    assert p is not None
    n = np.arange(SIZES + 2)
    if p.strategy == "truncated_geometric":
        table = keep_probabilities(p.epsilon, p.delta, p.max_partitions)
        return table[np.minimum(n, len(table) - 1)]
    # round(N(0, σ²)) ≥ τ − n  <=>  N ≥ τ − n − ½
    return np.asarray(stats.norm.sf(p.threshold - n - 0.5, scale=p.sigma))


def _placement(case: Case, pairs: Pairs) -> tuple[int, ...]:
    """Sizes in D′ of the four groups the attacker adds to, from the calibration alone:
    for a threshold on released counts, well above τ (the released values shift); for a
    separate mechanism, where the broken variant's hockey stick on the number of groups
    kept is largest (computed exactly from its keep curve)."""
    plan = pairs.d_prime.plan(case.sql)
    cal = calibrate(plan, EPSILON, case.delta, case.mechanism, selection=case.strategy)
    p = cal.partition
    assert p is not None
    if case.strategy == "threshold":
        assert p.statistic is not None
        noise = cal.stats[p.statistic]
        n = math.ceil((p.threshold + 2 * noise.scale) * noise.grid.step)  # one row per unit
    else:
        broken = _broken(cal, case.variants[1] if len(case.variants) > 1 else "half-noise")
        keep = _keep_curve(broken)
        k = np.arange(L0)

        def hockey(n: int) -> float:
            on_d = stats.binom.pmf(k, L0 - 1, keep[n + 1])
            on_d_prime = stats.binom.pmf(k, L0 - 1, keep[n])
            return float(max(np.maximum(0, on_d - math.e * on_d_prime).sum(),
                             np.maximum(0, on_d_prime - math.e * on_d).sum()))

        n = max(range(1, SIZES - L0), key=hockey)
    return tuple(min(SIZES, n + i) for i in range(L0 - 1))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_partition_selection_on_neighbouring_datasets(pairs: Pairs, case: Case) -> None:
    shared = _placement(case, pairs)
    d, d_prime = pairs.d(shared, case.own_rows), pairs.d_prime
    exact_d = _exact(d, case.sql, case.mechanism, case.strategy, case.delta)
    checks = len(case.variants) * (1 if case.sql == KEYS else 2)
    for i, variant in enumerate(case.variants):
        on_d = _outcomes(d, case, variant, shared, exact_d, seed=100 + 2 * i)
        on_d_prime = _outcomes(d_prime, case, variant, shared, exact_d, seed=101 + 2 * i)
        worst = 0.0
        for a, b in zip(on_d, on_d_prime, strict=True):
            edges = np.arange(max(a.max(), b.max()) + 2) - 0.5
            worst = max(worst, hockey_stick_lower_bound(a, b, edges, EPSILON,
                                                        false_failure=1e-6 / checks))
        assert (worst <= case.delta) is (variant == "calibrated"), (variant, shared, worst)


def test_the_engine_sees_the_attacker_where_the_test_says(pairs: Pairs) -> None:
    """The unit adds 1 to four groups' unit counts and creates its own group."""
    shared = (10, 12, 14, 16)
    counts = []
    for gw in (pairs.d(shared), pairs.d_prime):
        plan, _, res = _engine_rows(gw, UNITS, "laplace", "threshold", 1e-3)
        cols = dict(zip(res.names, res.columns, strict=True))
        counts.append(dict(zip(cols[plan.keys[0].name], cols["__dp_units"], strict=True)))
    d, d_prime = counts
    assert d[OWN] == 1 and OWN not in d_prime
    assert all(d[f"g{s}"] == d_prime[f"g{s}"] + 1 for s in shared)
    assert sum(d.values()) == sum(d_prime.values()) + L0


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_choice_is_the_fewest_weighed_units(pairs: Pairs, case: Case) -> None:
    """Unforced, the strategy with the smallest n50 runs, each n50 weighed by the shares
    of ε the strategy takes from the statistics (ties: fewer shares)."""
    plan = pairs.d_prime.plan(case.sql)
    cal = calibrate(plan, EPSILON, case.delta, case.mechanism)
    p = cal.partition
    assert p is not None
    options = [a for a in p.alternatives if a.units_for_half is not None]
    own = {"truncated_geometric", "gaussian_threshold"}
    k = len([s for s in cal.stats.values() if s.kind != "none"]) + len(cal.quantiles)
    fewest = min((k + (a.strategy in own)) or 1 for a in options)

    def weighed(strategy: str, n: int) -> float:
        return n * max(k + (strategy in own), 1) / fewest

    assert weighed(p.strategy, p.units_for_half) == min(
        weighed(a.strategy, a.units_for_half or 0) for a in options)
    forced = calibrate(plan, EPSILON, case.delta, case.mechanism, selection=case.strategy)
    assert forced.partition is not None
    assert weighed(p.strategy, p.units_for_half) <= weighed(
        forced.partition.strategy, forced.partition.units_for_half)
