"""Per-cell 95% half-widths through post-processing.

The finished noisy table (:func:`gateway.query.perturb.finish`) has a half-width per
group for every aggregate target that has one (``NoisyTable.ci95``: counts and sums
from their noise scale, AVG/VAR/STDDEV by the delta method at the noisy values, and
whatever else fills that array).  Post-processing (HAVING, ORDER BY, LIMIT,
arithmetic, BI wrappers) runs as SQL over that table, so the half-widths must follow
the rows there:

* **which row**: :func:`thread_rows` adds a hidden row id (``__dp_row``) to every
  level of the post query, so each output row names the noisy row it came from.  A
  level that aggregates, groups or deduplicates noisy rows (``SELECT COUNT(*) FROM
  (...)``, DISTINCT) has no such row: its cells get no half-width.
* **which value**: :func:`output_cells` says, per output column, how it follows from
  one aggregate — unchanged, or ``c·a + b`` for constants c and b (``n * 2``, ``-n``,
  ``s / 1000``, ``n + 1``), whose half-width is exactly ``|c|·h``; ``ROUND(x, d)`` and
  casts to integers or decimals add one unit of their last digit (rounding the answer
  and the truth each move them by at most half a unit).  Anything else computed
  from aggregates (``SUM(x) / COUNT(*)``, ``a - b``, ``ABS(a)``, CASE) has no
  half-width: the noise of two aggregates does not combine into an exact interval.

Everything here reads the post query only, never values, so which columns carry a
half-width is known before the query runs (pgwire announces ``<col>_ci95`` columns
at Describe).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from sqlglot import exp

from gateway.sql.postprocess_plan import NOISY_TABLE

if TYPE_CHECKING:
    from gateway.query.perturb import NoisyTable
    from gateway.sql.plan import Plan

ROW_ID = "__dp_row"  # hidden: which noisy row an output row came from


@dataclass(frozen=True)
class Cell:
    """How one output column's half-width follows from the noisy table."""

    agg: str | None = None  # the aggregate it is a scaling of (None: no half-width)
    factor: float = 1.0  # |d output / d aggregate|
    rounding: float = 0.0  # added for rounding (ROUND, casts to integers / decimals)
    noisy: bool = False  # computed from noisy aggregates: a <col>_ci95 column in reports

    def scaled(self, c: float) -> Cell:
        return replace(self, factor=self.factor * abs(c), rounding=self.rounding * abs(c))

    def rounded(self, unit: float) -> Cell:
        return replace(self, rounding=self.rounding + unit) if self.agg is not None else self

    def half_width(self, table: NoisyTable, row: int) -> float | None:
        if self.agg is None:
            return None
        ci = table.ci95.get(self.agg)
        if ci is None or not 0 <= row < len(ci):
            return None
        h = float(ci[row])
        out = self.factor * h + self.rounding
        return out if math.isfinite(out) else None


KEY = Cell()  # a group key or a constant: not noisy
OPAQUE = Cell(noisy=True)  # computed from aggregates, but no exact half-width


def output_cells(plan: Plan) -> list[Cell]:
    """One :class:`Cell` per output column of the plan's post query (stars expanded)."""
    return [c for _, c in _level(plan.post, plan)]


def noisy_columns(plan: Plan) -> list[bool]:
    """Per output column: is it computed from noisy aggregates?  (Public queries: none.)"""
    if plan.public_query is not None:
        return []
    return [c.noisy for c in output_cells(plan)]


def thread_rows(select: exp.Select) -> exp.Select | None:
    """``select`` with the hidden row id carried through every level, or None when a
    level aggregates or deduplicates noisy rows (then no output row has one row)."""
    if _aggregating(select):
        return None
    from_ = select.args.get("from_")
    if from_ is None or select.args.get("joins"):
        return None
    source = from_.this
    new = select.copy()
    if isinstance(source, exp.Subquery) and isinstance(source.this, exp.Select):
        inner = thread_rows(source.this)
        if inner is None:
            return None
        new.args["from_"].this.set("this", inner)
    elif not (isinstance(source, exp.Table) and source.name == NOISY_TABLE):
        return None
    if not any(_is_star(e) for e in new.expressions):  # a star carries it already
        new.set("expressions", [*new.expressions, exp.column(ROW_ID, quoted=True)])
    return new


def cell_half_widths(cells: Sequence[Cell], table: NoisyTable, rows: Sequence[int | None]
                     ) -> list[tuple[float | None, ...]]:
    """The half-width of every cell: rows[i] is the noisy row output row i came from."""
    out = []
    for r in rows:
        out.append(tuple(None if r is None else c.half_width(table, r) for c in cells))
    return out


def row_ids(values: Sequence[object]) -> list[int | None]:
    out: list[int | None] = []
    for v in values:
        if isinstance(v, np.generic):
            v = v.item()
        out.append(v if isinstance(v, int) else None)
    return out


# -- the analysis -------------------------------------------------------------------------

def _is_star(e: exp.Expr) -> bool:
    return isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star))


def _aggregating(select: exp.Select) -> bool:
    """Does this level combine several noisy rows into one (or drop duplicates)?"""
    if any(select.args.get(a) for a in ("group", "distinct", "having", "qualify")):
        return True
    return any(True for e in select.expressions for _ in e.find_all(exp.AggFunc, exp.Window))


def _source(select: exp.Select, plan: Plan) -> list[tuple[str, Cell]] | None:
    from_ = select.args.get("from_")
    if from_ is None or select.args.get("joins"):
        return None
    source = from_.this
    if isinstance(source, exp.Table) and source.name == NOISY_TABLE:
        return [(k.name, KEY) for k in plan.keys] + \
            [(a.name, Cell(a.name, noisy=True)) for a in plan.aggs]
    if isinstance(source, exp.Subquery) and isinstance(source.this, exp.Select):
        return _level(source.this, plan)
    return None


def _level(select: exp.Select, plan: Plan) -> list[tuple[str, Cell]]:
    inputs = _source(select, plan)
    env = {n.lower(): c for n, c in inputs or []}
    flat = _aggregating(select)
    out: list[tuple[str, Cell]] = []
    for item in select.expressions:
        if _is_star(item):
            star = item if isinstance(item, exp.Star) else item.this
            if any(star.args.get(a) for a in ("except", "replace", "rename")):
                # * EXCLUDE/REPLACE/RENAME: the columns may be other expressions now;
                # they keep their noisy flag but get no half-width (never understated).
                out.extend((n, Cell(noisy=c.noisy)) for n, c in inputs or [])
                continue
            out.extend((n, _flatten(c, flat)) for n, c in inputs or [])
            continue
        inner = item.this if isinstance(item, exp.Alias) else item
        cell = _linear(inner, env) if inputs is not None else OPAQUE
        out.append((item.alias_or_name, _flatten(cell, flat)))
        env.setdefault(item.alias_or_name.lower(), cell)  # DuckDB's lateral aliases
    return out


def _flatten(cell: Cell, aggregating: bool) -> Cell:
    return Cell(noisy=cell.noisy) if aggregating else cell


def _linear(e: exp.Expr, env: dict[str, Cell]) -> Cell:
    """The cell of ``e`` when it is c·a + b for one aggregate a (else KEY or OPAQUE)."""
    e = e.unnest()
    if isinstance(e, exp.Column):
        return env.get(e.name.lower(), OPAQUE)
    if _const(e) is not None:
        return KEY
    if isinstance(e, exp.Neg):
        return _linear(e.this, env)
    if isinstance(e, exp.Add | exp.Sub | exp.Mul | exp.Div):
        left, right = e.this, e.expression
        lc, rc = _const(left), _const(right)
        if isinstance(e, exp.Add | exp.Sub):
            if lc is not None:
                return _linear(right, env)
            if rc is not None:
                return _linear(left, env)
        elif isinstance(e, exp.Mul):
            if lc is not None:
                return _linear(right, env).scaled(lc)
            if rc is not None:
                return _linear(left, env).scaled(rc)
        elif rc is not None and rc != 0:
            return _linear(left, env).scaled(1.0 / rc)
        return _opaque(e, env)
    if isinstance(e, exp.Cast | exp.TryCast):
        unit = _cast_rounding(e.to)
        if unit is None:
            return _opaque(e, env)
        return _linear(e.this, env).rounded(unit)
    if isinstance(e, exp.Round):
        digits = e.args.get("decimals")
        n: float | None = 0.0 if digits is None else _const(digits)
        if n is None or not n.is_integer():
            return _opaque(e, env)
        return _linear(e.this, env).rounded(10.0 ** -int(n))
    return _opaque(e, env)


def _opaque(e: exp.Expr, env: dict[str, Cell]) -> Cell:
    noisy = any(env.get(c.name.lower(), OPAQUE).noisy for c in e.find_all(exp.Column))
    return OPAQUE if noisy else KEY


def _const(e: exp.Expr) -> float | None:
    """The value of a numeric constant (literals, signs, arithmetic of constants)."""
    e = e.unnest()
    if isinstance(e, exp.Literal) and not e.is_string:
        try:
            v = float(e.this)
        except ValueError:
            return None
        return v if math.isfinite(v) else None
    if isinstance(e, exp.Neg):
        inner = _const(e.this)
        return None if inner is None else -inner
    if isinstance(e, exp.Add | exp.Sub | exp.Mul | exp.Div):
        a, b = _const(e.this), _const(e.expression)
        if a is None or b is None:
            return None
        if isinstance(e, exp.Add):
            return a + b
        if isinstance(e, exp.Sub):
            return a - b
        if isinstance(e, exp.Mul):
            return a * b
        return a / b if b != 0 else None
    return None


_FLOATS = (exp.DataType.Type.DOUBLE, exp.DataType.Type.FLOAT)
_DECIMALS = (exp.DataType.Type.DECIMAL, exp.DataType.Type.BIGDECIMAL)


def _cast_rounding(to: exp.DataType) -> float | None:
    """What a cast of a number to ``to`` may add to its error (None: not a number)."""
    if to.is_type(*_FLOATS):
        return 0.0
    if to.is_type(*exp.DataType.INTEGER_TYPES):
        return 1.0
    if to.is_type(*_DECIMALS):
        params = to.expressions
        if not params:
            return 10.0 ** -3  # DuckDB's DECIMAL is DECIMAL(18, 3)
        if len(params) < 2:
            return 1.0
        scale = _const(params[1].this) if isinstance(params[1], exp.DataTypeParam) else None
        return None if scale is None else 10.0 ** -int(scale)
    return None
