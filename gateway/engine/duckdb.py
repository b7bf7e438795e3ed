"""The embedded DuckDB executor.

Sources are copied into an in-memory database at open (only the declared
columns, cast to canonical types), and only then is the connection locked down:
external access off, extension loading off, configuration locked.  So nothing a
query says can read a file, reach the network or change a setting, and queries
run on a private copy that no one else can modify under them.

Two more connections hold no private data: a *shadow* with the same tables,
empty, where queries are bound and planned before anything is charged (so a
planning error cannot depend on the data), and a *scratch* connection with no
tables at all, where public values and constants are evaluated.  A tree that names
a protected table runs only with a committed charge (a ReadPermit).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
from sqlglot import exp

from gateway.engine.base import (
    CannotExpress,
    ReadPermit,
    ResultSet,
    SourceTable,
    check_expressible,
)
from gateway.errors import BackendError, InternalError, PolicyError, QueryRejected

log = logging.getLogger(__name__)

# policy type -> canonical DuckDB type a column is cast to at load.
CANONICAL = {
    "int": "BIGINT",
    "float": "DOUBLE",
    "text": "VARCHAR",
    "bool": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
}

CHECK_TIMEOUT_S = 10.0  # planning a query on the (empty) shadow database

_INT_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
              "UINTEGER", "UBIGINT", "UHUGEINT"}
_FLOAT_TYPES = {"FLOAT", "DOUBLE", "REAL"}


def policy_type(duck_type: str) -> str:
    """Map a DuckDB type name to the policy's vocabulary ('unknown' if none fits)."""
    t = duck_type.upper()
    if t.endswith("[]"):  # a list (APPROX_QUANTILES): 'float[]', ...
        inner = policy_type(t[:-2])
        return "unknown" if inner == "unknown" else inner + "[]"
    if t in _INT_TYPES:
        return "int"
    if t in _FLOAT_TYPES or t.startswith("DECIMAL"):
        return "float"
    if t == "VARCHAR" or t.startswith("VARCHAR"):
        return "text"
    if t == "BOOLEAN":
        return "bool"
    if t == "DATE":
        return "date"
    if t.startswith("TIMESTAMP"):
        return "timestamp"
    return "unknown"


# Which source types may be read as which declared type.
_COMPATIBLE = {
    "int": {"int"},
    "float": {"int", "float"},
    "text": {"text"},
    "bool": {"bool"},
    "date": {"date", "timestamp"},
    "timestamp": {"timestamp", "date"},
}


class DuckDBExecutor:
    dialect = "duckdb"
    features = frozenset({"guard", "try_cast", "isnan", "named_parameters", "qualify"})

    def __init__(
        self,
        tables: Sequence[SourceTable],
        *,
        base: Path,
        database: str | None = None,
        memory_limit: str = "4GB",
        threads: int = 2,
        policy_path: str = "policy",
    ) -> None:
        self._policy_path = policy_path
        config: dict[str, str | bool | int | float | list[str]] = {
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
            "memory_limit": memory_limit,
            "threads": threads,
        }
        self._con = duckdb.connect(":memory:", config=config)
        self._types: dict[str, dict[str, str]] = {}
        if database is not None:
            if not Path(database).exists():
                raise PolicyError(f"{policy_path}: engine.database: no such file {database}")
            self._con.execute(f"ATTACH {_quote_literal(database)} AS src (READ_ONLY)")
        for table in tables:
            self._load(table, base, database is not None)
        if database is not None:
            self._con.execute("DETACH src")
        self._protected = frozenset(t.name.lower() for t in tables if t.columns is not None)
        self._shadow = duckdb.connect(":memory:", config={
            "autoload_known_extensions": False, "autoinstall_known_extensions": False,
            "threads": 1, "memory_limit": "256MB"})
        self._scratch = duckdb.connect(":memory:", config={
            "autoload_known_extensions": False, "autoinstall_known_extensions": False,
            "threads": 1, "memory_limit": "512MB"})
        for name, types in self._types.items():
            cols = ", ".join(f"{_quote_ident(c)} {CANONICAL[t]}" for c, t in types.items())
            self._shadow.execute(f"CREATE TABLE {_quote_ident(name)} ({cols})")
        # Lock down only after every source is loaded: from here on no statement
        # can read or write a file, load an extension or change a setting.
        for con in (self._con, self._shadow, self._scratch):
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
        self._lock = threading.Lock()
        self._checked: set[str] = set()
        self._keys: dict[str, frozenset[str]] = {}

    # -- loading ---------------------------------------------------------------

    def _source_relation(self, table: SourceTable, base: Path, attached: bool,
                         csv_types: dict[str, str] | None = None) -> str:
        """The source as a relation; ``csv_types`` (real column name -> DuckDB type) makes
        a CSV reader parse those columns as the policy declares them."""
        src = table.source
        lower = src.lower()
        if lower.endswith((".parquet", ".csv", ".tsv", ".json", ".jsonl", ".ndjson")):
            path = Path(src) if Path(src).is_absolute() else (base / src).resolve()
            if not path.exists():
                raise PolicyError(
                    f"{self._policy_path}: tables.{table.name}.source: file {path} does not "
                    f"exist; fix the path (relative paths resolve against the policy's folder)"
                    f" or run `gateway sample-data`"
                )
            if lower.endswith(".parquet"):
                return f"read_parquet({_quote_literal(str(path))})"
            if lower.endswith((".json", ".jsonl", ".ndjson")):
                return f"read_json_auto({_quote_literal(str(path))})"
            types = ""
            if csv_types:
                types = ", types = {" + ", ".join(
                    f"{_quote_literal(c)}: {_quote_literal(t)}" for c, t in csv_types.items()
                ) + "}"
            return f"read_csv_auto({_quote_literal(str(path))}, header = true{types})"
        if not attached:
            raise PolicyError(
                f"{self._policy_path}: tables.{table.name}.source: {src!r} is neither a "
                f".parquet/.csv/.json file nor a table of an engine.database; give a file path "
                f"or set engine.database to a DuckDB file"
            )
        return f"src.{_quote_ident(src)}"

    def _load(self, table: SourceTable, base: Path, attached: bool) -> None:
        relation = self._source_relation(table, base, attached)
        try:
            described = self._con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
            if table.columns is not None and _is_csv(table.source):
                # A protected table's columns are typed as the policy declares them, not
                # as the CSV sniffer guesses (an empty column would be VARCHAR).
                real = {row[0].lower(): row[0] for row in described}
                csv_types = {real[n.lower()]: CANONICAL[t] for n, t in table.columns.items()
                             if n.lower() in real}
                if csv_types:
                    relation = self._source_relation(table, base, attached, csv_types)
                    described = self._con.execute(
                        f"DESCRIBE SELECT * FROM {relation}").fetchall()
        except duckdb.Error as e:
            raise PolicyError(
                f"{self._policy_path}: tables.{table.name}.source: cannot read {table.source!r} "
                f"({type(e).__name__}); check that it exists and is a valid file/table"
            ) from None
        # A column of DuckDB's NULL type (all values null in a JSON or Parquet file) is
        # read as whatever type the policy declares.
        found = {row[0].lower(): (row[0], "null" if str(row[1]).strip('"').upper() == "NULL"
                                  else policy_type(str(row[1]))) for row in described}
        select: list[str] = []
        types: dict[str, str] = {}
        if table.columns is None:  # public table: take every column as it is
            for real, ptype in found.values():
                if ptype in ("unknown", "null"):
                    continue
                select.append(f"CAST({_quote_ident(real)} AS {CANONICAL[ptype]}) AS "
                              f"{_quote_ident(real)}")
                types[real] = ptype
        else:
            for name, declared in table.columns.items():
                hit = found.get(name.lower())
                if hit is None:
                    raise PolicyError(
                        f"{self._policy_path}: tables.{table.name}.columns.{name}: the source "
                        f"has no such column (it has: {', '.join(r for r, _ in found.values())});"
                        f" fix the name or remove the column"
                    )
                real, actual = hit
                if actual != "null" and actual not in _COMPATIBLE[declared]:
                    raise PolicyError(
                        f"{self._policy_path}: tables.{table.name}.columns.{name}.type: declared "
                        f"{declared} but the source column is {actual}; declare type: {actual}"
                    )
                select.append(f"CAST({_quote_ident(real)} AS {CANONICAL[declared]}) AS "
                              f"{_quote_ident(name)}")
                types[name] = declared
        if table.row_id:
            select.append(f"row_number() OVER () AS {_quote_ident(table.row_id)}")
            types[table.row_id] = "int"
        try:
            self._con.execute(
                f"CREATE TABLE {_quote_ident(table.name)} AS SELECT {', '.join(select)} "
                f"FROM {relation}"
            )
        except duckdb.Error as e:
            raise PolicyError(
                f"{self._policy_path}: tables.{table.name}: loading the source failed "
                f"({type(e).__name__}); check the declared column types"
            ) from None
        self._types[table.name] = types

    # -- the Executor protocol ----------------------------------------------------

    def table_columns(self, table: str) -> dict[str, str]:
        return dict(self._types[table])

    def reads_protected(self, tree: exp.Expr) -> bool:
        return any(t.name.lower() in self._protected for t in tree.find_all(exp.Table))

    def _public_only(self, table: str) -> None:
        if table.lower() in self._protected or table not in self._types:
            raise InternalError(f"metadata of {table!r} was asked for, but only public tables "
                                "are read without a charge")

    def unique_columns(self, table: str) -> frozenset[str]:
        self._public_only(table)
        found = self._keys.get(table)
        if found is None:
            cols = list(self._types[table])
            if not cols:
                return frozenset()
            counts = ", ".join(f"COUNT(DISTINCT {_quote_ident(c)}) = COUNT({_quote_ident(c)})"
                               for c in cols)
            cur = self._con.cursor()
            try:
                (row,) = cur.execute(f"SELECT {counts} FROM {_quote_ident(table)}").fetchall()
            finally:
                cur.close()
            found = frozenset(c for c, unique in zip(cols, row, strict=True) if unique)
            self._keys[table] = found
        return found

    def distinct_values(self, table: str, column: str, limit: int) -> list[Any] | None:
        self._public_only(table)
        sql = (
            f"SELECT DISTINCT {_quote_ident(column)} FROM {_quote_ident(table)} "
            f"WHERE {_quote_ident(column)} IS NOT NULL ORDER BY 1 LIMIT {int(limit) + 1}"
        )
        cur = self._con.cursor()
        try:
            values = [r[0] for r in cur.execute(sql).fetchall()]
        finally:
            cur.close()
        return None if len(values) > limit else values

    def execute(
        self, tree: exp.Expr, *, permit: ReadPermit | None = None,
        params: Mapping[str, Any] | None = None, timeout_s: float | None = None,
        sql: str | None = None,
    ) -> ResultSet:
        if self.reads_protected(tree) and (permit is None or not permit.committed):
            # Structural: a planner or service bug cannot read private rows unpaid.
            log.error("refused to read protected rows without a committed charge")
            raise InternalError("the query reads protected data but no charge was committed "
                                "for it; nothing was read")
        sql = sql if sql is not None else self.render(tree)
        query_id = permit.query_id if permit is not None else None
        return self._run(sql, dict(params or {}), timeout_s, query_id)

    def _run(self, sql: str, params: dict[str, Any], timeout_s: float | None,
             query_id: str | None) -> ResultSet:
        """The one place SQL reaches the private data."""
        cur = self._con.cursor()
        timer = None
        if timeout_s is not None:
            timer = threading.Timer(timeout_s, cur.interrupt)
            timer.daemon = True
            timer.start()
        try:
            res = cur.execute(sql, params) if params else cur.execute(sql)
            desc = res.description or []
            data = res.fetchnumpy()
        except duckdb.InterruptException:
            raise BackendError(
                "the query ran longer than the time limit and was stopped",
                hint="narrow it (fewer groups, a WHERE clause) or ask the operator to raise "
                "limits.query_timeout_s",
            ) from None
        except duckdb.Error as e:
            # A planned query was proven unable to fail on data: this is a bug.  The
            # engine's own message may quote data values: it goes to the operator's
            # log with the query id, never to the analyst.
            log.error("engine error on planned query %s: %s: %s", query_id or "-",
                      type(e).__name__, e)
            raise BackendError(
                "the query engine failed to run the planned query; this is a bug in the "
                "gateway and was logged for the operator"
                + (f" (query {query_id})" if query_id else "")
            ) from None
        finally:
            if timer is not None:
                timer.cancel()
            cur.close()
        names = tuple(d[0] for d in desc)
        types = tuple(policy_type(str(d[1])) for d in desc)
        return ResultSet(names, types, tuple(data[n] for n in names))

    def check(self, tree: exp.Expr, sql: str | None = None) -> None:
        """Bind and plan the query on the shadow database (same tables, no rows), so that
        errors which do not depend on data (a constant that does not convert, a function
        given the wrong types) are reported before any budget is charged, and so that
        the outcome cannot depend on data.  Remembered per text."""
        sql = sql if sql is not None else self.render(tree)
        if sql in self._checked:
            return
        params = {"salt": 0} if any(p.name == "salt" for p in tree.find_all(exp.Placeholder)) \
            else {}
        with self._lock:
            cur = self._shadow.cursor()
        # Planning is data-free, but a deep enough query can take long to plan.
        timer = threading.Timer(CHECK_TIMEOUT_S, cur.interrupt)
        timer.daemon = True
        timer.start()
        try:
            cur.execute("EXPLAIN " + sql, params) if params else cur.execute("EXPLAIN " + sql)
        except duckdb.InterruptException:
            raise QueryRejected(
                f"the engine could not plan this query within {CHECK_TIMEOUT_S:g} seconds",
                hint="simplify it: fewer nested subqueries or CTEs", rule="too_complex",
            ) from None
        except duckdb.ConversionException:
            raise QueryRejected(
                "a constant in the query cannot be converted to the type it is compared with",
                hint="check the literals (numbers, dates) against the columns' types",
                rule="type_mismatch") from None
        except duckdb.Error as e:
            log.error("engine rejected a planned query: %s: %s", type(e).__name__, e)
            raise QueryRejected(
                f"the engine cannot plan this query ({type(e).__name__})",
                hint="check that functions get arguments of the right types", rule="engine",
            ) from None
        finally:
            timer.cancel()
            cur.close()
        with self._lock:
            if len(self._checked) > 10_000:
                self._checked.clear()
            self._checked.add(sql)

    def describe(self, tree: exp.Expr, sql: str | None = None) -> list[tuple[str, str]]:
        sql = sql if sql is not None else self.render(tree)
        with self._lock:
            cur = self._shadow.cursor()
        timer = threading.Timer(CHECK_TIMEOUT_S, cur.interrupt)
        timer.daemon = True
        timer.start()
        try:
            rows = cur.execute("DESCRIBE " + sql).fetchall()
        except duckdb.Error as e:
            log.error("engine could not describe a planned query: %s: %s", type(e).__name__, e)
            raise QueryRejected(f"the engine cannot plan this query ({type(e).__name__})",
                                hint="check that functions get arguments of the right types",
                                rule="engine") from None
        finally:
            timer.cancel()
            cur.close()
        return [(str(r[0]), policy_type(str(r[1]))) for r in rows]

    def render(self, tree: exp.Expr, *, pretty: bool = False) -> str:
        try:
            check_expressible(tree, self.features)
        except CannotExpress as e:  # pragma: no cover - DuckDB has every feature
            raise QueryRejected(f"the engine cannot express {e} safely",
                                hint="simplify the query", rule="engine") from None
        return tree.sql(dialect=self.dialect, pretty=pretty)

    def scratch(self, sql: exp.Expr) -> list[tuple[Any, ...]] | None:
        text = sql.sql(dialect=self.dialect)
        with self._lock:
            cur = self._scratch.cursor()
            try:
                return cur.execute(text).fetchall()
            except duckdb.Error:
                return None
            finally:
                cur.close()

    def keyed_hash(self, args: list[exp.Expr], salt: exp.Expr) -> exp.Expr:
        return exp.Anonymous(this="hash", expressions=[*args, salt])

    def guard(self, expr: exp.Expr) -> exp.Expr:
        return exp.Try(this=expr)

    def is_nan(self, expr: exp.Expr) -> exp.Expr:
        return exp.IsNan(this=expr)

    def close(self) -> None:
        with self._lock:
            self._con.close()
            self._shadow.close()
            self._scratch.close()


def _is_csv(source: str) -> bool:
    return source.lower().endswith((".csv", ".tsv"))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
