"""Pass 3: decide what a validated SELECT asks and how to answer it privately.

From the tree and the policy alone this finds the unit-attributed relation
(:mod:`.relations`), the group keys with public domains where they exist
(:mod:`.keys`), the noisy statistics each aggregate needs with their per-row
bounds (:mod:`.aggregates`), and the post-processing query (SELECT arithmetic,
HAVING, ORDER BY, LIMIT) that later runs on the *noisy* result.  Every
row-level expression the engine will evaluate has been typed by the gateway's
own rules and made total.  Anything that cannot be shown to be safe is
rejected with what to change.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from gateway.errors import QueryRejected
from gateway.sql.aggregates import AggregateBuilder
from gateway.sql.bounds import ValueBuilder
from gateway.sql.keys import group_keys
from gateway.sql.plan import KeySpec, Plan
from gateway.sql.postprocess_plan import build_post_query
from gateway.sql.relations import ROW_ID, Context, FromAnalyzer
from gateway.sql.scope import Scope
from gateway.sql.validate import AGGREGATES, span_of
from gateway.sql.wrapper import plan_wrapped

__all__ = ["ROW_ID", "Context", "analyze", "canonical", "check_reserved_names"]


def analyze(tree: exp.Select, sql: str, ctx: Context) -> Plan:
    check_reserved_names(tree, sql)
    wrapped = plan_wrapped(tree, ctx.policy, lambda inner: analyze(inner, sql, ctx))
    if wrapped is not None:
        return wrapped
    rel = FromAnalyzer(sql, ctx)
    ctes = rel.ctes(tree)
    with_ = tree.args.get("with_")
    if tree.args.get("from_") is None:
        raise QueryRejected("the query has no FROM clause",
                            hint="aggregate over a table, e.g. SELECT COUNT(*) FROM visits",
                            rule="syntax")
    scope = rel.scope(tree, ctes)
    aggregates = _aggregate_nodes(tree, sql)
    if not scope.protected:
        # Only public relations are read; CTEs over protected data that the query
        # does not use are dropped, so not even the engine's planner sees them.
        public = tree.copy()
        if with_ is not None:
            kept = [c.copy() for c in with_.expressions if not ctes[c.alias_or_name.lower()]
                    .protected]
            public.set("with_", exp.With(expressions=kept) if kept else None)
        return Plan(sql=sql, with_=None, relation=tree, unit=None, tables=frozenset(),
                    max_rows=1, max_groups=1, keys=(), stats=(), aggs=(), post=tree,
                    public_query=public)
    typer = rel.typer(scope)
    canon = canonical(scope, sql)
    keys = group_keys(tree, scope, aggregates, sql, typer, ctx.domains, canon)
    if not aggregates and not keys:
        raise QueryRejected(
            "raw rows of a protected table cannot be released",
            hint="aggregate them: COUNT(*), SUM, AVG, ... with an optional GROUP BY",
            rule="raw_release", span=span_of(tree.expressions[0], sql)
            if tree.expressions else None)
    values = ValueBuilder(scope, sql, ctx.is_nan, typer)
    builder = AggregateBuilder(scope, sql, values, canon)
    aggs = [builder.add(node) for node in aggregates]
    post = build_post_query(tree, scope, keys, aggs, sql, canon)
    too_many, notes = _public_group_limit(keys, ctx.policy.model.limits.max_public_groups)
    max_groups = 1
    if keys:
        size = 1
        for k in keys:
            size = size * len(k.domain) if k.domain is not None else 0
        l0 = scope.max_groups
        if (scope.auto_rows or scope.auto_groups) and size and too_many is None and \
                not any(s.kind == "units" for s in builder.stats.values()):
            # With tuned bounds and public groups, no noise depends on L0 (a unit's total
            # over all its groups is bounded by M), so groups are not dropped at all:
            # L0 bounds only what M and the domain already bound.
            l0 = scope.max_rows
        max_groups = min(l0, scope.max_rows)
        if size:
            max_groups = min(max_groups, size)
    relation = tree.copy()
    for arg in ("with_", "group", "having", "order", "limit", "offset", "distinct"):
        relation.set(arg, None)
    return Plan(
        sql=sql, with_=with_.copy() if with_ is not None else None, relation=relation,
        unit=scope.unit, tables=scope.protected_tables, max_rows=scope.max_rows,
        max_groups=max_groups, keys=tuple(keys), stats=tuple(builder.stats.values()),
        aggs=tuple(aggs), post=post, quantiles=builder.quantiles,
        too_many_groups=too_many, notes=notes, auto_rows=scope.auto_rows,
        auto_groups=scope.auto_groups and bool(keys),
        auto_columns=_auto_columns(ctx, scope.protected_tables))


def _auto_columns(ctx: Context, tables: frozenset[str]) -> frozenset[str]:
    """Lower-case names of the `bounds: auto` columns of the query's protected tables."""
    out: set[str] = set()
    for name in tables:
        spec = ctx.policy.table(name)
        if spec is not None:
            out.update(c.lower() for c, col in spec.columns.items() if col.auto_bounds)
    return frozenset(out)


def _public_group_limit(keys: list[KeySpec], limit: int
                        ) -> tuple[tuple[int, int] | None, tuple[str, ...]]:
    """Keys whose public domains would release more than ``limit`` rows (their product)
    have their groups chosen by DP partition selection instead.  A function of the SQL
    and the policy only: the domains and the limit are public."""
    if not keys or any(k.domain is None for k in keys):
        return None, ()
    size = 1
    for k in keys:
        assert k.domain is not None
        size *= len(k.domain)
    if size <= limit:
        return None, ()
    names = ", ".join(k.expr.sql(dialect="duckdb") for k in keys)
    note = (f"the public values of the group keys ({names}) would release {size:,} rows, "
            f"more than "
            f"limits.max_public_groups ({limit:,}): groups are chosen by DP partition "
            f"selection instead (it costs delta and a share of epsilon; groups with few "
            f"units are not released, empty ones never)")
    return (size, limit), (note,)


def check_reserved_names(tree: exp.Expr, sql: str) -> None:
    for ident in tree.find_all(exp.Identifier):
        if ident.name.lower().startswith("__dp"):
            raise QueryRejected("names starting with __dp are reserved",
                                hint="rename the alias", rule="syntax",
                                span=span_of(ident, sql))


def _aggregate_nodes(tree: exp.Select, sql: str) -> list[exp.Expr]:
    """The aggregates of SELECT, HAVING and ORDER BY (with their FILTER clauses)."""
    found: list[exp.Expr] = []
    places = [*tree.expressions, tree.args.get("having"), tree.args.get("order")]
    for place in places:
        if place is None:
            continue
        for node in place.find_all(exp.Filter, *AGGREGATES):
            if isinstance(node, AGGREGATES) and isinstance(node.parent, exp.Filter):
                continue
            inner = node.this if isinstance(node, exp.Filter) else node
            for sub in inner.find_all(*AGGREGATES):
                if sub is not inner:
                    raise QueryRejected("aggregates cannot be nested",
                                        hint="aggregate once; arithmetic over aggregates "
                                        "is fine", rule="aggregate",
                                        span=span_of(node, sql))
            found.append(node)
    return found


def canonical(scope: Scope, sql: str) -> Callable[[exp.Expr], str]:
    """Canonical text of an expression over ``scope`` (columns qualified), to find a key
    or an aggregate again wherever the analyst repeats it."""

    def canon(node: exp.Expr) -> str:
        def qualify(n: exp.Expr) -> exp.Expr:
            if isinstance(n, exp.Column) and not isinstance(n.this, exp.Star):
                rel, info = scope.resolve(n, sql)
                return exp.column(info.name.lower(), table=rel.alias)
            return n

        return node.copy().transform(qualify).unnest().sql(dialect="duckdb").lower()

    return canon
