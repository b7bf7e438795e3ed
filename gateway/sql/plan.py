"""Frozen values passed between the planning passes.

A ``Plan`` is everything decided from the SQL text and the policy: the
unit-attributed relation, the group keys and their public domains, the noisy
statistics the aggregates need with their per-unit bounds, and the
post-processing query over the noisy result.  Noise calibration adds ε/δ and
scales to it (:mod:`gateway.query.noise`); nothing in a plan depends on data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from sqlglot import exp

StatKind = Literal["sum", "ratio", "units", "distinct"]


@dataclass(frozen=True)
class KeySpec:
    """One GROUP BY key."""

    name: str  # k0, k1, ... in the noisy result
    expr: exp.Expr  # over the FROM scope, as the analyst wrote it
    engine: exp.Expr  # what the engine evaluates: typed, total (guarded where needed)
    canon: str  # canonical SQL, to find the key again in SELECT/HAVING/ORDER BY
    domain: tuple[Any, ...] | None  # public values, or None: partition selection
    type: str = "unknown"  # policy type of the key's values


@dataclass(frozen=True)
class StatSpec:
    """One noisy sum over units.

    * ``sum``: Σ per-row ``value`` (clamped into [lo, hi]); each unit's per-group
      sums are scaled together so their absolute total is at most M·max(|lo|,|hi|)
      — what M rows of clamped values could contribute (DESIGN §2).
    * ``ratio``: moment ``power`` (0: count, 1: Σ(v−mid), 2: Σ(v−mid)²) of a value
      shared by AVG/VAR/STDDEV; a unit's rows are scaled by min(1, M / its count)
      so its own mean is kept while it counts as at most M rows.
    * ``units``: 1 for each group a unit touches (COUNT(DISTINCT unit)).
    * ``distinct``: distinct non-NULL ``value``s per group (COUNT(DISTINCT col)), after
      each unit keeps at most M of its distinct (group, value) pairs (keyed hash): a
      unit then adds or removes at most M (group, value) pairs, so the counts move by
      at most M in all (L1 and L2).
    """

    name: str  # s0, s1, ...
    kind: StatKind
    value: exp.Expr | None  # what the engine evaluates per row: total, clamped to [lo, hi]
    lo: float = 0.0
    hi: float = 1.0
    integral: bool = True
    power: int = 0
    ratio: str | None = None  # id of the shared ratio value (its "v" column)

    @property
    def mid(self) -> float:
        return (self.lo + self.hi) / 2.0

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2.0

    def sensitivity(self, max_rows: int, max_groups: int) -> tuple[float, float]:
        """(L1, L2) sensitivity in value units under add/remove-one-unit."""
        if self.kind == "units":
            return float(max_groups), math.sqrt(max_groups)
        if self.kind == "distinct":
            return float(max_rows), float(max_rows)
        if self.kind == "sum":
            b = max(abs(self.lo), abs(self.hi))
            return max_rows * b, max_rows * b
        h = self.half_width
        per_row = 1.0 if self.power == 0 else (h if self.power == 1 else h * h)
        return max_rows * per_row, max_rows * per_row


@dataclass(frozen=True)
class QuantileSpec:
    """The values one or more DP quantiles are chosen among (one per value expression).

    The engine returns, per group, a histogram of the clamped values over ``bins``
    equal bins of [lo, hi] (one bin per integer when the values are integers and
    few), each unit's counts scaled so that together they weigh at most M values
    (like sums).  Python then runs the exponential mechanism once per requested
    rank (:mod:`gateway.privacy.quantiles`).  ``kind`` is ``number`` or ``date``
    (dates are day numbers from ``lo``'s day).
    """

    name: str  # q0, q1, ...
    value: exp.Expr  # per row, total, clamped to [lo, hi] (a date for kind 'date')
    lo: float
    hi: float
    bins: int
    kind: str = "number"  # number | date
    integral: bool = False
    alphas: tuple[float, ...] = ()  # every rank asked of these values, sorted
    origin: Any = None  # for dates: the date that is day 0

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.bins if self.bins else 0.0

    def value_of(self, index: Any) -> Any:
        """The value a chosen bin stands for: its integer, or its midpoint."""
        if self.integral and self.hi - self.lo + 1 == self.bins:
            return self.lo + index
        return self.lo + (index + 0.5) * self.width


@dataclass(frozen=True)
class AggSpec:
    """One aggregate the analyst wrote, computed from noisy statistics."""

    name: str  # a0, a1, ...
    func: str  # count, sum, avg, var_pop, var_samp, stddev_pop, stddev_samp, count_units
    canon: str
    stats: tuple[str, ...]
    lo: float = 0.0  # bounds of the aggregated value per row (for clamping results)
    hi: float = 0.0
    integral: bool = True
    label: str = ""  # the aggregate as the analyst wrote it
    quantile: str | None = None  # the QuantileSpec a quantile aggregate chooses from
    alphas: tuple[float, ...] = ()  # its rank(s): one, or several for APPROX_QUANTILES


@dataclass(frozen=True)
class Plan:
    """A query the gateway can answer with differential privacy."""

    sql: str
    with_: exp.With | None  # the analyst's CTEs (unit columns threaded through)
    relation: exp.Select  # FROM/JOIN/WHERE skeleton; projection filled by the rewrite
    unit: exp.Expr | None  # None: public query, no privacy needed
    tables: frozenset[str]
    max_rows: int  # M after joins
    max_groups: int  # L0: groups one unit may touch in this query
    keys: tuple[KeySpec, ...]
    stats: tuple[StatSpec, ...]
    aggs: tuple[AggSpec, ...]
    post: exp.Select  # over __dp_noisy(k*, a*)
    public_query: exp.Select | None = None
    # Set when the analyst's query wraps a DP query (post-processing over its output):
    # per outer column, (name, inner column) if passed through, else None; None = star.
    outer_names: tuple[tuple[str, str] | None, ...] | None = None
    wrapped: bool = False
    inner_post: exp.Select | None = None  # the innermost post query (over __dp_noisy)
    quantiles: tuple[QuantileSpec, ...] = ()
    # Set when the keys' public domains would release more rows than
    # limits.max_public_groups: (those rows, the limit).  Groups are then chosen by DP
    # partition selection (the engine still keeps only keys inside the domains).
    too_many_groups: tuple[int, int] | None = None
    notes: tuple[str, ...] = ()  # said to the analyst with the answer (and by explain)
    # max_rows is the ceiling of an `auto` bound: each run tunes M <= max_rows privately
    # (gateway/query/tuning.py) and uses with_max_rows(M).
    auto_rows: bool = False
    auto_groups: bool = False  # max_groups is the ceiling of an `auto` L0 (tuned per run)
    # Lower-case names of `bounds: auto` columns of its tables: the range of a sum or a
    # mean whose value reads one of them is tuned per run (gateway/query/tuning.py).
    auto_columns: frozenset[str] = frozenset()

    @property
    def tunable_stats(self) -> tuple[StatSpec, ...]:
        """Sums and moments whose value reads a `bounds: auto` column (by name)."""
        if not self.auto_columns:
            return ()
        return tuple(
            s for s in self.stats
            if s.value is not None and (s.kind == "ratio" or (
                s.kind == "sum" and max(abs(s.lo), abs(s.hi)) > 1))
            and any(c.name.lower() in self.auto_columns for c in s.value.find_all(exp.Column)))

    def with_value_scale(self, j: int) -> Plan:
        """This plan with each tunable statistic's range cut to 2^-j of its largest
        |bound| (never below what the range needs: [lo, hi] keeps its sign), the value
        clamped again inside its planned range, and the aggregates' bounds with it."""
        if j == 0 or not self.tunable_stats:
            return self
        cut: dict[str, tuple[float, float]] = {}
        for s in self.tunable_stats:
            b = max(abs(s.lo), abs(s.hi)) * 2.0 ** -j
            if s.integral:
                b = float(math.ceil(b))
            floor = s.lo if s.lo >= 0 else (-s.hi if s.hi <= 0 else 0.0)
            b = max(b, floor)
            cut[s.name] = (max(s.lo, -b), min(s.hi, b))
        stats = tuple(replace(s, lo=cut[s.name][0], hi=cut[s.name][1],
                              value=_reclamp(s.value, *cut[s.name], s.integral))
                      if s.name in cut and s.value is not None else s for s in self.stats)
        aggs = tuple(replace(a, lo=cut[t][0], hi=cut[t][1]) if (
            t := next((n for n in a.stats if n in cut), None)) is not None else a
            for a in self.aggs)
        return replace(self, stats=stats, aggs=aggs)

    def with_max_groups(self, groups: int) -> Plan:
        """This plan with L0 = min(its L0, groups)."""
        return replace(self, max_groups=min(self.max_groups, groups), auto_groups=False)

    def with_max_rows(self, m: int) -> Plan:
        """This plan with M = m (<= max_rows): L0 shrinks with it (a unit with m rows
        touches at most m groups)."""
        assert 1 <= m <= self.max_rows
        return replace(self, max_rows=m, max_groups=min(self.max_groups, m), auto_rows=False)

    @property
    def partition_selection(self) -> bool:
        return bool(self.keys) and (self.too_many_groups is not None or
                                    any(k.domain is None for k in self.keys))

    @property
    def domain_size(self) -> int | None:
        if not self.keys or self.partition_selection:
            return None if self.keys else 1
        size = 1
        for k in self.keys:
            assert k.domain is not None
            size *= len(k.domain)
        return size


def _reclamp(value: exp.Expr, lo: float, hi: float, integral: bool) -> exp.Expr:
    """``value`` (already clamped to a wider range, or NULL) clamped to [lo, hi]; NULL
    stays NULL (LEAST and GREATEST skip NULL arguments in some engines)."""
    def lit(v: float) -> exp.Expr:
        if integral:
            return exp.Literal.number(int(v))
        return exp.Cast(this=exp.Literal.number(repr(float(v))),
                        to=exp.DataType.build("DOUBLE"))

    clamped = exp.Least(this=exp.Greatest(this=value.copy(), expressions=[lit(lo)]),
                        expressions=[lit(hi)])
    return exp.Case(ifs=[exp.If(this=exp.Is(this=value.copy(), expression=exp.Null()),
                                true=exp.Null())], default=clamped)
