"""GROUP BY (and SELECT DISTINCT) keys: what may be grouped and which domain is public.

A key may not be the privacy unit or an identifier (every group would be one
unit's data), must have a groupable type by the gateway's own typing, and gets a
public domain when its values follow from public metadata alone
(:mod:`gateway.sql.domains`); otherwise its groups need DP partition selection.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from gateway.errors import QueryRejected
from gateway.sql.domains import DomainFinder
from gateway.sql.plan import KeySpec
from gateway.sql.scope import Scope
from gateway.sql.typer import Typer
from gateway.sql.validate import AGGREGATES, span_of

GROUPABLE = ("int", "float", "text", "bool", "date", "timestamp")


def group_keys(tree: exp.Select, scope: Scope, aggregates: list[exp.Expr], sql: str,
               typer: Typer, domains: DomainFinder, canon: Callable[[exp.Expr], str]
               ) -> list[KeySpec]:
    group = tree.args.get("group")
    exprs: list[exp.Expr] = []
    if group is not None:
        exprs = [_resolve_group_ref(g, tree, scope, sql) for g in group.expressions]
    elif tree.args.get("distinct") and not aggregates:
        exprs = [e.this if isinstance(e, exp.Alias) else e for e in tree.expressions]
    keys: list[KeySpec] = []
    seen: set[str] = set()
    for e in exprs:
        if isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star)):
            raise QueryRejected("SELECT DISTINCT * over a protected table is not supported",
                                hint="name the columns to group by", rule="group")
        if any(True for _ in e.find_all(*AGGREGATES)):
            raise QueryRejected("GROUP BY cannot contain an aggregate",
                                hint="group by columns or expressions of columns",
                                rule="group", span=span_of(e, sql))
        for col in e.find_all(exp.Column):
            _, info = scope.resolve(col, sql)
            if info.sensitive:
                raise QueryRejected(
                    f"grouping by {info.name!r} is not allowed: it is the privacy unit or "
                    f"an identifier, so every group would be one unit's data",
                    hint="group by a non-identifying column such as a category or a date "
                    "bucket", rule="group_by_unit", span=span_of(e, sql))
        c = canon(e)
        if c in seen:
            continue
        seen.add(c)
        kind = typer.type_of(e).policy
        if kind not in GROUPABLE:
            raise QueryRejected(
                f"cannot group by {e.sql(dialect='duckdb')}: its type is "
                f"{'not known' if kind == 'unknown' else kind}",
                hint="group by a column, or CAST the key to VARCHAR, BIGINT, DOUBLE, DATE "
                "or TIMESTAMP", rule="group", span=span_of(e, sql))
        domain = domains.key_domain(e, scope, sql)
        keys.append(KeySpec(f"__dp_k{len(keys)}", e.copy(), typer.engine(e.copy()), c,
                            tuple(domain) if domain is not None else None, kind))
    return keys


def _resolve_group_ref(g: exp.Expr, tree: exp.Select, scope: Scope, sql: str) -> exp.Expr:
    """GROUP BY 2 and GROUP BY <select alias> name SELECT items."""
    items = tree.expressions
    if isinstance(g, exp.Literal) and not g.is_string:
        if not g.is_int:
            raise QueryRejected(f"GROUP BY {g.this} is not a column position",
                                hint=f"use a whole number 1..{len(items)}", rule="group",
                                span=span_of(g, sql))
        i = int(g.this)
        if not 1 <= i <= len(items):
            raise QueryRejected(f"GROUP BY {i} refers to no SELECT column",
                                hint=f"use 1..{len(items)}", rule="group",
                                span=span_of(g, sql))
        item = items[i - 1]
        return item.this if isinstance(item, exp.Alias) else item
    if isinstance(g, exp.Column) and not g.table:
        try:
            scope.resolve(g, sql)
            return g
        except QueryRejected:
            for item in items:
                if isinstance(item, exp.Alias) and item.alias.lower() == g.name.lower():
                    return item.this
            raise
    return g
