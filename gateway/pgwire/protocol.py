"""The PostgreSQL frontend/backend protocol 3.0: framing and message codecs.

Only bytes live here: reading a startup packet or a typed message from a
stream, decoding the payloads of the extended-query messages, and building
every backend message we send.  What the messages *mean* is decided by
:mod:`gateway.pgwire.connection`.  Reference: PostgreSQL docs, chapter 55
("Frontend/Backend Protocol"), "Message Formats".
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.pgwire.types import Field

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_STARTUP = 10_000


class ProtocolError(Exception):
    """The peer sent something that is not valid protocol; the connection is closed."""

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


# -- reading ---------------------------------------------------------------------------

async def read_startup(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One untyped startup-phase packet: (code, rest of payload)."""
    head = await reader.readexactly(4)
    (length,) = struct.unpack("!i", head)
    if length < 8 or length > MAX_STARTUP:
        raise ProtocolError(f"invalid startup packet length {length}")
    body = await reader.readexactly(length - 4)
    (code,) = struct.unpack_from("!i", body)
    return code, body[4:]


async def read_message(reader: asyncio.StreamReader, max_size: int) -> tuple[bytes, bytes]:
    """One typed message: (type byte, payload)."""
    head = await reader.readexactly(5)
    kind, length = head[:1], struct.unpack_from("!i", head, 1)[0]
    if length < 4 or length - 4 > max_size:
        raise ProtocolError(f"invalid message length {length}", "54000")
    body = await reader.readexactly(length - 4) if length > 4 else b""
    return kind, body


class Buffer:
    """A cursor over one message payload."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def cstr(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolError("unterminated string in message")
        s = self.data[self.pos:end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return s

    def int16(self) -> int:
        (v,) = struct.unpack_from("!h", self.data, self.pos)
        self.pos += 2
        return int(v)

    def int32(self) -> int:
        (v,) = struct.unpack_from("!i", self.data, self.pos)
        self.pos += 4
        return int(v)

    def uint32(self) -> int:
        (v,) = struct.unpack_from("!I", self.data, self.pos)
        self.pos += 4
        return int(v)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("message is shorter than its fields")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out


def parse_startup_params(payload: bytes) -> dict[str, str]:
    parts = payload.split(b"\x00")
    out: dict[str, str] = {}
    for i in range(0, len(parts) - 1, 2):
        if not parts[i]:
            break
        out[parts[i].decode("utf-8", "replace")] = parts[i + 1].decode("utf-8", "replace")
    return out


@dataclass(frozen=True)
class ParseMsg:
    name: str
    query: str
    param_types: tuple[int, ...]


@dataclass(frozen=True)
class BindMsg:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


def decode_parse(body: bytes) -> ParseMsg:
    b = Buffer(body)
    name, query = b.cstr(), b.cstr()
    n = b.int16()
    return ParseMsg(name, query, tuple(b.uint32() for _ in range(n)))


def decode_bind(body: bytes) -> BindMsg:
    b = Buffer(body)
    portal, stmt = b.cstr(), b.cstr()
    formats = tuple(b.int16() for _ in range(b.int16()))
    params: list[bytes | None] = []
    for _ in range(b.int16()):
        size = b.int32()
        params.append(None if size < 0 else b.take(size))
    results = tuple(b.int16() for _ in range(b.int16()))
    return BindMsg(portal, stmt, formats, tuple(params), results)


def format_for(formats: Sequence[int], i: int) -> int:
    """The format code of column/parameter ``i`` (none: text; one: all; else each)."""
    if not formats:
        return 0
    if len(formats) == 1:
        return formats[0]
    return formats[i] if i < len(formats) else 0


# -- writing ---------------------------------------------------------------------------

def _msg(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


def _cstr(s: str) -> bytes:
    return s.encode("utf-8").replace(b"\x00", b"") + b"\x00"


def auth_request(code: int, extra: bytes = b"") -> bytes:
    return _msg(b"R", struct.pack("!i", code) + extra)


AUTH_OK = auth_request(0)


def parameter_status(name: str, value: str) -> bytes:
    return _msg(b"S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return _msg(b"K", struct.pack("!ii", pid, secret))


def ready_for_query(status: str) -> bytes:
    return _msg(b"Z", status.encode("ascii"))


def negotiate_protocol(minor: int, unknown: Sequence[str]) -> bytes:
    body = struct.pack("!ii", minor, len(unknown)) + b"".join(_cstr(u) for u in unknown)
    return _msg(b"v", body)


def row_description(fields: Sequence[Field], formats: Sequence[int] = ()) -> bytes:
    parts = [struct.pack("!h", len(fields))]
    for i, f in enumerate(fields):
        parts.append(_cstr(f.name) + struct.pack(
            "!IhIhih", f.table_oid, f.column, f.oid, f.size, f.typmod,
            format_for(formats, i)))
    return _msg(b"T", b"".join(parts))


def data_row(values: Sequence[bytes | None]) -> bytes:
    parts = [struct.pack("!h", len(values))]
    for v in values:
        if v is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(struct.pack("!i", len(v)))
            parts.append(v)
    return _msg(b"D", b"".join(parts))


def parameter_description(oids: Sequence[int]) -> bytes:
    return _msg(b"t", struct.pack(f"!h{len(oids)}I", len(oids), *oids))


def command_complete(tag: str) -> bytes:
    return _msg(b"C", _cstr(tag))


PARSE_COMPLETE = _msg(b"1")
BIND_COMPLETE = _msg(b"2")
CLOSE_COMPLETE = _msg(b"3")
NO_DATA = _msg(b"n")
PORTAL_SUSPENDED = _msg(b"s")
EMPTY_QUERY = _msg(b"I")
COPY_DONE = _msg(b"c")


def copy_out_response(ncols: int, binary: bool) -> bytes:
    fmt = 1 if binary else 0
    return _msg(b"H", struct.pack(f"!bh{ncols}h", fmt, ncols, *([fmt] * ncols)))


def copy_data(data: bytes) -> bytes:
    return _msg(b"d", data)


def _fields(severity: str, sqlstate: str, message: str, detail: str | None,
            hint: str | None, position: int | None) -> bytes:
    parts = [b"S" + _cstr(severity), b"V" + _cstr(severity), b"C" + _cstr(sqlstate),
             b"M" + _cstr(message)]
    if detail:
        parts.append(b"D" + _cstr(detail))
    if hint:
        parts.append(b"H" + _cstr(hint))
    if position:
        parts.append(b"P" + _cstr(str(position)))
    return b"".join(parts) + b"\x00"


def error_response(sqlstate: str, message: str, *, severity: str = "ERROR",
                   detail: str | None = None, hint: str | None = None,
                   position: int | None = None) -> bytes:
    return _msg(b"E", _fields(severity, sqlstate, message, detail, hint, position))


def notice_response(sqlstate: str, message: str, *, severity: str = "NOTICE",
                    detail: str | None = None, hint: str | None = None) -> bytes:
    return _msg(b"N", _fields(severity, sqlstate, message, detail, hint, None))
