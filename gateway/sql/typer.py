"""The gateway's own types for row-level expressions, and where guards go.

An engine error that happens only on the rows that reach an expression is a
one-bit oracle on the data: the query fails iff some row satisfies a predicate.
So every expression evaluated per row must be unable to raise.  Engines decide
implicit casts in their binder, differently from one another and from one
release to the next; relying on them would make privacy depend on a binder we
do not control.  This module therefore types every row-level expression by the
gateway's rules alone:

* A mismatch that makes the engine convert a *data value* (a text column
  compared with a number, a date with an int, text used as a condition, CASE
  branches of different kinds) is rejected before anything runs: the
  conversion could fail on some rows.  A *literal* converted to the other
  side's type is converted once, when the query is bound, so it fails or not
  whatever the data holds; it is checked here and then accepted.
* Each expression is either *total* (proven unable to raise: columns,
  literals, comparisons of matching types, boolean logic, CASE, COALESCE,
  LEAST/GREATEST, TRY_CAST ... over total parts) or not (arithmetic, which can
  overflow; every function; casts that can overflow such as DATE to TIMESTAMP).
  :meth:`Typer.engine` returns the expression with the engine's guard around
  each largest non-total part.  When in doubt, an expression is not total.

Types: ``int`` (any integer width), ``double``, ``decimal``, ``text``,
``bool``, ``date``, ``timestamp``, ``interval`` and ``null``.  Integer to
double and decimal to double conversions cannot fail; integer or decimal to
decimal can (precision), date to timestamp can (range), so those are accepted
but not total.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from gateway.errors import QueryRejected
from gateway.sql.scope import Scope
from gateway.sql.validate import span_of

NUMBER = frozenset({"int", "double", "decimal"})
TIME = frozenset({"date", "timestamp"})

# Policy vocabulary <-> the types here.
FROM_POLICY = {"int": "int", "float": "double", "text": "text", "bool": "bool",
               "date": "date", "timestamp": "timestamp"}
TO_POLICY = {"int": "int", "double": "float", "decimal": "float", "text": "text",
             "bool": "bool", "date": "date", "timestamp": "timestamp"}
# DuckDB spelling of a type, for checking that a literal converts.
ENGINE_TYPE = {"int": "BIGINT", "double": "DOUBLE", "decimal": "DOUBLE", "text": "VARCHAR",
               "bool": "BOOLEAN", "date": "DATE", "timestamp": "TIMESTAMP",
               "interval": "INTERVAL"}

_INT_TYPES = {exp.DataType.Type.TINYINT, exp.DataType.Type.SMALLINT, exp.DataType.Type.INT,
              exp.DataType.Type.BIGINT}
_CAST_TARGETS: dict[Any, str] = {  # sqlglot DataType.Type -> type here
    **{t: "int" for t in _INT_TYPES},
    exp.DataType.Type.FLOAT: "double", exp.DataType.Type.DOUBLE: "double",
    exp.DataType.Type.DECIMAL: "decimal", exp.DataType.Type.VARCHAR: "text",
    exp.DataType.Type.TEXT: "text", exp.DataType.Type.CHAR: "text",
    exp.DataType.Type.BOOLEAN: "bool", exp.DataType.Type.DATE: "date",
    exp.DataType.Type.TIMESTAMP: "timestamp", exp.DataType.Type.TIMESTAMPNTZ: "timestamp",
}

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ,
                exp.NullSafeNEQ)
_PARTS: dict[type[exp.Expr], str] = {
    exp.Year: "year", exp.Month: "month", exp.Day: "day", exp.DayOfWeek: "dayofweek",
    exp.DayOfYear: "dayofyear", exp.Quarter: "quarter", exp.Week: "week",
}
_DOUBLE_PARTS = frozenset({"epoch", "julian"})


@dataclass(frozen=True)
class Typed:
    """The type of an expression and whether it can be evaluated without error."""

    kind: str
    literal: bool = False  # a constant the engine converts once, at bind time
    total: bool = True

    @property
    def family(self) -> str:
        if self.kind in NUMBER:
            return "number"
        if self.kind in TIME:
            return "time"
        return self.kind

    @property
    def policy(self) -> str:
        return TO_POLICY.get(self.kind, "unknown")


def _kind_word(t: Typed) -> str:
    return {"int": "an integer", "double": "a number", "decimal": "a number",
            "text": "text", "bool": "a boolean", "date": "a date", "timestamp": "a timestamp",
            "interval": "an interval", "null": "NULL"}.get(t.kind, t.kind)


class Typer:
    """Types row-level expressions over one FROM scope."""

    def __init__(self, scope: Scope, sql: str, constant_ok: Callable[[exp.Expr], bool],
                 guard: Callable[[exp.Expr], exp.Expr]) -> None:
        self.scope = scope
        self.sql = sql
        self.constant_ok = constant_ok
        self.guard = guard

    # -- entry points -------------------------------------------------------------------

    def engine(self, node: exp.Expr) -> exp.Expr:
        """``node`` type-checked, with the guard around each largest non-total part."""
        t = self.type_of(node)
        if t.total:
            return node
        if isinstance(node, exp.And | exp.Or):
            return type(node)(this=self.engine(node.this), expression=self.engine(node.expression))
        if isinstance(node, exp.Not):
            return exp.Not(this=self.engine(node.this))
        if isinstance(node, exp.Paren):
            return exp.Paren(this=self.engine(node.this))
        return self.guard(node)

    def condition(self, node: exp.Expr, where: str = "a condition") -> exp.Expr:
        """A row-level condition (WHERE, ON, FILTER, CASE WHEN): a boolean, made total."""
        self._condition(node, where)
        return self.engine(node)

    # -- typing ---------------------------------------------------------------------------

    def type_of(self, node: exp.Expr) -> Typed:
        t = self._type_of(node)
        if _constant(node) and not _leaf(node):
            # A constant expression (no column) fails or not whatever the data holds,
            # but the engine may evaluate it row by row, only on the rows that reach
            # it: evaluate it now, and refuse it if it fails.
            if not self.constant_ok(node):
                raise self._reject(node, f"{node.sql(dialect='duckdb')} cannot be evaluated "
                                   "(a constant of the wrong type, or an overflow)",
                                   "fix the constant expression", rule="constant")
            return Typed(t.kind, literal=t.literal, total=True)
        return t

    def _type_of(self, node: exp.Expr) -> Typed:
        if isinstance(node, exp.Paren):
            return self.type_of(node.this)
        if isinstance(node, exp.Column):
            return self._column(node)
        if isinstance(node, exp.Literal):
            if node.is_string:
                return Typed("text", literal=True)
            text = str(node.this).lower()
            if "e" in text:
                return Typed("double", literal=True)
            return Typed("decimal" if "." in text else "int", literal=True)
        if isinstance(node, exp.Boolean):
            return Typed("bool", literal=True)
        if isinstance(node, exp.Null):
            return Typed("null", literal=True)
        if isinstance(node, exp.Neg):
            t = self._number(node.this, node, "the operand of -")
            # -(-2^63) overflows a BIGINT: only a negated literal is total.
            return Typed(t.kind, t.literal, t.literal)
        if isinstance(node, exp.Not):
            t = self._condition(node.this, "the operand of NOT")
            return Typed("bool", total=t.total)
        if isinstance(node, exp.And | exp.Or):
            a = self._condition(node.this, f"an operand of {node.key.upper()}")
            b = self._condition(node.expression, f"an operand of {node.key.upper()}")
            return Typed("bool", total=a.total and b.total)
        if isinstance(node, _COMPARISONS):
            a, b = self.type_of(node.this), self.type_of(node.expression)
            ok = self._compare(a, b, node.this, node.expression, node)
            return Typed("bool", total=ok and a.total and b.total)
        if isinstance(node, exp.Is):
            t = self.type_of(node.this)
            target = node.expression
            if isinstance(target, exp.Boolean):
                self._condition(node.this, "the operand of IS TRUE/FALSE")
            elif not isinstance(target, exp.Null):
                raise self._reject(node, "IS is only supported with NULL, TRUE or FALSE",
                                   "write x IS NULL, or compare with =")
            return Typed("bool", total=t.total)
        if isinstance(node, exp.In):
            if node.args.get("query") or node.args.get("unnest") or node.args.get("field"):
                raise self._reject(node, "IN needs a list of values here",
                                   "write x IN (1, 2, 3)")
            t = self.type_of(node.this)
            total = t.total
            for e in node.expressions:
                u = self.type_of(e)
                total = self._compare(t, u, node.this, e, node) and u.total and total
            return Typed("bool", total=total)
        if isinstance(node, exp.Between):
            t = self.type_of(node.this)
            total = t.total
            for side in ("low", "high"):
                u = self.type_of(node.args[side])
                total = self._compare(t, u, node.this, node.args[side], node) and u.total \
                    and total
            return Typed("bool", total=total)
        if isinstance(node, exp.Like | exp.ILike):
            a = self._text(node.this, node, "the left side of LIKE")
            b = self._text(node.expression, node, "the pattern of LIKE")
            return Typed("bool", total=a.total and b.literal)
        if isinstance(node, exp.Case):
            return self._case(node)
        if isinstance(node, exp.If):
            c = self._condition(node.this, "the condition of IF")
            parts = [node.args["true"]] + ([node.args["false"]] if node.args.get("false")
                                           is not None else [])
            out = self._unify(parts, node, "the results of IF")
            return Typed(out.kind, total=out.total and c.total)
        if isinstance(node, exp.Coalesce):
            return self._unify([node.this, *node.expressions], node, "the arguments of COALESCE")
        if isinstance(node, exp.Least | exp.Greatest):
            out = self._unify([node.this, *node.expressions], node,
                              f"the arguments of {node.key.upper()}")
            if out.kind in ("interval", "bool"):
                raise self._reject(node, f"{node.key.upper()} of {_kind_word(out)} values is "
                                   "not supported", "compare numbers, text or dates")
            return out
        if isinstance(node, exp.Nullif):
            a, b = self.type_of(node.this), self.type_of(node.expression)
            ok = self._compare(a, b, node.this, node.expression, node)
            return Typed(a.kind, total=ok and a.total and b.total)
        if isinstance(node, exp.TryCast):
            inner = self.type_of(node.this)
            return Typed(self._cast_target(node), total=inner.total)
        if isinstance(node, exp.Cast):
            return self._constant_cast(node)
        if isinstance(node, exp.Try):
            inner = self.type_of(node.this)
            return Typed(inner.kind, total=True)
        if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div):
            return self._arith(node)
        if isinstance(node, exp.Interval):
            return self._interval(node)
        return self._function(node)

    # -- leaves ---------------------------------------------------------------------------

    def _column(self, node: exp.Column) -> Typed:
        if isinstance(node.this, exp.Star):
            raise self._reject(node, "* is not a value here", "name the columns")
        _, info = self.scope.resolve(node, self.sql)
        kind = FROM_POLICY.get(info.type)
        if kind is None:
            raise self._reject(node, f"the type of column {info.name!r} is not known",
                               "CAST it to INT, DOUBLE, VARCHAR, DATE, TIMESTAMP or BOOLEAN")
        return Typed(kind)

    def _cast_target(self, node: exp.Expr) -> str:
        to = node.args["to"]
        kind = _CAST_TARGETS.get(to.this)
        if kind is None:
            raise self._reject(node, f"casting to {to.sql()} is not supported",
                               "cast to INT, BIGINT, DOUBLE, DECIMAL, VARCHAR, BOOLEAN, DATE "
                               "or TIMESTAMP")
        return kind

    def _constant_cast(self, node: exp.Cast) -> Typed:
        """CAST of a constant (casts of data were made TRY_CAST by validation)."""
        if any(True for _ in node.find_all(exp.Column)):
            # Only reachable when a caller built a CAST of data itself: not total.
            self.type_of(node.this)
            return Typed(self._cast_target(node), total=False)
        self.type_of(node.this)
        if not self.constant_ok(node):
            raise self._reject(node, f"the constant {node.sql(dialect='duckdb')} is not a valid "
                               "value of its type", "write dates as 'YYYY-MM-DD' and numbers "
                               "as digits", rule="constant")
        return Typed(self._cast_target(node), literal=True)

    def _interval(self, node: exp.Interval) -> Typed:
        value = node.this
        t = self.type_of(value) if value is not None else Typed("text", literal=True)
        if t.family not in ("number", "text", "null"):
            raise self._reject(node, f"an INTERVAL needs a number, not {_kind_word(t)}",
                               "write e.g. INTERVAL 3 DAY")
        if t.kind == "text" and not t.literal:
            raise self._reject(node, "an INTERVAL built from a text column can fail on some "
                               "rows", "use a number, e.g. INTERVAL (n) DAY")
        return Typed("interval", literal=t.literal, total=t.literal)

    # -- rules ----------------------------------------------------------------------------

    def _condition(self, node: exp.Expr, where: str) -> Typed:
        t = self.type_of(node)
        if t.kind not in ("bool", "null"):
            hint = {"text": "compare it, e.g. col = 'yes'",
                    "int": "compare it, e.g. col <> 0",
                    "double": "compare it, e.g. col > 0"}.get(t.kind, "compare it with a value")
            raise self._reject(node, f"{node.sql(dialect='duckdb')} is {_kind_word(t)}, so it "
                               f"cannot be {where}; the engine would convert each value to a "
                               "boolean, which fails on some rows", hint)
        return t

    def _number(self, node: exp.Expr, parent: exp.Expr, what: str) -> Typed:
        t = self.type_of(node)
        if t.family not in ("number", "null"):
            raise self._reject(parent, f"{what} is {_kind_word(t)}, not a number",
                               "use a numeric expression, or TRY_CAST it to DOUBLE")
        return t

    def _text(self, node: exp.Expr, parent: exp.Expr, what: str) -> Typed:
        t = self.type_of(node)
        if t.kind not in ("text", "null"):
            raise self._reject(parent, f"{what} is {_kind_word(t)}, not text",
                               "CAST it to VARCHAR first")
        return t

    def _time(self, node: exp.Expr, parent: exp.Expr, what: str) -> Typed:
        t = self.type_of(node)
        if t.family not in ("time", "null"):
            raise self._reject(parent, f"{what} needs a date or timestamp, not {_kind_word(t)}",
                               "apply it to a date column, or TRY_CAST the value to DATE")
        return t

    def _literal_converts(self, lit: exp.Expr, kind: str, parent: exp.Expr) -> None:
        cast = exp.Cast(this=lit.copy(), to=exp.DataType.build(ENGINE_TYPE[kind]))
        if not self.constant_ok(cast):
            word = _kind_word(Typed(kind))
            raise self._reject(parent, f"{lit.sql(dialect='duckdb')} is not {word} value (it "
                               f"cannot be converted), but it meets {word} here",
                               "write dates as 'YYYY-MM-DD', numbers as digits and booleans as "
                               "TRUE/FALSE", rule="constant")

    def _compare(self, a: Typed, b: Typed, x: exp.Expr, y: exp.Expr, node: exp.Expr) -> bool:
        """Raise for a data value the engine would convert; True if no conversion can fail."""
        if a.kind == "null" or b.kind == "null" or (a.literal and b.literal):
            return True
        if a.literal != b.literal and (a if a.literal else b).kind == "text" and \
                (b if a.literal else a).kind != "text":
            lit, other = (x, b) if a.literal else (y, a)
            if other.kind == "interval":
                raise self._mismatch(node, a, b)
            # A string literal is converted to the other side's type once, at bind time.
            self._literal_converts(lit.unnest(), other.kind, node)
            return True
        if a.family != b.family:
            raise self._mismatch(node, a, b)
        if a.kind == b.kind:
            # Two decimals meet at a common precision and scale, which can overflow
            # (DECIMAL(38,0) against DECIMAL(38,37)): not total unless both are constants.
            return a.kind != "decimal"
        # Both sides are converted to a common type.  A constant's conversion is folded
        # at bind time only when it succeeds (else it runs per row, on the rows that
        # reach it): it is checked now.
        common = Typed(_common({a.kind, b.kind}))
        for t, e in ((a, x), (b, y)):
            if t.literal and t.kind != common.kind:
                self._literal_converts(e.unnest(), common.kind, node)
        return all(t.literal or _widens(t, common) for t in (a, b))

    def _unify(self, nodes: Sequence[exp.Expr], parent: exp.Expr, what: str) -> Typed:
        parts = [(n, self.type_of(n)) for n in nodes]
        total = all(t.total for _, t in parts)
        typed = [(n, t) for n, t in parts if t.kind != "null"]
        if not typed:
            return Typed("null", total=total)
        data = [(n, t) for n, t in typed if not (t.literal and t.kind == "text")] or typed
        families = {t.family for _, t in data}
        if len(families) > 1:
            kinds = sorted({_kind_word(t) for _, t in data})
            raise self._reject(parent, f"{what} mix {' and '.join(kinds)}",
                               "CAST them to one type (a failed TRY_CAST gives NULL)",
                               rule="type_mismatch")
        kind = _common({t.kind for _, t in data})
        target = Typed(kind)
        for n, t in typed:
            if t.literal and t.kind != kind:
                # The engine converts a constant branch per row, only on the rows that
                # take it (a conversion it could not fold at bind time is left for run
                # time): it must be known to succeed now.
                self._literal_converts(n.unnest(), kind, parent)
            elif not t.literal and t.kind != kind:
                total = total and _widens(t, target)
        all_literal = all(t.literal for _, t in typed)
        return Typed(kind, literal=all_literal, total=total)

    def _case(self, node: exp.Case) -> Typed:
        operand = node.this
        total = True
        if operand is not None:
            o = self.type_of(operand)
            total = o.total
        for branch in node.args.get("ifs") or []:
            when = branch.this
            if operand is not None:
                w = self.type_of(when)
                equality = exp.EQ(this=operand.copy(), expression=when.copy())
                total = self._compare(o, w, operand, when, equality) and w.total and total
            else:
                total = self._condition(when, "a CASE WHEN condition").total and total
        results = [b.args["true"] for b in node.args.get("ifs") or []]
        if node.args.get("default") is not None:
            results.append(node.args["default"])
        out = self._unify(results, node, "the results of CASE")
        return Typed(out.kind, total=out.total and total)

    def _arith(self, node: exp.Expr) -> Typed:
        a, b = self.type_of(node.this), self.type_of(node.expression)
        words: dict[type[exp.Expr], str] = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*",
                                            exp.Div: "/"}
        word = words[type(node)]
        literal = a.literal and b.literal
        if a.family in ("number", "null") and b.family in ("number", "null"):
            kind = "double" if isinstance(node, exp.Div) else _common({a.kind, b.kind} - {"null"})
            return Typed(kind, literal=literal, total=False)
        if isinstance(node, exp.Add | exp.Sub):
            pair = (a.kind, b.kind)
            found = {("date", "int"): "date", ("date", "interval"): "timestamp",
                     ("timestamp", "interval"): "timestamp", ("date", "date"): "int",
                     ("timestamp", "timestamp"): "interval"}.get(pair)
            if found is None and isinstance(node, exp.Add):
                found = {("int", "date"): "date", ("interval", "date"): "timestamp",
                         ("interval", "timestamp"): "timestamp"}.get(pair)
            if found == "interval" or (found is None and pair == ("interval", "interval")):
                found = "interval"
            if found is not None:
                return Typed(found, literal=literal, total=False)
        raise self._reject(node, f"{word} cannot combine {_kind_word(a)} and {_kind_word(b)}",
                           "use numbers, or date +/- INTERVAL; CAST explicitly where needed",
                           rule="type_mismatch")

    def _function(self, node: exp.Expr) -> Typed:
        """Functions: arguments checked, never total (each can fail on some input)."""
        if isinstance(node, exp.Abs | exp.Round | exp.Floor | exp.Ceil):
            t = self._number(node.this, node, f"the argument of {node.key.upper()}")
            digits = node.args.get("decimals") or node.args.get("expression")
            if digits is not None:
                self._number(digits, node, "the digits of ROUND")
            return Typed(t.kind if t.kind != "null" else "double", literal=t.literal,
                         total=False)
        if isinstance(node, exp.Sign):
            self._number(node.this, node, "the argument of SIGN")
            return Typed("int", total=False)
        if isinstance(node, exp.Sqrt | exp.Ln | exp.Exp):
            self._number(node.this, node, f"the argument of {node.key.upper()}")
            return Typed("double", total=False)
        if isinstance(node, exp.Log | exp.Pow):
            self._number(node.this, node, f"an argument of {node.key.upper()}")
            if node.expression is not None:
                self._number(node.expression, node, f"an argument of {node.key.upper()}")
            return Typed("double", total=False)
        if isinstance(node, exp.Pi):
            # A constant function: type_of evaluates it once, at planning.
            return Typed("double", total=False)
        if isinstance(node, exp.IsNan | exp.IsInf):
            t = self._number(node.this, node, f"the argument of {node.key.upper()}")
            return Typed("bool", total=t.total and isinstance(node, exp.IsNan))
        if isinstance(node, exp.Lower | exp.Upper | exp.Trim):
            self._text(node.this, node, f"the argument of {node.key.upper()}")
            return Typed("text", total=False)
        if isinstance(node, exp.Length):
            self._text(node.this, node, "the argument of LENGTH")
            return Typed("int", total=False)
        if isinstance(node, exp.Substring):
            self._text(node.this, node, "the string of SUBSTRING")
            for arg in ("start", "length"):
                if node.args.get(arg) is not None:
                    self._integer(node.args[arg], node, f"the {arg} of SUBSTRING")
            return Typed("text", total=False)
        if isinstance(node, exp.Left | exp.Right):
            self._text(node.this, node, f"the string of {node.key.upper()}")
            self._integer(node.expression, node, f"the length of {node.key.upper()}")
            return Typed("text", total=False)
        if isinstance(node, exp.Concat | exp.DPipe):
            args = node.expressions if isinstance(node, exp.Concat) else [node.this,
                                                                          node.expression]
            for e in args:
                self.type_of(e)
            if sum(1 for e in args if not _constant(e)) > 1:
                # Joining a value with itself doubles it; chained through subqueries the
                # work grows exponentially with one unit's string lengths.
                raise self._reject(node, "concatenation may join at most one column "
                                   "expression with constants",
                                   "concatenate one value with constant text, or group by "
                                   "the columns separately", rule="concatenation")
            return Typed("text", total=False)
        if isinstance(node, exp.StartsWith | exp.EndsWith | exp.Contains):
            self._text(node.this, node, f"the first argument of {node.key.upper()}")
            self._text(node.expression, node, f"the second argument of {node.key.upper()}")
            return Typed("bool", total=False)
        if isinstance(node, exp.TimestampTrunc | exp.DateTrunc):
            self._time(node.this, node, "DATE_TRUNC")
            return Typed("timestamp", total=False)
        if isinstance(node, exp.TimeToStr | exp.ToChar):
            self._time(node.this, node, "TO_CHAR/STRFTIME")
            return Typed("text", total=False)
        if isinstance(node, exp.Extract):
            self._time(node.expression, node, "EXTRACT")
            part = node.this.name.lower()
            return Typed("double" if part in _DOUBLE_PARTS else "int", total=False)
        if type(node) in _PARTS:
            self._time(node.this, node, node.key.upper())
            return Typed("int", total=False)
        if isinstance(node, exp.Anonymous):
            name = node.name.lower()
            args = node.expressions
            if name in ("date_part", "datepart") and len(args) == 2:
                self._time(args[1], node, name.upper())
                part = args[0].name.lower()
                return Typed("double" if part in _DOUBLE_PARTS else "int", total=False)
            if name == "isfinite" and len(args) == 1:
                t = self.type_of(args[0])
                if t.family not in ("number", "time", "null"):
                    raise self._reject(node, f"ISFINITE needs a number or a date, not "
                                       f"{_kind_word(t)}", "apply it to a numeric column")
                return Typed("bool", total=False)
        if isinstance(node, exp.AggFunc):
            raise self._reject(node, "an aggregate cannot be used here",
                               "aggregate in the SELECT list, HAVING or ORDER BY")
        raise self._reject(node, f"cannot determine the type of {node.sql(dialect='duckdb')}",
                           "simplify the expression, or CAST it to the type you mean")

    def _integer(self, node: exp.Expr, parent: exp.Expr, what: str) -> None:
        t = self.type_of(node)
        if t.kind not in ("int", "null"):
            raise self._reject(parent, f"{what} is {_kind_word(t)}, not an integer",
                               "use a whole number")

    # -- errors ---------------------------------------------------------------------------

    def _mismatch(self, node: exp.Expr, a: Typed, b: Typed) -> QueryRejected:
        return self._reject(
            node, f"{node.sql(dialect='duckdb')} compares {_kind_word(a)} with {_kind_word(b)}; "
            "the engine would convert values one by one, which can fail on some rows",
            "compare values of the same type, e.g. a text column with a quoted string, or "
            "TRY_CAST one side explicitly (a failed TRY_CAST gives NULL)", rule="type_mismatch")

    def _reject(self, node: exp.Expr, msg: str, hint: str, *, rule: str = "type_mismatch"
                ) -> QueryRejected:
        return QueryRejected(msg, hint=hint, rule=rule, span=span_of(node, self.sql))


def _leaf(node: exp.Expr) -> bool:
    node = node.unnest()
    if isinstance(node, exp.Neg):
        node = node.this
    return isinstance(node, exp.Literal | exp.Null | exp.Boolean | exp.DataType | exp.Var)


def _constant(node: exp.Expr) -> bool:
    return not any(isinstance(n, exp.Column | exp.Star | exp.Placeholder)
                   for n in node.walk())


def _common(kinds: set[str]) -> str:
    """The type values of one family are converted to when they meet."""
    if kinds & NUMBER or not kinds:
        return "double" if "double" in kinds else "decimal" if "decimal" in kinds else "int"
    if kinds <= TIME:
        return "timestamp" if "timestamp" in kinds else "date"
    return next(iter(kinds))


def _widens(source: Typed, target: Typed) -> bool:
    """Can every value of ``source`` be converted to ``target`` without error?"""
    if source.kind == "null" or (source.kind == target.kind and source.kind != "decimal"):
        return True
    return target.kind == "double" and source.kind in ("int", "decimal")
