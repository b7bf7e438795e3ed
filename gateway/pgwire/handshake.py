"""The start of a connection: TLS negotiation, startup packet, authentication.

Runs before any query: answers SSLRequest/GSSENCRequest (TLS only when the
operator configured a certificate), honours a CancelRequest (which arrives on a
connection of its own), checks the protocol version, authenticates the analyst
with SCRAM-SHA-256 (see :mod:`gateway.pgwire.auth`), and opens the
:class:`~gateway.pgwire.session.Session` with the startup parameters (including
``options=-c dp.epsilon=...``) as its initial settings.
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING

from gateway.errors import GatewayError, NotFound
from gateway.pgwire import protocol as pq
from gateway.pgwire.auth import (
    MECHANISM,
    PASSWORD_METHOD,
    SCRAM_METHOD,
    AuthFailed,
    ScramExchange,
    fake_verifier,
)
from gateway.pgwire.errors import PgError
from gateway.pgwire.session import Session
from gateway.pgwire.settings import Settings
from gateway.state.keys import ScramVerifier

if TYPE_CHECKING:
    from gateway.pgwire.connection import Connection
    from gateway.state.ledger import Analyst


def _split_options(options: str) -> dict[str, str]:
    """``-c a=b --c=d`` (libpq's ``options``; backslash escapes a space)."""
    words, cur, esc = [], [], False
    for ch in options:
        if esc:
            cur.append(ch)
            esc = False
        elif ch == "\\":
            esc = True
        elif ch.isspace():
            if cur:
                words.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        words.append("".join(cur))
    out: dict[str, str] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w == "-c" and i + 1 < len(words):
            w, i = words[i + 1], i + 1
        elif w.startswith("-c") or w.startswith("--"):
            w = w[2:]
        name, eq, value = w.partition("=")
        if eq:
            out[name.strip().lower().replace("-", "_") if "." not in name
                else name.strip().lower()] = value
        i += 1
    return out


async def handshake(conn: Connection) -> bool:
    """Run the startup phase; True once the session is open and ReadyForQuery sent."""
    opts = conn.server.options
    while True:
        code, payload = await asyncio.wait_for(pq.read_startup(conn.reader),
                                               opts.startup_timeout_s)
        if code == pq.SSL_REQUEST:
            if opts.ssl_context is not None and conn.writer.get_extra_info("sslcontext") \
                    is None:
                conn.writer.write(b"S")
                await conn.writer.drain()
                await conn.writer.start_tls(opts.ssl_context)
            else:
                conn.writer.write(b"N")
            continue
        if code == pq.GSSENC_REQUEST:
            conn.writer.write(b"N")
            continue
        if code == pq.CANCEL_REQUEST:
            if len(payload) >= 8:
                pid, secret = struct.unpack_from("!ii", payload)
                conn.server.cancel(pid, secret)
            return False
        break
    if code >> 16 != 3:
        await conn.fatal("0A000", f"unsupported frontend protocol {code >> 16}."
                         f"{code & 0xFFFF}: server supports 3.0")
        return False
    if conn.refusal is not None:
        await conn.fatal(*conn.refusal)
        return False
    params = pq.parse_startup_params(payload)
    unknown = [k for k in params if k.startswith("_pq_.")]
    if code & 0xFFFF or unknown:
        conn.send(pq.negotiate_protocol(0, unknown))
    user = params.get("user", "")
    if not user:
        await conn.fatal("28000", "no PostgreSQL user name specified in startup packet")
        return False
    if params.get("replication", "false").lower() not in ("false", "0", "off", "no"):
        await conn.fatal("0A000", "replication connections are not supported")
        return False
    if opts.ssl_required and conn.writer.get_extra_info("sslcontext") is None:
        await conn.fatal("28000", "the gateway requires an SSL connection")
        return False
    analyst = await authenticate(conn, user)
    if analyst is None:
        return False
    startup = {k: v for k, v in params.items() if k not in (
        "user", "database", "options", "replication") and not k.startswith("_pq_.")}
    startup.update(_split_options(params.get("options", "")))
    startup["session_authorization"] = user
    try:
        settings = Settings.create(startup, conn.server.policy_dp())
    except PgError as e:
        await conn.fatal(e.sqlstate, e.message)
        return False
    assert conn.server.context is not None, "the server is not started"
    conn.session = Session(conn.server.context, analyst,
                           params.get("database", user), settings, conn.pid)
    conn.send(pq.AUTH_OK)
    for name, value in settings.reported():
        conn.send(pq.parameter_status(name, value))
    conn.send(pq.backend_key_data(conn.pid, conn.secret))
    conn.send(pq.ready_for_query("I"))
    await conn.flush()
    return True


async def _auth_message(conn: Connection) -> bytes:
    kind, body = await asyncio.wait_for(
        pq.read_message(conn.reader, 64 * 1024), conn.server.options.startup_timeout_s)
    if kind != b"p":
        raise pq.ProtocolError(f"expected an authentication message, got {kind!r}")
    return body


async def authenticate(conn: Connection, user: str) -> Analyst | None:
    """SCRAM-SHA-256 (or cleartext, if enabled); None after sending FATAL 28P01."""
    gw = conn.server.gateway
    try:
        analyst: Analyst | None = await asyncio.to_thread(gw.analyst, user)
    except NotFound:
        analyst = None
    except GatewayError as e:
        await conn.fatal(e.sqlstate, e.detail)
        return None
    failed = f'password authentication failed for user "{user}"'
    methods = conn.server.options.auth_methods
    try:
        if SCRAM_METHOD in methods and (analyst is None or analyst.scram
                                         or PASSWORD_METHOD not in methods):
            verifier = (ScramVerifier.decode(analyst.scram) if analyst and analyst.scram
                        else fake_verifier(conn.server.secret, user))
            conn.send(pq.auth_request(10, MECHANISM.encode() + b"\x00\x00"))
            await conn.flush()
            b = pq.Buffer(await _auth_message(conn))
            if b.cstr() != MECHANISM:
                raise AuthFailed("unsupported SASL mechanism")
            size = b.int32()
            exchange = ScramExchange(verifier)
            conn.send(pq.auth_request(11, exchange.server_first(b.take(size))))
            await conn.flush()
            final = exchange.server_final(await _auth_message(conn))
            if analyst is None:
                raise AuthFailed("no such analyst")
            conn.send(pq.auth_request(12, final))
            return analyst
        conn.send(pq.auth_request(3))
        await conn.flush()
        password = pq.Buffer(await _auth_message(conn)).cstr()
        who = await asyncio.to_thread(_check_key, conn, password)
        if who is None or who.name != user:
            raise AuthFailed("wrong key")
        return who
    except (AuthFailed, UnicodeDecodeError, ValueError, struct.error):
        await asyncio.sleep(conn.server.options.auth_failure_delay_s)
        await conn.fatal("28P01", failed)
        return None


def _check_key(conn: Connection, key: str) -> Analyst | None:
    try:
        return conn.server.gateway.authenticate(key)
    except GatewayError:
        return None
