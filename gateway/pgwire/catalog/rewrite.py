"""Rewrite a PostgreSQL catalog query into DuckDB SQL over the emulated catalog.

Small passes over a sqlglot tree (parsed as PostgreSQL):

* output names: unaliased SELECT items get the name PostgreSQL would give them
  (``version``, ``count``, ``?column?``), as clients look columns up by name;
* relations: ``pg_catalog.x`` / ``x`` -> ``pgc.x``, ``information_schema.x`` ->
  ``pgi.x``, policy tables -> their *empty* copies; anything else is refused;
* ``reg*`` casts: a literal (``'pg_class'::regclass``) becomes its OID at rewrite
  time, a column (``oid::regclass``) a name lookup, and comparisons between reg
  values compare OIDs;
* session values (``current_user``, ``current_setting('x')``, ``version()``,
  ``pg_settings``) are inlined as literals; other catalog functions become the
  macros of :mod:`gateway.pgwire.catalog.functions`;
* PostgreSQL-only syntax (``OPERATOR(pg_catalog.~)``, ``COLLATE "C"``, array
  literals like ``'{r,p}'``) becomes its DuckDB equivalent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlglot import exp

from gateway.pgwire.catalog.functions import CAST_TYPES, FUNCTIONS, Lookups
from gateway.pgwire.catalog.tables import ALIASES, SESSION_TABLES, TABLES
from gateway.pgwire.errors import UNDEFINED_FUNCTION, UNDEFINED_TABLE, PgError
from gateway.pgwire.types import parse_array_text
from gateway.sql.names import TableNames

REG_TYPES = frozenset({"regclass", "regtype", "regproc", "regprocedure", "regnamespace",
                       "regrole", "regoper", "regoperator", "regconfig", "regdictionary",
                       "regcollation"})
_NAME_FN = {"regclass": "pgw_regclass_name", "regtype": "pgw_regtype_name",
            "regproc": "pgw_regproc_name", "regprocedure": "pgw_regproc_name",
            "regnamespace": "pgw_regnamespace_name", "regrole": "pgw_regrole_name"}

_TO_FN = {"regclass": "pgw_to_regclass", "regtype": "pgw_to_regtype",
          "regproc": "pgw_to_regproc", "regprocedure": "pgw_to_regproc",
          "regnamespace": "pgw_to_regnamespace", "regrole": "pgw_to_regrole"}
_TEXT_FUNCTIONS = frozenset({"pgw_null", "pgw_quote_ident", "pgw_quote_literal",
                             "pgw_format_type", "pgw_get_userbyid", "concat", "format",
                             "lower", "upper", "trim", "replace", "btrim"})


def _texty(node: exp.Expr) -> bool:
    """Is this expression certainly text (so a reg cast of it looks a name up)?"""
    if isinstance(node, exp.DPipe | exp.Concat | exp.Lower | exp.Upper | exp.Trim):
        return True
    if isinstance(node, exp.Cast):
        return _type_name(node.to)[0] in ("text", "varchar", "name", "bpchar", "char")
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower() in _TEXT_FUNCTIONS or str(node.this) in _NAME_FN.values()
    return False


# OID columns that PostgreSQL lets one compare with an object's name.
_OID_COLUMNS = {name: "regnamespace" for name in (
    "relnamespace", "typnamespace", "pronamespace", "connamespace", "collnamespace",
    "nspoid", "extnamespace", "stxnamespace", "opcnamespace", "oprnamespace")}
_OID_COLUMNS.update({name: "regclass" for name in (
    "attrelid", "conrelid", "confrelid", "indrelid", "indexrelid", "adrelid", "polrelid",
    "stxrelid", "inhrelid", "inhparent", "prrelid", "typrelid", "tgrelid", "ev_class",
    "partrelid", "ftrelid", "seqrelid", "objoid", "classoid", "refobjid", "relid")})

# Table functions a catalog query may call (everything else is refused).
TABLE_FUNCTIONS = frozenset({"generate_series", "unnest", "generate_subscripts",
                             "pgw_get_keywords", "regexp_split_to_table", "string_to_table",
                             "range"})

_FUNC_NAMES: dict[type[exp.Expr], str] = {
    exp.Count: "count", exp.Sum: "sum", exp.Avg: "avg", exp.Min: "min", exp.Max: "max",
    exp.ArrayAgg: "array_agg", exp.GroupConcat: "string_agg", exp.CurrentUser: "current_user",
    exp.SessionUser: "session_user", exp.CurrentSchema: "current_schema",
    exp.CurrentSchemas: "current_schemas", exp.CurrentDatabase: "current_database",
    exp.CurrentCatalog: "current_catalog", exp.CurrentVersion: "version",
    exp.Coalesce: "coalesce", exp.ArraySize: "array_length", exp.Explode: "unnest",
    exp.CurrentTimestamp: "now", exp.StringToArray: "string_to_array",
    exp.ArrayToString: "array_to_string",
}


@dataclass(frozen=True)
class SessionInfo:
    """What a catalog query may learn about its own session."""

    user: str
    database: str
    pid: int
    started: dt.datetime
    setting: Callable[[str], str | None]
    settings: Sequence[tuple[str, str]] = field(default_factory=tuple)
    version: str = "PostgreSQL 16.4"


def pg_name(item: exp.Expr) -> str:
    """PostgreSQL's FigureColname for a SELECT item (simplified)."""
    node = item.unnest()
    while isinstance(node, exp.Cast | exp.TryCast):
        inner = node.this.unnest()
        if isinstance(inner, exp.Literal | exp.Null | exp.Boolean):
            to = node.to
            return (to.sql(dialect="postgres").lower().split(".")[-1]
                    if isinstance(to, exp.Expr) else "?column?")
        node = inner
    if isinstance(node, exp.Column):
        return node.name if not isinstance(node.this, exp.Star) else "?column?"
    if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Expr):
        return pg_name(node.expression)
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    for kind, name in _FUNC_NAMES.items():
        if type(node) is kind:
            return name
    if isinstance(node, exp.Case):
        return "case"
    if isinstance(node, exp.Array):
        return "array"
    if isinstance(node, exp.Func):
        return node.sql_name().lower()
    return "?column?"


def _name_outputs(tree: exp.Expr) -> None:
    for select in tree.find_all(exp.Select):
        items: list[exp.Expr] = []
        for item in select.expressions:
            if isinstance(item, exp.Alias | exp.Column | exp.Star) or (
                    isinstance(item, exp.Dot) and isinstance(item.expression, exp.Star)):
                items.append(item)
            else:
                items.append(exp.alias_(item, pg_name(item), quoted=True))
        select.set("expressions", items)


def _type_name(to: exp.Expr | None) -> tuple[str, bool]:
    """(lower-case type name without schema, is-array) of a cast target."""
    if isinstance(to, exp.ObjectIdentifier):
        return str(to.this).lower(), False
    if not isinstance(to, exp.DataType):
        return "", False
    if to.this == exp.DataType.Type.ARRAY and to.expressions:
        inner, _ = _type_name(to.expressions[0])
        return inner, True
    if to.this == exp.DataType.Type.USERDEFINED:
        kind = to.args.get("kind")
        if isinstance(kind, exp.Dot):
            return kind.expression.name.lower(), False
        if isinstance(kind, exp.Expr):
            return kind.name.lower(), False
        return "", False
    return to.this.value.lower(), False


def _string(node: exp.Expr) -> str | None:
    if isinstance(node, exp.Literal) and node.is_string:
        return str(node.this)
    if isinstance(node, exp.Literal):
        return str(node.this)
    return None


def _const_string(node: exp.Expr) -> str | None:
    """A string constant, also when cast (``'x'::varchar``, as drivers bind parameters)."""
    while isinstance(node, exp.Cast | exp.Paren):
        node = node.this
    return _string(node) if isinstance(node, exp.Literal) else None


def _uint(value: int | None) -> exp.Expr:
    inner: exp.Expr = exp.Null() if value is None else exp.Literal.number(value)
    return exp.Cast(this=inner, to=exp.DataType.build("UINTEGER", dialect="duckdb"))


def _str_list(values: Sequence[str | None]) -> exp.Expr:
    return exp.Array(expressions=[exp.Null() if v is None else exp.Literal.string(v)
                                  for v in values])


class Rewriter:
    """Turns one parsed catalog query into DuckDB SQL for the metadata database."""

    def __init__(self, lookups: Lookups, policy_tables: dict[str, str], views: set[str],
                 info_views: set[str], names: TableNames | None = None) -> None:
        self.lk = lookups
        self.policy_tables = policy_tables  # lower-case name -> declared name
        # The core's resolver: which schema/catalog qualifiers name a policy table.
        self.names = names
        self.pg_relations = set(TABLES) | views
        self.info_views = info_views

    def to_duckdb(self, tree: exp.Expr, info: SessionInfo) -> str:
        tree = tree.copy()
        _name_outputs(tree)
        ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
        tree = self._compare_oids(tree)
        tree = _post_order(tree, lambda n: self._node(n, info, ctes))
        return tree.sql(dialect="duckdb")

    # -- passes ---------------------------------------------------------------------------

    def _compare_oids(self, tree: exp.Expr) -> exp.Expr:
        """``a::regclass = 'x'::regclass``: compare OIDs, not names; and an OID column
        compared with a name (``relnamespace = 'public'``) compares with its OID."""
        for node in list(tree.find_all(exp.EQ, exp.NEQ)):
            col, lit = node.this, node.expression
            if isinstance(lit, exp.Column) and isinstance(col, exp.Literal):
                col, lit = lit, col
            text = _string(lit) if isinstance(lit, exp.Literal) and lit.is_string else None
            if isinstance(col, exp.Column) and text is not None and not text.isdigit():
                kind = _OID_COLUMNS.get(col.name.lower())
                if kind is not None:
                    lit.replace(_uint(self.lk.resolve(kind, text)))
        for cmp in list(tree.find_all(exp.EQ, exp.NEQ, exp.In)):
            operands = [cmp.this] + ([cmp.expression] if not isinstance(cmp, exp.In)
                                     else list(cmp.expressions))
            for op in operands:
                if isinstance(op, exp.Cast) and _type_name(op.to)[0] in REG_TYPES \
                        and _string(op.this) is None:
                    op.replace(op.this)
        return tree

    def _node(self, node: exp.Expr, info: SessionInfo, ctes: set[str]
              ) -> exp.Expr:
        if isinstance(node, exp.Table):
            return self._table(node, info, ctes)
        if isinstance(node, exp.Column):
            return self._column(node, info)
        if isinstance(node, exp.Cast):
            return self._cast(node)
        if isinstance(node, exp.Dot) and isinstance(node.this, exp.Identifier) \
                and node.this.name.lower() in ("pg_catalog", "information_schema"):
            return node.expression  # pg_catalog.fn(...): already rewritten
        if isinstance(node, exp.Operator):
            return self._operator(node)
        if isinstance(node, exp.Collate):
            return node.this
        if isinstance(node, exp.Any | exp.All):
            return self._any(node)
        if isinstance(node, exp.Func):
            return self._function(node, info)
        return node

    def _table(self, node: exp.Table, info: SessionInfo, ctes: set[str]) -> exp.Expr:
        if not isinstance(node.this, exp.Identifier):
            return self._table_function(node)
        name = node.name
        key = name if node.this.quoted else name.lower()
        schema = node.db.lower() if node.db else ""
        policy_table = self._policy_table(node, key)
        if node.catalog and policy_table is None:
            raise PgError("0A000", "cross-database references are not implemented: "
                          f"{node.sql(dialect='postgres')}")
        if not schema and key.lower() in ctes:
            return node
        alias = node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(name))
        if schema in ("", "pg_catalog"):
            key = ALIASES.get(key, key)
            if key in SESSION_TABLES:
                return self._settings_table(info, alias)
            if key in self.pg_relations:
                return exp.Table(this=exp.to_identifier(key), db=exp.to_identifier("pgc"),
                                 alias=alias)
        if schema == "information_schema" and key in self.info_views:
            return exp.Table(this=exp.to_identifier(key), db=exp.to_identifier("pgi"),
                             alias=alias)
        if policy_table is not None:
            return exp.Table(this=exp.to_identifier(policy_table, quoted=True),
                             db=exp.to_identifier("main"), alias=alias)
        shown = f"{schema}.{name}" if schema else name
        raise PgError(UNDEFINED_TABLE, f'relation "{shown}" does not exist')

    def _policy_table(self, node: exp.Table, key: str) -> str | None:
        """The declared name of the policy table ``node`` names with an accepted
        qualifier (public., main., the dataset, the table's own schema), or None."""
        declared = self.policy_tables.get(key.lower())
        if declared is None:
            return None
        if not node.db and not node.catalog:
            return declared
        if self.names is not None:
            return declared if self.names.qualified_ok(node, declared) else None
        return declared if node.db.lower() == "public" and not node.catalog else None

    def _table_function(self, node: exp.Table) -> exp.Expr:
        """``FROM f(...) AS a``: PostgreSQL names the single output column ``a`` and
        allows scalar functions here (one row); DuckDB needs both spelled out."""
        func = node.this
        if isinstance(func, exp.Dot):  # pg_catalog.fn()
            func = func.expression
        node.set("this", func)
        node.set("db", None)
        alias = node.args.get("alias")
        if isinstance(func, exp.Anonymous):
            name = str(func.this).lower()
            func.set("this", name)
            if name not in TABLE_FUNCTIONS:
                if name.startswith("pgw_") or name in FUNCTIONS:
                    raise PgError(UNDEFINED_FUNCTION, f"function {name}() does not exist")
                raise PgError(UNDEFINED_FUNCTION, f"function {name}() does not exist",
                              hint="catalog queries may call generate_series, unnest, "
                              "generate_subscripts and pg_get_keywords in FROM")
        elif not isinstance(func, exp.Func):
            return node
        table_fn = isinstance(func, exp.Anonymous | exp.ExplodingGenerateSeries | exp.Explode
                              | exp.Unnest | exp.GenerateSeries)
        if isinstance(alias, exp.TableAlias) and not alias.columns and alias.this:
            if not table_fn:
                item = exp.alias_(func, alias.name, quoted=True)
                return exp.Subquery(this=exp.select(item), alias=alias)
            if not isinstance(func, exp.Anonymous) or str(func.this) != "pgw_get_keywords":
                alias.set("columns", [exp.to_identifier(alias.name)])
        elif not table_fn:
            name = pg_name(func)
            return exp.Subquery(this=exp.select(exp.alias_(func, name, quoted=True)),
                                alias=exp.TableAlias(this=exp.to_identifier(name)))
        return node

    def _settings_table(self, info: SessionInfo, alias: exp.TableAlias) -> exp.Expr:
        rows = ", ".join(
            f"({_lit(n)}, {_lit(v)}, NULL, 'Gateway', NULL, NULL, 'user', 'string', "
            f"'session', NULL, NULL, NULL, {_lit(v)}, {_lit(v)}, NULL, NULL, false)"
            for n, v in info.settings) or "(NULL" + ", NULL" * 16 + ")"
        cols = _SETTINGS_COLUMNS
        sql = (f"SELECT {', '.join(cols[:11])}, CAST(enumvals AS VARCHAR[]) AS enumvals, "
               f"boot_val, reset_val, sourcefile, CAST(sourceline AS INTEGER) AS sourceline, "
               f"pending_restart FROM (VALUES {rows}) AS s({', '.join(cols)})")
        sub: exp.Expr = exp.maybe_parse(sql, dialect="duckdb")
        return exp.Subquery(this=sub, alias=alias)

    def _column(self, node: exp.Column, info: SessionInfo) -> exp.Expr:
        db = node.args.get("db")
        if isinstance(db, exp.Identifier) and db.name.lower() in (
                "pg_catalog", "information_schema", "public"):
            node.set("db", None)  # relations keep their own name as alias
        if not node.table and isinstance(node.this, exp.Identifier) \
                and not node.this.quoted:
            word = node.name.lower()
            if word in ("user", "current_role"):
                return exp.Literal.string(info.user)
        return node

    def _cast(self, node: exp.Cast) -> exp.Expr:
        name, is_array = _type_name(node.to)
        inner = node.this
        text = _string(inner)
        if name in ("text", "varchar", "name", "bpchar") and not is_array \
                and inner.meta.get("reg") in _NAME_FN:  # 'x'::regclass::text is 'x'
            return exp.Anonymous(this=_NAME_FN[inner.meta["reg"]], expressions=[inner])
        if name in REG_TYPES and not is_array:
            if text is not None:
                out = _uint(self.lk.resolve(name, text))
                out.meta["reg"] = name
                return out
            if isinstance(inner, exp.Cast) and _type_name(inner.to)[0] in ("oid", *REG_TYPES):
                inner = inner.this
            if _texty(inner):  # 'schema.name'::regclass computed at run time
                return exp.Anonymous(this=_TO_FN.get(name, "pgw_null_oid"), expressions=[inner])
            fn = _NAME_FN.get(name)
            if fn is None:
                return exp.Cast(this=inner, to=exp.DataType.build("VARCHAR"))
            return exp.Anonymous(this=fn, expressions=[inner])
        if (name in REG_TYPES and is_array) or (name.startswith("_") and name[1:] in REG_TYPES):
            return exp.Cast(this=inner, to=exp.DataType.build("VARCHAR[]"))
        if is_array and text is not None and text.strip().startswith("{"):
            base = CAST_TYPES.get(name, "VARCHAR" if name in ("text", "varchar") else None)
            arr = _str_list(parse_array_text(text))
            target = (base or node.to.expressions[0].sql(dialect="duckdb")) + "[]" \
                if isinstance(node.to, exp.DataType) and node.to.expressions else "VARCHAR[]"
            return exp.Cast(this=arr, to=exp.DataType.build(target, dialect="duckdb"))
        if name == "oid" and text is not None and not text.strip().isdigit():
            return _uint(self.lk.resolve("regclass", text))
        if name == "oid" and isinstance(inner, exp.Anonymous) \
                and str(inner.this) in _NAME_FN.values():
            return inner.expressions[0]  # x::regclass::oid is x
        if name in CAST_TYPES and not is_array:
            return exp.Cast(this=inner, to=exp.DataType.build(CAST_TYPES[name],
                                                              dialect="duckdb"))
        if name in CAST_TYPES and is_array:
            return exp.Cast(this=inner, to=exp.DataType.build(
                CAST_TYPES[name].rstrip("[]") + "[]", dialect="duckdb"))
        if is_array and isinstance(node.to, exp.DataType) and node.to.expressions \
                and node.to.expressions[0].this == exp.DataType.Type.USERDEFINED:
            return exp.Cast(this=inner, to=exp.DataType.build(name + "[]", dialect="postgres"))
        to = node.to
        if isinstance(to, exp.DataType) and to.this == exp.DataType.Type.USERDEFINED:
            kind = to.args.get("kind")
            if isinstance(kind, exp.Dot):  # pg_catalog.text -> text
                return exp.Cast(this=inner, to=exp.DataType.build(kind.expression.name,
                                                                  dialect="postgres"))
        return node

    def _function(self, node: exp.Func, info: SessionInfo) -> exp.Expr:
        session = {exp.CurrentUser: info.user, exp.SessionUser: info.user,
                   exp.CurrentSchema: "public", exp.CurrentDatabase: info.database,
                   exp.CurrentCatalog: info.database, exp.CurrentVersion: info.version}
        for kind, value in session.items():
            if type(node) is kind:
                return exp.Literal.string(value)
        if isinstance(node, exp.CurrentSchemas):
            implicit = node.this is not None and node.this.sql().upper() == "TRUE"
            return _str_list((["pg_catalog"] if implicit else []) + ["public"])
        if isinstance(node, exp.ArraySize):
            return exp.Anonymous(this="pgw_array_length", expressions=[
                node.this, node.expression or exp.Literal.number(1)])
        if not isinstance(node, exp.Anonymous):
            return node
        name = str(node.this).lower()
        args = list(node.expressions)
        inline = self._inline(name, args, info)
        if inline is not None:
            return inline
        if name in FUNCTIONS:
            return exp.Anonymous(this=FUNCTIONS[name], expressions=args)
        return node

    def _inline(self, name: str, args: list[exp.Expr], info: SessionInfo
                ) -> exp.Expr | None:
        if name in ("current_setting", "set_config") and args:
            key = _const_string(args[0])
            if key is None:
                raise PgError("0A000", f"{name}() needs a literal parameter name")
            if name == "set_config":
                return args[1] if len(args) > 1 else exp.Null()
            value = info.setting(key)
            if value is None:
                missing_ok = len(args) > 1 and args[1].sql().upper() == "TRUE"
                if not missing_ok:
                    raise PgError("42704", f'unrecognized configuration parameter "{key}"')
                return exp.Cast(this=exp.Null(), to=exp.DataType.build("VARCHAR"))
            return exp.Literal.string(value)
        if name in ("getpgusername", "current_user", "session_user", "current_role"):
            return exp.Literal.string(info.user)
        if name == "pg_backend_pid":
            return exp.Literal.number(info.pid)
        if name in ("version",):
            return exp.Literal.string(info.version)
        if name in ("pg_postmaster_start_time", "pg_conf_load_time", "backend_start"):
            return exp.Cast(this=exp.Literal.string(info.started.isoformat()),
                            to=exp.DataType.build("TIMESTAMPTZ", dialect="duckdb"))
        if name in ("txid_current", "pg_current_xact_id", "txid_current_if_assigned"):
            return exp.Literal.number(1)
        if name in ("inet_server_addr", "inet_client_addr"):
            return exp.Cast(this=exp.Null(), to=exp.DataType.build("VARCHAR"))
        if name in ("inet_server_port", "inet_client_port"):
            return exp.Cast(this=exp.Null(), to=exp.DataType.build("INTEGER"))
        if name == "pg_client_encoding":
            return exp.Literal.string("UTF8")
        return None

    def _operator(self, node: exp.Operator) -> exp.Expr:
        op = str(node.args.get("operator", "")).split(".")[-1].strip()
        left, right = node.this, node.expression
        simple: dict[str, type[exp.Expr]] = {
            "=": exp.EQ, "<>": exp.NEQ, "!=": exp.NEQ, "<": exp.LT, "<=": exp.LTE, ">": exp.GT,
            ">=": exp.GTE, "~~": exp.Like, "~~*": exp.ILike}
        if op in simple:
            return simple[op](this=left, expression=right)
        if op == "~":
            return exp.RegexpLike(this=left, expression=right)
        if op == "~*":
            return exp.RegexpILike(this=left, expression=right)
        if op in ("!~", "!~*"):
            cls = exp.RegexpLike if op == "!~" else exp.RegexpILike
            return exp.Not(this=cls(this=left, expression=right))
        if op == "||":
            return exp.DPipe(this=left, expression=right)
        raise PgError("0A000", f"operator {op} is not supported in catalog queries")

    def _any(self, node: exp.Any | exp.All) -> exp.Expr:
        inner = node.this.unnest() if isinstance(node.this, exp.Paren) else node.this
        text = _string(inner) if isinstance(inner, exp.Literal) else None
        if text is not None and text.strip().startswith("{"):
            node.set("this", _str_list(parse_array_text(text)))
        return node


_SETTINGS_COLUMNS = [
    "name", "setting", "unit", "category", "short_desc", "extra_desc", "context", "vartype",
    "source", "min_val", "max_val", "enumvals", "boot_val", "reset_val", "sourcefile",
    "sourceline", "pending_restart"]


def _lit(v: str | None) -> str:
    return "NULL" if v is None else "'" + v.replace("'", "''") + "'"


def _post_order(node: exp.Expr, fn: Callable[[exp.Expr], exp.Expr]
                ) -> exp.Expr:
    for key, value in list(node.args.items()):
        if isinstance(value, exp.Expr):
            new = _post_order(value, fn)
            if new is not value:
                node.set(key, new)
        elif isinstance(value, list):
            changed = [(_post_order(v, fn) if isinstance(v, exp.Expr) else v)
                       for v in value]
            if any(a is not b for a, b in zip(changed, value, strict=True)):
                node.set(key, changed)
    return fn(node)
