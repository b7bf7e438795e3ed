"""PgWireServer: the PostgreSQL-wire proxy beside HTTP, on the same Gateway.

``gateway serve`` creates one with the process's Gateway, so budgets, the
ledger and the answer cache are shared with HTTP.  The server builds the
metadata catalog once at :meth:`start` (from ``Gateway.schema()``), listens, and
hands each socket to a :class:`~gateway.pgwire.connection.Connection`.  Blocking
work (DuckDB, SQLite) runs on the server's own thread pool, never on the event
loop.  A CancelRequest names a connection by (pid, secret) and stops its current
statement; :meth:`stop` closes listeners and sessions with a FATAL 57P01, as a
PostgreSQL server does on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gateway
from gateway.pgwire.auth import METHODS, SCRAM_METHOD
from gateway.pgwire.catalog import Catalog
from gateway.pgwire.connection import Connection
from gateway.pgwire.session import ServerContext
from gateway.pgwire.settings import SERVER_VERSION

if TYPE_CHECKING:
    from gateway.service import Gateway

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PgWireOptions:
    """Operator settings (all optional keyword arguments of :class:`PgWireServer`)."""

    auth_methods: tuple[str, ...] = (SCRAM_METHOD,)  # add "password" for cleartext keys
    idle_timeout_s: float | None = 3600.0  # close sessions idle this long (None: never)
    startup_timeout_s: float = 30.0
    catalog_timeout_s: float = 10.0  # a catalog query running longer is interrupted
    max_connections: int = 256
    max_message_bytes: int = 16 * 1024 * 1024
    workers: int | None = None  # thread pool size (default: min(32, cores + 4))
    ssl_context: ssl.SSLContext | None = None  # offer TLS on SSLRequest
    ssl_required: bool = False
    notices: bool = True  # a NOTICE with the ε/δ spent after each data query
    auth_failure_delay_s: float = 0.2
    shutdown_timeout_s: float = 10.0


class PgWireServer:
    """``PgWireServer(gateway, host, port, **options)``; ``await start()`` / ``stop()``."""

    def __init__(self, gateway: Gateway, host: str = "127.0.0.1", port: int = 5433,
                 **options: object) -> None:
        self.gateway = gateway
        self.host = host
        self.port = port
        self.options = PgWireOptions(**options)  # type: ignore[arg-type]
        bad = set(self.options.auth_methods) - set(METHODS)
        if bad or not self.options.auth_methods:
            raise ValueError(f"auth_methods must be a non-empty subset of {METHODS}")
        # Salts of fake SCRAM verifiers for unknown users: kept in the state, so they are
        # the same after a restart and on every replica (names cannot be enumerated).
        self.secret = gateway.ledger.shared_secret("scram-fake-salt")
        self.version = (f"PostgreSQL {SERVER_VERSION} (dp-gateway {gateway_version()}) on "
                        "x86_64-pc-linux-gnu, a differentially private SQL proxy, 64-bit")
        self.context: ServerContext | None = None
        self._server: asyncio.base_events.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._catalog: Catalog | None = None
        self._connections: dict[int, Connection] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the catalog, bind and listen; returns once connections are accepted."""
        schema = await asyncio.to_thread(self.gateway.schema)
        self._catalog = await asyncio.to_thread(Catalog, schema, self.gateway.policy.dataset)
        workers = self.options.workers or min(32, (os.cpu_count() or 1) + 4)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="pgwire")
        self.context = ServerContext(self.gateway, self._catalog, self._executor,
                                     self.version, self.options.catalog_timeout_s,
                                     self.options.notices)
        self._server = await asyncio.start_server(self._accept, self.host, self.port,
                                                  limit=1024 * 1024)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("PostgreSQL-wire proxy listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening, end every session with FATAL 57P01, free the pool and catalog."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections.values()):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.terminate("57P01", "terminating connection due to administrator "
                                     "command")
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks,
                                            timeout=self.options.shutdown_timeout_s)
            for t in pending:
                t.cancel()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    # -- connections ----------------------------------------------------------------------

    def policy_dp(self) -> dict[str, str]:
        """The policy's default per-query spend, as session settings."""
        d = self.gateway.policy.model.defaults
        return {"dp.epsilon": repr(float(d.epsilon)), "dp.delta": repr(float(d.delta)),
                "dp.mechanism": str(d.mechanism).lower()}

    def _new_pid(self) -> int:
        while True:
            pid = secrets.randbelow(2**31 - 2) + 1
            if pid not in self._connections:
                return pid

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        pid = self._new_pid()
        conn = Connection(self, reader, writer, pid, secrets.randbits(31))
        try:
            if len(self._connections) >= self.options.max_connections:
                # said after the startup packet, as PostgreSQL does, so libpq shows it
                conn.refusal = ("53300", "sorry, too many clients already")
            self._connections[pid] = conn
            await conn.serve()
        finally:
            self._connections.pop(pid, None)
            self._tasks.discard(task)

    def cancel(self, pid: int, secret: int) -> None:
        """Honour a CancelRequest (silently ignored if pid/secret do not match)."""
        conn = self._connections.get(pid)
        if conn is None or conn.session is None:
            return
        if hmac.compare_digest(secret.to_bytes(4, "big", signed=True),
                               conn.secret.to_bytes(4, "big", signed=True)):
            conn.session.cancel()

    @property
    def connections(self) -> int:
        return len(self._connections)


def gateway_version() -> str:
    return getattr(gateway, "__version__", "0")
