"""The catalog: PostgreSQL's metadata, answered from the policy's public schema.

:class:`Catalog` owns a read-only DuckDB database built by
:mod:`gateway.pgwire.catalog.build` (zero rows of data, external access off,
configuration locked) and runs rewritten catalog queries on it, one DuckDB
cursor per session, from worker threads.  A query that reaches it can see
table and column names, types, bounds and public values - what
``GET /v1/schema`` shows - and nothing else: there is no data to see.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from sqlglot import exp

from gateway.pgwire.catalog import infoschema
from gateway.pgwire.catalog.build import build
from gateway.pgwire.catalog.rewrite import Rewriter, SessionInfo
from gateway.pgwire.catalog.tables import VIEWS
from gateway.pgwire.errors import PgError, from_duckdb
from gateway.pgwire.types import Field, duck_oid
from gateway.sql.names import TableNames

__all__ = ["Catalog", "CatalogResult", "SessionInfo"]

_LOCKED_CONFIG: dict[str, str | bool | int] = {
    "enable_external_access": False, "autoload_known_extensions": False,
    "autoinstall_known_extensions": False, "threads": 1, "memory_limit": "256MB",
}


@dataclass(frozen=True)
class CatalogResult:
    fields: list[Field]
    rows: list[tuple[Any, ...]]
    duck_types: list[str]


class Catalog:
    """The emulated pg_catalog / information_schema of one gateway's policy."""

    def __init__(self, schema: Mapping[str, Any], database: str) -> None:
        self.database = database
        self._dir = tempfile.mkdtemp(prefix="dp-gateway-catalog-")
        path = str(Path(self._dir) / "catalog.duckdb")
        self.lookups = build(path, schema, database)
        self._con = duckdb.connect(path, read_only=True, config=dict(_LOCKED_CONFIG))
        self._con.execute("SET lock_configuration = true")
        tables = schema.get("tables", {})
        self.policy_tables = {name.lower(): name for name in tables}
        self.rewriter = Rewriter(self.lookups, self.policy_tables, set(VIEWS),
                                 set(infoschema.views(database)),
                                 TableNames.from_schema(schema))

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own for one session (DuckDB cursors are not shared)."""
        return self._con.cursor()

    def to_duckdb(self, tree: exp.Expr, info: SessionInfo) -> str:
        return self.rewriter.to_duckdb(tree, info)

    def run(self, cursor: duckdb.DuckDBPyConnection, tree: exp.Expr,
            info: SessionInfo, *, max_rows: int = 1_000_000) -> CatalogResult:
        """Rewrite and run one catalog query (blocking: call it from a worker thread)."""
        sql = self.to_duckdb(tree, info)
        return self.run_sql(cursor, sql, max_rows=max_rows)

    def run_sql(self, cursor: duckdb.DuckDBPyConnection, sql: str, *,
                max_rows: int = 1_000_000) -> CatalogResult:
        try:
            kinds = [s.type for s in cursor.extract_statements(sql)]
            if len(kinds) != 1 or kinds[0] != duckdb.StatementType.SELECT:
                raise PgError("0A000", "only queries can be answered from the catalog")
            res = cursor.execute(sql)
            desc = res.description or []
            rows = res.fetchmany(max_rows)
        except duckdb.Error as e:
            raise from_duckdb(e) from None
        fields = [Field(d[0], duck_oid(str(d[1]))) for d in desc]
        return CatalogResult(fields, rows, [str(d[1]) for d in desc])

    def close(self) -> None:
        try:
            self._con.close()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
