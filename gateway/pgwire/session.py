"""One client session: routes each statement to the DP core, the catalog, or a
local command, and keeps PostgreSQL's transaction status.

Routing, per statement:

* a query that names a policy table goes to :meth:`Gateway.query_as` (parsed,
  checked, noised and charged by the core) - unless it provably returns nothing
  (``LIMIT 0``, ``WHERE 1 = 0``: column probes BI tools send), which the empty
  metadata tables answer for free;
* any other query is a catalog query, answered by :class:`Catalog` (zero rows of
  data; names, types and public metadata only);
* SET, SHOW, BEGIN, DECLARE, FETCH, ... are answered here
  (:mod:`gateway.pgwire.commands`).

All blocking work (DuckDB, the ledger) runs on the server's thread pool; the
event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import functools
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from gateway.errors import GatewayError
from gateway.pgwire import commands, sqltext
from gateway.pgwire.catalog import Catalog, SessionInfo
from gateway.pgwire.errors import QUERY_CANCELED, SYNTAX_ERROR, PgError
from gateway.pgwire.result import Result
from gateway.pgwire.settings import Settings
from gateway.pgwire.types import (
    BOOL,
    DATE,
    FLOAT8,
    GATEWAY_TYPES,
    INT8,
    NUMERIC,
    TEXT,
    TIMESTAMP,
    TIMESTAMPTZ,
    Field,
)

if TYPE_CHECKING:
    import duckdb

    from gateway.service import Gateway
    from gateway.state.ledger import Analyst

T = TypeVar("T")


@dataclass
class ServerContext:
    """What every session of one server shares."""

    gateway: Gateway
    catalog: Catalog
    executor: ThreadPoolExecutor
    version: str
    catalog_timeout_s: float = 10.0
    notices: bool = True
    describe_cache: OrderedDict[str, list[Field]] = field(default_factory=OrderedDict)

    def remember(self, sql: str, fields: list[Field]) -> None:
        self.describe_cache[sql] = fields
        while len(self.describe_cache) > 512:
            self.describe_cache.popitem(last=False)


def gateway_fields(columns: list[Any], rows: list[tuple[Any, ...]]) -> list[Field]:
    """RowDescription for a core result (Decimal columns are numeric, as in PostgreSQL)."""
    out = []
    for i, c in enumerate(columns):
        oid = GATEWAY_TYPES.get(c.type, TEXT)
        if oid == FLOAT8 and any(isinstance(r[i], decimal.Decimal) for r in rows[:20]):
            oid = NUMERIC
        out.append(Field(c.name, oid))
    return out


def with_ci95_fields(fields: list[Field], noisy: list[bool]) -> list[Field]:
    """``<col>_ci95`` (float8) after each column computed from noisy aggregates, as
    :meth:`QueryResult.reported` adds them to the answer."""
    out: list[Field] = []
    for f, n in zip(fields, noisy, strict=True):
        out.append(f)
        if n:
            out.append(Field(f"{f.name}_ci95", FLOAT8))
    return out


def data_oid(duck_type: str) -> int:
    """The OID the core's answer will have, from the DuckDB type of a dry run."""
    t = duck_type.upper()
    if t in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
             "UINTEGER", "UBIGINT", "UHUGEINT"):
        return INT8
    if t.startswith("DECIMAL"):
        return NUMERIC
    if t in ("FLOAT", "DOUBLE", "REAL"):
        return FLOAT8
    if t == "BOOLEAN":
        return BOOL
    if t == "DATE":
        return DATE
    if t.startswith("TIMESTAMP WITH"):
        return TIMESTAMPTZ
    if t.startswith("TIMESTAMP"):
        return TIMESTAMP
    return TEXT


# Schemas the emulated catalog answers for itself.
_CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})


def parse(sql: str) -> exp.Expr:
    """One statement as a sqlglot tree (PostgreSQL dialect), repairing what it can't read."""
    last: Exception | None = None
    for text in (sql, sqltext.repair_for_sqlglot(sql)):
        try:
            tree = sqlglot.parse_one(text, dialect="postgres")
            if tree is not None:
                return tree
        except (ParseError, TokenError, ValueError) as e:
            last = e
    msg = str(last).split("\n", 1)[0] if last else "empty statement"
    raise PgError(SYNTAX_ERROR, f"syntax error: {msg}")


def _is_false(node: exp.Expr | None) -> bool:
    """True if a WHERE condition is a constant that is false (1 = 0, 1 <> 1, false)."""
    if node is None:
        return False
    node = node.unnest()
    if isinstance(node, exp.Boolean):
        return node.this is False
    if isinstance(node, exp.And):
        return _is_false(node.this) or _is_false(node.expression)
    if isinstance(node, exp.EQ | exp.NEQ) and all(
            isinstance(x, exp.Literal) and not x.is_string
            for x in (node.this, node.expression)):
        same = node.this.this == node.expression.this
        return not same if isinstance(node, exp.EQ) else same
    return False


def provably_empty(tree: exp.Expr) -> bool:
    """A SELECT that returns no row whatever the data: LIMIT 0 or WHERE <false>."""
    if not isinstance(tree, exp.Select):
        return False
    limit = tree.args.get("limit")
    if isinstance(limit, exp.Limit) and isinstance(limit.expression, exp.Literal) \
            and str(limit.expression.this) == "0":
        return True
    where = tree.args.get("where")
    return isinstance(where, exp.Where) and _is_false(where.this) and not tree.args.get("group")


class Session:
    """State of one authenticated connection."""

    def __init__(self, ctx: ServerContext, analyst: Analyst, database: str,
                 settings: Settings, pid: int) -> None:
        self.ctx = ctx
        self.analyst = analyst
        self.database = database
        self.settings = settings
        self.pid = pid
        self.started = dt.datetime.now(dt.UTC)
        self.tx = "I"  # I idle, T in a transaction block, E failed transaction block
        self.cursors: dict[str, Any] = {}  # DECLAREd cursors (commands.Cursor)
        self.statements: dict[str, Any] = {}  # protocol-level prepared statements
        self.portals: dict[str, Any] = {}
        self.tx_epsilon = 0.0  # spent inside the current transaction block
        self._duck: duckdb.DuckDBPyConnection | None = None
        self._cancelled = False
        self._interrupt: Callable[[], None] | None = None

    # -- plumbing -------------------------------------------------------------------------

    @property
    def gateway(self) -> Gateway:
        return self.ctx.gateway

    @property
    def duck(self) -> duckdb.DuckDBPyConnection:
        if self._duck is None:
            self._duck = self.ctx.catalog.cursor()
        return self._duck

    def close(self) -> None:
        if self._duck is not None:
            self._duck.close()
            self._duck = None

    def info(self) -> SessionInfo:
        return SessionInfo(self.analyst.name, self.ctx.catalog.database, self.pid,
                           self.started, self.settings.get, tuple(self.settings.all()),
                           self.ctx.version)

    def begin_statement(self) -> None:
        self._cancelled = False

    def cancel(self) -> None:
        """A CancelRequest for this session: stop what runs, if it can be stopped."""
        self._cancelled = True
        if self._interrupt is not None:
            self._interrupt()

    def check_cancel(self) -> None:
        if self._cancelled:
            self._cancelled = False
            raise PgError(QUERY_CANCELED, "canceling statement due to user request")

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None,
                  interrupt: Callable[[], None] | None = None, **kwargs: Any) -> T:
        """Run blocking work on the pool; honour cancel (and interrupt it if we can)."""
        self.check_cancel()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.ctx.executor, functools.partial(fn, *args, **kwargs))
        self._interrupt = interrupt
        try:
            if timeout is None:
                result = await fut
            else:
                try:
                    result = await asyncio.wait_for(asyncio.shield(fut), timeout)
                except TimeoutError:
                    if interrupt is not None:
                        interrupt()
                    await asyncio.gather(fut, return_exceptions=True)
                    raise PgError(QUERY_CANCELED, "canceling statement due to statement "
                                  "timeout") from None
        except PgError as e:
            if e.sqlstate == QUERY_CANCELED and self._cancelled:
                self.check_cancel()
            raise
        finally:
            self._interrupt = None
        self.check_cancel()
        return result

    def fail(self) -> None:
        """An error happened: a transaction block becomes a failed one."""
        if self.tx == "T":
            self.tx = "E"

    # -- statements -----------------------------------------------------------------------

    async def execute(self, sql: str) -> Result:
        """Run one statement (no trailing semicolon) and return what it produced."""
        kind = sqltext.classify(sql)
        if kind == "empty":
            return Result("", empty=True)
        if self.tx == "E" and not commands.allowed_in_failed(kind, sql):
            raise PgError("25P02", "current transaction is aborted, commands ignored until "
                          "end of transaction block")
        if kind in commands.HANDLERS:
            return await commands.HANDLERS[kind](self, sql)
        return await self.query(sql)

    def route(self, sql: str) -> tuple[str, exp.Expr | None]:
        """('data', None) for the DP core, or ('catalog', tree)."""
        try:
            tree = parse(sql)
        except PgError:
            words = {w.lower() for w in sqltext.first_words(sql, 10_000)}
            if words & set(self.ctx.catalog.policy_tables):
                return "data", None  # the core explains what is wrong, as over HTTP
            raise
        if not isinstance(tree, exp.Query):
            return "data", None  # not a query: the core refuses it with its reason
        ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
        for table in tree.find_all(exp.Table):
            if not isinstance(table.this, exp.Identifier):
                continue
            name = table.name.lower()
            qualified = bool(table.db or table.catalog)
            # A policy table under any qualifier but the catalog's own schemas goes to
            # the core, which accepts public., main., the dataset and the table's own
            # schema (gateway/sql/names.py) and explains any other.
            if table.db.lower() not in _CATALOG_SCHEMAS and \
                    name in self.ctx.catalog.policy_tables and \
                    not (not qualified and name in ctes):
                return ("catalog", tree) if provably_empty(tree) else ("data", None)
        return "catalog", tree

    async def query(self, sql: str) -> Result:
        route, tree = self.route(sql)
        if route == "catalog":
            assert tree is not None
            return await self.probe_or_catalog(sql, tree)
        return await self.data_query(sql)

    async def probe_or_catalog(self, sql: str, tree: exp.Expr) -> Result:
        """A catalog query; for a column probe of a data query (``LIMIT 0``) under
        ``dp.report = 'ci95'``, with the ``<col>_ci95`` columns the query would have."""
        res = await self.catalog_query(tree)
        if self.settings.report == "ci95" and res.fields is not None and provably_empty(tree):
            try:
                _, noisy = await self.run(self.gateway.output_columns, sql,
                                          dialect="postgres")
            except GatewayError:
                return res
            if len(noisy) == len(res.fields):
                res.fields = with_ci95_fields(res.fields, noisy)
        return res

    async def catalog_query(self, tree: exp.Expr) -> Result:
        cat = self.ctx.catalog
        res = await self.run(cat.run, self.duck, tree, self.info(),
                             timeout=self.ctx.catalog_timeout_s, interrupt=self.duck.interrupt)
        return Result(f"SELECT {len(res.rows)}", res.fields, res.rows)

    async def data_query(self, sql: str) -> Result:
        s = self.settings
        res = await self.run(self.gateway.query_as, self.analyst, sql, dialect="postgres",
                             **s.spend())  # dp.ci95 (accuracy-first) or dp.epsilon
        res = res.reported(s.report)
        rows = [tuple(r) for r in res.rows]
        if self.tx != "I":
            self.tx_epsilon += res.epsilon_spent
        notices = list(res.notes)  # e.g. groups chosen by partition selection
        if self.ctx.notices:
            rem = res.budget or {}
            how = "answered from the cache, no charge" if res.cached else (
                f"spent epsilon={res.epsilon_spent:.6g} delta={res.delta_spent:.6g}")
            notices.append(f"differential privacy: {how}; remaining epsilon="
                           f"{rem.get('epsilon_remaining', float('nan')):.6g} delta="
                           f"{rem.get('delta_remaining', float('nan')):.6g}")
        return Result(f"SELECT {len(rows)}", gateway_fields(res.columns, rows), rows,
                      notices=notices)

    # -- Describe: a dry run --------------------------------------------------------------

    async def describe(self, sql: str) -> tuple[list[Field] | None, Result | None]:
        """Row description of a statement without charging anything.

        Catalog queries and SHOW are simply run (they cost nothing) and their result
        is returned for reuse; a data query is planned by the core (so a rejection
        shows up here, free) and typed by running it on the empty tables.
        """
        kind = sqltext.classify(sql)
        if kind in ("SHOW", "EXPLAIN"):
            res = await self.execute(sql)
            return res.fields, res
        if kind == "FETCH":
            return commands.fetch_fields(self, sql), None
        if kind != "query":
            return None, None
        route, tree = self.route(sql)
        if route == "catalog":
            assert tree is not None
            res = await self.probe_or_catalog(sql, tree)
            return res.fields, res
        return await self.dry_run(sql), None

    async def dry_run(self, sql: str) -> list[Field]:
        report = self.settings.report
        key = sql if report == "none" else f"{report}\x00{sql}"
        cached = self.ctx.describe_cache.get(key)
        if cached is not None:
            return cached
        names, noisy = await self.run(self.gateway.output_columns, sql, dialect="postgres")
        try:
            res = await self.run(self._type_on_empty_tables, sql,
                                 timeout=self.ctx.catalog_timeout_s,
                                 interrupt=self.duck.interrupt)
            oids = [data_oid(t) for t in res.duck_types]
            if "*" in names or len(names) != len(oids):
                names = [f.name for f in res.fields]
        except PgError:
            if "*" in names:
                raise
            oids = [TEXT] * len(names)
        fields = [Field(n, o) for n, o in zip(names, oids, strict=True)]
        if report == "ci95" and len(noisy) == len(fields):
            fields = with_ci95_fields(fields, noisy)
        self.ctx.remember(key, fields)
        return fields

    def _type_on_empty_tables(self, sql: str) -> Any:
        """Run the query on the metadata database's empty tables: its result types."""
        cat = self.ctx.catalog
        duck_sql = cat.to_duckdb(parse(sql), self.info())
        return cat.run_sql(self.duck, f"SELECT * FROM ({duck_sql}) AS __pgw_describe LIMIT 0")
