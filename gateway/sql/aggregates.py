"""Aggregates -> the noisy statistics they are computed from.

Each supported aggregate becomes one or more sums over privacy units
(:class:`StatSpec`); identical statistics are shared, so ``AVG(spend)`` and
``STDDEV(spend)`` in one query pay for the count and the sum of ``spend`` once.

* COUNT(*), COUNT(expr)            -> Σ indicator (a ``sum`` statistic in [0, 1])
* COUNT(DISTINCT <unit>)            -> ``units``
* SUM(expr)                         -> ``sum`` of the clamped value
* AVG(expr)                         -> ratio moments 0 and 1 (centred at the midpoint,
                                      which halves the sum's sensitivity)
* VAR_*/VARIANCE/STDDEV_*           -> ratio moments 0, 1 and 2
* MEDIAN, PERCENTILE_CONT/DISC, QUANTILE_CONT/DISC, APPROX_QUANTILES, MIN, MAX
                                    -> DP quantiles (:class:`QuantileSpec`): one
                                       histogram per value, one exponential
                                       mechanism per rank; MIN and MAX are the
                                       ranks MIN_RANK and 1 - MIN_RANK
A FILTER (WHERE c) clause gates the per-row value with CASE WHEN c.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

from sqlglot import exp

from gateway.errors import QueryRejected
from gateway.sql.bounds import ValueBuilder, clamp_time
from gateway.sql.plan import AggSpec, QuantileSpec, StatSpec
from gateway.sql.scope import Scope
from gateway.sql.validate import SUPPORTED_AGGREGATES, span_of

_FUNCS: dict[type[exp.Expr], str] = {
    exp.Sum: "sum", exp.Avg: "avg", exp.VariancePop: "var_pop", exp.Variance: "var_samp",
    exp.StddevPop: "stddev_pop", exp.StddevSamp: "stddev_samp", exp.Stddev: "stddev_samp",
}
# MIN and MAX are DP quantiles at these ranks: a rank of exactly 0 or 1 would favour
# every bin below (above) the data equally, i.e. answer near the declared bound.
MIN_RANK = 0.01
# Bins of a histogram over a value's bounds (integers get one bin each when fewer).
MAX_BINS = 1024
# Largest magnitude of a quantile's bounds (binned in DOUBLE arithmetic; far beyond any
# real bound, far below overflow).
MAX_QUANTILE_MAGNITUDE = 1e15
# Ranks asked of one statement at most (APPROX_QUANTILES(x, n) asks n + 1).
MAX_RANKS = 101

_QUANTILE_FUNCS = (exp.Median, exp.PercentileCont, exp.PercentileDisc, exp.Quantile,
                   exp.ApproxQuantile, exp.ApproxQuantiles, exp.Min, exp.Max)

_MOMENTS = {"avg": (0, 1), "var_pop": (0, 1, 2), "var_samp": (0, 1, 2), "stddev_pop": (0, 1, 2),
            "stddev_samp": (0, 1, 2)}


class AggregateBuilder:
    def __init__(self, scope: Scope, sql: str, values: ValueBuilder,
                 canon: Callable[[exp.Expr], str]) -> None:
        self.scope = scope
        self.sql = sql
        self.values = values
        self.canon = canon
        self.stats: dict[tuple[str, str, int], StatSpec] = {}
        self._ratios: dict[str, str] = {}
        self._aggs: dict[str, AggSpec] = {}
        self._quantiles: dict[str, QuantileSpec] = {}  # value SQL -> spec (ranks so far)

    @property
    def quantiles(self) -> tuple[QuantileSpec, ...]:
        return tuple(self._quantiles.values())

    def add(self, node: exp.Expr) -> AggSpec:
        key = self.canon(node)
        if key in self._aggs:
            return self._aggs[key]
        spec = self._build(node, key)
        self._aggs[key] = spec
        return spec

    def _build(self, node: exp.Expr, key: str) -> AggSpec:
        agg, cond = node, None
        if isinstance(node, exp.Filter):
            agg = node.this
            cond = self.values.typer.condition(node.expression.this.copy(), "a FILTER condition")
        name = f"__dp_a{len(self._aggs)}"
        label = node.sql(dialect="duckdb")
        if isinstance(agg, exp.Count):
            return self._count(agg, cond, name, key, label)
        if isinstance(agg, _QUANTILE_FUNCS):
            return self._quantile(agg, cond, name, key, label)
        func = _FUNCS.get(type(agg))
        if func is None:
            raise QueryRejected(f"aggregate {agg.sql()} is not supported",
                                hint="supported: " + ", ".join(SUPPORTED_AGGREGATES),
                                rule="aggregate", span=span_of(agg, self.sql))
        arg = agg.this
        if isinstance(arg, exp.Distinct):
            raise QueryRejected(f"{func.upper()}(DISTINCT ...) is not supported",
                                hint=f"use {func.upper()}(expr)", rule="aggregate",
                                span=span_of(agg, self.sql))
        value, iv = self.values.clamped(arg, func.upper())
        value = _gate(value, cond)
        if func == "sum":
            stat = self._stat("sum", value, iv.lo, iv.hi, iv.integral)
            return AggSpec(name, "sum", key, (stat,), iv.lo, iv.hi, iv.integral, label)
        ratio = self._ratios.setdefault(value.sql(dialect="duckdb"), f"r{len(self._ratios)}")
        stats = tuple(self._stat("ratio", value, iv.lo, iv.hi, False, power=p, ratio=ratio)
                      for p in _MOMENTS[func])
        return AggSpec(name, func, key, stats, iv.lo, iv.hi, False, label)

    def _count(self, agg: exp.Count, cond: exp.Expr | None, name: str, key: str,
               label: str) -> AggSpec:
        arg = agg.this
        if isinstance(arg, exp.Distinct):
            targets = arg.expressions
            if len(targets) != 1:
                raise QueryRejected("COUNT(DISTINCT ...) takes one expression",
                                    hint="count the distinct values of one column or "
                                    "expression", rule="aggregate",
                                    span=span_of(agg, self.sql))
            if self._is_unit(targets[0]):
                stat = self._stat("units", _gate(exp.Literal.number(1), cond), 0.0, 1.0, True)
                return AggSpec(name, "count_units", key, (stat,), 0.0, 1.0, True, label)
            return self._count_distinct(targets[0], cond, name, key, label)
        if arg is None or isinstance(arg, exp.Star):
            indicator: exp.Expr = exp.Literal.number(1)
        else:
            kind = self.values.typer.type_of(arg).kind
            value = self.values.typer.engine(arg.copy())
            present: exp.Expr = exp.Not(this=exp.Is(this=value, expression=exp.Null()))
            if kind in ("double", "decimal"):  # NaN is no value, as in every aggregate
                present = exp.and_(present, exp.Not(this=self.values.is_nan(value.copy())))
            indicator = exp.Case(ifs=[exp.If(this=present, true=exp.Literal.number(1))])
        stat = self._stat("sum", _gate(indicator, cond), 0.0, 1.0, True)
        return AggSpec(name, "count", key, (stat,), 0.0, 1.0, True, label)

    def _quantile(self, agg: exp.Expr, cond: exp.Expr | None, name: str, key: str,
                  label: str) -> AggSpec:
        what = label.split("(")[0].upper() or "a quantile"
        alphas, func = self._ranks(agg, what)
        arg = agg.this
        if isinstance(arg, exp.Distinct):
            raise QueryRejected(f"{what}(DISTINCT ...) is not supported",
                                hint=f"use {what}(expr)", rule="aggregate",
                                span=span_of(agg, self.sql))
        spec = self._quantile_values(arg, cond, what)
        if len(spec.alphas) + len(set(alphas) - set(spec.alphas)) > MAX_RANKS:
            raise QueryRejected(f"at most {MAX_RANKS} quantile ranks per query",
                                hint="ask for fewer quantiles (each costs a share of epsilon)",
                                rule="aggregate", span=span_of(agg, self.sql))
        merged = QuantileSpec(spec.name, spec.value, spec.lo, spec.hi, spec.bins, spec.kind,
                              spec.integral, tuple(sorted(set(spec.alphas) | set(alphas))),
                              spec.origin)
        self._quantiles[spec.value.sql(dialect="duckdb")] = merged
        return AggSpec(name, func, key, (), spec.lo, spec.hi, spec.integral, label,
                       quantile=spec.name, alphas=alphas)

    def _ranks(self, agg: exp.Expr, what: str) -> tuple[tuple[float, ...], str]:
        if isinstance(agg, exp.Median):
            return (0.5,), "quantile"
        if isinstance(agg, exp.Min):
            return (MIN_RANK,), "min"
        if isinstance(agg, exp.Max):
            return (1.0 - MIN_RANK,), "max"
        if isinstance(agg, exp.ApproxQuantiles):
            n = self._constant(agg.expression, what, integer=True)
            if not 1 <= n <= MAX_RANKS - 1:
                raise QueryRejected(f"APPROX_QUANTILES needs 1 to {MAX_RANKS - 1} intervals",
                                    hint="e.g. APPROX_QUANTILES(x, 4) for the quartiles",
                                    rule="aggregate", span=span_of(agg, self.sql))
            inner = tuple(i / n for i in range(1, int(n)))
            return (MIN_RANK, *inner, 1.0 - MIN_RANK), "quantiles"
        p = agg.args.get("quantile") or agg.args.get("expression")
        if isinstance(p, exp.Array):
            if not p.expressions:
                raise QueryRejected(f"{what} needs at least one rank",
                                    hint="e.g. QUANTILE_CONT(x, [0.25, 0.5, 0.75])",
                                    rule="aggregate", span=span_of(agg, self.sql))
            return tuple(self._rank(e, what) for e in p.expressions), "quantiles"
        return (self._rank(p, what),), "quantile"

    def _rank(self, node: exp.Expr | None, what: str) -> float:
        p = self._constant(node, what, integer=False)
        if not 0.0 <= p <= 1.0:
            raise QueryRejected(f"the rank of {what} must be between 0 and 1, got {p}",
                                hint="e.g. 0.5 for the median", rule="aggregate",
                                span=span_of(node, self.sql) if node is not None else None)
        return p

    def _constant(self, node: exp.Expr | None, what: str, *, integer: bool) -> float:
        inner = node.unnest() if node is not None else None
        sign = 1.0
        if isinstance(inner, exp.Neg):
            sign, inner = -1.0, inner.this
        if not isinstance(inner, exp.Literal) or inner.is_string:
            raise QueryRejected(f"the rank argument of {what} must be a number literal",
                                hint="e.g. PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY x)",
                                rule="aggregate",
                                span=span_of(node, self.sql) if node is not None else None)
        v = sign * float(inner.this)
        if integer and not v.is_integer():
            raise QueryRejected(f"the second argument of {what} must be an integer",
                                hint="e.g. APPROX_QUANTILES(x, 4)", rule="aggregate",
                                span=span_of(node, self.sql) if node is not None else None)
        return v

    def _quantile_values(self, arg: exp.Expr, cond: exp.Expr | None, what: str
                         ) -> QuantileSpec:
        """The clamped per-row value a quantile chooses among, and its histogram bins."""
        kind = self.values.typer.type_of(arg).kind
        origin: Any = None
        if kind == "date":
            col = arg.unnest()
            info = self.scope.resolve(col, self.sql)[1] if isinstance(col, exp.Column) \
                else None
            if info is None or info.raw_bounds is None or info.sensitive:
                raise QueryRejected(
                    f"{what} of a date needs a date column with bounds in the policy",
                    hint="use a date column declared with bounds (see /v1/schema)",
                    rule="unbounded", span=span_of(arg, self.sql))
            lo_d, hi_d = (_as_date(b) for b in info.raw_bounds)
            value: exp.Expr = clamp_time(self.values.typer.engine(col.copy()), lo_d, hi_d,
                                         "date")
            lo, hi, integral, origin = 0.0, float((hi_d - lo_d).days), True, lo_d
        elif self.values.typer.type_of(arg).family in ("number", "bool"):
            value, iv = self.values.clamped(arg, what)
            lo, hi, integral = iv.lo, iv.hi, iv.integral
            if iv.empty:
                lo, hi, integral = 0.0, 0.0, True
        else:
            raise QueryRejected(f"{what} of a {kind} value is not supported",
                                hint=f"{what} applies to numbers and dates with bounds",
                                rule="aggregate", span=span_of(arg, self.sql))
        value = _gate(value, cond)
        found = self._quantiles.get(value.sql(dialect="duckdb"))
        if found is not None:
            return found
        span = hi - lo
        bins = int(span) + 1 if integral and span + 1 <= MAX_BINS else (MAX_BINS if span else 1)
        # The engine bins in DOUBLE: (v - lo) * bins / span must be finite for every v in
        # [lo, hi], or the arithmetic could fail (or turn NaN) on some rows only.
        if span and not (math.isfinite(span) and math.isfinite(bins / span) and
                         bins / span > 0 and max(abs(lo), abs(hi)) <= MAX_QUANTILE_MAGNITUDE):
            raise QueryRejected(
                f"the bounds [{lo:g}, {hi:g}] of the {what} argument are too wide or too "
                "narrow for a histogram", hint="clamp the value to the range you care "
                "about, e.g. LEAST(GREATEST(x, 0), 1e6)", rule="unbounded",
                span=span_of(arg, self.sql))
        return QuantileSpec(f"__dp_q{len(self._quantiles)}", value, lo, hi, bins,
                            "date" if kind == "date" else "number", integral, (), origin)

    def _count_distinct(self, target: exp.Expr, cond: exp.Expr | None, name: str, key: str,
                        label: str) -> AggSpec:
        """COUNT(DISTINCT col) of a column that is not the unit: each unit keeps at most M
        of its distinct (group, value) pairs, so its effect is at most M in all."""
        for col in target.find_all(exp.Column):
            _, info = self.scope.resolve(col, self.sql)
            if info.sensitive:
                raise QueryRejected(
                    f"COUNT(DISTINCT ...) of {info.name!r} (the privacy unit or an identifier,"
                    " or derived from them) would count people or rows",
                    hint="COUNT(DISTINCT <privacy unit>) counts units; count another column",
                    rule="aggregate", span=span_of(col, self.sql))
        self.values.typer.type_of(target)  # typed (a mismatch is refused here)
        value = _gate(self.values.typer.engine(target.copy()), cond)
        stat = self._stat("distinct", value, 0.0, 1.0, True)
        return AggSpec(name, "count_distinct", key, (stat,), 0.0, 1.0, True, label)

    def _is_unit(self, node: exp.Expr) -> bool:
        node = node.unnest()
        if not isinstance(node, exp.Column):
            return False
        _, info = self.scope.resolve(node, self.sql)
        return info.is_unit

    def _stat(self, kind: str, value: exp.Expr, lo: float, hi: float, integral: bool,
              *, power: int = 0, ratio: str | None = None) -> str:
        k = (kind, value.sql(dialect="duckdb"), power)
        found = self.stats.get(k)
        if found is None:
            found = StatSpec(f"__dp_s{len(self.stats)}", kind, value, lo, hi, integral,  # type: ignore[arg-type]
                             power, ratio)
            self.stats[k] = found
        return found.name


def _as_date(v: Any) -> dt.date:
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    return dt.date.fromisoformat(str(v)[:10])


def _gate(value: exp.Expr, cond: exp.Expr | None) -> exp.Expr:
    if cond is None:
        return value
    return exp.Case(ifs=[exp.If(this=cond.copy(), true=value)])
