"""Comparisons whose operand types are known, and which therefore cannot raise.

Engines cast implicitly when operand types differ: DuckDB turns
``country = 5`` into ``CAST(country AS INTEGER) = 5``, which fails on the first
non-numeric country — an error whose presence depends on the data.  Such
mismatches are rejected here with the fix.  Comparisons between operands of
matching types (a column and a constant of its type, two columns of one type)
cannot fail, so they are left unguarded: wrapping a join condition or a filter
in the executor's guard would hide it from the optimizer (no hash join, no
filter pushdown).  Everything else in a row-level condition gets guarded.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from gateway.errors import QueryRejected
from gateway.sql.scope import Scope
from gateway.sql.validate import span_of

_FAMILY = {"int": "number", "float": "number", "text": "text", "bool": "bool",
           "date": "time", "timestamp": "time"}
_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ,
                exp.NullSafeNEQ)


def _operand(node: exp.Expr, scope: Scope, sql: str) -> tuple[str, str] | None:
    """(kind, family): kind 'column' or 'constant'; None if not a simple operand."""
    node = node.unnest()
    if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star):
        _, info = scope.resolve(node, sql)
        fam = _FAMILY.get(info.type)
        return ("column", fam) if fam else None
    if isinstance(node, exp.Literal):
        return ("constant", "text" if node.is_string else "number")
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
        return ("constant", "number")
    if isinstance(node, exp.Boolean):
        return ("constant", "bool")
    if isinstance(node, exp.Null):
        return ("constant", "null")
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal):
        to = node.args["to"]
        if to.is_type(*exp.DataType.TEMPORAL_TYPES):
            return ("constant", "time")
        if to.is_type(*exp.DataType.NUMERIC_TYPES):
            return ("constant", "number")
        if to.is_type(*exp.DataType.TEXT_TYPES):
            return ("constant", "text")
    return None


def _compatible(a: tuple[str, str], b: tuple[str, str]) -> bool | None:
    """True: cannot fail; False: a data-dependent cast; None: cannot tell."""
    if "null" in (a[1], b[1]) or a[1] == b[1]:
        return True
    if a[0] == "constant" and b[0] == "constant":
        return True
    col, other = (a, b) if a[0] == "column" else (b, a)
    if other[0] == "constant":
        # The constant is cast to the column's type, once, at planning: a failure
        # there does not depend on data.  Text columns are the exception: they
        # would be cast to the constant's type, row by row.
        return col[1] != "text"
    return False


def _pair_ok(x: exp.Expr, y: exp.Expr, node: exp.Expr, scope: Scope,
             sql: str) -> bool:
    a, b = _operand(x, scope, sql), _operand(y, scope, sql)
    if a is None or b is None:
        return False
    ok = _compatible(a, b)
    if ok and a[0] != b[0] and {a[1], b[1]} == {"number", "text"}:
        text = (y if a[0] == "column" else x).unnest()
        try:
            float(text.name)
        except ValueError:
            raise QueryRejected(
                f"{text.sql()} is not a number, but it is compared with a numeric column",
                hint="compare with a number, e.g. age > 30", rule="type_mismatch",
                span=span_of(node, sql)) from None
    if ok is False:
        raise QueryRejected(
            f"{node.sql(dialect='duckdb')} compares {a[1]} with {b[1]}; the engine would "
            f"convert values one by one, which can fail on some rows",
            hint="compare values of the same type, e.g. a text column with a quoted string, "
            "or CAST explicitly (a failed CAST gives NULL)", rule="type_mismatch",
            span=span_of(node, sql))
    return bool(ok)


def is_safe(node: exp.Expr, scope: Scope, sql: str) -> bool:
    """Does this condition certainly evaluate without error on every row?"""
    node = node.unnest()
    if isinstance(node, exp.And | exp.Or):
        return is_safe(node.this, scope, sql) & is_safe(node.expression, scope, sql)
    if isinstance(node, exp.Not):
        return is_safe(node.this, scope, sql)
    if isinstance(node, _COMPARISONS):
        return _pair_ok(node.this, node.expression, node, scope, sql)
    if isinstance(node, exp.Is):
        return _operand(node.this, scope, sql) is not None
    if isinstance(node, exp.In):
        if node.args.get("query") or node.args.get("unnest"):
            return False
        return all([_pair_ok(node.this, e, node, scope, sql) for e in node.expressions])
    if isinstance(node, exp.Between):
        return (_pair_ok(node.this, node.args["low"], node, scope, sql)
                & _pair_ok(node.this, node.args["high"], node, scope, sql))
    if isinstance(node, exp.Boolean):
        return True
    if isinstance(node, exp.Column):
        op = _operand(node, scope, sql)
        return op is not None and op[1] == "bool"
    return False


def check_constants(root: exp.Expr, sql: str,
                    constant_ok: Callable[[exp.Expr], bool], scope: Scope) -> None:
    """Constants the engine will convert (CASTs of literals, strings compared with
    date columns) must convert: a failure would otherwise come from the engine,
    after the budget is charged."""
    checks: list[tuple[exp.Expr, exp.Expr]] = []
    for cast in root.find_all(exp.Cast, exp.TryCast):
        if type(cast) is exp.Cast and not any(True for _ in cast.find_all(exp.Column)):
            checks.append((cast, cast))
    for node in root.find_all(*_COMPARISONS, exp.In, exp.Between):
        operands = [node.this, *(node.expressions if isinstance(node, exp.In) else [])]
        if isinstance(node, exp.Between):
            operands += [node.args["low"], node.args["high"]]
        elif not isinstance(node, exp.In):
            operands.append(node.expression)
        cols = [o for o in operands if isinstance(o.unnest(), exp.Column)
                and not isinstance(o.unnest().this, exp.Star)]
        for col in cols:
            _, info = scope.resolve(col.unnest(), sql)
            if info.type not in ("date", "timestamp"):
                continue
            for o in operands:
                lit = o.unnest()
                if isinstance(lit, exp.Literal) and lit.is_string:
                    to = "DATE" if info.type == "date" else "TIMESTAMP"
                    checks.append((node, exp.Cast(this=lit.copy(),
                                                  to=exp.DataType.build(to))))
    for found, expr in checks:
        if not constant_ok(expr):
            raise QueryRejected(
                f"the constant in {found.sql(dialect='duckdb')} is not a valid value of its type",
                hint="write dates as 'YYYY-MM-DD' and numbers as digits", rule="constant",
                span=span_of(found, sql))


def check_mismatches(root: exp.Expr, scope: Scope, sql: str) -> None:
    """Reject every simple comparison of a text column with a number (and the like)."""
    for node in root.find_all(*_COMPARISONS, exp.In, exp.Between):
        try:
            is_safe(node, scope, sql)
        except QueryRejected as e:
            if e.rule == "type_mismatch":
                raise


def guard_condition(cond: exp.Expr, scope: Scope, sql: str,
                    guard: Callable[[exp.Expr], exp.Expr]) -> exp.Expr:
    """Guard each conjunct that is not certainly safe, leaving safe ones visible."""
    conjuncts = list(cond.flatten()) if isinstance(cond, exp.And) else [cond]
    out = []
    for c in conjuncts:
        out.append(c if is_safe(c, scope, sql) else guard(c))
    return exp.and_(*out) if len(out) > 1 else out[0]
