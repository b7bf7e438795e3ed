"""One client connection: startup, authentication, then the query loop.

Messages are read by a small pump task into a buffer, so the handler can see
what the client pipelined next: when a Describe of a data query is immediately
followed by the Execute of the same portal (psycopg, pgjdbc and asyncpg send
Parse/Bind/Describe/Execute/Sync in one go), the query runs once and serves both;
otherwise Describe is a dry run that charges nothing.  Any error becomes an
ErrorResponse; in the extended protocol the rest of the batch is skipped up to
Sync, as PostgreSQL does, and the connection stays usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.pgwire import protocol as pq
from gateway.pgwire import sqltext
from gateway.pgwire.errors import INTERNAL, INVALID_TEXT, PgError
from gateway.pgwire.handshake import handshake
from gateway.pgwire.output import copy_out, data_rows
from gateway.pgwire.result import Result
from gateway.pgwire.session import Session
from gateway.pgwire.settings import display_name
from gateway.pgwire.types import TEXT, Field, ParamError, decode_param

if TYPE_CHECKING:
    from gateway.pgwire.server import PgWireServer

log = logging.getLogger(__name__)

_FLUSH_AT = 256 * 1024
_PUMP_LIMIT = 512


@dataclass
class Prepared:
    sql: str
    param_types: list[int]
    fields: list[Field] | None = None
    described: bool = False


@dataclass
class Portal:
    statement: Prepared
    sql: str
    formats: tuple[int, ...]
    fields: list[Field] | None = None
    result: Result | None = None
    pos: int = 0
    started: bool = False


@dataclass
class _Pump:
    """Reads messages ahead into a bounded buffer (see the module docstring)."""

    reader: asyncio.StreamReader
    max_size: int
    buf: deque[tuple[bytes, bytes]] = field(default_factory=deque)
    error: BaseException | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    space: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        try:
            while True:
                msg = await pq.read_message(self.reader, self.max_size)
                self.buf.append(msg)
                self.ready.set()
                if len(self.buf) >= _PUMP_LIMIT:
                    self.space.clear()
                    await self.space.wait()
        except Exception as e:  # EOF, reset, protocol error: reported to next()
            self.error = e
            self.ready.set()

    async def next(self, timeout: float | None) -> tuple[bytes, bytes]:
        while not self.buf:
            if self.error is not None:
                raise self.error
            self.ready.clear()
            await asyncio.wait_for(self.ready.wait(), timeout)
        self.space.set()
        return self.buf.popleft()

    def peek(self) -> tuple[bytes, bytes] | None:
        return self.buf[0] if self.buf else None


class Connection:
    """Protocol state of one socket (see :mod:`gateway.pgwire.server` for the server)."""

    def __init__(self, server: PgWireServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, pid: int, secret: int) -> None:
        self.server = server
        self.reader, self.writer = reader, writer
        self.pid, self.secret = pid, secret
        self.session: Session | None = None
        self.out: list[bytes] = []
        self.out_size = 0
        self.skipping = False
        self.closing = False
        self.refusal: tuple[str, str] | None = None  # (sqlstate, message) to end with

    # -- output ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.out.append(data)
        self.out_size += len(data)

    async def flush(self) -> None:
        if self.out:
            self.writer.write(b"".join(self.out))
            self.out.clear()
            self.out_size = 0
        await self.writer.drain()

    async def maybe_flush(self) -> None:
        if self.out_size >= _FLUSH_AT:
            await self.flush()

    def send_error(self, e: BaseException) -> None:
        if isinstance(e, PgError):
            self.send(pq.error_response(e.sqlstate, e.message, hint=e.hint, detail=e.detail,
                                        severity=e.severity))
        elif isinstance(e, GatewayError):
            self.send(pq.error_response(e.sqlstate, e.detail))
        elif isinstance(e, ParamError):
            self.send(pq.error_response(INVALID_TEXT, str(e)))
        else:
            log.exception("internal error in the PostgreSQL proxy", exc_info=e)
            self.send(pq.error_response(INTERNAL, "internal error in the PostgreSQL proxy; "
                                        "this is a bug in the gateway"))
        if self.session is not None:
            self.session.fail()

    async def fatal(self, sqlstate: str, message: str) -> None:
        self.send(pq.error_response(sqlstate, message, severity="FATAL"))
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.flush()

    # -- lifecycle ------------------------------------------------------------------------

    async def serve(self) -> None:
        try:
            if await self.startup():
                await self.loop()
        except (ConnectionError, asyncio.IncompleteReadError, EOFError):
            pass
        except pq.ProtocolError as e:
            await self.fatal(e.sqlstate, str(e))
        except TimeoutError:
            if self.session is None:
                await self.fatal("08006", "canceling authentication due to timeout")
            else:
                await self.fatal("57P05", "terminating connection due to idle-session timeout")
        finally:
            if self.session is not None:
                self.session.close()
            with contextlib.suppress(RuntimeError):
                self.writer.close()

    async def terminate(self, sqlstate: str, message: str) -> None:
        """Close from the server side (shutdown): a FATAL, then the socket."""
        self.closing = True
        await self.fatal(sqlstate, message)
        self.writer.close()

    async def startup(self) -> bool:
        """SSL/GSS negotiation, the startup packet, authentication (see handshake)."""
        return await handshake(self)

    # -- the query loop -------------------------------------------------------------------

    async def loop(self) -> None:
        assert self.session is not None
        pump = _Pump(self.reader, self.server.options.max_message_bytes)
        task = asyncio.create_task(pump.run())
        try:
            while not self.closing:
                kind, body = await pump.next(self.server.options.idle_timeout_s)
                if kind == b"X":
                    return
                await self.dispatch(kind, body, pump)
                await self.maybe_flush()
        finally:
            task.cancel()

    async def dispatch(self, kind: bytes, body: bytes, pump: _Pump) -> None:
        s = self.session
        assert s is not None
        if kind == b"Q":
            await self.simple_query(pq.Buffer(body).cstr())
            return
        if kind == b"S":
            self.skipping = False
            if s.tx == "I":
                s.portals.clear()
            self.send(pq.ready_for_query(s.tx))
            await self.flush()
            return
        if kind == b"H":
            await self.flush()
            return
        if kind == b"F":  # FunctionCall ends with ReadyForQuery, like a simple Query
            self.send_error(PgError("0A000", "the function call protocol is not supported"))
            self.send(pq.ready_for_query(s.tx))
            await self.flush()
            return
        if kind in (b"d", b"c", b"f"):
            return  # COPY data outside COPY FROM (which we never start): ignored
        if self.skipping:
            return
        try:
            s.begin_statement()
            if kind == b"P":
                self.parse(pq.decode_parse(body))
            elif kind == b"B":
                self.bind(pq.decode_bind(body))
            elif kind == b"D":
                await self.describe(body[:1], pq.Buffer(body[1:]).cstr(), pump)
            elif kind == b"E":
                b = pq.Buffer(body)
                await self.execute(b.cstr(), b.int32())
            elif kind == b"C":
                b = pq.Buffer(body)
                what, name = b.take(1), b.cstr()
                (s.statements if what == b"S" else s.portals).pop(name, None)
                self.send(pq.CLOSE_COMPLETE)
            else:
                raise pq.ProtocolError(f"invalid frontend message type {kind!r}")
        except pq.ProtocolError:
            raise
        except Exception as e:  # an ErrorResponse; skip to Sync
            self.send_error(e)
            self.skipping = True

    async def simple_query(self, sql: str) -> None:
        s = self.session
        assert s is not None
        statements = sqltext.split_statements(sql)
        if not statements:
            self.send(pq.EMPTY_QUERY)
        for stmt in statements:
            try:
                s.begin_statement()
                res = await s.execute(stmt)
                self.send_result(res, res.fields, (), 0, describe=True)
                await self.maybe_flush()
            except Exception as e:
                self.send_error(e)
                break
        self.send(pq.ready_for_query(s.tx))
        await self.flush()

    def send_result(self, res: Result, fields: list[Field] | None, formats: tuple[int, ...],
                    start: int, *, describe: bool, limit: int = 0) -> bool:
        """Notices, rows from ``start`` (at most ``limit``), then the completion.

        Returns True when the portal is suspended (more rows to come)."""
        if start == 0:
            for notice in res.notices:
                self.send(pq.notice_response("00000", notice))
        if res.empty:
            self.send(pq.EMPTY_QUERY)
            return False
        if res.copy is not None:
            self.send(copy_out(res.fields or [], res.rows, res.copy, res.copy_header))
        elif res.fields is not None:
            fields = fields if fields is not None and len(fields) == len(res.fields) \
                else res.fields
            if describe:
                self.send(pq.row_description(fields, formats))
            end = len(res.rows) if limit <= 0 else min(len(res.rows), start + limit)
            self.send(data_rows(fields, res.rows[start:end], formats))
            if end < len(res.rows):
                self.send(pq.PORTAL_SUSPENDED)
                return True
        self.send(pq.command_complete(res.tag))
        for name in res.reported:
            assert self.session is not None
            self.send(pq.parameter_status(display_name(name),
                                          self.session.settings.get(name) or ""))
        return False

    # -- extended protocol ----------------------------------------------------------------

    def parse(self, msg: pq.ParseMsg) -> None:
        s = self.session
        assert s is not None
        if msg.name and msg.name in s.statements:
            raise PgError("42P05", f'prepared statement "{msg.name}" already exists')
        statements = sqltext.split_statements(msg.query)
        if len(statements) > 1:
            raise PgError("42601", "cannot insert multiple commands into a prepared statement")
        sql = statements[0] if statements else ""
        types = list(msg.param_types)
        types += [0] * (sqltext.count_params(sql) - len(types))
        s.statements[msg.name] = Prepared(sql, types)
        self.send(pq.PARSE_COMPLETE)

    def bind(self, msg: pq.BindMsg) -> None:
        s = self.session
        assert s is not None
        stmt = s.statements.get(msg.statement)
        if stmt is None:
            raise PgError("26000", f'prepared statement "{msg.statement}" does not exist')
        if len(msg.params) != len(stmt.param_types):
            raise PgError("08P01", f"bind message supplies {len(msg.params)} parameters, but "
                          f"prepared statement requires {len(stmt.param_types)}")
        values = [decode_param(raw, stmt.param_types[i], pq.format_for(msg.param_formats, i)
                               == 1) for i, raw in enumerate(msg.params)]
        sql = sqltext.bind(stmt.sql, values)
        s.portals[msg.portal] = Portal(stmt, sql, msg.result_formats, stmt.fields)
        self.send(pq.BIND_COMPLETE)

    async def describe(self, what: bytes, name: str, pump: _Pump) -> None:
        s = self.session
        assert s is not None
        if what == b"S":
            stmt = s.statements.get(name)
            if stmt is None:
                raise PgError("26000", f'prepared statement "{name}" does not exist')
            if not stmt.described:
                probe = sqltext.bind(stmt.sql, [None] * len(stmt.param_types))
                stmt.fields, _ = await s.describe(probe)
                stmt.described = True
            self.send(pq.parameter_description([t or TEXT for t in stmt.param_types]))
            self.send(pq.row_description(stmt.fields) if stmt.fields is not None
                      else pq.NO_DATA)
            return
        portal = s.portals.get(name)
        if portal is None and name in s.cursors:  # a DECLAREd cursor is a portal too
            self.send(pq.row_description(s.cursors[name].fields))
            return
        if portal is None:
            raise PgError("34000", f'portal "{name}" does not exist')
        if portal.fields is None and portal.result is None:
            nxt = pump.peek()
            if nxt is not None and nxt[0] == b"E" and pq.Buffer(nxt[1]).cstr() == name \
                    and sqltext.classify(portal.sql) == "query":
                # The Execute is already here: run once, serve both (no extra charge).
                portal.result = await s.execute(portal.sql)
                portal.fields = portal.result.fields
            else:
                portal.fields, portal.result = await s.describe(portal.sql)
        fields = portal.fields if portal.fields is not None else (
            portal.result.fields if portal.result is not None else None)
        self.send(pq.row_description(fields, portal.formats) if fields is not None
                  else pq.NO_DATA)

    async def execute(self, name: str, limit: int) -> None:
        s = self.session
        assert s is not None
        portal = s.portals.get(name)
        if portal is None:
            raise PgError("34000", f'portal "{name}" does not exist')
        if portal.result is None:
            portal.result = await s.execute(portal.sql)
        res: Any = portal.result
        if portal.started and portal.pos >= len(res.rows) and res.fields is not None:
            self.send(pq.command_complete(res.tag))
            return
        suspended = self.send_result(res, portal.fields, portal.formats, portal.pos,
                                     describe=False, limit=limit)
        portal.started = True
        portal.pos = portal.pos + limit if suspended else len(res.rows)
