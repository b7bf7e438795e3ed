"""`gateway serve`: one process, one Gateway, HTTP (uvicorn) and the PostgreSQL-wire proxy.

Both front ends share the same Gateway, hence the same ledger and the same
answer cache, so an analyst's budget is one budget whichever way they come in.

Shutdown on SIGTERM or Ctrl-C is graceful: stop accepting, let the requests in
flight finish (each bounded by the per-request timeout), stop the proxy, then
close the Gateway.  A charge is committed before its answer is released, so
even a ``kill -9`` loses budget, never privacy.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.api.context import Settings

log = logging.getLogger("gateway.cli.serve")

DEMO_ANALYST = "demo"
DEMO_SQL = "SELECT device, COUNT(*) AS visits FROM visits GROUP BY device"


@dataclass(frozen=True)
class ServeOptions:
    policy: str
    state: str
    host: str = "127.0.0.1"
    http_port: int = 8000
    pg_port: int | None = 5433
    settings: Settings = field(default_factory=Settings)
    demo: bool = False
    access_log: bool = False
    log_level: str = "info"
    graceful_timeout_s: float = 30.0


def serve(opts: ServeOptions) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    import uvicorn

    from gateway.api import create_app
    from gateway.service import Gateway

    logging.basicConfig(level=opts.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    busy = _busy_port(opts)
    if busy is not None:
        print(f"Error: {busy}", file=sys.stderr)
        return 2
    gw = Gateway.open(opts.policy, opts.state)
    try:
        if opts.demo:
            print(demo_banner(gw, opts), flush=True)
        companions = _pgwire(gw, opts)
        app = create_app(gw, opts.settings, companions)
        config = uvicorn.Config(
            app, host=opts.host, port=opts.http_port, log_level=opts.log_level,
            access_log=opts.access_log, timeout_graceful_shutdown=int(opts.graceful_timeout_s),
            server_header=False, lifespan="on")
        # After uvicorn configured its loggers: keys sent in a URL (refused, but sent)
        # must not reach the access log.
        logging.getLogger("uvicorn.access").addFilter(NoQueryStrings())
        server = uvicorn.Server(config)
        # uvicorn re-raises the signal it caught once it has shut down; with these
        # handlers in place that lands here instead of killing the process before
        # the Gateway is closed, and the exit code is 0.
        previous = {s: signal.signal(s, _noted) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            asyncio.run(server.serve())
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 0 if server.started else 1
    finally:
        gw.close()


class NoQueryStrings(logging.Filter):
    """Drops the query string from access-log lines: a client that puts an API key in a
    URL (``?key=...``, refused) must not have it written to the log in full."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and \
                "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?<query removed>",
                           *args[3:])
        return True


def _noted(signum: int, _frame: Any) -> None:
    log.info("shut down after %s", signal.Signals(signum).name)


def _busy_port(opts: ServeOptions) -> str | None:
    """What to say when a port is taken, before anything starts (else None)."""
    import errno
    import socket

    wanted = [(opts.http_port, "--http-port N")]
    if opts.pg_port is not None:
        wanted.append((opts.pg_port, "--pg-port N, or --no-pg to serve HTTP only"))
    for port, flag in wanted:
        with socket.socket(socket.AF_INET6 if ":" in opts.host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((opts.host, port))
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    return f"cannot listen on {opts.host}:{port} ({e.strerror}); pass {flag}"
                return (f"port {port} on {opts.host} is already in use (another gateway, or "
                        f"another server); pass {flag}")
    return None


def _pgwire(gw: Any, opts: ServeOptions) -> list[Any]:
    """The PostgreSQL-wire proxy beside HTTP, when asked for and installed."""
    if opts.pg_port is None:
        return []
    try:
        from gateway.pgwire import PgWireServer
    except ImportError as e:
        log.warning("the PostgreSQL-wire proxy is unavailable (%s); serving HTTP only", e)
        return []
    log.info("PostgreSQL-wire proxy on %s:%d", opts.host, opts.pg_port)
    return [PgWireServer(gw, opts.host, opts.pg_port)]


def demo_banner(gw: Any, opts: ServeOptions) -> str:
    """Create the demo analyst on first start and say how to use it.

    The key exists in clear only now: the ledger keeps its hash.  On later
    starts the banner says how to mint a new key instead.
    """
    host = "127.0.0.1" if opts.host in ("0.0.0.0", "::", "") else opts.host
    url = f"http://{host}:{opts.http_port}"
    names = {a.name for a in gw.analysts()}
    cli = f"gateway analyst add NAME --policy {opts.policy} --state {opts.state}"
    if DEMO_ANALYST in names:
        return "\n".join([
            f"Analyst {DEMO_ANALYST!r} already exists in {opts.state}; its API key was "
            "printed when it was created and only its hash is stored, so it cannot be "
            "shown again.",
            f"To get a new key:  KEY=$({cli})",
            f"Then:  curl -s {url}/v1/budget -H \"Authorization: Bearer $KEY\"",
            f"API docs: {url}/docs", ""])
    key = gw.add_analyst(DEMO_ANALYST)
    body = '{"sql": "' + DEMO_SQL + '", "epsilon": 0.2}'
    return "\n".join([
        f"Created analyst {DEMO_ANALYST!r}. Its API key (shown only now; only its hash is "
        "stored):",
        "",
        f"    {key}",
        "",
        "Ask a question over HTTP:",
        f"  curl -s {url}/v1/query -H 'Authorization: Bearer {key}' "
        f"-H 'Content-Type: application/json' -d '{body}'",
        "",
        "Or from Python:",
        "  from gateway.client import connect",
        f"  conn = connect({url!r}, api_key={key!r})",
        f"  print(conn.query({DEMO_SQL!r}, epsilon=0.2).to_pandas())",
        "  print(conn.budget())",
        "",
        f"API docs: {url}/docs", ""])


def options_from_args(args: Any) -> ServeOptions:
    """Map ``gateway serve`` flags (see gateway.cli.main) onto ServeOptions."""
    settings = Settings(workers=args.workers, queue=args.queue,
                        request_timeout_s=args.request_timeout, max_body_bytes=args.max_body)
    return ServeOptions(
        policy=args.policy, state=args.state, host=args.host, http_port=args.http_port,
        pg_port=None if args.no_pg else args.pg_port, settings=settings, demo=args.demo,
        access_log=args.access_log, log_level=args.log_level)


def main(args: Any) -> int:
    if not Path(args.policy).exists():
        print(f"error: no policy file at {args.policy} (give --policy PATH or set "
              "$GATEWAY_POLICY)", file=sys.stderr)
        return 1
    return serve(options_from_args(args))
