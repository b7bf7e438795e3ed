"""Pass 3: decide what a validated SELECT asks and how to answer it privately.

From the tree and the policy alone this finds the unit-attributed relation,
the group keys (with public domains where they exist), the noisy statistics
each aggregate needs with their per-row bounds, and the post-processing query
(SELECT arithmetic, HAVING, ORDER BY, LIMIT) that later runs on the *noisy*
result.  Anything it cannot show to be safe is rejected with what to change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlglot import exp

from gateway.errors import QueryRejected
from gateway.policy import Policy
from gateway.sql.aggregates import AggregateBuilder
from gateway.sql.bounds import ValueBuilder
from gateway.sql.domains import DomainFinder
from gateway.sql.plan import KeySpec, Plan
from gateway.sql.postprocess_plan import build_post_query, output_name
from gateway.sql.scope import (
    UNIT_ALIAS,
    ColInfo,
    Relation,
    Scope,
    base_relation,
    check_row_wise,
    join_scope,
)
from gateway.sql.typecheck import check_constants, check_mismatches, guard_condition
from gateway.sql.validate import AGGREGATES, span_of

ROW_ID = "__dp_row"
GROUPABLE = ("int", "float", "text", "bool", "date", "timestamp")


@dataclass(frozen=True)
class Context:
    """What analysis may consult besides the SQL: the policy and public metadata."""

    policy: Policy
    table_columns: Callable[[str], dict[str, str]]
    domains: DomainFinder
    is_nan: Callable[[exp.Expr], exp.Expr]
    guard: Callable[[exp.Expr], exp.Expr]


def analyze(tree: exp.Select, sql: str, ctx: Context) -> Plan:
    return _Analyzer(sql, ctx).run(tree)


class _Analyzer:
    def __init__(self, sql: str, ctx: Context) -> None:
        self.sql = sql
        self.ctx = ctx

    # -- top level ----------------------------------------------------------------

    def run(self, tree: exp.Select) -> Plan:
        for ident in tree.find_all(exp.Identifier):
            if ident.name.lower().startswith("__dp"):
                raise QueryRejected("names starting with __dp are reserved",
                                    hint="rename the alias", rule="syntax",
                                    span=span_of(ident, self.sql))
        wrapped = self._post_processing_wrapper(tree)
        if wrapped is not None:
            return wrapped
        ctes = self.ctes(tree)
        with_ = tree.args.get("with_")
        if tree.args.get("from_") is None:
            raise QueryRejected("the query has no FROM clause",
                                hint="aggregate over a table, e.g. SELECT COUNT(*) FROM visits",
                                rule="syntax")
        scope = self._from_scope(tree, ctes)
        aggregates = self._aggregate_nodes(tree)
        if not scope.protected:
            return self._public_plan(tree, scope)
        keys = self._keys(tree, scope, aggregates)
        if not aggregates and not keys:
            raise QueryRejected(
                "raw rows of a protected table cannot be released",
                hint="aggregate them: COUNT(*), SUM, AVG, ... with an optional GROUP BY",
                rule="raw_release", span=span_of(tree.expressions[0], self.sql)
                if tree.expressions else None)
        self._check_where(tree)
        for node in [*tree.expressions, *(k.expr for k in keys)]:
            check_mismatches(node, scope, self.sql)
        values = ValueBuilder(scope, self.sql, self.ctx.is_nan)
        builder = AggregateBuilder(scope, self.sql, values, self._canon_fn(scope))
        aggs = [builder.add(node) for node in aggregates]
        post = build_post_query(tree, scope, keys, aggs, aggregates, self.sql,
                                self._canon_fn(scope))
        max_groups = 1
        if keys:
            max_groups = min(scope.max_groups, scope.max_rows)
            size = 1
            for k in keys:
                size = size * len(k.domain) if k.domain is not None else 0
            if size:
                max_groups = min(max_groups, size)
        relation = tree.copy()
        for arg in ("with_", "group", "having", "order", "limit", "offset", "distinct"):
            relation.set(arg, None)
        return Plan(
            sql=self.sql, with_=with_.copy() if with_ is not None else None, relation=relation,
            unit=scope.unit, tables=scope.protected_tables, max_rows=scope.max_rows,
            max_groups=max_groups, keys=tuple(keys), stats=tuple(builder.stats.values()),
            aggs=tuple(aggs), post=post)

    def _post_processing_wrapper(self, tree: exp.Select) -> Plan | None:
        """``SELECT ... FROM (<DP aggregate query>) AS t ...``: BI tools wrap queries
        like this (LIMIT wrappers, filters on a saved question).  The outer query
        only ever reads the inner query's noisy output, so it is post-processing:
        plan the inner query, then run the outer one over its result."""
        from_ = tree.args.get("from_")
        if from_ is None or tree.args.get("joins"):
            return None
        source = from_.this
        with_ = tree.args.get("with_")
        ctes = list(with_.expressions) if with_ is not None else []
        if isinstance(source, exp.Subquery) and isinstance(source.this, exp.Select):
            inner = source.this.copy()
            visible = ctes
        elif isinstance(source, exp.Table) and not source.args.get("db"):
            names = [c.alias_or_name.lower() for c in ctes]
            if source.name.lower() not in names:
                return None
            i = names.index(source.name.lower())
            inner = ctes[i].this.copy()
            visible = ctes[:i]
        else:
            return None
        if not self._aggregates_protected(inner, visible):
            return None
        if visible:
            if inner.args.get("with_"):
                return None
            inner.set("with_", exp.With(expressions=[c.copy() for c in visible]))
        plan = _Analyzer(self.sql, self.ctx).run(inner)
        if plan.public_query is not None:
            return None
        alias = source.alias_or_name
        outer = tree.copy()
        outer.set("with_", None)
        outer.set("expressions", [
            e if isinstance(e, exp.Star | exp.Alias) or (isinstance(e, exp.Column) and isinstance(
                e.this, exp.Star)) else exp.alias_(e, output_name(e), quoted=True)
            for e in outer.expressions])
        outer.set("from_", exp.From(this=plan.post.subquery(alias)))
        return replace(plan, post=outer, outer_names=_plain_outputs(outer), wrapped=True,
                       inner_post=plan.post if not plan.wrapped else plan.inner_post)

    def _aggregates_protected(self, select: exp.Select, ctes: list[exp.CTE]) -> bool:
        """Is ``select`` (or what it wraps) an aggregate query reading protected data?"""
        aggregating = bool(select.args.get("group") or select.args.get("distinct") or any(
            True for e in select.expressions for _ in e.find_all(*AGGREGATES)))
        if not aggregating:
            from_ = select.args.get("from_")
            if from_ is None or select.args.get("joins"):
                return False
            src = from_.this
            if isinstance(src, exp.Subquery) and isinstance(src.this, exp.Select):
                return self._aggregates_protected(src.this, ctes)
            if isinstance(src, exp.Table):
                names = [c.alias_or_name.lower() for c in ctes]
                if src.name.lower() in names and not src.args.get("db"):
                    i = names.index(src.name.lower())
                    return self._aggregates_protected(ctes[i].this, ctes[:i])
            return False
        policy = self.ctx.policy
        cte_names = {c.alias_or_name.lower(): c.this for c in ctes}
        for table in select.find_all(exp.Table):
            spec = policy.table(table.name)
            if spec is not None and not spec.public and table.name.lower() not in cte_names:
                return True
            body = cte_names.get(table.name.lower())
            if body is not None and any(
                (t := policy.table(x.name)) is not None and not t.public
                for x in body.find_all(exp.Table)
            ):
                return True
        return False

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
                ctes[name] = self._derived(cte.this, ctes, name)
        return ctes

    def _public_plan(self, tree: exp.Select, scope: Scope) -> Plan:
        """Only public tables are read: no privacy is needed, the query runs as written."""
        return Plan(sql=self.sql, with_=None, relation=tree, unit=None, tables=frozenset(),
                    max_rows=1, max_groups=1, keys=(), stats=(), aggs=(), post=tree,
                    public_query=tree.copy())

    def _check_where(self, tree: exp.Select) -> None:
        where = tree.args.get("where")
        if where is not None and any(True for _ in where.find_all(*AGGREGATES)):
            raise QueryRejected("aggregates are not allowed in WHERE",
                                hint="filter aggregates in HAVING", rule="syntax",
                                span=span_of(where, self.sql))

    # -- FROM ---------------------------------------------------------------------

    def _from_scope(self, select: exp.Select, ctes: dict[str, Relation]) -> Scope:
        from_ = select.args.get("from_")
        if from_ is None:
            raise QueryRejected("a subquery has no FROM clause", hint="add FROM", rule="syntax")
        items: list[tuple[Relation, exp.Join | None]] = [(self._relation(from_.this, ctes), None)]
        for join in select.args.get("joins") or []:
            items.append((self._relation(join.this, ctes), join))
        scope = join_scope(items, self.sql)
        self._guard_conditions(select, scope)
        return scope

    def _guard_conditions(self, select: exp.Select, scope: Scope) -> None:
        """Row-level conditions must not be able to raise; keep the safe ones visible
        to the engine's optimizer (hash joins, filter pushdown)."""
        guard = self.ctx.guard
        for node in [select.args.get("where"), *(j.args.get("on") for j in
                                                 select.args.get("joins") or []),
                     *select.expressions]:
            if node is not None:
                check_constants(node, self.sql, self.ctx.domains.constant_ok, scope)
        where = select.args.get("where")
        if where is not None:
            check_mismatches(where.this, scope, self.sql)
            where.set("this", guard_condition(where.this, scope, self.sql, guard))
        for join in select.args.get("joins") or []:
            on = join.args.get("on")
            if on is not None:
                check_mismatches(on, scope, self.sql)
                join.set("on", guard_condition(on, scope, self.sql, guard))

    def _relation(self, node: exp.Expr, ctes: dict[str, Relation]) -> Relation:
        if isinstance(node, exp.Table):
            name = node.name.lower()
            if name in ctes and not node.args.get("db"):
                rel = ctes[name]
                alias = (node.alias or node.name).lower()
                return Relation(alias, rel.columns, rel.protected, rel.unit_column, rel.tables,
                                rel.max_rows, rel.max_groups, node)
            return base_relation(self.ctx.policy, node, self.ctx.table_columns, ROW_ID)
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
            rel = self._derived(inner, ctes, node.alias.lower())
            return Relation(rel.alias, rel.columns, rel.protected, rel.unit_column, rel.tables,
                            rel.max_rows, rel.max_groups, node)
        raise QueryRejected(f"{node.sql()} is not allowed in FROM",
                            hint="use a table, a CTE or a subquery", rule="syntax",
                            span=span_of(node, self.sql))

    def _derived(self, select: exp.Select, ctes: dict[str, Relation], alias: str) -> Relation:
        """A subquery or CTE; protected ones must be row-wise and carry the unit."""
        if select.args.get("with_"):
            raise QueryRejected("WITH inside a subquery is not supported",
                                hint="move the CTE to the top of the query", rule="subquery",
                                span=span_of(select, self.sql))
        scope = self._from_scope(select, ctes)
        if scope.protected:
            check_row_wise(select, self.sql, "a subquery")
            where = select.args.get("where")
            if where is not None:
                self._check_where(select)
        columns: dict[str, ColInfo] = {}
        unit_col: str | None = None
        values = ValueBuilder(scope, self.sql, self.ctx.is_nan)
        for item in select.expressions:
            for info in self._projected(item, scope, values):
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
            return Relation(alias, {k: _public(v) for k, v in columns.items()}, protected=False)
        select.set("expressions", [self._guard_item(e, scope) for e in select.expressions])
        if unit_col is None:
            # Thread the unit through so the outer query can bound per unit.
            assert scope.unit is not None
            select.append("expressions", exp.alias_(scope.unit.copy(), UNIT_ALIAS, quoted=True))
            unit_col = UNIT_ALIAS
            columns[UNIT_ALIAS] = ColInfo(UNIT_ALIAS, "int", sensitive=True, is_unit=True)
        return Relation(alias, columns, protected=True, unit_column=unit_col,
                        tables=scope.protected_tables, max_rows=scope.max_rows,
                        max_groups=scope.max_groups)

    def _guard_item(self, item: exp.Expr, scope: Scope) -> exp.Expr:
        inner = item.this if isinstance(item, exp.Alias) else item
        if isinstance(inner.unnest(), exp.Column | exp.Star | exp.Literal):
            return item
        check_mismatches(inner, scope, self.sql)
        return exp.alias_(self.ctx.guard(inner.copy()), item.alias_or_name, quoted=True)

    def _projected(self, item: exp.Expr, scope: Scope, values: ValueBuilder
                   ) -> list[ColInfo]:
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
            return [ColInfo(name, info.type, info.bounds, info.raw_bounds, info.public_values,
                            info.values_from, info.sensitive, info.is_unit, info.public)]
        if not isinstance(item, exp.Alias):
            raise QueryRejected("computed columns of a subquery need an alias",
                                hint=f"write {inner.sql()} AS name", rule="subquery",
                                span=span_of(item, self.sql))
        sensitive = any(scope.resolve(c, self.sql)[1].sensitive for c in inner.find_all(exp.Column))
        bounds = None
        integral = False
        try:
            _, iv = values.value(inner)
            if iv.finite and not iv.empty:
                bounds, integral = (iv.lo, iv.hi), iv.integral
        except QueryRejected:
            pass
        domain = None if sensitive else self.ctx.domains.key_domain(inner, scope, self.sql)
        kind = ("int" if integral else "float") if bounds is not None else \
            self.ctx.domains.expr_type(inner, scope, self.sql)
        return [ColInfo(name, kind, bounds=bounds,
                        public_values=tuple(domain) if domain is not None else None,
                        sensitive=sensitive)]

    # -- keys and aggregates ----------------------------------------------------------

    def _aggregate_nodes(self, tree: exp.Select) -> list[exp.Expr]:
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
                                            span=span_of(node, self.sql))
                found.append(node)
        return found

    def _keys(self, tree: exp.Select, scope: Scope, aggregates: list[exp.Expr]
              ) -> list[KeySpec]:
        group = tree.args.get("group")
        exprs: list[exp.Expr] = []
        if group is not None:
            for g in group.expressions:
                exprs.append(self._resolve_group_ref(g, tree, scope))
        elif tree.args.get("distinct") and not aggregates:
            exprs = [e.this if isinstance(e, exp.Alias) else e for e in tree.expressions]
        canon = self._canon_fn(scope)
        keys: list[KeySpec] = []
        seen: set[str] = set()
        for e in exprs:
            if isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this,
                                                                                   exp.Star)):
                raise QueryRejected("SELECT DISTINCT * over a protected table is not supported",
                                    hint="name the columns to group by", rule="group")
            if any(True for _ in e.find_all(*AGGREGATES)):
                raise QueryRejected("GROUP BY cannot contain an aggregate",
                                    hint="group by columns or expressions of columns",
                                    rule="group", span=span_of(e, self.sql))
            for col in e.find_all(exp.Column):
                _, info = scope.resolve(col, self.sql)
                if info.sensitive:
                    raise QueryRejected(
                        f"grouping by {info.name!r} is not allowed: it is the privacy unit or "
                        f"an identifier, so every group would be one unit's data",
                        hint="group by a non-identifying column such as a category or a date "
                        "bucket", rule="group_by_unit", span=span_of(e, self.sql))
            c = canon(e)
            if c in seen:
                continue
            seen.add(c)
            kind = self.ctx.domains.expr_type(e, scope, self.sql)
            if kind not in GROUPABLE:
                raise QueryRejected(
                    f"cannot group by {e.sql(dialect='duckdb')}: its type is "
                    f"{'not known' if kind == 'unknown' else kind}",
                    hint="group by a column, or CAST the key to VARCHAR, BIGINT, DOUBLE, DATE "
                    "or TIMESTAMP", rule="group", span=span_of(e, self.sql))
            domain = self.ctx.domains.key_domain(e, scope, self.sql)
            keys.append(KeySpec(f"__dp_k{len(keys)}", e.copy(), c,
                                tuple(domain) if domain is not None else None, kind))
        return keys

    def _resolve_group_ref(self, g: exp.Expr, tree: exp.Select, scope: Scope
                           ) -> exp.Expr:
        items = tree.expressions
        if isinstance(g, exp.Literal) and not g.is_string:
            i = int(g.this)
            if not 1 <= i <= len(items):
                raise QueryRejected(f"GROUP BY {i} refers to no SELECT column",
                                    hint=f"use 1..{len(items)}", rule="group",
                                    span=span_of(g, self.sql))
            item = items[i - 1]
            return item.this if isinstance(item, exp.Alias) else item
        if isinstance(g, exp.Column) and not g.table:
            try:
                scope.resolve(g, self.sql)
                return g
            except QueryRejected:
                for item in items:
                    if isinstance(item, exp.Alias) and item.alias.lower() == g.name.lower():
                        return item.this
                raise
        return g

    def _canon_fn(self, scope: Scope) -> Callable[[exp.Expr], str]:
        sql = self.sql

        def canon(node: exp.Expr) -> str:
            def qualify(n: exp.Expr) -> exp.Expr:
                if isinstance(n, exp.Column) and not isinstance(n.this, exp.Star):
                    rel, info = scope.resolve(n, sql)
                    return exp.column(info.name.lower(), table=rel.alias)
                return n

            return node.copy().transform(qualify).unnest().sql(dialect="duckdb").lower()

        return canon


def _plain_outputs(outer: exp.Select) -> tuple[tuple[str, str] | None, ...] | None:
    """For each outer output column that is an inner column passed through unchanged,
    (output name, inner name); None when the outer list has a star."""
    out: list[tuple[str, str] | None] = []
    for item in outer.expressions:
        if isinstance(item, exp.Star) or (isinstance(item, exp.Column)
                                          and isinstance(item.this, exp.Star)):
            return None
        inner = item.this if isinstance(item, exp.Alias) else item
        out.append((item.alias_or_name, inner.name) if isinstance(inner, exp.Column) else None)
    return tuple(out)


def _public(info: ColInfo) -> ColInfo:
    return ColInfo(info.name, info.type, info.bounds, info.raw_bounds, info.public_values,
                   info.values_from, False, False, True)
