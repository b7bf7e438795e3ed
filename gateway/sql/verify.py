"""The last check before a rewritten query may run: every row-level expression is total.

The analysis types each row-level expression and guards what it cannot prove
total (:mod:`gateway.sql.typer`).  This pass re-checks the *finished* engine
tree by node kind alone, independently of how it was built: in the SELECT list,
WHERE, JOIN ON and GROUP BY of every row-level SELECT (the analyst's CTEs and
subqueries and the first stage of the rewrite), each node is either of a kind
that cannot raise given well-typed operands, or sits inside the engine's guard.
Constant subexpressions (no column) are evaluated once at planning by the
typer, so they cannot fail on some rows only.  Later stages of the rewrite only
aggregate values this stage made clean, and are not row-level in this sense.

A failure here is a bug in the gateway, found before anything is charged or
read: the query is refused and the operator's log says which node.
"""

from __future__ import annotations

import logging
import re

from sqlglot import exp

from gateway.errors import InternalError

log = logging.getLogger(__name__)

# Stages of the rewrite that read only __dp_rows' cleaned values.
AGGREGATING_STAGES = frozenset({"__dp_groups", "__dp_units", "__dp_joined", "__dp_kept",
                                "__dp_contrib"})
# The later quantile and distinct-count stages (per-unit counts, weights, arrays,
# pairs) aggregate what earlier stages made clean.  The binning stage __dp_qr<i>
# computes row-level arithmetic and is checked like any row-level SELECT (its bin
# is built inside the engine's guard).
QUANTILE_STAGE = re.compile(r"__dp_q[a-qs-z]\d+")

# Kinds that cannot raise when their operands are total and typed alike (the typer
# rejects mismatched operands before this runs).
_TOTAL_KINDS: tuple[type[exp.Expr], ...] = (
    exp.Column, exp.Identifier, exp.Star, exp.Literal, exp.Null, exp.Boolean, exp.Paren,
    exp.Alias, exp.Not, exp.And, exp.Or, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE,
    exp.NullSafeEQ, exp.NullSafeNEQ, exp.Is, exp.In, exp.Between, exp.Like, exp.ILike,
    exp.Case, exp.If, exp.Coalesce, exp.Nullif, exp.Least, exp.Greatest, exp.IsNan,
    exp.TryCast, exp.DataType, exp.DataTypeParam, exp.Var,
    # Aggregates of public subqueries (analysis allows no others, and none in protected
    # subqueries): they cannot raise on any input.
    exp.Count, exp.Sum, exp.Avg, exp.Distinct,
)


def verify_total(tree: exp.Select) -> None:
    """Raise InternalError unless every row-level expression of ``tree`` is total."""
    with_ = tree.args.get("with_")
    for cte in with_.expressions if with_ is not None else []:
        if cte.alias_or_name in AGGREGATING_STAGES or QUANTILE_STAGE.fullmatch(cte.alias_or_name):
            continue
        for select in cte.this.find_all(exp.Select):
            _check_select(select)


def _check_select(select: exp.Select) -> None:
    slots: list[exp.Expr] = list(select.expressions)
    where = select.args.get("where")
    if where is not None:
        slots.append(where.this)
    for join in select.args.get("joins") or []:
        if join.args.get("on") is not None:
            slots.append(join.args["on"])
    group = select.args.get("group")
    if group is not None:
        slots.extend(group.expressions)
    for slot in slots:
        _check(slot)


def _check(node: exp.Expr) -> None:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, exp.Try) or not any(
                isinstance(m, exp.Column | exp.Star | exp.Placeholder) for m in n.walk()):
            continue  # guarded, or a constant (evaluated once at planning by the typer)
        if isinstance(n, exp.Cast) and not isinstance(n, exp.TryCast):
            if any(True for _ in n.find_all(exp.Column)):
                _fail(n)
            continue  # a constant, converted (and checked) at planning
        if isinstance(n, exp.Neg | exp.Interval):
            if not isinstance(n.this, exp.Literal):
                _fail(n)
            continue
        if isinstance(n, exp.Subquery | exp.Select):
            continue  # checked as a SELECT of its own
        if not isinstance(n, _TOTAL_KINDS):
            _fail(n)
        stack.extend(n.iter_expressions())


def _fail(node: exp.Expr) -> None:
    text = node.sql(dialect="duckdb")
    log.error("planning bug: row-level expression not proven total: %s", text)
    raise InternalError(f"the gateway could not prove that {text[:200]} cannot fail on some "
                      "rows")
