"""Pass 6: from the engine's exact bounded sums to the noisy statistics, and from
those to the aggregates.

Groups are first fixed without looking at values: every key of a public domain
(empty ones included), or the keys DP partition selection keeps (the truncated
geometric mechanism or Gaussian thresholding, from the unit counts).  Then every
statistic gets integer noise on its grid (:func:`perturb`).  When partition
selection thresholds a released count instead, every candidate group gets its
noise first and the groups whose noisy count reaches τ are kept.  That is the
release: the answer cache stores exactly these noisy statistics.  The
aggregates are computed from them per request (:func:`finish`: AVG = mid +
noisy Σ(v − mid) / noisy count, ...), so two aggregates over the same statistics
(VAR and STDDEV, say) are each computed from the one release, never served in
each other's place.  Clamping a noisy COUNT at 0 or an AVG into the column's
bounds is post-processing: it only moves answers towards the truth's possible
range.

A plan whose statistics are all exact (sensitivity 0, hence identically 0 on
every dataset) and whose keys all have public domains releases nothing that
depends on data: :func:`from_domains` answers it without the engine.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.engine.base import ResultSet
from gateway.privacy.partition_selection import select_partitions
from gateway.privacy.quantiles import select_quantile_bins
from gateway.privacy.random import RandomSource
from gateway.privacy.samplers import discrete_laplace, rounded_gaussian, rounded_laplace
from gateway.privacy.thresholding import gaussian_threshold_select, select_above_threshold
from gateway.query.noise import (
    GAUSSIAN_THRESHOLD,
    THRESHOLD,
    TRUNCATED_GEOMETRIC,
    Calibration,
    QuantileNoise,
    StatNoise,
)
from gateway.sql.plan import AggSpec, Plan, QuantileSpec
from gateway.sql.rewrite import QUANTILE_WEIGHT_BITS


@dataclass(frozen=True)
class NoisyStats:
    """The release: group keys and noisy statistics (value units), nothing exact."""

    keys: list[tuple[Any, ...]]
    stats: dict[str, np.ndarray]  # statistic name -> noisy value per group
    # Bounds tuned privately for this release (gateway/query/tuning.py), e.g.
    # {"max_rows_per_unit": 128}: chosen from a DP histogram, so public.
    tuned: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class NoisyTable:
    """Aggregates computed from a release (post-processing)."""

    key_names: tuple[str, ...]
    agg_names: tuple[str, ...]
    keys: list[tuple[Any, ...]]
    values: dict[str, np.ndarray]  # aggregate name -> value per group
    ci95: dict[str, np.ndarray]  # aggregate name -> 95% half-width per group


def from_domains(plan: Plan) -> NoisyStats:
    """The answer of a plan that releases no noisy statistic: every key of the public
    domains, every (exact) statistic 0.  No data is read."""
    assert not plan.partition_selection
    groups: list[tuple[Any, ...]] = list(itertools.product(*[k.domain or () for k in
                                                              plan.keys])) if plan.keys else [()]
    return NoisyStats(groups, {s.name: np.zeros(len(groups)) for s in plan.stats})


def finish(plan: Plan, cal: Calibration, release: NoisyStats) -> NoisyTable:
    """The aggregates the plan asks for, from the noisy statistics only."""
    values: dict[str, np.ndarray] = {}
    ci: dict[str, np.ndarray] = {}
    for agg in plan.aggs:
        if agg.quantile is not None:
            values[agg.name], ci[agg.name] = _quantile(plan, agg, release)
            continue
        values[agg.name], ci[agg.name] = _aggregate(agg, release.stats, cal.stats)
    return NoisyTable(tuple(k.name for k in plan.keys), tuple(a.name for a in plan.aggs),
                      release.keys, values, ci)


def perturb(plan: Plan, cal: Calibration, result: ResultSet, rng: RandomSource) -> NoisyStats:
    columns = {n: c for n, c in zip(result.names, result.columns, strict=True)}
    n_rows = result.num_rows
    key_cols = [_python_values(columns[k.name]) for k in plan.keys]
    engine_keys = list(zip(*key_cols, strict=True)) if plan.keys else [()] * n_rows
    stat_arrays = {s.name: np.asarray(columns[s.name], dtype=np.float64) for s in plan.stats}

    if not plan.keys:
        groups: list[tuple[Any, ...]] = [()]
        index = [0] if n_rows else [-1]
    elif not plan.partition_selection:
        domains = [k.domain or () for k in plan.keys]
        groups = list(itertools.product(*domains))
        position = {key: i for i, key in enumerate(engine_keys)}
        index = [position.get(g, -1) for g in groups]
    else:
        # Candidates: groups in the public parts of their domains that some unit touches
        # in the L0-bounded part of the query (a group seen only by quantile or
        # COUNT(DISTINCT col) stages, where a unit is not limited to L0 groups, has no
        # unit here and is never kept: the union bound over a unit's ≤ L0 groups holds).
        assert cal.partition is not None
        p = cal.partition
        units_all = np.asarray(columns["__dp_units"], dtype=np.int64)
        rows = np.flatnonzero(_keep_in_domain(plan, engine_keys) & (units_all > 0))
        units = units_all[rows]
        if p.strategy == TRUNCATED_GEOMETRIC:
            rows = rows[select_partitions(units, p.epsilon, p.delta, p.max_partitions, rng)]
        elif p.strategy == GAUSSIAN_THRESHOLD:
            rows = rows[gaussian_threshold_select(units, p.sigma, p.threshold, rng)]
        # THRESHOLD: every candidate gets its noise first; the noisy count decides below.
        groups = [engine_keys[i] for i in rows]
        index = list(rows)

    idx = np.asarray(index, dtype=np.int64)
    present = idx >= 0
    exact_units: dict[str, np.ndarray] = {}
    for s in plan.stats:
        true = np.zeros(len(groups), dtype=np.float64)
        true[present] = stat_arrays[s.name][idx[present]] if n_rows else 0.0
        exact_units[s.name] = true
    on_grid = {s.name: _noisy_grid_units(exact_units[s.name], cal.stats[s.name], rng)
               for s in plan.stats}
    if plan.keys and cal.partition is not None and cal.partition.strategy == THRESHOLD:
        # Keep a group iff its released noisy count reaches τ (both in grid units):
        # post-processing of that count, plus the δ of the threshold.
        assert cal.partition.statistic is not None
        kept = select_above_threshold(on_grid[cal.partition.statistic],
                                      cal.partition.threshold)
        groups = [g for g, k in zip(groups, kept, strict=True) if k]
        idx = idx[kept]
        on_grid = {name: v[kept] for name, v in on_grid.items()}
    noisy = {s.name: on_grid[s.name] * cal.stats[s.name].grid.step for s in plan.stats}
    for q in plan.quantiles:
        weights = _histograms(q, columns, idx, n_rows)
        for qn in cal.quantiles:
            if qn.quantile == q.name:
                noisy[quantile_stat(q.name, qn.alpha)] = _choose(q, qn, weights, rng)
    return NoisyStats(groups, noisy)


def quantile_stat(quantile: str, alpha: float) -> str:
    """Name of one chosen quantile in a release."""
    return f"{quantile}@{alpha!r}"


def _histograms(q: QuantileSpec, columns: dict[str, Any], idx: np.ndarray, n_rows: int
                ) -> np.ndarray:
    """Weights per released group and bin (groups the engine did not see: all zero)."""
    out = np.zeros((len(idx), q.bins), dtype=np.float64)
    if not n_rows:
        return out
    bins_col, weights_col = columns[f"{q.name}_b"], columns[f"{q.name}_w"]
    scale = 2.0 ** -QUANTILE_WEIGHT_BITS
    for g, row in enumerate(idx):
        if row < 0:
            continue
        b, w = bins_col[row], weights_col[row]
        if b is None or w is None or b is np.ma.masked or w is np.ma.masked:
            continue
        b = np.asarray(b, dtype=np.int64)
        out[g, b] = np.asarray(w, dtype=np.float64) * scale
    return out


def _choose(q: QuantileSpec, noise: QuantileNoise, weights: np.ndarray, rng: RandomSource
            ) -> np.ndarray:
    """One exponential-mechanism choice per group, as the value its bin stands for."""
    chosen = select_quantile_bins(weights, noise.alpha, noise.epsilon, noise.sensitivity, rng)
    return np.asarray([q.value_of(int(j)) for j in chosen], dtype=np.float64)


def _python_values(col: Sequence[Any]) -> list[Any]:
    out = []
    for v in col:
        if isinstance(v, np.generic):
            v = v.item()
        if v is np.ma.masked:
            v = None
        out.append(v)
    if isinstance(col, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(col)
        out = [None if m else v for v, m in zip(out, mask, strict=True)]
    return out


def _keep_in_domain(plan: Plan, engine_keys: list[tuple[Any, ...]]) -> np.ndarray:
    """Rows whose public-domain key parts are in their domains."""
    keep = np.ones(len(engine_keys), dtype=bool)
    for j, k in enumerate(plan.keys):
        if k.domain is None:
            continue
        allowed = set(k.domain)
        for i, key in enumerate(engine_keys):
            if keep[i] and key[j] not in allowed:
                keep[i] = False
    return keep


def _quantile(plan: Plan, agg: AggSpec, release: NoisyStats) -> tuple[np.ndarray, np.ndarray]:
    """A quantile aggregate from its chosen ranks: one value per group, or (APPROX_QUANTILES,
    QUANTILE_CONT(x, [...])) a sorted list of them.  Its error is stated in ranks (see
    Accuracy.rank_error95), so the value half-width is NaN."""
    q = next(q for q in plan.quantiles if q.name == agg.quantile)
    picks = [release.stats[quantile_stat(q.name, a)] for a in agg.alphas]
    n = len(release.keys)
    nan = np.full(n, np.nan)
    if agg.func != "quantiles":
        return _as_values(q, picks[0]), nan
    # Independent choices need not be monotone in the rank: sorting them is
    # post-processing, and every sorted list is a possible answer.
    lists = np.empty(n, dtype=object)
    for g in range(n):
        chosen = _as_values(q, np.sort(np.asarray([p[g] for p in picks])))
        lists[g] = [int(v) for v in chosen] if q.integral and q.kind != "date" else list(chosen)
    return lists, nan


def _as_values(q: QuantileSpec, v: np.ndarray) -> np.ndarray:
    if q.kind == "date":
        assert q.origin is not None
        out = np.empty(len(v), dtype=object)
        for i, days in enumerate(v):
            out[i] = q.origin + dt.timedelta(days=round(float(days)))
        return out
    if q.integral:
        return np.rint(v)
    return v


def _add_noise(exact: np.ndarray, noise: StatNoise, rng: RandomSource) -> np.ndarray:
    """Exact sums (grid units) + integer noise, back in value units."""
    return _noisy_grid_units(exact, noise, rng) * noise.grid.step


def _noisy_grid_units(exact: np.ndarray, noise: StatNoise, rng: RandomSource) -> np.ndarray:
    """Exact sums (grid units) + integer noise, in grid units."""
    n = len(exact)
    if noise.kind == "none":
        return np.asarray(exact, dtype=np.float64)
    if noise.kind == "discrete_laplace":
        k = discrete_laplace(noise.scale, n, rng)
    elif noise.kind == "laplace":
        k = rounded_laplace(noise.scale, 1.0, n, rng)
    else:
        k = rounded_gaussian(noise.scale, 1.0, n, rng)
    return exact + k.astype(np.float64)


def _aggregate(agg: AggSpec, noisy: dict[str, np.ndarray], noise: dict[str, StatNoise]
               ) -> tuple[np.ndarray, np.ndarray]:
    if agg.func in ("count", "count_units", "count_distinct"):
        s = agg.stats[0]
        v = np.maximum(noisy[s], 0.0)
        return np.rint(v), np.full(len(v), noise[s].ci95)
    if agg.func == "sum":
        s = agg.stats[0]
        v = noisy[s]
        if agg.lo >= 0:
            v = np.maximum(v, 0.0)
        if agg.hi <= 0:
            v = np.minimum(v, 0.0)
        if agg.integral:
            v = np.rint(v)
        return v, np.full(len(v), noise[s].ci95)
    mid, half = (agg.lo + agg.hi) / 2.0, (agg.hi - agg.lo) / 2.0
    n_raw = noisy[agg.stats[0]]
    n = np.maximum(n_raw, 1.0)
    s1 = noisy[agg.stats[1]]
    mean_c = np.clip(s1 / n, -half, half)
    # Delta method on mid + S1/N with independent noise on S1 and N, evaluated at
    # the noisy values (post-processing; never at the true ones).
    sd_n = noise[agg.stats[0]].ci95 / 1.959964
    sd_s1 = noise[agg.stats[1]].ci95 / 1.959964
    mean_ci = 1.959964 * np.sqrt((sd_s1 / n) ** 2 + (mean_c * sd_n / n) ** 2)
    if agg.func == "avg":
        return mid + mean_c, np.minimum(mean_ci, half)
    s2 = noisy[agg.stats[2]]
    var = np.clip(s2 / n - mean_c**2, 0.0, half * half)
    if agg.func in ("var_samp", "stddev_samp"):
        var = np.where(n > 1.0, var * n / np.maximum(n - 1.0, 1.0), var)
        var = np.minimum(var, half * half * 2.0)
    sd_s2 = noise[agg.stats[2]].ci95 / 1.959964
    var_ci = 1.959964 * np.sqrt((sd_s2 / n) ** 2 + (2 * mean_c * sd_s1 / n) ** 2
                                + ((s2 / n) * sd_n / n) ** 2)
    if agg.func.startswith("stddev"):
        sd = np.sqrt(var)
        sd_ci = np.where(sd > 0, var_ci / (2 * np.maximum(sd, 1e-12)), np.sqrt(var_ci))
        return sd, np.minimum(sd_ci, half * math.sqrt(2))
    return var, np.minimum(var_ci, half * half * 2)
