"""Interval arithmetic over aggregate arguments, and their sanitised form.

The sensitivity of SUM(expr) follows from the range of ``expr`` on one row.  That
range is derived from the policy's column bounds by interval arithmetic, and
the expression handed to the engine is rewritten so that it *cannot* leave the
range whatever the data holds: every column in a value position is cleaned
(NaN -> NULL) and clamped to its bounds, and the final value is cleaned and
clamped again to the computed interval (floating-point rounding could otherwise
step just outside).  DuckDB's LEAST/GREATEST skip NULLs and order NaN above
everything, hence the explicit CASE around every clamp.

Conditions (CASE WHEN, FILTER, comparisons) are *not* clamped: a filter on the
raw value is a per-row selection, which needs no bound, and clamping it would
change what the analyst asked (``spend > 1000`` would never hold).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from gateway.errors import QueryRejected
from gateway.sql.domains import typed_literal
from gateway.sql.scope import Scope
from gateway.sql.typer import Typer
from gateway.sql.validate import span_of

INF = math.inf


@dataclass(frozen=True)
class Interval:
    lo: float
    hi: float
    integral: bool = False

    @property
    def empty(self) -> bool:
        return self.lo > self.hi

    @property
    def finite(self) -> bool:
        return self.empty or (math.isfinite(self.lo) and math.isfinite(self.hi))

    def union(self, other: Interval) -> Interval:
        if self.empty:
            return other
        if other.empty:
            return self
        return Interval(min(self.lo, other.lo), max(self.hi, other.hi),
                        self.integral and other.integral)


EMPTY = Interval(INF, -INF, True)
BIT = Interval(0.0, 1.0, True)
ANY = Interval(-INF, INF, False)


def _nan_to(v: float, default: float) -> float:
    return default if math.isnan(v) else v


def _mul(a: Interval, b: Interval) -> Interval:
    if a.empty or b.empty:
        return EMPTY
    # 0 * inf stands for "0 times any finite value": 0.
    products = [_nan_to(x * y, 0.0) for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
    return Interval(min(products), max(products), a.integral and b.integral)


def _div(a: Interval, b: Interval) -> Interval | None:
    if a.empty or b.empty:
        return EMPTY
    if b.lo <= 0 <= b.hi:
        return None
    quotients = [_nan_to(x / y, 0.0) for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
    return Interval(min(quotients), max(quotients), False)


def _monotone(f: Callable[[float], float], a: Interval, integral: bool = False) -> Interval:
    if a.empty:
        return EMPTY
    lo, hi = f(a.lo), f(a.hi)
    return Interval(min(lo, hi), max(lo, hi), integral)


_DATE_PARTS = {"year": None, "quarter": (1, 4), "month": (1, 12), "week": (1, 53),
               "day": (1, 31), "dayofweek": (0, 6), "dow": (0, 6), "isodow": (1, 7),
               "dayofyear": (1, 366), "doy": (1, 366), "hour": (0, 23), "minute": (0, 59),
               "second": (0, 59)}

_PART_FUNCS: dict[type[exp.Expr], str] = {
    exp.Year: "year", exp.Quarter: "quarter", exp.Month: "month", exp.Week: "week",
    exp.Day: "day", exp.DayOfWeek: "dayofweek", exp.DayOfYear: "dayofyear",
}

NUMERIC = ("int", "float")

class ValueBuilder:
    """Builds the sanitised, clamped engine expression of an aggregate argument."""

    def __init__(self, scope: Scope, sql: str, is_nan: Callable[[exp.Expr], exp.Expr],
                 typer: Typer) -> None:
        self.scope = scope
        self.sql = sql
        self.is_nan = is_nan
        self.typer = typer
        # Expressions _clamp built, by id; the list keeps them alive so an id is
        # never reused by another node while this builder lives.
        self._clamps: set[int] = set()
        self._clamp_nodes: list[exp.Expr] = []

    # -- entry point ----------------------------------------------------------------

    def clamped(self, node: exp.Expr, what: str) -> tuple[exp.Expr, Interval]:
        """The final per-row value: total, finite, inside the returned interval, or NULL.

        Whatever the expression, the result is re-clamped to the interval the analysis
        assumed, unless it is built only by *selecting* among values that are clamped
        already (clamped columns, constants, CASE/COALESCE/LEAST/GREATEST over them):
        a syntactic rule, so no reasoning about functions or date parts is trusted.
        """
        t = self.typer.type_of(node)
        if t.family not in ("number", "bool", "null"):
            raise self._reject(node, f"the argument of {what} is {t.kind}, not a number",
                               "aggregate a numeric expression, or COUNT it")
        value, iv = self.value(node)
        if not iv.finite:
            cols = sorted({c.name for c in node.find_all(exp.Column)})
            raise QueryRejected(
                f"the argument of {what} is unbounded, so its sensitivity is infinite",
                hint=(f"give {', '.join(cols)} bounds in the policy or clamp it, e.g. "
                      f"LEAST(GREATEST({cols[0]}, 0), 100)") if cols else
                "clamp it with LEAST(GREATEST(expr, low), high)",
                rule="unbounded", span=span_of(node, self.sql))
        if iv.empty:
            return exp.Null(), iv
        value = self.typer.engine(value)
        if self._within(value):
            return value, iv
        return self._clamp(value, iv, check_nan=not iv.integral), iv

    def _within(self, value: exp.Expr) -> bool:
        """Is ``value`` certainly inside its interval: a selection among clamped values?"""
        if id(value) in self._clamps or isinstance(value, exp.Literal | exp.Null):
            return True
        if isinstance(value, exp.Neg) and isinstance(value.this, exp.Literal):
            return True
        if isinstance(value, exp.Paren | exp.Try):
            return self._within(value.this)
        if isinstance(value, exp.Case):
            results = [b.args["true"] for b in value.args.get("ifs") or []]
            if value.args.get("default") is not None:
                results.append(value.args["default"])
            return all(self._within(r) for r in results)
        if isinstance(value, exp.If):
            return all(self._within(r) for r in (value.args["true"], value.args.get("false"))
                       if r is not None)
        if isinstance(value, exp.Coalesce | exp.Least | exp.Greatest):
            return all(self._within(a) for a in [value.this, *value.expressions])
        return False

    # -- value context ------------------------------------------------------------------

    def value(self, node: exp.Expr) -> tuple[exp.Expr, Interval]:
        if isinstance(node, exp.Paren):
            return self.value(node.this)
        if isinstance(node, exp.Column):
            return self._column(node)
        if isinstance(node, exp.Literal):
            if node.is_string:
                raise self._reject(node, "a string cannot be summed or averaged",
                                   "aggregate a numeric expression")
            num = float(node.this)
            return node.copy(), Interval(num, num, num.is_integer() and "." not in node.this
                                         and "e" not in node.this.lower())
        if isinstance(node, exp.Pi):  # a constant function (evaluated once by the engine)
            return node.copy(), Interval(math.pi, math.pi, False)
        if isinstance(node, exp.Boolean):
            bit = 1.0 if node.this else 0.0
            return exp.Literal.number(int(bit)), Interval(bit, bit, True)
        if isinstance(node, exp.Null):
            return exp.Null(), EMPTY
        if isinstance(node, exp.Neg):
            v, iv = self.value(node.this)
            return exp.Neg(this=v), Interval(-iv.hi, -iv.lo, iv.integral) if not iv.empty else iv
        if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div):
            return self._arith(node)
        if isinstance(node, exp.Case | exp.If):
            return self._case(node)
        if isinstance(node, exp.Coalesce):
            parts = [self.value(a) for a in [node.this, *node.expressions]]
            iv = EMPTY
            for _, p in parts:
                iv = iv.union(p)
            return exp.Coalesce(this=parts[0][0], expressions=[p[0] for p in parts[1:]]), iv
        if isinstance(node, exp.Nullif):
            v, iv = self.value(node.this)
            return exp.Nullif(this=v, expression=self.typer.engine(node.expression.copy())), iv
        if isinstance(node, exp.Least | exp.Greatest):
            return self._extreme(node)
        if isinstance(node, exp.Cast | exp.TryCast):
            return self._cast(node)
        if isinstance(node, exp.Try):
            v, iv = self.value(node.this)
            return exp.Try(this=v), iv
        fn = self._function(node)
        if fn is not None:
            return fn
        if _is_predicate(node):
            pred = self.typer.condition(node.copy(), "a condition")
            return (exp.Case(ifs=[exp.If(this=pred, true=exp.Literal.number(1)),
                                  exp.If(this=exp.Not(this=pred.copy()),
                                         true=exp.Literal.number(0))]), BIT)
        raise self._reject(node, f"cannot bound the value of {node.sql(dialect='duckdb')}",
                           "use arithmetic, CASE, COALESCE, LEAST/GREATEST, ROUND or a "
                           "bounded column inside the aggregate")

    def _column(self, col: exp.Column) -> tuple[exp.Expr, Interval]:
        _, info = self.scope.resolve(col, self.sql)
        if info.sensitive:
            raise self._reject(col, f"column {info.name!r} is the privacy unit or an "
                               "identifier and cannot be aggregated",
                               "aggregate another column; COUNT(DISTINCT <unit>) counts units")
        ref = col.copy()
        if info.type == "bool":
            return (exp.Case(ifs=[exp.If(this=ref, true=exp.Literal.number(1)),
                                  exp.If(this=exp.Not(this=ref.copy()),
                                         true=exp.Literal.number(0))]), BIT)
        if info.type not in NUMERIC:
            raise self._reject(col, f"column {info.name!r} is {info.type}, not numeric",
                               "aggregate a numeric expression, or COUNT it")
        integral = info.type == "int"
        if info.bounds is None:
            cleaned = ref if integral else self._clean(ref)
            return cleaned, Interval(-INF, INF, integral)
        iv = Interval(info.bounds[0], info.bounds[1], integral)
        return self._clamp(ref, iv, check_nan=not integral), iv

    def _arith(self, node: exp.Expr) -> tuple[exp.Expr, Interval]:
        left, a = self.value(node.this)
        right, b = self.value(node.expression)
        if isinstance(node, exp.Add):
            iv = EMPTY if a.empty or b.empty else Interval(
                _nan_to(a.lo + b.lo, -INF), _nan_to(a.hi + b.hi, INF), a.integral and b.integral)
            return exp.Add(this=left, expression=right), iv
        if isinstance(node, exp.Sub):
            iv = EMPTY if a.empty or b.empty else Interval(
                _nan_to(a.lo - b.hi, -INF), _nan_to(a.hi - b.lo, INF), a.integral and b.integral)
            return exp.Sub(this=left, expression=right), iv
        if isinstance(node, exp.Mul):
            return exp.Mul(this=left, expression=right), _mul(a, b)
        q = _div(a, b)
        if q is None:
            raise self._reject(node.expression, "the divisor can be zero, so the quotient is "
                               "unbounded", "bound the divisor away from zero, e.g. "
                               "GREATEST(x, 1), or divide outside the aggregate")
        # Division in DOUBLE: integer operands would otherwise divide as integers in some
        # engines.
        return exp.Div(this=_as_double(left), expression=_as_double(right)), q

    def _case(self, node: exp.Expr) -> tuple[exp.Expr, Interval]:
        iv = EMPTY
        if isinstance(node, exp.If):
            t, a = self.value(node.args["true"])
            iv = iv.union(a)
            false = node.args.get("false")
            f = None
            if false is not None:
                f, b = self.value(false)
                iv = iv.union(b)
            cond = self.typer.condition(node.this.copy(), "the condition of IF")
            return exp.If(this=cond, true=t, false=f), iv
        ifs = []
        operand = node.this
        for branch in node.args.get("ifs") or []:
            t, a = self.value(branch.args["true"])
            iv = iv.union(a)
            when = branch.this.copy()
            if operand is not None:  # CASE x WHEN y: the comparison x = y, made explicit
                when = exp.EQ(this=operand.copy(), expression=when)
            ifs.append(exp.If(this=self.typer.condition(when, "a CASE WHEN condition"), true=t))
        default = node.args.get("default")
        d = None
        if default is not None:
            d, b = self.value(default)
            iv = iv.union(b)
        return exp.Case(ifs=ifs, default=d), iv

    def _extreme(self, node: exp.Expr) -> tuple[exp.Expr, Interval]:
        args = [node.this, *node.expressions]
        parts = [self.value(a) for a in args]
        # NULL arguments are skipped, so only arguments that can never be NULL
        # (constants) bound the result on the far side.
        certain = [iv for (v, iv), a in zip(parts, args, strict=True)
                   if _never_null(a) and not iv.empty]
        ivs = [iv for _, iv in parts if not iv.empty]
        if not ivs:
            return exp.Null(), EMPTY
        integral = all(iv.integral for iv in ivs)
        if isinstance(node, exp.Least):
            lo = min(iv.lo for iv in ivs)
            hi = min(iv.hi for iv in certain) if certain else max(iv.hi for iv in ivs)
            out: exp.Expr = exp.Least(this=parts[0][0], expressions=[p[0] for p in parts[1:]],
                                            ignore_nulls=True)
        else:
            hi = max(iv.hi for iv in ivs)
            lo = max(iv.lo for iv in certain) if certain else min(iv.lo for iv in ivs)
            out = exp.Greatest(this=parts[0][0], expressions=[p[0] for p in parts[1:]],
                               ignore_nulls=True)
        return out, Interval(lo, hi, integral)

    def _cast(self, node: exp.Expr) -> tuple[exp.Expr, Interval]:
        to = node.args["to"]
        t = to.this
        ints = {exp.DataType.Type.TINYINT, exp.DataType.Type.SMALLINT, exp.DataType.Type.INT,
                exp.DataType.Type.BIGINT}
        floats = {exp.DataType.Type.FLOAT, exp.DataType.Type.DOUBLE, exp.DataType.Type.DECIMAL}
        if t not in ints | floats:
            raise self._reject(node, f"cannot aggregate a value cast to {to.sql()}",
                               "cast to a numeric type")
        inner = node.this
        if isinstance(inner, exp.Column | exp.Paren) or not _is_text(inner):
            v, iv = self.value(inner)
        else:
            v, iv = inner.copy(), ANY
        if t in ints:
            iv = iv if iv.empty else Interval(math.floor(iv.lo) if math.isfinite(iv.lo) else iv.lo,
                                              math.ceil(iv.hi) if math.isfinite(iv.hi) else iv.hi,
                                              True)
            return exp.TryCast(this=exp.Round(this=v), to=exp.DataType.build("BIGINT")), iv
        return exp.TryCast(this=v, to=exp.DataType.build("DOUBLE")), Interval(iv.lo, iv.hi, False)

    def _function(self, node: exp.Expr) -> tuple[exp.Expr, Interval] | None:
        if isinstance(node, exp.Abs):
            v, iv = self.value(node.this)
            if iv.empty:
                return exp.Abs(this=v), iv
            lo = 0.0 if iv.lo <= 0 <= iv.hi else min(abs(iv.lo), abs(iv.hi))
            return exp.Abs(this=v), Interval(lo, max(abs(iv.lo), abs(iv.hi)), iv.integral)
        if isinstance(node, exp.Sign):
            v, _ = self.value(node.this)
            return exp.Sign(this=v), Interval(-1, 1, True)
        if isinstance(node, exp.Round | exp.Floor | exp.Ceil):
            v, iv = self.value(node.this)
            digits = node.args.get("decimals") or node.args.get("expression")
            out = node.copy()
            out.set("this", v)
            if digits is not None:
                # ROUND(x, d) moves x by at most half a unit of 10^-d.
                sign = 1
                if isinstance(digits, exp.Neg):
                    sign, digits = -1, digits.this
                if not isinstance(digits, exp.Literal) or digits.is_string:
                    raise self._reject(node, "ROUND's digits must be a constant", "use a number")
                step = 10.0 ** -(sign * int(float(digits.this)))
                return out, Interval(iv.lo - step, iv.hi + step, iv.integral and step >= 1)
            rounders: dict[type, Callable[[float], float]] = {
                exp.Round: round, exp.Floor: math.floor, exp.Ceil: math.ceil}
            f = rounders[type(node)]
            return out, _monotone(lambda x: float(f(x)) if math.isfinite(x) else x, iv, True)
        if isinstance(node, exp.Sqrt):
            v, iv = self.value(node.this)
            return exp.Sqrt(this=v), _monotone(lambda x: math.sqrt(max(x, 0.0)), iv)
        if isinstance(node, exp.Ln | exp.Log):
            if isinstance(node, exp.Log) and node.expression is not None:
                return None
            v, iv = self.value(node.this)
            fn = math.log if isinstance(node, exp.Ln) else math.log10
            logged = node.copy()
            logged.set("this", v)
            return logged, _monotone(lambda x: fn(x) if x > 0 else -INF, iv)
        if isinstance(node, exp.Exp):
            v, iv = self.value(node.this)
            return exp.Exp(this=v), _monotone(lambda x: math.exp(min(x, 709.0)) if x < 709 else INF,
                                              iv)
        if isinstance(node, exp.Pow):
            return self._pow(node)
        return self._date_part(node)

    def _pow(self, node: exp.Pow) -> tuple[exp.Expr, Interval]:
        e = node.expression
        if not isinstance(e, exp.Literal) or e.is_string or not float(e.this).is_integer() or \
                not 0 <= float(e.this) <= 8:
            raise self._reject(node, "only small constant integer powers can be bounded",
                               "use x * x, or POWER(x, 2) with a constant exponent 0..8")
        n = int(float(e.this))
        v, iv = self.value(node.this)
        if iv.empty:
            return exp.Pow(this=v, expression=e.copy()), iv
        cands = [_power(iv.lo, n), _power(iv.hi, n)] + ([0.0] if iv.lo <= 0 <= iv.hi else [])
        cands = [_nan_to(c, INF) for c in cands]
        return exp.Pow(this=v, expression=e.copy()), Interval(min(cands), max(cands), iv.integral)

    def _date_part(self, node: exp.Expr) -> tuple[exp.Expr, Interval] | None:
        """A date part: fixed ranges for month, day, ...; the year from the column's
        bounds, taken of the date *clamped* to those bounds (a victim dated 9999
        counts as the last bounded year).  The caller re-clamps the result."""
        part: str | None = None
        target: exp.Expr | None = None
        if type(node) in _PART_FUNCS:
            part, target = _PART_FUNCS[type(node)], node.this
        elif isinstance(node, exp.Extract):
            part, target = node.this.name.lower(), node.expression
        elif isinstance(node, exp.Anonymous) and node.name.lower() in ("date_part", "datepart"):
            args = node.expressions
            if len(args) == 2 and isinstance(args[0], exp.Literal) and args[0].is_string:
                part, target = args[0].this.lower(), args[1]
        if part is None or part not in _DATE_PARTS:
            return None
        fixed = _DATE_PARTS[part]
        if fixed is not None:
            return node.copy(), Interval(fixed[0], fixed[1], True)
        target = target.unnest() if target is not None else None
        if isinstance(target, exp.Column):
            _, info = self.scope.resolve(target, self.sql)
            if info.raw_bounds is not None and info.type in ("date", "timestamp"):
                lo, hi = info.raw_bounds
                clamped = clamp_time(target.copy(), lo, hi, info.type)
                out = node.copy()
                if isinstance(node, exp.Anonymous):
                    out.set("expressions", [node.expressions[0].copy(), clamped])
                elif isinstance(node, exp.Extract):
                    out.set("expression", clamped)
                else:
                    out.set("this", clamped)
                return out, Interval(float(lo.year), float(hi.year), True)
        raise self._reject(node, "the year of this value is unbounded",
                           "give the date column bounds in the policy and take the year of "
                           "the column itself")

    # -- helpers ----------------------------------------------------------------------

    def _clean(self, v: exp.Expr) -> exp.Expr:
        return exp.Case(ifs=[exp.If(this=self.is_nan(v.copy()), true=exp.Null())], default=v)

    def _clamp(self, v: exp.Expr, iv: Interval, *, check_nan: bool) -> exp.Expr:
        null_if: exp.Expr = exp.Is(this=v.copy(), expression=exp.Null())
        if check_nan:
            null_if = exp.or_(null_if, self.is_nan(v.copy()))
        lo, hi = _number(iv.lo, iv.integral), _number(iv.hi, iv.integral)
        clamp = exp.Least(this=exp.Greatest(this=v, expressions=[lo], ignore_nulls=True),
                          expressions=[hi], ignore_nulls=True)
        out = exp.Case(ifs=[exp.If(this=null_if, true=exp.Null())], default=clamp)
        self._clamps.add(id(out))
        self._clamp_nodes.append(out)
        return out

    def _reject(self, node: exp.Expr, msg: str, hint: str) -> QueryRejected:
        return QueryRejected(msg, hint=hint, rule="unbounded", span=span_of(node, self.sql))


def clamp_time(value: exp.Expr, lo: Any, hi: Any, kind: str) -> exp.Expr:
    """A date or timestamp clamped to [lo, hi] in the engine (comparisons of one type
    cannot fail, and NULL stays NULL)."""
    low, high = typed_literal(lo, kind), typed_literal(hi, kind)
    return exp.Case(ifs=[exp.If(this=exp.LT(this=value.copy(), expression=low), true=low),
                         exp.If(this=exp.GT(this=value.copy(), expression=high), true=high)],
                    default=value)


def _power(x: float, n: int) -> float:
    """x ** n for an interval end, infinite instead of an OverflowError."""
    try:
        return float(x) ** n
    except OverflowError:
        return INF if x > 0 or n % 2 == 0 else -INF


def _number(v: float, integral: bool) -> exp.Expr:
    if integral and float(v).is_integer():
        return exp.Literal.number(int(v))
    return exp.Literal.number(repr(float(v)))


def _as_double(v: exp.Expr) -> exp.Expr:
    return exp.Cast(this=v, to=exp.DataType.build("DOUBLE"))


def _never_null(node: exp.Expr) -> bool:
    return isinstance(node, exp.Literal | exp.Boolean) or (
        isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal))


def _is_text(node: exp.Expr) -> bool:
    return isinstance(node, exp.Literal) and node.is_string


_PREDICATES: tuple[type[exp.Expr], ...] = (
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ, exp.NullSafeNEQ,
    exp.Is, exp.In, exp.Between, exp.Like, exp.ILike, exp.And, exp.Or, exp.Not,
    exp.StartsWith, exp.EndsWith, exp.Contains, exp.IsNan, exp.IsInf,
)


def _is_predicate(node: exp.Expr) -> bool:
    return isinstance(node, _PREDICATES)
