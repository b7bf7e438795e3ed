"""Contribution bounds tuned privately, per query (``max_rows_per_unit: {auto: true, max: N}``).

A fixed M is a guess made once for every query: too small and heavy units lose
rows (bias), too large and every answer carries noise for units that do not
exist.  For a table whose policy says ``auto``, each query spends a stated share
of its ε (``limits.tuning_epsilon_share``, 10% by default) on a DP histogram of
how many rows each unit contributes to *this* query (after its joins and
filters), then picks the M among a fixed ladder of candidates (1, 2, 4, ... and
the ceiling N) that minimises the expected total error of the query's released
cells, bias plus noise, and runs the query with the rest of ε.  This is the
bias-variance trade-off of Amin, Kulesza, Muñoz Medina & Vassilvitskii,
"Bounding user contributions: a bias-variance trade-off in differential
privacy" (ICML 2019), with the DP summary on a logarithmic scale as in
PipelineDP's parameter tuning and ZetaSQL's approximate bounds.

Privacy.  Each unit falls in exactly one bin of the histogram (by its own row
count), so adding or removing a unit changes one bin by one: discrete Laplace
with scale 1/ε_t per bin is ε_t-DP (its event is DiscreteLaplaceEvent(ε_t, 1)).
The choice of M is post-processing of that histogram.  The query then runs at
ε − ε_t with the chosen M.  The charge must be fixed before any data is read,
and it may not depend on M: the events of the main release are recorded in a
form that does not depend on M (every Laplace-family statistic as the
worst-case ε-DP event, ApproxDpEvent(ε, 0), which dominates any ε-DP
mechanism: Kairouz, Oh & Viswanath 2015), and only candidates whose events are
then identical to the ceiling's are offered to the choice (decided at planning,
from the plan alone).  The charge is the composition of the histogram's event
and those events; the ledger reserves it before the histogram is computed.

What is not tuned: L0 (``max_groups_per_unit``) shrinks with M only; bounds of
values stay those of the policy.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlglot import exp

from gateway.errors import QueryRejected
from gateway.privacy.events import (
    ApproxDpEvent,
    DiscreteLaplaceEvent,
    LaplaceEvent,
    PrivacyEvent,
)
from gateway.privacy.random import RandomSource
from gateway.privacy.samplers import discrete_laplace
from gateway.query.noise import Calibration, calibrate
from gateway.sql.plan import Plan
from gateway.sql.rewrite import value_columns
from gateway.sql.verify import verify_total

if TYPE_CHECKING:
    from gateway.engine.base import ResultSet

# E|X| of a Gaussian of σ = 1 (√(2/π)); of a Laplace of scale b it is b.
_GAUSS_MEAN_ABS = math.sqrt(2.0 / math.pi)


def candidates(ceiling: int) -> tuple[int, ...]:
    """The M values a query may be given: powers of two below the ceiling, and the
    ceiling.  Fixed by the policy alone, so the histogram's bins are public."""
    out = [1 << k for k in range(0, 21) if (1 << k) < ceiling]
    return (*out, ceiling)


# Value bins of the tuning histogram: a unit's mean (or max) |value| in
# (B/2^(j+1), B/2^j] for j < VALUE_BINS - 1 (B the largest |bound| the plan allows),
# the last bin below.  With `bounds: auto` the range is cut to B/2^j for one such j.
VALUE_BINS = 20

# (M, j, L0): max_rows_per_unit, the range cut to 2^-j, max_groups_per_unit
Choice = tuple[int, int, int]


@dataclass(frozen=True)
class TuningNoise:
    """The DP histogram of rows per unit (and of each unit's mean or largest |value|),
    as its sampler receives it."""

    epsilon: float
    edges: tuple[int, ...]  # candidate Ms, ascending; bin i is [edges[i], edges[i+1])
    cells: int  # released cells assumed by the error model (public domain size, else 1)
    value_column: str | None = None  # the value summarised beside the row count
    value_bound: float = 1.0  # its largest |bound|
    scales: tuple[int, ...] = (0,)  # range cuts j offered (0: the planned range)
    value_mode: str = "mean"  # "mean" |value| per unit, or "max" when ranges are tuned
    # Candidate L0s, ascending, when max_groups_per_unit is tuned (else ()): bin i of the
    # groups axis is [groups[i], groups[i+1]), the last one above the ceiling.
    groups: tuple[int, ...] = ()
    group_keys: tuple[str, ...] = ()  # the key columns of __dp_rows
    groups_ceiling: int = 1  # the plan's L0 when it is not tuned

    @property
    def ceiling(self) -> int:
        return self.edges[-1]

    @property
    def row_bins(self) -> int:
        # One bin per candidate (the last holds t == ceiling) and one for t > ceiling.
        return len(self.edges) + 1

    @property
    def value_bins(self) -> int:
        return VALUE_BINS if self.value_column is not None else 1

    @property
    def group_bins(self) -> int:
        return len(self.groups) + 1 if self.groups else 1

    @property
    def group_choices(self) -> tuple[int, ...]:
        return self.groups or (self.groups_ceiling,)

    @property
    def bins(self) -> int:
        return self.row_bins * self.value_bins * self.group_bins

    @property
    def scale(self) -> float:
        return 1.0 / self.epsilon

    def event(self) -> DiscreteLaplaceEvent:
        # Each unit is in exactly one cell (its row-count bin × value bin × groups bin):
        # L1 sensitivity 1, discrete Laplace of scale 1/ε.
        return DiscreteLaplaceEvent(self.epsilon, 1)


def _dominated(e: PrivacyEvent) -> PrivacyEvent:
    """An event for the same ε that does not depend on the statistic's sensitivity."""
    if isinstance(e, LaplaceEvent | DiscreteLaplaceEvent):
        return ApproxDpEvent(e.epsilon, 0.0)
    return e


def _signature(events: tuple[PrivacyEvent, ...]) -> list[dict[str, Any]]:
    return [_dominated(e).to_dict() for e in events]


def tuned_plan(plan: Plan, choice: Choice) -> Plan:
    """``plan`` with the bounds of ``choice``."""
    m, j, groups = choice
    out = plan.with_value_scale(j)
    if plan.auto_groups:
        out = out.with_max_groups(groups)
    if plan.auto_rows:
        out = out.with_max_rows(m)
    return replace(out, auto_columns=frozenset())


@dataclass(frozen=True)
class TunedCalibration(Calibration):
    """The calibration of a query whose bounds are tuned at run time.

    Its own noise fields are those at the ceiling (the largest M, the planned range:
    what explain predicts, an upper bound of the noise); :meth:`at` gives the
    calibration of each allowed choice.  Its events, hence the charge, are the
    histogram's plus the bound-independent form of the main release's, which every
    allowed choice shares (a choice whose events differ is never offered)."""

    tuning: TuningNoise | None = None
    plan: Plan | None = field(default=None, compare=False, repr=False)
    rest: float = 0.0  # ε of the main release
    # (δ, mechanism, partition-selection strategy) of the main release
    request: tuple[float, str, str | None] = (0.0, "laplace", None)
    _at: dict[Choice, Calibration | None] = field(default_factory=dict, compare=False,
                                                   repr=False)

    @cached_property
    def events(self) -> tuple[PrivacyEvent, ...]:
        assert self.tuning is not None
        return (self.tuning.event(), *(_dominated(e) for e in self.main.events))

    @cached_property
    def main(self) -> Calibration:
        """The calibration at the ceiling, as a plain Calibration."""
        return Calibration(**{f.name: getattr(self, f.name) for f in fields(Calibration)})

    @property
    def ceiling(self) -> Choice:
        assert self.tuning is not None
        return (self.tuning.ceiling, 0, self.tuning.group_choices[-1])

    def at(self, choice: Choice) -> Calibration | None:
        """The calibration of ``choice``, or None if it is not allowed (its events would
        differ from the charged ones, or its noise cannot be calibrated)."""
        if choice == self.ceiling:
            return self.main
        if choice not in self._at:
            assert self.plan is not None
            found: Calibration | None
            try:
                delta, mechanism, selection = self.request
                found = calibrate(tuned_plan(self.plan, choice), self.rest, delta, mechanism,
                                  selection=selection)
            except QueryRejected:
                found = None
            if found is not None and _signature(found.events) != _signature(self.main.events):
                found = None
            self._at[choice] = found
        return self._at[choice]

    def fingerprint(self) -> str:
        assert self.tuning is not None
        t = self.tuning
        body = [self.main.fingerprint(), repr(t.epsilon), list(t.edges), t.cells,
                list(t.scales), t.value_column, repr(t.value_bound), t.value_mode,
                list(t.groups), list(t.group_keys), t.groups_ceiling]
        return hashlib.sha256(json.dumps(body).encode()).hexdigest()


def calibrate_query(plan: Plan, epsilon: float, delta: float, mechanism: str,
                    share: float) -> Calibration:
    """:func:`calibrate`, or for a plan with an ``auto`` bound a :class:`TunedCalibration`
    that spends ``share`` of ε on the histogram (when some noise depends on the bound:
    otherwise there is nothing to tune, and the ceiling costs nothing more)."""
    rows = plan.auto_rows and _depends_on_rows(plan)
    ranges = bool(plan.tunable_stats)
    groups = plan.auto_groups and _depends_on_groups(plan)
    if not (rows or ranges or groups):
        return calibrate(plan, epsilon, delta, mechanism)
    eps_t = epsilon * share
    rest = epsilon - eps_t
    base, selection = _base(plan, rest, delta, mechanism, groups)
    edges = candidates(plan.max_rows) if rows else (plan.max_rows,)
    column, bound = _summarised_value(plan)
    tuning = TuningNoise(eps_t, edges, plan.domain_size or 1, column, bound,
                         tuple(range(VALUE_BINS)) if ranges else (0,),
                         "max" if ranges else "mean",
                         candidates(plan.max_groups) if groups else (),
                         tuple(k.name for k in plan.keys), plan.max_groups)
    return TunedCalibration(**{f.name: getattr(base, f.name) for f in fields(Calibration)},
                            tuning=tuning, plan=plan, rest=rest,
                            request=(delta, mechanism, selection))


# Partition-selection strategies whose events do not depend on L0 (the Gaussian
# threshold splits δ by L0), preferred in this order when L0 is tuned.
_L0_FREE = ("threshold", "truncated_geometric")


def _base(plan: Plan, rest: float, delta: float, mechanism: str, groups: bool
          ) -> tuple[Calibration, str | None]:
    """The ceiling's calibration, and the partition-selection strategy every choice must
    keep: with L0 tuned, one whose events are the same at every L0 (else no smaller L0
    could be offered), the first of _L0_FREE that applies."""
    if not (groups and plan.partition_selection):
        return calibrate(plan, rest, delta, mechanism), None
    for strategy in _L0_FREE:
        try:
            return calibrate(plan, rest, delta, mechanism, selection=strategy), strategy
        except QueryRejected:
            continue
    return calibrate(plan, rest, delta, mechanism), None


def _summarised_value(plan: Plan) -> tuple[str | None, float]:
    """The value summarised beside the row count: the first tunable statistic's, else
    the first sum or moment whose rows are worth more than one (a count's rows are
    worth 1 each); its column in ``__dp_rows`` and its largest |bound|."""
    _, column_of = value_columns(plan)
    for s in (*plan.tunable_stats, *plan.stats):
        if (s.kind == "sum" and max(abs(s.lo), abs(s.hi)) > 1) or \
                (s.kind == "ratio" and s.power >= 1):
            return column_of[s.name], max(abs(s.lo), abs(s.hi), 1e-300)
    return None, 1.0


def _depends_on_groups(plan: Plan) -> bool:
    """Does some noise grow with L0 (unit counts per group, partition selection)?"""
    return plan.max_groups > 1 and (plan.partition_selection or any(
        s.kind == "units" for s in plan.stats))


def _depends_on_rows(plan: Plan) -> bool:
    """Does some statistic's sensitivity grow with M?"""
    return bool(plan.quantiles) or any(
        s.sensitivity(plan.max_rows, plan.max_groups)[0] > 0 and s.kind != "units"
        for s in plan.stats)


def histogram_query(tree: exp.Select, tuning: TuningNoise) -> exp.Select:
    """Units per cell (row-count bin, mean- or max-|value| bin), over the rows of the
    bounded query (its stage ``__dp_rows``: after the analyst's joins and filters,
    before any bound)."""
    with_ = tree.args.get("with_")
    assert isinstance(with_, exp.With)
    ctes: list[exp.CTE] = []
    for cte in with_.expressions:
        ctes.append(cte.copy())
        if cte.alias == "__dp_rows":
            break
    else:  # pragma: no cover - every rewrite has the stage
        raise AssertionError("rewrite without __dp_rows")
    t = exp.column("__dp_t", quoted=True)
    unit = exp.column("__dp_unit", quoted=True)
    items: list[exp.Expr] = [unit, exp.alias_(exp.Count(this=exp.Star()), "__dp_t", quoted=True)]
    if tuning.value_column is not None:
        # Clamped, cleaned values: the mean or max of their absolute values cannot fail.
        magnitude = exp.Abs(this=exp.Cast(this=exp.column(tuning.value_column, quoted=True),
                                          to=exp.DataType.build("DOUBLE")))
        summary = exp.Max(this=magnitude) if tuning.value_mode == "max" else \
            exp.Avg(this=magnitude)
        items.append(exp.alias_(summary, "__dp_mv", quoted=True))
    per_unit = exp.select(*items).from_("__dp_rows").group_by(unit.copy())
    if tuning.groups:
        # Groups per unit: its distinct keys (DISTINCT treats NULL keys as one group, as
        # GROUP BY does), joined to its row count by the unit.
        keys = [exp.column(k, quoted=True) for k in tuning.group_keys]
        pairs = exp.select(unit.copy(), *keys).from_("__dp_rows").distinct()
        counted = exp.select(unit.copy(), exp.alias_(exp.Count(this=exp.Star()), "__dp_g",
                                                     quoted=True)
                             ).from_(pairs.subquery("__dp_pairs")).group_by(unit.copy())
        per_unit = exp.select(exp.Star()).from_(per_unit.subquery("__dp_rows_of")).join(
            counted.subquery("__dp_groups_of"), using=["__dp_unit"])
    cell: exp.Expr = _ladder(t, tuning.edges)
    if tuning.value_column is not None:
        mv = exp.column("__dp_mv", quoted=True)
        vifs = [exp.If(this=exp.GT(this=mv.copy(), expression=exp.Cast(
            this=exp.Literal.number(repr(tuning.value_bound / 2.0 ** (j + 1))),
            to=exp.DataType.build("DOUBLE"))), true=exp.Literal.number(j))
            for j in range(VALUE_BINS - 1)]
        vbin = exp.Case(ifs=vifs, default=exp.Literal.number(VALUE_BINS - 1))
        cell = exp.Add(this=exp.Mul(this=exp.Paren(this=cell),
                                    expression=exp.Literal.number(VALUE_BINS)),
                       expression=vbin)
    if tuning.groups:
        gbin = _ladder(exp.column("__dp_g", quoted=True), tuning.groups)
        cell = exp.Add(this=exp.Mul(this=exp.Paren(this=cell),
                                    expression=exp.Literal.number(tuning.group_bins)),
                       expression=gbin)
    query = exp.select(exp.alias_(cell, "__dp_bin", quoted=True),
                       exp.alias_(exp.Count(this=exp.Star()), "__dp_n", quoted=True)
                       ).from_(per_unit.subquery("__dp_per_unit")).group_by(
        exp.Literal.number(1))
    query.set("with_", exp.With(expressions=ctes))
    verify_total(query)
    return query


def _ladder(count: exp.Expr, edges: tuple[int, ...]) -> exp.Expr:
    """The bin of a count among candidate ``edges``: i for [edges[i], edges[i+1]), the
    last edge alone (= the ceiling), and len(edges) above the ceiling."""
    ifs = [exp.If(this=exp.GT(this=count.copy(), expression=exp.Literal.number(edges[-1])),
                  true=exp.Literal.number(len(edges)))]
    for i in range(len(edges) - 1, 0, -1):
        ifs.append(exp.If(this=exp.GTE(this=count.copy(),
                                       expression=exp.Literal.number(edges[i])),
                          true=exp.Literal.number(i)))
    return exp.Case(ifs=ifs, default=exp.Literal.number(0))


def noisy_histogram(result: ResultSet, tuning: TuningNoise, rng: RandomSource) -> np.ndarray:
    """The exact histogram from the engine plus discrete Laplace noise (the release of
    the tuning step), clipped at 0 (post-processing); shape (row bins, value bins)."""
    exact = np.zeros(tuning.bins, dtype=np.float64)
    cols = dict(zip(result.names, result.columns, strict=True))
    for b, n in zip(cols.get("__dp_bin", []), cols.get("__dp_n", []), strict=True):
        exact[int(b)] += float(n)
    noise = discrete_laplace(tuning.scale, tuning.bins, rng).astype(np.float64)
    return np.maximum(exact + noise, 0.0).reshape(tuning.row_bins, tuning.value_bins,
                                                   tuning.group_bins)


def _representatives(tuning: TuningNoise) -> np.ndarray:
    """Rows per unit each row bin stands for: its midpoint (the bin of units above the
    ceiling: twice the ceiling; every candidate drops their excess alike)."""
    e = tuning.edges
    reps = [(e[i] + e[i + 1] - 1) / 2.0 for i in range(len(e) - 1)]
    return np.asarray([*reps, float(e[-1]), 2.0 * e[-1]])


def _group_representatives(tuning: TuningNoise) -> np.ndarray:
    """Groups per unit each groups bin stands for (like rows: midpoints; above the
    ceiling, twice it); 1 when L0 is not tuned."""
    g = tuning.groups
    if not g:
        return np.ones(1)
    reps = [(g[i] + g[i + 1] - 1) / 2.0 for i in range(len(g) - 1)]
    return np.asarray([*reps, float(g[-1]), 2.0 * g[-1]])


def _value_representatives(tuning: TuningNoise) -> np.ndarray:
    """|value| each value bin stands for (3/4 of its upper end)."""
    if tuning.value_column is None:
        return np.ones(1)
    b = tuning.value_bound
    return np.asarray([0.75 * b / 2.0**j for j in range(VALUE_BINS - 1)]
                      + [0.5 * b / 2.0 ** (VALUE_BINS - 1)])


# The error model scores a typical cell: one holding 1/SKEW of the mean cell's rows
# (group sizes are skewed, and analysts read the median cell, not the mean).
SKEW = 4.0


def expected_error(plan: Plan, cal: Calibration, hist: np.ndarray, tuning: TuningNoise
                   ) -> float:
    """Expected absolute error of a typical released cell under ``plan`` (the tuned
    plan of one choice) with noise ``cal``, relative to the cell's signal (so that
    statistics of different units add up), from the histogram alone.

    Per statistic: what the bounds drop plus the cell's expected |noise| (Amin et al.
    2019: bias + noise, minimised over the bound).  Counts drop each unit's rows
    beyond M; sums each unit's value beyond M times the largest |bound| (their bound
    is on the total); means move when heavy units weigh less.  A cut range clips
    values: with the histogram of each unit's largest |value| v, its values are taken
    as spread evenly over [0, v] (mean v/2; clipped at b, b - b²/2v)."""
    m = plan.max_rows
    full = np.broadcast_to(_representatives(tuning)[:, None, None], hist.shape)
    reps = np.broadcast_to(_value_representatives(tuning)[None, :, None], hist.shape)
    touched = np.broadcast_to(_group_representatives(tuning)[None, None, :], hist.shape)
    count_total = float((hist * full).sum())
    if count_total <= 0:
        return math.inf
    # A unit in more groups than L0 keeps L0 of them (and their share of its rows).
    rows = full * np.minimum(1.0, plan.max_groups / touched)
    count_bias = float((hist * (full - np.minimum(rows, m))).sum()) / count_total
    cells = tuning.cells * SKEW
    valued = tuning.value_column is not None
    worth = reps / 2.0 if tuning.value_mode == "max" else reps
    value_total = float((hist * full * worth).sum())
    valued = valued and value_total > 0
    error = 0.0
    pairs = float((hist * touched).sum())  # (unit, group) pairs
    if tuning.groups and pairs > 0:
        # What L0 costs: the pairs it drops, the noise of unit counts, and partition
        # selection, which drops groups with fewer units than its n50 (a typical group
        # holds pairs / cells of them).
        lost_pairs = float((hist * np.maximum(touched - plan.max_groups, 0.0)).sum())
        for s in plan.stats:
            sn = cal.stats[s.name]
            if s.kind == "units" and sn.kind != "none":
                mean_abs = sn.value_scale * (_GAUSS_MEAN_ABS if sn.kind == "gaussian" else 1.0)
                error += lost_pairs / pairs + cells * mean_abs / pairs
        if cal.partition is not None:
            error += min(1.0, cal.partition.units_for_half * cells / pairs)
    for s in plan.stats:
        sn = cal.stats[s.name]
        if sn.kind == "none" or s.kind == "units":
            continue
        mean_abs = sn.value_scale * (_GAUSS_MEAN_ABS if sn.kind == "gaussian" else 1.0)
        big = max(abs(s.lo), abs(s.hi))
        if not valued or not (s.kind == "ratio" or (s.kind == "sum" and big > 1)):
            error += count_bias + cells * mean_abs / count_total
            continue
        if tuning.value_mode == "max":
            b = big
            clipped = np.where(reps <= b, reps / 2.0, b - b * b / (2.0 * np.maximum(reps, b)))
        else:
            clipped = worth
        if s.kind == "sum":
            # A sum's bound is on each unit's total: it keeps at most M·B of it.
            kept_value = np.minimum(rows * clipped, m * big)
            bias = (value_total - float((hist * kept_value).sum())) / value_total
            error += bias + cells * mean_abs / value_total
            continue
        # Means weigh each unit's rows by min(1, M / its rows): they keep each unit's
        # mean but weigh heavy units less, which moves the mean if their values differ;
        # clipping moves it too.  The estimate is noisy where cells hold few units: only
        # the part of the gap beyond two standard errors of the histogram's noise
        # counts (delta method: each cell has variance 2·scale²).
        kept = np.minimum(rows, m)
        kept_total = max(float((hist * kept).sum()), 1e-300)
        mean = value_total / count_total
        weighted = float((hist * kept * clipped).sum()) / kept_total
        slope = kept * (clipped - weighted) / kept_total - full * (worth - mean) / count_total
        se = tuning.scale * math.sqrt(2.0 * float((slope * slope).sum()))
        mean_bias = max(0.0, abs(weighted - mean) - 2.0 * se) / max(mean, 1e-300)
        # AVG = mid + S1/N: the count's noise moves it by (mean - mid)·noise/N, the
        # first moment's by noise/N; relative to the mean, over Σ|v| = N·mean.
        weight = {0: abs(mean - s.mid), 1: 1.0}.get(s.power, 1.0 / max(s.half_width, 1e-300))
        error += mean_bias + cells * mean_abs * weight / value_total
    for q in cal.quantiles:
        error += count_bias + cells * (q.rank_error95 / 2.0) / count_total
    return error


def choose(cal: TunedCalibration, hist: np.ndarray) -> Choice:
    """The allowed choice with the least expected error (the smaller bounds on ties).

    Cells whose noisy count is below what noise alone reaches in any of the empty
    cells with probability 5% (scale·ln(cells/0.1)) are read as empty: an empty cell
    among those of many rows or large values would otherwise pass for heavy units that
    do not exist and pull the bounds up (noise lands above zero half the time, and
    clipping keeps it there).  Real cells that small are truncated, as the bias term
    then says."""
    assert cal.tuning is not None and cal.plan is not None
    t = cal.tuning
    hist = np.where(hist > t.scale * math.log(t.bins / 0.1), hist, 0.0)
    best: tuple[float, int, int, int] | None = None
    scales = t.scales
    if t.value_mode == "max":
        scales = (range_cut(hist, t),)
    for m in t.edges:
        for j in scales:
            for groups in t.group_choices:
                noise = cal.at((m, j, groups))
                if noise is None:
                    continue
                score = expected_error(tuned_plan(cal.plan, (m, j, groups)), noise, hist, t)
                if best is None or (score, m, groups, -j) < best:
                    best = (score, m, groups, -j)
    if best is None:
        # No choice at the data-chosen range cut is allowed: the ceiling always is (the
        # choice must never fail after the charge: a failure would depend on the data).
        return cal.ceiling
    return best[1], -best[3], best[2]


# A tuned range leaves out at most this share of the units' largest values.
RANGE_COVER = 0.99


def range_cut(hist: np.ndarray, tuning: TuningNoise) -> int:
    """The range cut j: the narrowest range B/2^j that holds the largest |value| of a
    RANGE_COVER share of the (noisy) units, as ZetaSQL's approximate bounds pick the
    range from a noisy log-histogram.  The error model cannot weigh clipping here: it
    sees each unit's largest value, not how its values spread below it."""
    per_bin = hist.sum(axis=(0, 2))
    total = float(per_bin.sum())
    above = 0.0  # units whose largest |value| exceeds B/2^j
    best = 0
    for j in range(len(per_bin)):
        if j > 0:
            above += float(per_bin[j - 1])
        if above > (1.0 - RANGE_COVER) * total:
            break
        if j in tuning.scales:
            best = j
    return best


def tuned_note(plan: Plan, cal: TunedCalibration, choice: Choice) -> str:
    """What the answer says about its tuned bounds."""
    assert cal.tuning is not None
    m = choice[0]
    parts = []
    if plan.auto_rows and len(cal.tuning.edges) > 1:
        parts.append(f"max_rows_per_unit {m} (ceiling {plan.max_rows})")
    if cal.tuning.groups:
        parts.append(f"max_groups_per_unit {choice[2]} (ceiling {plan.max_groups})")
    if plan.tunable_stats:
        tuned = tuned_plan(plan, choice)
        cut = {s.name: s for s in tuned.stats}
        ranges = sorted({f"{a.label or a.name} in [{_num(cut[a.stats[-1]].lo)}, "
                         f"{_num(cut[a.stats[-1]].hi)}]" for a in plan.aggs
                         if any(st.name in a.stats for st in plan.tunable_stats)})
        parts.append("the range of " + ", ".join(ranges))
    return (f"bounds were tuned privately for this query: {'; '.join(parts)}, chosen from a "
            f"DP histogram of its units that spent epsilon {cal.tuning.epsilon:.4g} of the "
            "query's epsilon")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.6g}"


def explain_tuning(plan: Plan, cal: TunedCalibration) -> tuple[dict[str, Any], str]:
    """What explain says about bounds tuned at run time: the step, and a note."""
    assert cal.tuning is not None
    t = cal.tuning
    bounds: list[dict[str, Any]] = []
    if plan.auto_rows and len(t.edges) > 1:
        bounds.append({"bound": "max_rows_per_unit", "ceiling": plan.max_rows,
                       "candidates": list(t.edges)})
    if t.groups:
        bounds.append({"bound": "max_groups_per_unit", "ceiling": plan.max_groups,
                       "candidates": list(t.groups)})
    for s in plan.tunable_stats:
        label = next((a.label or a.name for a in plan.aggs if s.name in a.stats), s.name)
        if any(b.get("aggregate") == label for b in bounds):
            continue
        bounds.append({"bound": "range", "aggregate": label, "limits": [s.lo, s.hi],
                       "candidates": f"[lo, hi] cut to 2^-j of its largest |bound|, j = 0.."
                                     f"{VALUE_BINS - 1}"})
    info = {"bounds": bounds, "epsilon": t.epsilon, "assumed_cells": t.cells,
            "method": "DP histogram of the query's units by rows, "
                      f"{'largest' if t.value_mode == 'max' else 'mean'} |value|"
                      f"{' and groups' if t.groups else ''} (discrete Laplace), then the "
                      "bounds with the least expected bias + noise (Amin et al. 2019)"}
    names = " and ".join(b["bound"] if b["bound"] != "range" else f"the range of {b['aggregate']}"
                         for b in bounds)
    note = (f"{names} {'are' if len(bounds) > 1 else 'is'} tuned when the query runs, "
            f"spending epsilon {t.epsilon:.4g} of this query's epsilon; the tuned bounds cannot "
            "be known in advance, so the noise and accuracy shown are those of the ceiling "
            "(the answer's are at most these)")
    return info, note
