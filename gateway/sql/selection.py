"""Training selections: the SQL that picks features and a label for DP-SGD.

A training query is a *row-wise* SELECT: a projection with filters over the
core's unit-attributed relation (one protected table, protected ⋈ public on any
key, protected ⋈ protected on the privacy unit, row-wise subqueries and CTEs).
It goes through the same passes as a query (parse, validate, the analyzer's
FROM-scope rules), so every rule that keeps a row attributable to exactly one
privacy unit holds here too.  On top of that a training query may not

* aggregate, group, DISTINCT, window, ORDER BY or LIMIT (the model learns from
  rows, and a LIMIT would pick rows by their values);
* use the privacy unit or an identifier (or an expression of one) as a feature
  or label: a model could memorise them;
* select an unbounded numeric value or a text value without public values:
  features are encoded from public metadata only (policy bounds and public
  values), never from statistics of the data.

The result is a :class:`Selection`: public metadata of each selected column and
the engine query that returns ``(unit, features..., label)`` with rows without a
unit or label dropped and every row expression guarded so no value can make the
engine raise.  Nothing here reads data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from gateway.errors import QueryRejected
from gateway.sql.analyze import check_reserved_names
from gateway.sql.bounds import ValueBuilder, clamp_time
from gateway.sql.names import TableNames
from gateway.sql.parse import parse
from gateway.sql.relations import Context, FromAnalyzer
from gateway.sql.scope import ColInfo, Scope
from gateway.sql.typer import Typer
from gateway.sql.validate import span_of, validate

UNIT = "__dp_unit"
LABEL = "__dp_y"
NUMERIC = ("int", "float")
TEMPORAL = ("date", "timestamp")


@dataclass(frozen=True)
class SelectedColumn:
    """Public metadata of one output column of a training query."""

    name: str
    kind: str  # "numeric" | "bool" | "categorical"
    bounds: tuple[float, float] | None = None  # numeric (dates: days since 1970-01-01)
    values: tuple[Any, ...] | None = None  # categorical: the public values
    temporal: bool = False  # a date/timestamp column, fetched as datetime64
    engine_name: str = ""  # alias in the engine query


@dataclass(frozen=True)
class Selection:
    """A validated training query: what it selects and how to run it."""

    sql: str
    features: tuple[SelectedColumn, ...]
    label: SelectedColumn
    query: exp.Select  # returns __dp_unit, __dp_x0.., __dp_y
    max_rows_per_unit: int
    tables: frozenset[str]


def select_training_rows(sql: str, label: str, ctx: Context,
                         table_names: TableNames | Iterable[str], *,
                         max_length: int = 20_000, dialect: str = "duckdb") -> Selection:
    """Parse, validate and analyse a training query (touches no data)."""
    tree = parse(sql, max_length=max_length, dialect=dialect)
    _reject_aggregation(tree, sql)
    tree = validate(tree, sql, table_names, dialect)
    return _Selector(sql, ctx).run(tree, label)


def _reject_aggregation(tree: exp.Select, sql: str) -> None:
    """Before validation, so the message speaks of training, not of supported aggregates."""
    for window in tree.find_all(exp.Window):
        assert isinstance(window, exp.Expr)
        raise QueryRejected(
            "window functions are not allowed in a training query: a row's value would "
            "depend on other rows (and other units)",
            hint="select plain row-wise features; compute per-row expressions instead",
            rule="training_window", span=span_of(window, sql))
    for node in tree.find_all(exp.AggFunc):
        assert isinstance(node, exp.Expr)
        raise QueryRejected(
            f"{node.sql(dialect='duckdb')} aggregates rows, but a training query selects rows",
            hint="select the feature and label columns row by row, e.g. SELECT feature1, "
            "feature2, label FROM table; the gateway bounds each unit's influence itself",
            rule="training_aggregate", span=span_of(node, sql))


_TOP_LEVEL = (
    ("group", "GROUP BY"), ("having", "HAVING"), ("distinct", "DISTINCT"),
    ("order", "ORDER BY"), ("limit", "LIMIT"), ("offset", "OFFSET"),
)


class _Selector:
    def __init__(self, sql: str, ctx: Context) -> None:
        self.sql = sql
        self.ctx = ctx
        # The query analyzer's FROM-scope rules (joins, row-wise subqueries and
        # CTEs, unit threading, typing and guards) are exactly the rules a
        # training query needs.
        self.relations = FromAnalyzer(sql, ctx)

    def run(self, tree: exp.Select, label: str) -> Selection:
        check_reserved_names(tree, self.sql)
        for key, word in _TOP_LEVEL:
            node = tree.args.get(key)
            if node:
                raise QueryRejected(
                    f"{word} is not allowed in a training query",
                    hint="training uses every selected row (each unit's influence is bounded "
                    "by the gateway); filter rows with WHERE instead", rule="training_shape",
                    span=span_of(node, self.sql))
        if tree.args.get("from_") is None:
            raise QueryRejected("the training query has no FROM clause",
                                hint="select features from a table, e.g. SELECT age, converted "
                                "FROM visits", rule="syntax")
        ctes = self.relations.ctes(tree)
        scope = self.relations.scope(tree, ctes)
        if not scope.protected:
            raise QueryRejected(
                "the training query reads no protected table",
                hint="training on public tables needs no privacy budget: export them instead",
                rule="training_public")
        typer = self.relations.typer(scope)
        columns = self._columns(tree, scope, typer)
        label_key = label.lower() if isinstance(label, str) else ""
        matches = [i for i, (item, _) in enumerate(columns) if item[0].lower() == label_key]
        if not matches:
            names = ", ".join(n for (n, _), _ in columns)
            raise QueryRejected(f"the label {label!r} is not a column of the training query",
                                hint=f"name one of its columns: {names}", rule="training_label")
        if len(matches) > 1:
            raise QueryRejected(f"the training query has two columns named {label!r}",
                                hint="give each column its own alias", rule="training_label")
        features = [c for i, c in enumerate(columns) if i != matches[0]]
        if not features:
            raise QueryRejected("the training query selects a label but no feature",
                                hint="add at least one feature column", rule="training_shape")
        lowered = [c[0][0].lower() for c in columns]
        for name in lowered:
            if lowered.count(name) > 1:
                raise QueryRejected(f"the training query has two columns named {name!r}",
                                    hint="give each column its own alias", rule="syntax")
        (label_name, label_node), label_info = columns[matches[0]]
        label_col = self._describe(label_name, label_node, label_info, LABEL, what="label")
        feats = tuple(self._describe(n, node, info, f"__dp_x{i}", what="feature")
                      for i, ((n, node), info) in enumerate(features))
        query = self._query(tree, scope, typer, [(c, node) for c, ((_, node), _) in
                                                 zip(feats, features, strict=True)],
                            (label_col, label_node))
        return Selection(self.sql, feats, label_col, query, scope.max_rows,
                         scope.protected_tables)

    # -- columns --------------------------------------------------------------------

    def _columns(self, tree: exp.Select, scope: Scope, typer: Typer
                 ) -> list[tuple[tuple[str, exp.Expr], ColInfo]]:
        out = []
        values = ValueBuilder(scope, self.sql, self.ctx.is_nan, typer)
        for item in tree.expressions:
            if isinstance(item, exp.Star) or (isinstance(item, exp.Column)
                                              and isinstance(item.this, exp.Star)):
                allowed = sorted({c.name for r in scope.relations.values()
                                  for c in r.columns.values()
                                  if not c.sensitive and not c.name.startswith("__dp")})
                raise QueryRejected(
                    "SELECT * would make every column (identifiers included) a feature",
                    hint="list the feature and label columns, e.g. SELECT "
                    + ", ".join(allowed[:6]) + " FROM ...", rule="training_star",
                    span=span_of(item, self.sql))
            inner = item.this if isinstance(item, exp.Alias) else item
            if not isinstance(inner, exp.Column) and not isinstance(item, exp.Alias):
                raise QueryRejected("computed training columns need a name",
                                    hint=f"write {inner.sql()} AS name", rule="syntax",
                                    span=span_of(item, self.sql))
            typer.type_of(inner)
            info, = self.relations.projected(item, scope, values, typer)
            out.append(((item.alias_or_name, inner), info))
        return out

    def _describe(self, name: str, node: exp.Expr, info: ColInfo, engine_name: str,
                  *, what: str) -> SelectedColumn:
        if info.sensitive:
            raise QueryRejected(
                f"{name!r} is (or is computed from) the privacy unit or an identifier and "
                f"cannot be a {what}: a model could memorise who is in the data",
                hint="remove it from the SELECT list; the gateway uses the privacy unit only "
                "to bound each unit's influence", rule="training_identifier",
                span=span_of(node, self.sql))
        if info.type == "bool":
            return SelectedColumn(name, "bool", engine_name=engine_name)
        if info.type in NUMERIC or info.type in TEMPORAL:
            if info.bounds is None:
                col = node.sql() if isinstance(node, exp.Column) else name
                raise QueryRejected(
                    f"the {what} {name!r} is numeric but has no bounds, so it cannot be "
                    f"scaled without looking at the data",
                    hint=f"give {col} bounds in the policy, or clamp it in the query, e.g. "
                    f"LEAST(GREATEST({node.sql()}, 0), 100) AS {name}", rule="unbounded",
                    span=span_of(node, self.sql))
            lo, hi = float(info.bounds[0]), float(info.bounds[1])
            return SelectedColumn(name, "numeric", bounds=(lo, hi),
                                  temporal=info.type in TEMPORAL, engine_name=engine_name)
        values = self._public_values(info)
        if values is None:
            raise QueryRejected(
                f"the {what} {name!r} has no public list of values, so it cannot be one-hot "
                f"encoded without looking at the data",
                hint="declare public_values (or public_values_from) for the column in the "
                "policy, or map it onto a fixed set with CASE ... END AS name",
                rule="training_categorical", span=span_of(node, self.sql))
        return SelectedColumn(name, "categorical", values=tuple(values), engine_name=engine_name)

    def _public_values(self, info: ColInfo) -> list[Any] | None:
        if info.public_values is not None:
            # A NULL public value is a group in queries; in training a NULL is already
            # the "<other>" category, never a class or a one-hot column of its own.
            return [v for v in info.public_values if v is not None]
        if info.values_from is not None:
            return self.ctx.domains.column_domain(info)
        return None

    # -- the engine query -------------------------------------------------------------

    def _query(self, tree: exp.Select, scope: Scope, typer: Typer,
               features: list[tuple[SelectedColumn, exp.Expr]],
               label: tuple[SelectedColumn, exp.Expr]) -> exp.Select:
        """SELECT unit, features..., label with unit-less and label-less rows dropped.

        The analyzer already guarded WHERE and JOIN conditions (leaving provably
        safe comparisons visible to the optimizer) and the computed columns of
        subqueries and CTEs; the selected expressions are guarded here.
        """
        query = tree.copy()
        assert scope.unit is not None
        items: list[Any] = [exp.alias_(scope.unit.copy(), UNIT, quoted=True)]
        for col, node in [*features, label]:
            value = typer.engine(node.copy())
            if col.kind == "numeric" and not col.temporal:
                value = exp.TryCast(this=value, to=exp.DataType.build("DOUBLE"))
            elif col.temporal and col.bounds is not None:
                value = _clamp_time(value, col.bounds, typer.type_of(node).kind)
            items.append(exp.alias_(value, col.engine_name, quoted=True))
        query.set("expressions", items)
        conds: list[exp.Expr] = []
        where = query.args.get("where")
        if where is not None:
            conds.append(where.this)
        conds.append(exp.Not(this=exp.Is(this=scope.unit.copy(), expression=exp.Null())))
        conds.append(exp.Not(this=exp.Is(this=typer.engine(label[1].copy()),
                                         expression=exp.Null())))
        query.set("where", exp.Where(this=exp.and_(*conds)))
        return query


def _clamp_time(value: exp.Expr, bounds: tuple[float, float], kind: str) -> exp.Expr:
    """A date or timestamp feature clamped to its bounds in the engine: far dates (year
    300000, 'infinity') cannot be fetched as datetime64, and fetching must not fail on
    data.  The selection keeps bounds as days since 1970-01-01."""
    epoch = dt.datetime(1970, 1, 1)
    lo, hi = (epoch + dt.timedelta(days=b) for b in bounds)
    if kind == "date":
        return clamp_time(value, lo.date(), hi.date(), kind)
    return clamp_time(value, lo, hi, kind)
