"""Relations in FROM: what each column is, and whether rows stay attributable.

DESIGN §2: after FROM/JOIN/WHERE every row must belong to exactly one privacy
unit, and one unit's rows must not be multiplied by the joins, or the work the
engine does (and so the run time, and whether the time limit is reached) would
grow without bound with one unit's data.  Allowed are

* one protected relation;
* protected ⋈ public only through an equality with a column that is *unique* in
  the public relation (a key: declared ``key: true`` and checked when the
  policy loads, or found unique then), so each row meets at most one public
  row.  Public relations may chain (``visits ⋈ countries ⋈ regions``) as long
  as every public relation is reached by such a key equality from the
  protected rows or a constant (:func:`check_fan_out`);
* protected ⋈ protected on exact unit = unit (``ON a.u = b.u`` or ``USING``
  naming columns that *are* the unit on both sides), each side cut to
  ``max_rows_per_unit`` rows per unit before the join (the rewrite does it), so
  one unit yields at most M² joined rows.

Cross joins, joins without a condition, OR and non-equi conditions, and
tautologies such as ``c.x = c.x`` give no key equality and are rejected.
Subqueries and CTEs in FROM are allowed when they are row-wise (projection and
filter, no aggregation, DISTINCT, LIMIT or window) so each of their rows is
still one unit's row; the unit column is threaded through them by the rewrite
when the analyst did not select it.

Everything here is a function of the SQL and the policy, never of the data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from gateway.errors import QueryRejected
from gateway.policy import Policy
from gateway.sql.validate import AGGREGATES, span_of

UNIT_ALIAS = "__dp_unit"
# Each protected relation is cut to M rows per unit before a join, so two of them
# yield at most M² rows per unit; more would make the bound M^k.
MAX_PROTECTED_JOINED = 2


@dataclass(frozen=True)
class ColInfo:
    """Public metadata of one column of a relation."""

    name: str
    type: str
    bounds: tuple[float, float] | None = None  # numeric (dates: days since epoch)
    raw_bounds: tuple[Any, Any] | None = None  # as declared (dates as dates)
    public_values: tuple[Any, ...] | None = None
    values_from: tuple[str, str] | None = None  # (public table, column) supplying values
    sensitive: bool = False  # the unit, an identifier, or derived from them
    is_unit: bool = False
    public: bool = False  # a column of a public relation


@dataclass(frozen=True)
class Relation:
    """A FROM item: a base table, a CTE reference or a subquery."""

    alias: str
    columns: dict[str, ColInfo]  # lower-case name -> info
    protected: bool
    unit_column: str | None = None  # name of the column carrying the unit
    tables: frozenset[str] = frozenset()  # protected base tables underneath
    max_rows: int = 1
    max_groups: int = 1
    node: exp.Expr | None = None  # the Table or Subquery node in the tree
    # max_rows / max_groups are ceilings tuned per query (`{auto: ...}` in the policy).
    auto_rows: bool = False
    auto_groups: bool = False
    # How many protected relations (each cut to M rows per unit) were joined to make
    # this one: one unit yields at most M^joined of its rows.
    joined: int = 1
    keys: frozenset[str] = frozenset()  # lower-case names of columns unique in a public relation
    # Parts of a public subquery that may not meet protected data (node, what it does).
    risks: tuple[tuple[exp.Expr, str], ...] = ()

    def column(self, name: str) -> ColInfo | None:
        return self.columns.get(name.lower())


@dataclass
class Scope:
    """The relations a SELECT's FROM clause brings into view."""

    relations: dict[str, Relation] = field(default_factory=dict)  # lower alias -> relation
    unit: exp.Expr | None = None  # qualified reference to the unit column
    protected_tables: frozenset[str] = frozenset()
    max_rows: int = 1
    max_groups: int = 1
    auto_rows: bool = False  # some protected relation's M is tuned per query
    auto_groups: bool = False  # ... or its L0
    joined: int = 1  # protected relations joined (see Relation.joined)
    # Protected relations that meet another protected relation: each is cut to
    # max_rows_per_unit rows per unit before the join.
    truncated: tuple[Relation, ...] = ()
    # Columns merged by JOIN ... USING (inner or left joins): an unqualified reference
    # names the left relation's column, as in PostgreSQL (equal on inner joins).
    merged: dict[str, str] = field(default_factory=dict)  # lower name -> relation alias

    @property
    def protected(self) -> bool:
        return self.unit is not None

    def resolve(self, col: exp.Column, sql: str) -> tuple[Relation, ColInfo]:
        """Find the relation and column a column reference names."""
        name = col.name.lower()
        if col.table:
            rel = self.relations.get(col.table.lower())
            if rel is None:
                raise QueryRejected(
                    f"unknown table or alias {col.table!r} in {col.sql()}",
                    hint="use a table name or alias from FROM", rule="column",
                    span=span_of(col, sql))
            info = rel.column(name)
            if info is None:
                raise _unknown_column(col, sql, rel)
            _check_quoted(col, info, sql)
            return rel, info
        hits = [(r, r.column(name)) for r in self.relations.values() if r.column(name)]
        if not hits:
            raise _unknown_column(col, sql, None, self)
        if len(hits) > 1 and name in self.merged:
            hits = [h for h in hits if h[0].alias == self.merged[name]]
        if len(hits) > 1:
            raise QueryRejected(
                f"column {col.name!r} is ambiguous (in {', '.join(r.alias for r, _ in hits)})",
                hint=f"qualify it, e.g. {hits[0][0].alias}.{col.name}", rule="column",
                span=span_of(col, sql))
        rel, info = hits[0]
        assert info is not None
        _check_quoted(col, info, sql)
        return rel, info


def _check_quoted(col: exp.Column, info: ColInfo, sql: str) -> None:
    """A quoted column name is exact, as in PostgreSQL: ``"Age"`` names a column the
    policy (or the source of a public table) spells ``Age``, or one a subquery named
    ``"Age"``; unquoted names ignore case (gateway/sql/names.py)."""
    ident = col.this
    if isinstance(ident, exp.Identifier) and ident.quoted and ident.name != info.name:
        raise QueryRejected(
            f'the quoted name "{ident.name}" does not match the column "{info.name}": '
            "quoted names are compared exactly, as in PostgreSQL",
            hint=f'write "{info.name}", or {ident.name} without quotes (unquoted names '
            "ignore case)", rule="column", span=span_of(col, sql))


def _unknown_column(col: exp.Column, sql: str, rel: Relation | None,
                    scope: Scope | None = None) -> QueryRejected:
    if rel is not None:
        names = sorted(c.name for c in rel.columns.values() if not c.name.startswith("__dp"))
    else:
        assert scope is not None
        names = sorted({c.name for r in scope.relations.values() for c in r.columns.values()
                        if not c.name.startswith("__dp")})
    return QueryRejected(f"unknown column {col.sql()!r}",
                         hint="available columns: " + ", ".join(names), rule="column",
                         span=span_of(col, sql))


def base_relation(policy: Policy, table: exp.Table, table_columns: Callable[[str], dict[str, str]],
                  row_id: str, table_keys: Callable[[str], frozenset[str]]) -> Relation:
    """Relation for a policy table referenced in FROM."""
    name = policy.canonical_table_name(table.name)
    assert name is not None  # validate() checked it
    spec = policy.tables[name]
    alias = (table.alias or table.name).lower()
    cols: dict[str, ColInfo] = {}
    if spec.public:
        for cname, ctype in table_columns(name).items():
            cols[cname.lower()] = ColInfo(cname, ctype, values_from=(name, cname), public=True)
        return Relation(alias, cols, protected=False, node=table,
                        keys=frozenset(k.lower() for k in table_keys(name)))
    for cname, c in spec.columns.items():
        values_from = None
        if c.public_values_from:
            t, _, k = c.public_values_from.partition(".")
            values_from = (policy.canonical_table_name(t) or t, k)
        cols[cname.lower()] = ColInfo(
            cname, c.type, bounds=c.numeric_bounds, raw_bounds=c.planning_bounds,
            public_values=c.public_values, values_from=values_from,
            sensitive=c.role is not None or cname == spec.privacy_unit,
            is_unit=cname == spec.privacy_unit,
        )
    unit = spec.privacy_unit
    if unit is None:  # row-level: the executor adds a synthetic row id as the unit
        unit = row_id
        cols[row_id] = ColInfo(row_id, "int", sensitive=True, is_unit=True)
    return Relation(alias, cols, protected=True, unit_column=unit, tables=frozenset({name}),
                    max_rows=spec.rows_ceiling, max_groups=spec.groups_ceiling,
                    node=table, auto_rows=spec.rows_auto, auto_groups=spec.groups_auto)


def check_row_wise(select: exp.Select, sql: str, what: str) -> None:
    """A subquery over protected data must keep one output row per input row."""
    problems = [
        (select.args.get("group"), "GROUP BY"), (select.args.get("having"), "HAVING"),
        (select.args.get("distinct"), "DISTINCT"), (select.args.get("limit"), "LIMIT"),
        (select.args.get("offset"), "OFFSET"), (select.args.get("order"), "ORDER BY"),
    ]
    for node, label in problems:
        if node:
            raise QueryRejected(
                f"{label} inside {what} over a protected table is not supported",
                hint="aggregate only in the outermost SELECT; ordering and limits apply to "
                "the noisy result there", rule="subquery", span=span_of(node, sql))
    for agg in select.find_all(*AGGREGATES):
        raise QueryRejected(
            f"aggregates inside {what} over a protected table are not supported",
            hint="aggregate only in the outermost SELECT", rule="subquery",
            span=span_of(agg, sql))


def join_scope(relations: list[tuple[Relation, exp.Join | None]], sql: str) -> Scope:
    """Combine FROM items, enforcing the joins that keep rows attributable."""
    scope = Scope()
    protected: list[Relation] = []
    for rel, join in relations:
        if rel.alias in scope.relations:
            raise QueryRejected(f"table alias {rel.alias!r} is used twice",
                                hint="give each FROM item its own alias", rule="join",
                                span=span_of(join or rel.node or exp.Null(), sql))
        if rel.protected and protected:
            _check_unit_join(rel, protected, join, sql)
        side = (join.side or "").upper() if join is not None else ""
        for ident in (join.args.get("using") or []) if join is not None else []:
            # The merged column is the left one on inner and left joins, the right one
            # (every right row is kept) on right joins; FULL joins stay ambiguous.
            name = ident.name.lower()
            assert join is not None
            _check_using_types(name, rel, list(scope.relations.values()), join, sql)
            left = [r.alias for r in scope.relations.values() if r.column(name) is not None]
            if left and side in ("", "LEFT"):
                scope.merged.setdefault(name, left[0])
            elif left and side == "RIGHT":
                scope.merged[name] = rel.alias
        scope.relations[rel.alias] = rel
        if rel.protected:
            protected.append(rel)
    if protected:
        first = protected[0]
        assert first.unit_column is not None
        scope.unit = exp.column(first.unit_column, table=first.alias, quoted=True)
        scope.protected_tables = frozenset().union(*(r.tables for r in protected))
        scope.max_rows = min(r.max_rows for r in protected)
        scope.max_groups = min(r.max_groups for r in protected)
        scope.auto_rows = any(r.auto_rows for r in protected)
        scope.auto_groups = any(r.auto_groups for r in protected)
        scope.joined = sum(r.joined for r in protected)
        if scope.joined > MAX_PROTECTED_JOINED:
            raise QueryRejected(
                f"the query joins {scope.joined} protected relations; at most "
                f"{MAX_PROTECTED_JOINED} may meet, or one user's rows would be multiplied "
                "M^k times (and with them the work, and the time taken)",
                hint="join a protected table with itself at most once; aggregate the other "
                "relations in separate queries", rule="join_fan_out",
                span=span_of(relations[-1][1] or exp.Null(), sql))
        if len(protected) > 1:
            _check_outer_sides(relations, sql)
            scope.truncated = tuple(protected)
        check_fan_out(relations, scope, sql)
    return scope


def check_fan_out(relations: list[tuple[Relation, exp.Join | None]], scope: Scope,
                  sql: str) -> None:
    """Every public relation in a query over protected data must be reached by a key
    equality, so no protected row meets more than one of its rows.

    A public relation P is *anchored* by a conjunct ``P.k = e`` of some ON clause
    (or a USING column) where ``k`` is unique in P and ``e`` only reads relations
    already anchored (the protected ones to begin with) or is a constant.  Given
    one row of everything anchored before it, at most one row of P matches; by
    induction every protected row extends to at most one joined row.
    """
    for rel, join in relations[1:]:
        if join is None or join.kind == "CROSS" or not (join.args.get("on")
                                                        or join.args.get("using")):
            raise QueryRejected(
                f"{rel.alias} is joined without a condition (a cross join) in a query over "
                "protected data, so one protected row would meet every row of it",
                hint="join on a key: ON <protected>.col = <public>.<unique column>",
                rule="join", span=span_of(join or rel.node or exp.Null(), sql))
    edges: list[tuple[str, frozenset[str]]] = []  # (public alias, aliases the other side reads)
    by_alias = scope.relations
    for index, (rel, join) in enumerate(relations):
        if join is None:
            continue
        on = join.args.get("on")
        if on is not None:
            conjuncts = list(on.flatten()) if isinstance(on, exp.And) else [on]
            for c in conjuncts:
                c = c.unnest()
                if isinstance(c, exp.EQ):
                    edges += _key_edges(c.this, c.expression, scope, sql)
                    edges += _key_edges(c.expression, c.this, scope, sql)
        for ident in join.args.get("using") or []:
            name = ident.name.lower()
            left = [r for r, _ in relations[:index] if r.column(name) is not None]
            for other in left:
                if not rel.protected and name in rel.keys:
                    edges.append((rel.alias, frozenset({other.alias})))
                if not other.protected and name in other.keys:
                    edges.append((other.alias, frozenset({rel.alias})))
    anchored = {alias for alias, r in by_alias.items() if r.protected}
    changed = True
    while changed:
        changed = False
        for alias, reads in edges:
            if alias not in anchored and reads <= anchored:
                anchored.add(alias)
                changed = True
    for alias, r in by_alias.items():
        if alias in anchored:
            continue
        keys = ", ".join(sorted(r.keys)) or "none"
        node = next((j for rr, j in relations if rr is r and j is not None), r.node)
        raise QueryRejected(
            f"the join with {alias} can match several of its rows for one protected row "
            "(it is not joined on a column that is unique in it), so one unit's rows could "
            "be multiplied without bound",
            hint=f"join {alias} with an equality on one of its unique columns ({keys}), e.g. "
            f"ON <protected>.col = {alias}.<unique column>; other conditions may follow "
            "with AND", rule="join_fan_out", span=span_of(node or exp.Null(), sql))


# Types the engine may compare in a USING equality without a conversion that can fail:
# equal types, or an integer beside a float (BIGINT -> DOUBLE is total).
_NUMBERS = frozenset({"int", "float"})


def _check_using_types(name: str, rel: Relation, earlier: list[Relation], join: exp.Join,
                       sql: str) -> None:
    """``USING (c)`` makes the engine compare ``left.c = right.c`` itself, converting one
    side when the types differ; a conversion that fails on some rows (text to a number,
    a date beyond the timestamp range) would be an error that depends on the data.  The
    two sides must have the same type (or be numbers), as an ON equality must."""
    mine = rel.column(name)
    for other in earlier:
        theirs = other.column(name)
        if mine is None or theirs is None:
            continue
        a, b = mine.type, theirs.type
        if (a == b and a != "unknown") or {a, b} <= _NUMBERS:
            continue
        raise QueryRejected(
            f"JOIN ... USING ({name}) compares {other.alias}.{name} ({b}) with "
            f"{rel.alias}.{name} ({a}): the engine would convert one of them, and a "
            "conversion can fail on some values",
            hint="give both sides the same type, e.g. CAST one of them in its subquery, or "
            "join with ON and an explicit comparison", rule="join_types",
            span=span_of(join, sql))


def _key_edges(side: exp.Expr, other: exp.Expr, scope: Scope, sql: str
               ) -> list[tuple[str, frozenset[str]]]:
    side = side.unnest()
    if not isinstance(side, exp.Column) or isinstance(side.this, exp.Star):
        return []
    rel, info = scope.resolve(side, sql)
    if rel.protected or info.name.lower() not in rel.keys:
        return []
    reads = frozenset(scope.resolve(c, sql)[0].alias for c in other.find_all(exp.Column))
    if rel.alias in reads:
        return []  # a tautology such as c.k = c.k or c.k = c.k + 0
    return [(rel.alias, reads)]


def _check_unit_join(rel: Relation, earlier: list[Relation], join: exp.Join | None,
                     sql: str) -> None:
    node = join if join is not None else rel.node
    if join is None or join.kind == "CROSS" or not (join.args.get("on") or join.args.get("using")):
        raise QueryRejected(
            f"{rel.alias} and {earlier[0].alias} are both protected and are not joined on the "
            f"privacy unit, so a row would belong to two units",
            hint=f"join them with ON {earlier[0].alias}.{earlier[0].unit_column} = "
            f"{rel.alias}.{rel.unit_column}", rule="join", span=span_of(node or exp.Null(), sql))
    if join.side in ("RIGHT", "FULL"):
        raise QueryRejected(
            f"{join.side} JOIN between protected tables is not supported",
            hint="use INNER or LEFT JOIN on the privacy unit", rule="join",
            span=span_of(join, sql))
    using = join.args.get("using")
    if using:
        # USING (n) equates the columns *named* n on both sides; it joins on the unit
        # only if, for some n, that column is the unit on this side and on an earlier
        # protected side (derived tables may rename columns).
        for ident in using:
            mine = rel.column(ident.name)
            if mine is not None and mine.is_unit and any(
                (theirs := r.column(ident.name)) is not None and theirs.is_unit
                for r in earlier
            ):
                return
    on = join.args.get("on")
    if on is not None:
        for conj in on.flatten() if isinstance(on, exp.And) else [on]:
            if isinstance(conj, exp.EQ) and _is_unit_pair(conj.this, conj.expression, rel,
                                                          earlier):
                return
    raise QueryRejected(
        f"{rel.alias} and {earlier[0].alias} are both protected and must be joined on the "
        f"privacy unit, so each joined row belongs to one unit",
        hint=f"add {earlier[0].alias}.{earlier[0].unit_column} = {rel.alias}.{rel.unit_column} "
        f"to the ON condition", rule="join", span=span_of(join, sql))


def _is_unit_pair(a: exp.Expr, b: exp.Expr, rel: Relation,
                  earlier: list[Relation]) -> bool:
    def is_unit_of(e: exp.Expr, r: Relation) -> bool:
        e = e.unnest()
        if not isinstance(e, exp.Column) or e.table.lower() != r.alias:
            return False
        info = r.column(e.name)
        return info is not None and info.is_unit

    for x, y in ((a, b), (b, a)):
        if is_unit_of(x, rel) and any(is_unit_of(y, r) for r in earlier):
            return True
    return False


def _check_outer_sides(relations: list[tuple[Relation, exp.Join | None]], sql: str) -> None:
    """With several protected relations the first one's unit is used: it must never be NULL
    for a row another protected relation contributes (no RIGHT/FULL join after it)."""
    for _rel, join in relations[1:]:
        if join is not None and join.side in ("RIGHT", "FULL"):
            raise QueryRejected(
                f"{join.side} JOIN in a query over several protected tables is not supported",
                hint="use INNER or LEFT JOINs", rule="join", span=span_of(join, sql))
