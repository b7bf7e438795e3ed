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
A FILTER (WHERE c) clause gates the per-row value with CASE WHEN c.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from gateway.errors import QueryRejected
from gateway.sql.bounds import ValueBuilder
from gateway.sql.plan import AggSpec, StatSpec
from gateway.sql.scope import Scope
from gateway.sql.validate import SUPPORTED_AGGREGATES, span_of

_FUNCS: dict[type[exp.Expr], str] = {
    exp.Sum: "sum", exp.Avg: "avg", exp.VariancePop: "var_pop", exp.Variance: "var_samp",
    exp.StddevPop: "stddev_pop", exp.StddevSamp: "stddev_samp", exp.Stddev: "stddev_samp",
}
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
            if len(targets) != 1 or not self._is_unit(targets[0]):
                raise QueryRejected(
                    "COUNT(DISTINCT ...) is only supported on the privacy unit",
                    hint="COUNT(DISTINCT <privacy unit>) counts units; for other columns "
                    "GROUP BY the column and count the groups of the noisy result",
                    rule="aggregate", span=span_of(agg, self.sql))
            stat = self._stat("units", _gate(exp.Literal.number(1), cond), 0.0, 1.0, True)
            return AggSpec(name, "count_units", key, (stat,), 0.0, 1.0, True, label)
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


def _gate(value: exp.Expr, cond: exp.Expr | None) -> exp.Expr:
    if cond is None:
        return value
    return exp.Case(ifs=[exp.If(this=cond.copy(), true=value)])
