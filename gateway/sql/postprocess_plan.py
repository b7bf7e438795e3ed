"""The post-processing query: the analyst's SELECT list, HAVING, ORDER BY and
LIMIT, re-targeted at the noisy result table ``__dp_noisy``.

Aggregates become columns ``__dp_a*`` and group keys ``__dp_k*``; what is left
must not mention any other column, so post-processing can only ever see noisy
values (DESIGN §2: post-processing is free because it never touches raw data).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlglot import exp

from gateway.errors import QueryRejected
from gateway.sql.plan import AggSpec, KeySpec
from gateway.sql.scope import Scope
from gateway.sql.validate import span_of

NOISY_TABLE = "__dp_noisy"

_PG_NAMES: dict[type[exp.Expr], str] = {
    exp.Count: "count", exp.Sum: "sum", exp.Avg: "avg", exp.Variance: "variance",
    exp.VariancePop: "var_pop", exp.StddevPop: "stddev_pop", exp.StddevSamp: "stddev_samp",
    exp.Stddev: "stddev", exp.Median: "median", exp.PercentileCont: "percentile_cont",
    exp.PercentileDisc: "percentile_disc", exp.Quantile: "quantile",
    exp.ApproxQuantile: "approx_quantile", exp.ApproxQuantiles: "approx_quantiles",
    exp.Min: "min", exp.Max: "max",
}


def output_name(item: exp.Expr) -> str:
    """The column name PostgreSQL would give a SELECT item (BI tools expect these)."""
    if isinstance(item, exp.Alias):
        return item.alias
    node = item.unnest()
    if isinstance(node, exp.Filter):
        node = node.this
    if isinstance(node, exp.Column):
        return node.name
    if isinstance(node, exp.Cast | exp.TryCast):
        return output_name(node.this)
    for kind, name in _PG_NAMES.items():
        if type(node) is kind:
            return name
    if isinstance(node, exp.Func):
        return node.sql_name().lower()
    return "?column?"


def build_post_query(tree: exp.Select, scope: Scope, keys: Sequence[KeySpec],
                     aggs: Sequence[AggSpec], sql: str,
                     canon: Callable[[exp.Expr], str]) -> exp.Select:
    by_canon = {a.canon: a.name for a in aggs}
    key_canon = {k.canon: k.name for k in keys}

    def retarget(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Filter) or (
            type(node) in _PG_NAMES and not isinstance(node.parent, exp.Filter)
        ):
            return exp.column(by_canon[canon(node)], quoted=True)
        if key_canon and not isinstance(node, exp.Literal | exp.Boolean | exp.Null):
            try:
                c = canon(node)
            except QueryRejected:
                c = None
            if c is not None and c in key_canon:
                return exp.column(key_canon[c], quoted=True)
        if isinstance(node, exp.Column):
            raise QueryRejected(
                f"column {node.sql()!r} must appear in GROUP BY or be used in an aggregate",
                hint="add it to GROUP BY, or aggregate it", rule="group",
                span=span_of(node, sql))
        for key, value in list(node.args.items()):
            if isinstance(value, exp.Expr):
                node.set(key, retarget(value))
            elif isinstance(value, list):
                node.set(key, [retarget(v) if isinstance(v, exp.Expr) else v
                               for v in value])
        return node

    aliases: dict[str, exp.Expr] = {}
    items = []
    for item in tree.expressions:
        if isinstance(item, exp.Star) or (isinstance(item, exp.Column)
                                          and isinstance(item.this, exp.Star)):
            raise QueryRejected("SELECT * cannot be combined with aggregates",
                                hint="list the columns and aggregates to return", rule="syntax",
                                span=span_of(item, sql))
        name = output_name(item)
        inner = item.this if isinstance(item, exp.Alias) else item
        target = retarget(inner.copy())
        aliases[name.lower()] = target
        items.append(exp.alias_(target, name, quoted=True))
    post = exp.select(*items).from_(NOISY_TABLE)
    if tree.args.get("distinct"):
        post.set("distinct", exp.Distinct())
    having = tree.args.get("having")
    if having is not None:
        post = post.where(_resolve_aliases(having.this.copy(), aliases, retarget, key_canon,
                                           canon))
    order = tree.args.get("order")
    if order is not None:
        ordered = []
        for o in order.expressions:
            target = o.this
            if isinstance(target, exp.Literal) and not target.is_string:
                ordered.append(o.copy())
                continue
            if isinstance(target, exp.Column) and not target.table and \
                    target.name.lower() in aliases and _not_a_key_column(target, key_canon,
                                                                          canon):
                ordered.append(o.copy())
                continue
            new = o.copy()
            try:
                new.set("this", retarget(target.copy()))
            except QueryRejected:
                # An expression over SELECT aliases (ORDER BY n * 2, ORDER BY -n), as
                # DuckDB allows: the aliases stand for their noisy values.
                if not any(not c.table and c.name.lower() in aliases
                           for c in target.find_all(exp.Column)):
                    raise
                new.set("this", _resolve_aliases(target.copy(), aliases, retarget, key_canon,
                                                 canon))
            ordered.append(new)
        post.set("order", exp.Order(expressions=ordered))
    for arg in ("limit", "offset"):
        node = tree.args.get(arg)
        if node is not None:
            value = node.expression
            if not isinstance(value, exp.Literal) or value.is_string:
                raise QueryRejected(f"{arg.upper()} must be a constant number",
                                    hint=f"write {arg.upper()} 10", rule="syntax",
                                    span=span_of(node, sql))
            post.set(arg, node.copy())
    return post


def _not_a_key_column(col: exp.Column, key_canon: dict[str, str],
                      canon: Callable[[exp.Expr], str]) -> bool:
    try:
        return canon(col) not in key_canon
    except QueryRejected:
        return True


def _resolve_aliases(node: exp.Expr, aliases: dict[str, exp.Expr],
                     retarget: Callable[[exp.Expr], exp.Expr],
                     key_canon: dict[str, str], canon: Callable[[exp.Expr], str]
                     ) -> exp.Expr:
    """HAVING may name SELECT aliases (DuckDB and others allow it)."""

    def swap(n: exp.Expr) -> exp.Expr:
        if isinstance(n, exp.Column) and not n.table and n.name.lower() in aliases and \
                _not_a_key_column(n, key_canon, canon):
            try:
                canon(n)
                return retarget(n)
            except QueryRejected:
                return aliases[n.name.lower()].copy()
        if isinstance(n, exp.Column | exp.Filter) or type(n) in _PG_NAMES:
            return retarget(n)
        for key, value in list(n.args.items()):
            if isinstance(value, exp.Expr):
                n.set(key, swap(value))
            elif isinstance(value, list):
                n.set(key, [swap(v) if isinstance(v, exp.Expr) else v for v in value])
        return n

    return swap(node)
