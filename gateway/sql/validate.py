"""Pass 2: an allowlist over the parsed tree.

Every node type, function and table must be on a list; anything else is
rejected before planning.  A function is listed only if it cannot raise on any
data (or is made total by the executor's guard), cannot read files or the
network, and cannot run dynamic SQL.  Casts of non-constants become TRY_CAST so
a value that does not convert becomes NULL instead of an error whose presence
would reveal something about the data.

Structural rules that need scopes (what may be grouped, which joins keep rows
attributable to one unit) belong to :mod:`gateway.sql.analyze`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlglot import exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from gateway.errors import QueryRejected, Span
from gateway.sql.names import TableNames

SUPPORTED_AGGREGATES = (
    "COUNT(*)", "COUNT(expr)", "COUNT(DISTINCT <privacy unit>)", "SUM", "AVG",
    "VAR_POP", "VAR_SAMP", "VARIANCE", "STDDEV_POP", "STDDEV_SAMP", "STDDEV",
    "MEDIAN", "PERCENTILE_CONT(p) WITHIN GROUP (ORDER BY x)", "PERCENTILE_DISC",
    "QUANTILE_CONT(x, p)", "QUANTILE_DISC", "APPROX_QUANTILES(x, n)", "MIN", "MAX",
)

AGGREGATES: tuple[type[exp.Expr], ...] = (
    exp.Count, exp.Sum, exp.Avg, exp.Variance, exp.VariancePop,
    exp.Stddev, exp.StddevPop, exp.StddevSamp,
    # DP quantiles (MIN and MAX among them); WITHIN GROUP forms are rewritten to these
    exp.Median, exp.PercentileCont, exp.PercentileDisc, exp.Quantile, exp.ApproxQuantile,
    exp.ApproxQuantiles, exp.Min, exp.Max,
)

_STRUCTURE: tuple[type[exp.Expr], ...] = (
    exp.Select, exp.From, exp.Join, exp.Where, exp.Group, exp.Having, exp.Order,
    exp.Ordered, exp.Limit, exp.Offset, exp.With, exp.CTE, exp.Subquery, exp.Table,
    exp.TableAlias, exp.Alias, exp.Column, exp.Identifier, exp.Star, exp.Distinct,
    exp.Filter,
)

_SCALARS: tuple[type[exp.Expr], ...] = (
    exp.Literal, exp.Boolean, exp.Null, exp.Paren, exp.Neg, exp.Not, exp.And, exp.Or,
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ, exp.NullSafeNEQ,
    exp.Is, exp.In, exp.Between, exp.Like, exp.ILike, exp.Add, exp.Sub, exp.Mul, exp.Div,
    exp.Case, exp.If, exp.Coalesce, exp.Nullif, exp.Cast, exp.TryCast, exp.DataType,
    exp.DataTypeParam, exp.Var, exp.Interval, exp.Try,
    # numeric
    exp.Abs, exp.Round, exp.Floor, exp.Ceil, exp.Least, exp.Greatest, exp.Sqrt, exp.Ln,
    exp.Log, exp.Exp, exp.Pow, exp.Sign, exp.IsNan, exp.IsInf, exp.Pi,
    # text
    exp.Lower, exp.Upper, exp.Length, exp.Substring, exp.Trim, exp.Concat, exp.DPipe,
    exp.Left, exp.Right, exp.StartsWith, exp.EndsWith, exp.Contains,
    # dates
    exp.TimestampTrunc, exp.DateTrunc, exp.Extract, exp.Year, exp.Month, exp.Day,
    exp.DayOfWeek, exp.DayOfYear, exp.Quarter, exp.Week, exp.TimeToStr, exp.ToChar,
)

ALLOWED_NODES = frozenset(_STRUCTURE + _SCALARS + AGGREGATES)

# Functions sqlglot does not model, allowed by (lower-case) name.
ALLOWED_ANONYMOUS = frozenset({"date_part", "datepart", "isfinite"})

_CAST_TYPES = frozenset({
    exp.DataType.Type.TINYINT, exp.DataType.Type.SMALLINT, exp.DataType.Type.INT,
    exp.DataType.Type.BIGINT, exp.DataType.Type.FLOAT, exp.DataType.Type.DOUBLE,
    exp.DataType.Type.DECIMAL, exp.DataType.Type.VARCHAR, exp.DataType.Type.TEXT,
    exp.DataType.Type.CHAR, exp.DataType.Type.BOOLEAN, exp.DataType.Type.DATE,
    exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPNTZ,
})

# Every engine's spelling of variance and standard deviation that sqlglot leaves as an
# unknown function, with that engine's meaning: T-SQL's VAR and STDEV are the sample
# statistics, VARP and STDEVP the population ones; MySQL's STD is the population
# standard deviation.  (STDEV, STDDEV, VARIANCE, VAR_SAMP, VAR_POP, VARIANCE_SAMP,
# VARIANCE_POP, STDDEV_SAMP and STDDEV_POP are parsed to these nodes already.)
SPREAD_FUNCTIONS: dict[str, type[exp.Expr]] = {
    "var": exp.Variance, "var_samp": exp.Variance, "variance": exp.Variance,
    "variance_samp": exp.Variance, "var_pop": exp.VariancePop, "variance_pop": exp.VariancePop,
    "varp": exp.VariancePop, "stdev": exp.StddevSamp, "stddev_samp": exp.StddevSamp,
    "stdevp": exp.StddevPop, "std": exp.StddevPop, "stddev_pop": exp.StddevPop,
    "stddev": exp.Stddev,
}

# DuckDB's quantile spellings that other dialects' parsers leave as plain calls.
QUANTILE_FUNCTIONS: dict[str, type[exp.Expr]] = {
    "quantile_cont": exp.PercentileCont, "quantile_disc": exp.PercentileDisc,
}

# The alias a subquery in FROM without one is given (PostgreSQL's word for it); a
# suffix keeps it apart from every name the query uses.
UNNAMED_SUBQUERY = "unnamed_subquery"

# Date parts DuckDB accepts in DATE_TRUNC and in EXTRACT / DATE_PART (lower case).
# A part outside these lists fails when the engine binds the query, i.e. after
# the charge; a part read from a column fails row by row.  Both are refused here.
_TRUNC_PARTS = frozenset({
    "year", "years", "y", "yr", "yrs", "quarter", "quarters", "month", "months", "mon",
    "mons", "week", "weeks", "w", "day", "days", "d", "hour", "hours", "h", "minute",
    "minutes", "m", "min", "second", "seconds", "s", "sec", "millisecond", "milliseconds",
    "ms", "microsecond", "microseconds", "us", "decade", "decades", "century", "centuries",
    "millennium", "millennia",
})
_EXTRACT_PARTS = _TRUNC_PARTS | frozenset({
    "dayofweek", "dow", "isodow", "weekday", "dayofyear", "doy", "dayofmonth", "weekofyear",
    "epoch", "era", "isoyear", "yearweek", "julian",
})
_INT64_MAX = 2**63 - 1

# Why a few common things are refused, so the message can say what to do.
_EXPLAINED: dict[type[exp.Expr], tuple[str, str]] = {
    exp.Window: ("window functions are not supported",
                 "aggregate with GROUP BY instead; ordering and ranking of the noisy result "
                 "can be done in ORDER BY"),
    exp.TableSample: ("sampling (TABLESAMPLE / USING SAMPLE) is not supported",
                      "query the whole table; the gateway bounds each unit's contribution"),
    exp.IntDiv: ("integer division (//) is not allowed because it fails on a zero divisor",
                 "use / and FLOOR(...) instead"),
    exp.Mod: ("the modulo operator (%) is not allowed because it fails on a zero divisor",
              "bucket values with FLOOR(x / n) or CASE instead"),
    exp.Exists: ("subqueries in WHERE are not supported",
                 "join the table in FROM instead"),
    exp.WithinGroup: ("WITHIN GROUP is supported only as PERCENTILE_CONT(p) / "
                      "PERCENTILE_DISC(p) WITHIN GROUP (ORDER BY one expression)",
                      "e.g. PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY spend)"),
    exp.Placeholder: ("query parameters must be bound before planning",
                      "bind the parameter values (the client library does this)"),
    exp.Parameter: ("query parameters must be bound before planning",
                    "bind the parameter values (the client library does this)"),
}
# Inside a FROM, a CTE or a subquery, a set operation of raw rows combines them before
# they are aggregated: one unit's rows could count in several branches, beyond its
# bound.  At the top of a statement, or as the one source of an outer SELECT when every
# branch is a DP query of its own, it combines released results instead: those shapes
# are answered before this check runs (gateway/query/compound.py).
_SET_OPERATION = (
    "UNION, INTERSECT and EXCEPT are supported only at the top of a statement, between "
    "aggregate SELECTs, or as the one source in FROM of an outer SELECT when every one "
    "of them aggregates (inside a FROM, CTE or subquery raw rows would be combined, and "
    "one user's rows could count in several branches)",
    "aggregate each part on its own and combine the results: SELECT ... UNION ALL "
    "SELECT ... [ORDER BY ... LIMIT ...], or SELECT ... FROM (SELECT ... UNION ALL "
    "SELECT ...) AS t [WHERE ...]")
_EXPLAINED.update({exp.Union: _SET_OPERATION, exp.Intersect: _SET_OPERATION,
                   exp.Except: _SET_OPERATION})


def validate(tree: exp.Select, sql: str, table_names: TableNames | Iterable[str],
             dialect: str = "duckdb") -> exp.Select:
    """Return a normalised copy of ``tree`` or raise QueryRejected.

    ``table_names`` resolves the policy's tables as queries may write them
    (:class:`gateway.sql.names.TableNames`; bare names are accepted too); CTE names
    are added per WITH clause.  Identifiers are folded as PostgreSQL folds them,
    whatever ``dialect`` the text was parsed in.
    """
    del dialect  # the same folding for every dialect the gateway reads
    names = TableNames.coerce(table_names)
    tree = _name_subqueries(_spread_functions(_within_group_as_calls(
        _parenthesized_tables(tree.copy())), sql))
    cte_names = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    for with_ in tree.find_all(exp.With):
        _check_with(with_, sql)
    for node in tree.walk():
        _check_node(node, sql, names, cte_names)
    # Unquoted identifiers fold to lower case (one spelling, so equivalent queries
    # share cached answers); quoted ones keep theirs, and a quoted name must match
    # exactly, as in PostgreSQL (gateway/sql/names.py, Scope.resolve).
    tree = normalize_identifiers(tree, dialect="postgres")
    return _unqualify(_make_casts_total(_to_char_as_strftime(tree)), names, sql)


def _spread_functions(tree: exp.Select, sql: str) -> exp.Select:
    """VAR(x), STD(x), VARP(x), STDEVP(x), ... become the variance and standard
    deviation nodes the planner knows (:data:`SPREAD_FUNCTIONS`)."""
    for node in list(tree.find_all(exp.Anonymous)):
        quantile = QUANTILE_FUNCTIONS.get(node.name.lower())
        if quantile is not None and len(node.expressions) == 2:
            # QUANTILE_CONT(x, p) as PostgreSQL-dialect text (the pgwire proxy) reads it.
            new_q = quantile(this=node.expressions[0], expression=node.expressions[1])
            new_q.meta.update(node.meta)
            node.replace(new_q)
            continue
        kind = SPREAD_FUNCTIONS.get(node.name.lower())
        if kind is None:
            continue
        if len(node.expressions) != 1:
            raise _reject(node, sql, f"{node.name.upper()} takes one argument",
                          f"write {node.name.upper()}(expression)", rule="aggregate")
        new = kind(this=node.expressions[0])
        new.meta.update(node.meta)
        node.replace(new)
    return tree


def _name_subqueries(tree: exp.Select) -> exp.Select:
    """A subquery in FROM or JOIN without an alias (``FROM (SELECT ...)``, which
    PostgreSQL 16 and DuckDB accept) is given one that no name in the query uses."""
    unnamed = [s for s in tree.find_all(exp.Subquery)
               if isinstance(s.parent, exp.From | exp.Join) and not s.alias]
    if not unnamed:
        return tree
    used = {i.name.lower() for i in tree.find_all(exp.Identifier)}
    n = 1
    for sub in unnamed:
        name = UNNAMED_SUBQUERY
        while name in used:
            n += 1
            name = f"{UNNAMED_SUBQUERY}_{n}"
        used.add(name)
        sub.set("alias", exp.TableAlias(this=exp.to_identifier(name)))
    return tree


_QUANTILE_LISTS = (exp.PercentileCont, exp.PercentileDisc, exp.Quantile, exp.ApproxQuantile)


def _parenthesized_tables(tree: exp.Select) -> exp.Select:
    """``FROM (visits) AS v`` is the table itself (sqlglot reads it as a subquery)."""

    def rewrite(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Subquery) and isinstance(node.this, exp.Table) and \
                not node.this.args.get("alias"):
            table = node.this.copy()
            alias = node.args.get("alias")
            if alias is not None:
                table.set("alias", alias.copy())
            return table
        return node

    return tree.transform(rewrite)  # type: ignore[return-value]


def _within_group_as_calls(tree: exp.Select) -> exp.Select:
    """PERCENTILE_CONT(p) WITHIN GROUP (ORDER BY x [DESC]) -> PERCENTILE_CONT(x, p'),
    the form the planner reads (p' = 1 - p for DESC).  Other WITHIN GROUP forms stay,
    and are refused with a reason."""

    def rewrite(node: exp.Expr) -> exp.Expr:
        if not isinstance(node, exp.WithinGroup):
            return node
        func, order = node.this, node.expression
        if not isinstance(func, exp.PercentileCont | exp.PercentileDisc) or \
                not isinstance(order, exp.Order) or len(order.expressions) != 1:
            return node
        ordered = order.expressions[0]
        rank = func.this
        if ordered.args.get("desc"):
            if not isinstance(rank, exp.Literal) or rank.is_string:
                return node
            rank = exp.Literal.number(repr(1.0 - float(rank.this)))
        return type(func)(this=ordered.this.copy(), expression=rank.copy())

    return tree.transform(rewrite)  # type: ignore[return-value]


def _check_node(node: exp.Expr, sql: str, tables: TableNames, ctes: set[str]) -> None:
    kind = type(node)
    if isinstance(node, exp.Array) and isinstance(node.parent, _QUANTILE_LISTS) and \
            node.arg_key in ("expression", "quantile"):
        return  # QUANTILE_CONT(x, [0.25, 0.5]): ranks, checked to be literals by the planner
    if isinstance(node, exp.Anonymous):
        name = node.name.lower()
        if name in ALLOWED_ANONYMOUS:
            if name in ("date_part", "datepart"):
                _check_date_part(node, sql)
            return
        raise _reject(node, sql, f"function {node.name}() is not allowed",
                      "only total, side-effect-free functions are allowed (arithmetic, CASE, "
                      "COALESCE, LOWER/UPPER, SUBSTRING, DATE_TRUNC, EXTRACT, ROUND, ...)",
                      rule="function")
    if isinstance(node, exp.AggFunc) and kind not in AGGREGATES:
        raise _reject(node, sql, f"aggregate {_func_name(node)} is not supported",
                      "supported aggregates: " + ", ".join(SUPPORTED_AGGREGATES),
                      rule="aggregate")
    if isinstance(node, AGGREGATES):
        _check_not_nested(node, sql)
    if kind in _EXPLAINED:
        msg, hint = _EXPLAINED[kind]
        rule = "aggregate" if kind is exp.WithinGroup else \
            "set_operation" if issubclass(kind, exp.SetOperation) else kind.__name__.lower()
        raise _reject(node, sql, msg, hint, rule=rule)
    if kind not in ALLOWED_NODES:
        if isinstance(node, exp.Func):
            raise _reject(node, sql, f"function {_func_name(node)}() is not allowed",
                          "only total, side-effect-free functions are allowed (arithmetic, "
                          "CASE, COALESCE, LOWER/UPPER, SUBSTRING, DATE_TRUNC, EXTRACT, ...)",
                          rule="function")
        raise _reject(node, sql, f"{_describe(node)} is not allowed in a query",
                      "write a single aggregate SELECT over the policy's tables",
                      rule="syntax")
    if isinstance(node, exp.Subquery) and not isinstance(node.parent, exp.From | exp.Join):
        raise _reject(node, sql, "subqueries are only allowed in FROM and JOIN",
                      "join the table in FROM instead of using a subquery in an expression",
                      rule="subquery")
    if isinstance(node, exp.Select) and node.parent is not None and not isinstance(
        node.parent, exp.Subquery | exp.CTE
    ):
        raise _reject(node, sql, "subqueries are only allowed in FROM and JOIN",
                      "join the table in FROM instead", rule="subquery")
    if isinstance(node, exp.Table):
        _check_table(node, sql, tables, ctes)
    elif isinstance(node, exp.Join):
        if node.args.get("method") or node.kind in ("CROSS APPLY", "OUTER APPLY"):
            raise _reject(node, sql, "this kind of join is not supported",
                          "use INNER or LEFT JOIN ... ON", rule="join")
        if node.args.get("match_condition"):
            raise _reject(node, sql, "ASOF joins are not supported", "use JOIN ... ON",
                          rule="join")
    elif isinstance(node, exp.TimeToStr | exp.ToChar):
        fmt = node.args.get("format")
        if not (isinstance(fmt, exp.Literal) and fmt.is_string) or node.args.get("zone"):
            raise _reject(node, sql, "the format of TO_CHAR/STRFTIME must be a constant string",
                          "write the format as a literal, e.g. TO_CHAR(d, 'YYYY-MM')",
                          rule="function")
    elif isinstance(node, exp.Distinct):
        if not isinstance(node.parent, exp.Count | exp.Select):
            raise _reject(node, sql, "DISTINCT is only supported as COUNT(DISTINCT <unit>) or "
                          "SELECT DISTINCT", "remove DISTINCT", rule="distinct")
        if node.args.get("on"):
            raise _reject(node, sql, "DISTINCT ON is not supported", "use GROUP BY",
                          rule="distinct")
    elif isinstance(node, exp.DataType):
        if node.this not in _CAST_TYPES:
            raise _reject(node, sql, f"casting to {node.sql()} is not supported",
                          "cast to INT, BIGINT, DOUBLE, DECIMAL, VARCHAR, BOOLEAN, DATE or "
                          "TIMESTAMP", rule="cast")
    elif isinstance(node, exp.Select):
        for key in ("into", "kind", "sample", "qualify", "windows", "laterals", "pivots",
                    "connect", "prewhere", "settings", "format", "locks", "match"):
            if node.args.get(key):
                raise _reject(node, sql, f"{key.upper()} is not supported in a query",
                              "remove it", rule="syntax")
    elif isinstance(node, exp.Group):
        for key in ("grouping_sets", "cube", "rollup", "totals"):
            if node.args.get(key):
                raise _reject(node, sql, f"GROUP BY {key.upper()} is not supported",
                              "send one query per grouping", rule="group")
        if node.args.get("all"):
            raise _reject(node, sql, "GROUP BY ALL is not supported",
                          "list the grouping columns", rule="group")
    elif isinstance(node, exp.Ordered) and isinstance(node.parent, exp.Order) and not isinstance(
        node.parent.parent, exp.Select
    ):
        raise _reject(node, sql, "ORDER BY inside a function is not supported", "remove it",
                      rule="syntax")
    elif isinstance(node, exp.Limit | exp.Offset):
        _check_row_count(node, sql)
        options = node.args.get("limit_options")
        if options is not None and (options.args.get("percent") or
                                    options.args.get("with_ties")):
            raise _reject(node, sql, "LIMIT / TOP with PERCENT or WITH TIES is not supported",
                          "give a number of rows, e.g. LIMIT 10 or TOP 10", rule="syntax")
    elif isinstance(node, exp.Round):
        _check_round_digits(node, sql)
    elif isinstance(node, exp.TimestampTrunc | exp.DateTrunc | exp.Extract):
        _check_date_part(node, sql)
    elif isinstance(node, exp.Star) and isinstance(node.parent, exp.Column):
        return
    elif isinstance(node, exp.Column) and (node.args.get("db") is not None or
                                           node.args.get("catalog") is not None):
        _check_column_qualifier(node, sql, tables)


def _check_table(node: exp.Table, sql: str, tables: TableNames, ctes: set[str]) -> None:
    if not isinstance(node.this, exp.Identifier):
        raise _reject(node, sql, "table functions are not allowed",
                      "query the tables the policy declares (see /v1/schema)",
                      rule="table_function")
    for key in ("joins", "laterals", "pivots", "sample", "version", "when", "changes"):
        if node.args.get(key):
            raise _reject(node, sql, f"{key.upper()} on a table is not supported",
                          "remove it", rule="syntax")
    qualified = node.args.get("db") is not None or node.args.get("catalog") is not None
    name = node.name.lower()
    visible = _visible_ctes(node)
    if not qualified and name in visible:
        return
    if name in ctes and name not in tables:
        raise _reject(node, sql, f"{node.name!r} is used before the WITH clause defines it",
                      "define each CTE before the CTEs that use it (RECURSIVE is not "
                      "supported)", rule="syntax")
    if name not in tables:
        what = node.sql(dialect="postgres") if qualified else repr(node.name)
        raise _reject(node, sql, f"unknown table {what}",
                      "query one of: " + ", ".join(sorted(tables.declared.values())),
                      rule="table")
    declared = tables.lookup(node.name, bool(node.this.quoted))
    if declared is None:
        right = tables.declared[name]
        raise _reject(node, sql, f'the quoted name "{node.name}" does not match the table '
                      f'"{right}": quoted names are compared exactly, as in PostgreSQL',
                      f'write "{right}", or {node.name} without quotes (unquoted names '
                      "ignore case)", rule="table")
    if qualified and not tables.qualified_ok(node, declared):
        raise _reject(node, sql, f"table {node.sql(dialect='postgres')} names a schema or "
                      "catalog the gateway does not know",
                      f"write it as one of: {tables.accepted(declared)} (accepted "
                      f"qualifiers: {tables.qualifier_words()})", rule="table")
    if qualified and name in visible:
        raise _reject(node, sql, f"the CTE {node.name!r} hides the table {node.sql()}",
                      "give the CTE another name", rule="table")


def _check_column_qualifier(node: exp.Column, sql: str, tables: TableNames) -> None:
    """``schema.table.column`` (and ``catalog.schema.table.column``): the table part
    must name a policy table and the qualifiers must be accepted for it."""
    table = node.args.get("table")
    declared = tables.lookup(table.name, bool(table.quoted)) \
        if isinstance(table, exp.Identifier) else None
    if declared is None or not tables.qualified_ok(node, declared):
        raise _reject(node, sql, f"column {node.sql(dialect='postgres')} names a schema or "
                      "table the gateway does not know",
                      "write table.column or alias.column (accepted schema qualifiers: "
                      f"{tables.qualifier_words()})", rule="column")


def _check_with(with_: exp.With, sql: str) -> None:
    if with_.args.get("recursive"):
        raise _reject(with_, sql, "recursive CTEs are not supported",
                      "remove RECURSIVE; a CTE may use the CTEs defined before it",
                      rule="syntax")
    seen: set[str] = set()
    for cte in with_.expressions:
        name = cte.alias_or_name.lower()
        if name in seen:
            raise _reject(cte, sql, f"the WITH clause defines {cte.alias_or_name!r} twice",
                          "give each CTE its own name", rule="syntax")
        seen.add(name)


def _visible_ctes(node: exp.Expr) -> set[str]:
    """Names of the CTEs a table reference at ``node`` can see: inside a CTE only the
    ones defined before it (the engine's rule for non-recursive WITH), elsewhere all
    of the enclosing WITH clauses'."""
    names: set[str] = set()
    child, parent = node, node.parent
    while parent is not None:
        if isinstance(parent, exp.With):
            for cte in parent.expressions:
                if cte is child:
                    break
                names.add(cte.alias_or_name.lower())
        elif isinstance(parent, exp.Query):
            with_ = parent.args.get("with_")
            if with_ is not None and with_ is not child:
                names.update(cte.alias_or_name.lower() for cte in with_.expressions)
        child, parent = parent, parent.parent
    return names


def _check_not_nested(node: exp.Expr, sql: str) -> None:
    """An aggregate may not sit inside another aggregate or in a FILTER (WHERE ...)."""
    child, parent = node, node.parent
    while parent is not None and not isinstance(parent, exp.Query):
        if isinstance(parent, AGGREGATES) or (
            isinstance(parent, exp.Filter) and child is parent.args.get("expression")
        ):
            raise _reject(node, sql, "aggregates cannot be nested (in another aggregate or "
                          "in FILTER (WHERE ...))",
                          "aggregate once; filter rows with FILTER (WHERE <row condition>) "
                          "and aggregates with HAVING", rule="aggregate")
        child, parent = parent, parent.parent


def _check_row_count(node: exp.Expr, sql: str) -> None:
    value = node.args.get("expression")
    if not (isinstance(value, exp.Literal) and not value.is_string and value.is_int
            and 0 <= int(value.this) <= _INT64_MAX):
        word = "LIMIT" if isinstance(node, exp.Limit) else "OFFSET"
        what = "LIMIT (or TOP)" if word == "LIMIT" else word
        raise _reject(node, sql, f"{what} must be a non-negative whole number",
                      f"write e.g. {word} 10", rule="syntax")


def _int_constant(node: exp.Expr | None) -> bool:
    if isinstance(node, exp.Neg):
        node = node.this
    return isinstance(node, exp.Literal) and not node.is_string and node.is_int and \
        abs(int(node.this)) <= 38


def _check_round_digits(node: exp.Round, sql: str) -> None:
    digits = node.args.get("decimals")
    if digits is not None and not _int_constant(digits):
        raise _reject(node, sql, "the number of digits of ROUND must be a whole-number "
                      "constant", "write e.g. ROUND(x, 2)", rule="function")


def _check_date_part(node: exp.Expr, sql: str) -> None:
    if isinstance(node, exp.Anonymous):
        args = node.expressions
        part = args[0] if args else None
        if len(args) != 2 or not (isinstance(part, exp.Literal) and part.is_string):
            raise _reject(node, sql, f"{node.name.upper()} needs a constant date part",
                          f"write e.g. {node.name.upper()}('month', visit_date)",
                          rule="function")
        name, allowed = part.name.lower(), _EXTRACT_PARTS
    elif isinstance(node, exp.Extract):
        part = node.this
        name, allowed = part.name.lower(), _EXTRACT_PARTS
    else:
        part = node.args.get("unit")
        name, allowed = (part.name.lower() if part is not None else ""), _TRUNC_PARTS
    if not isinstance(part, exp.Var | exp.Literal) or name not in allowed:
        what = "DATE_TRUNC" if allowed is _TRUNC_PARTS else "EXTRACT / DATE_PART"
        raise _reject(node, sql, f"{part.sql() if part is not None else 'no'} is not a date "
                      f"part {what} accepts",
                      "use a constant part such as 'year', 'quarter', 'month', 'week', "
                      "'day' or 'hour'", rule="function")


def _unqualify(tree: exp.Select, tables: TableNames, sql: str) -> exp.Select:
    """Drop the (accepted) schema and catalog of tables and columns: ``public.visits``
    is the policy table ``visits`` whatever schema the engine keeps it in.  Every
    qualifier was checked by :func:`_check_table` and :func:`_check_column_qualifier`
    (tables the same name as a visible CTE were refused), so nothing changes meaning."""
    for node in list(tree.find_all(exp.Table, exp.Column)):
        if node.args.get("db") is None and node.args.get("catalog") is None:
            continue
        if isinstance(node, exp.Column):
            _check_column_qualifier(node, sql, tables)
        node.set("db", None)
        node.set("catalog", None)
    return tree


def _to_char_as_strftime(tree: exp.Select) -> exp.Select:
    """TO_CHAR(d, 'YYYY-MM') with a PostgreSQL format is STRFTIME(d, '%Y-%m') (the
    PostgreSQL dialect parses it that way already; DuckDB's keeps TO_CHAR)."""
    from sqlglot.dialects.postgres import Postgres
    from sqlglot.time import format_time

    def fix(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.ToChar) and isinstance(node.args.get("format"), exp.Literal):
            fmt = node.args["format"]
            text = format_time(fmt.name, Postgres.TIME_MAPPING, Postgres.TIME_TRIE) or ""
            return exp.TimeToStr(this=node.this, format=exp.Literal.string(text))
        return node

    return tree.transform(fix, copy=False)  # type: ignore[return-value]


def _make_casts_total(tree: exp.Select) -> exp.Select:
    """CAST of anything but a constant becomes TRY_CAST (a failed conversion -> NULL)."""

    def fix(node: exp.Expr) -> exp.Expr:
        if type(node) is exp.Cast and not _is_constant(node.this):
            return exp.TryCast(this=node.this, to=node.args["to"])
        return node

    return tree.transform(fix, copy=False)  # type: ignore[return-value]


def _is_constant(node: exp.Expr) -> bool:
    return not any(isinstance(n, exp.Column | exp.Star | exp.Select) for n in node.walk())


def _func_name(node: exp.Expr) -> str:
    if isinstance(node, exp.Anonymous):
        return node.name.upper()
    if isinstance(node, exp.Func):
        return node.sql_name()
    return type(node).__name__.upper()


def _describe(node: exp.Expr) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", " ", type(node).__name__).upper()


def span_of(node: exp.Expr, sql: str) -> Span | None:
    """Best-effort character span of ``node`` in the original text."""
    starts, ends = [], []
    for n in node.walk():
        meta = n.meta if hasattr(n, "_meta") and n._meta else {}
        if "start" in meta and "end" in meta:
            starts.append(int(meta["start"]))
            ends.append(int(meta["end"]) + 1)
    if starts:
        start, end = min(starts), max(ends)
        if isinstance(node, exp.Func):
            name = _func_name(node).split("(")[0]
            found = sql.lower().rfind(name.lower(), 0, start)
            if found != -1:
                start = found
            close = sql.find(")", end)
            if close != -1 and sql[end:close].strip() == "":
                end = close + 1
        return Span(start, end, sql[start:end])
    text = node.sql(dialect="duckdb")
    found = sql.lower().find(text.lower())
    if found == -1:
        return None
    return Span(found, found + len(text), sql[found:found + len(text)])


def _reject(node: exp.Expr, sql: str, msg: str, hint: str, *, rule: str) -> QueryRejected:
    return QueryRejected(msg, hint=hint, rule=rule, span=span_of(node, sql))
