"""FROM, JOIN, WHERE and the subqueries and CTEs they read: the row-level part of a query.

Both DP queries (:mod:`gateway.sql.analyze`) and training selections
(:mod:`gateway.sql.selection`) start here: the result is a :class:`Scope` of
relations with public metadata per column, the unit of each row, and a tree in
which every row-level expression has been typed by the gateway's own rules and
guarded where it is not provably total (:mod:`gateway.sql.typer`).  Protected
relations that meet another protected relation are cut to
``max_rows_per_unit`` rows per unit, chosen by a keyed hash, before the join.

Nothing here reads data; public metadata (public values, unique columns of
public tables) comes through the :class:`Context`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlglot import exp

from gateway.errors import QueryRejected
from gateway.policy import Policy
from gateway.sql.bounds import ValueBuilder
from gateway.sql.domains import DomainFinder
from gateway.sql.scope import (
    UNIT_ALIAS,
    ColInfo,
    Relation,
    Scope,
    base_relation,
    check_row_wise,
    join_scope,
)
from gateway.sql.typer import Typer
from gateway.sql.validate import AGGREGATES, span_of

ROW_ID = "__dp_row"
SALT = "salt"  # name of the query parameter holding the keyed hash's secret salt

# Aggregates a public subquery may use inside a query over protected data: they
# cannot raise on any input (DuckDB sums integers in 128 bits, doubles to inf).
_SAFE_PUBLIC_AGGREGATES = (exp.Count, exp.Sum, exp.Avg)


@dataclass(frozen=True)
class Context:
    """What analysis may consult besides the SQL: the policy and public metadata."""

    policy: Policy
    table_columns: Callable[[str], dict[str, str]]
    table_keys: Callable[[str], frozenset[str]]
    domains: DomainFinder
    is_nan: Callable[[exp.Expr], exp.Expr]
    guard: Callable[[exp.Expr], exp.Expr]


class FromAnalyzer:
    """Builds scopes for the SELECTs of one query (the query text is kept for spans)."""

    def __init__(self, sql: str, ctx: Context) -> None:
        self.sql = sql
        self.ctx = ctx

    def typer(self, scope: Scope) -> Typer:
        return Typer(scope, self.sql, self.ctx.domains.constant_ok, self.ctx.guard)

    # -- WITH -----------------------------------------------------------------------------

    def ctes(self, tree: exp.Select) -> dict[str, Relation]:
        """The relations the WITH clause defines, in order (each may use the earlier)."""
        ctes: dict[str, Relation] = {}
        with_ = tree.args.get("with_")
        if with_ is not None:
            if with_.args.get("recursive"):
                raise QueryRejected("recursive CTEs are not supported", hint="remove RECURSIVE",
                                    rule="syntax", span=span_of(with_, self.sql))
            for cte in with_.expressions:
                name = cte.alias_or_name.lower()
                ctes[name] = self.derived(cte.this, ctes, name)
        return ctes

    # -- FROM -----------------------------------------------------------------------------

    def scope(self, select: exp.Select, ctes: dict[str, Relation]) -> Scope:
        """The scope of ``select``'s FROM clause; its WHERE and ON conditions are typed and
        made total in place, and protected relations that meet are truncated."""
        from_ = select.args.get("from_")
        if from_ is None:
            raise QueryRejected("a subquery has no FROM clause", hint="add FROM", rule="syntax")
        items: list[tuple[Relation, exp.Join | None]] = [(self.relation(from_.this, ctes), None)]
        for join in select.args.get("joins") or []:
            items.append((self.relation(join.this, ctes), join))
        scope = join_scope(items, self.sql)
        if scope.protected:
            for rel, _ in items:
                if not rel.protected and rel.risks:
                    node, why = rel.risks[0]
                    raise QueryRejected(
                        f"the public subquery {rel.alias!r} {why}, which is not allowed when it "
                        "is joined to protected data (the engine may evaluate it only on the "
                        "rows the protected side reaches)",
                        hint="keep public subqueries joined to protected tables to projections, "
                        "filters, GROUP BY and COUNT/SUM/AVG; query public tables alone "
                        "for the rest (that is free)", rule="subquery",
                        span=span_of(node, self.sql))
        check_where(select, self.sql)
        typer = self.typer(scope)
        where = select.args.get("where")
        if where is not None:
            where.set("this", typer.condition(where.this, "a WHERE condition"))
        for join in select.args.get("joins") or []:
            on = join.args.get("on")
            if on is not None:
                join.set("on", typer.condition(on, "a JOIN condition"))
        for rel in scope.truncated:
            _truncate(rel)
        return scope

    def relation(self, node: exp.Expr, ctes: dict[str, Relation]) -> Relation:
        if isinstance(node, exp.Table):
            name = node.name.lower()
            if name in ctes and not node.args.get("db"):
                rel = ctes[name]
                return replace(rel, alias=(node.alias or node.name).lower(), node=node)
            return base_relation(self.ctx.policy, node, self.ctx.table_columns, ROW_ID,
                                 self.ctx.table_keys)
        if isinstance(node, exp.Subquery):
            if not node.alias:
                raise QueryRejected("a subquery in FROM needs an alias",
                                    hint="write (SELECT ...) AS t", rule="syntax",
                                    span=span_of(node, self.sql))
            if node.args["alias"].columns:
                raise QueryRejected("column aliases on a subquery are not supported",
                                    hint="name the columns inside the subquery",
                                    rule="syntax", span=span_of(node, self.sql))
            inner = node.this
            if not isinstance(inner, exp.Select):
                raise QueryRejected("only SELECT subqueries are allowed in FROM",
                                    hint="use a plain SELECT", rule="subquery",
                                    span=span_of(node, self.sql))
            return replace(self.derived(inner, ctes, node.alias.lower()), node=node)
        raise QueryRejected(f"{node.sql()} is not allowed in FROM",
                            hint="use a table, a CTE or a subquery", rule="syntax",
                            span=span_of(node, self.sql))

    def derived(self, select: exp.Select, ctes: dict[str, Relation], alias: str) -> Relation:
        """A subquery or CTE; protected ones must be row-wise and carry the unit."""
        if select.args.get("with_"):
            raise QueryRejected("WITH inside a subquery is not supported",
                                hint="move the CTE to the top of the query", rule="subquery",
                                span=span_of(select, self.sql))
        scope = self.scope(select, ctes)
        if scope.protected:
            check_row_wise(select, self.sql, "a subquery")
        typer = self.typer(scope)
        values = ValueBuilder(scope, self.sql, self.ctx.is_nan, typer)
        columns: dict[str, ColInfo] = {}
        unit_col: str | None = None
        for item in select.expressions:
            for info in self.projected(item, scope, values, typer):
                key = info.name.lower()
                if key in columns:
                    raise QueryRejected(
                        f"the subquery {alias!r} has two columns named {info.name!r}",
                        hint="select the columns explicitly with distinct aliases",
                        rule="subquery", span=span_of(item, self.sql))
                columns[key] = info
                if info.is_unit and unit_col is None:
                    unit_col = info.name
        if not scope.protected:
            self._total_public(select, typer)
            return Relation(alias, {k: _public(v) for k, v in columns.items()}, protected=False,
                            keys=_public_keys(select, scope, columns),
                            risks=_public_risks(select, scope))
        select.set("expressions", [self._engine_item(e, typer) for e in select.expressions])
        if unit_col is None:
            # Thread the unit through so the outer query can bound per unit.
            assert scope.unit is not None
            select.append("expressions", exp.alias_(scope.unit.copy(), UNIT_ALIAS, quoted=True))
            unit_col = UNIT_ALIAS
            columns[UNIT_ALIAS] = ColInfo(UNIT_ALIAS, "int", sensitive=True, is_unit=True)
        return Relation(alias, columns, protected=True, unit_column=unit_col,
                        tables=scope.protected_tables, max_rows=scope.max_rows,
                        max_groups=scope.max_groups, joined=scope.joined,
                        auto_rows=scope.auto_rows, auto_groups=scope.auto_groups)

    def _engine_item(self, item: exp.Expr, typer: Typer) -> exp.Expr:
        """A projected expression as the engine computes it: total, and of the type the
        gateway assigned it (a decimal is made DOUBLE so outer comparisons type alike)."""
        inner = item.this if isinstance(item, exp.Alias) else item
        if isinstance(inner.unnest(), exp.Column | exp.Star):
            return item
        t = typer.type_of(inner)
        value = typer.engine(inner.copy())
        if t.kind == "decimal":
            value = exp.TryCast(this=value, to=exp.DataType.build("DOUBLE"))
        return exp.alias_(value, item.alias_or_name, quoted=True)

    def _total_public(self, select: exp.Select, typer: Typer) -> None:
        """Row-level parts of a public subquery made total too: joined to protected data,
        the engine may evaluate them only on the rows the protected side reaches."""
        items = []
        for item in select.expressions:
            inner = item.this if isinstance(item, exp.Alias) else item
            if isinstance(inner.unnest(), exp.Column | exp.Star) or any(
                    True for _ in inner.find_all(exp.AggFunc)):
                items.append(item)
                continue
            items.append(self._engine_item(item, typer))
        select.set("expressions", items)

    def projected(self, item: exp.Expr, scope: Scope, values: ValueBuilder, typer: Typer
                  ) -> list[ColInfo]:
        """Public metadata of the column(s) a SELECT item of a subquery produces."""
        if isinstance(item, exp.Star):
            return [c for r in scope.relations.values() for c in r.columns.values()]
        if isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
            rel = scope.relations.get(item.table.lower())
            if rel is None:
                raise QueryRejected(f"unknown table {item.table!r} in {item.sql()}",
                                    hint="use an alias from FROM", rule="column",
                                    span=span_of(item, self.sql))
            return list(rel.columns.values())
        name = item.alias_or_name
        inner = item.this if isinstance(item, exp.Alias) else item
        if any(True for _ in inner.find_all(*AGGREGATES)):
            return [ColInfo(name, "unknown")]  # only reachable for public subqueries
        if isinstance(inner, exp.Column):
            _, info = scope.resolve(inner, self.sql)
            return [replace(info, name=name)]
        if not isinstance(item, exp.Alias):
            raise QueryRejected("computed columns of a subquery need an alias",
                                hint=f"write {inner.sql()} AS name", rule="subquery",
                                span=span_of(item, self.sql))
        kind = typer.type_of(inner).policy
        sensitive = any(scope.resolve(c, self.sql)[1].sensitive for c in inner.find_all(exp.Column))
        bounds = None
        if kind in ("int", "float"):
            try:
                _, iv = values.value(inner)
                if iv.finite and not iv.empty:
                    bounds = (iv.lo, iv.hi)
            except QueryRejected:
                pass
        domain = None if sensitive else self.ctx.domains.key_domain(inner, scope, self.sql)
        return [ColInfo(name, kind, bounds=bounds,
                        public_values=tuple(domain) if domain is not None else None,
                        sensitive=sensitive)]


def check_where(select: exp.Select, sql: str) -> None:
    where = select.args.get("where")
    if where is not None and any(True for _ in where.find_all(*AGGREGATES)):
        raise QueryRejected("aggregates are not allowed in WHERE",
                            hint="filter aggregates in HAVING", rule="syntax",
                            span=span_of(where, sql))


def _public(info: ColInfo) -> ColInfo:
    return ColInfo(info.name, info.type, info.bounds, info.raw_bounds, info.public_values,
                   info.values_from, False, False, True)


def _public_keys(select: exp.Select, scope: Scope, columns: dict[str, ColInfo]
                 ) -> frozenset[str]:
    """Columns of a public subquery that are certainly unique: a key of its only table
    passed through a projection and filter, the only GROUP BY column, or the only
    column of a SELECT DISTINCT."""
    names = [e.alias_or_name.lower() for e in select.expressions]
    inner = [e.this if isinstance(e, exp.Alias) else e for e in select.expressions]
    group = select.args.get("group")
    if group is not None:
        keys = [g for g in group.expressions]
        if len(keys) == 1 and isinstance(keys[0], exp.Column):
            key = keys[0].name.lower()
            return frozenset(n for n, e in zip(names, inner, strict=True)
                             if isinstance(e, exp.Column) and e.name.lower() == key)
        return frozenset()
    if select.args.get("distinct"):
        return frozenset(names) if len(names) == 1 and len(columns) == 1 else frozenset()
    if select.args.get("joins") or len(scope.relations) != 1:
        return frozenset()
    (rel,) = scope.relations.values()
    return frozenset(n for n, e in zip(names, inner, strict=True)
                     if isinstance(e, exp.Column) and e.name.lower() in rel.keys)


def _public_risks(select: exp.Select, scope: Scope) -> tuple[tuple[exp.Expr, str], ...]:
    """Parts of a public subquery whose errors a join with protected data could expose."""
    risks: list[tuple[exp.Expr, str]] = [r for rel in scope.relations.values() for r in rel.risks]
    for agg in select.find_all(exp.AggFunc):
        if not isinstance(agg, _SAFE_PUBLIC_AGGREGATES):
            risks.append((agg, f"uses {agg.key.upper()}"))
    for arg, word in (("having", "has HAVING"), ("order", "has ORDER BY"),
                      ("limit", "has LIMIT"), ("offset", "has OFFSET")):
        part = select.args.get(arg)
        if part is not None:
            risks.append((part, word))
    group = select.args.get("group")
    if group is not None:
        for g in group.expressions:
            if not isinstance(g.unnest(), exp.Column):
                risks.append((g, "groups by a computed expression"))
    return tuple(risks)


def _truncate(rel: Relation) -> None:
    """Replace ``rel``'s node by one that keeps at most max_rows_per_unit rows per unit,
    chosen by a keyed hash of the row and a secret salt (independent of the values as
    far as anyone without the salt can tell), so a join of protected relations yields at
    most M² rows per unit."""
    node = rel.node
    assert node is not None and rel.unit_column is not None
    alias = rel.alias
    if isinstance(node, exp.Table):
        source: exp.Expr = exp.Table(this=node.this.copy())
    else:
        assert isinstance(node, exp.Subquery)
        source = node.this.copy().subquery("__dp_t")
    unit = exp.column(rel.unit_column, quoted=True)
    cols = [exp.column(c.name, quoted=True) for c in rel.columns.values()]
    order = exp.Anonymous(this="hash", expressions=[unit.copy(), exp.Placeholder(this=SALT),
                                                    *cols])
    rank = exp.Window(this=exp.RowNumber(), partition_by=[unit.copy()],
                      order=exp.Order(expressions=[exp.Ordered(this=order)]))
    cut = exp.select(exp.Star()).from_(source).qualify(
        exp.LTE(this=rank, expression=exp.Literal.number(rel.max_rows)))
    node.replace(cut.subquery(alias))
