"""PostgreSQL types on the wire: OIDs, and values to and from text and binary.

Clients decode a column by the type OID in RowDescription, so an OID must say
exactly what the bytes are: a binary ``int8`` is 8 bytes, a ``float8`` an IEEE
double.  Whatever the engine hands back is therefore *coerced* to the type we
announced (:func:`coerce`) before it is encoded, so a Describe and the Execute
after it can never disagree.  Parameters arrive as text or binary tagged with
an OID (or 0, "unknown") and are decoded to Python values here, then rendered
as SQL literals by :mod:`gateway.pgwire.sqltext`.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Scalar type OIDs (src/include/catalog/pg_type.dat).
BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
JSON, FLOAT4, FLOAT8, UNKNOWN, BPCHAR, VARCHAR = 114, 700, 701, 705, 1042, 1043
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, NUMERIC = 1082, 1083, 1114, 1184, 1186, 1700
UUID, JSONB, REGCLASS, REGTYPE, REGPROC, VOID = 2950, 3802, 2205, 2206, 24, 2278

# element OID -> array OID, and back.
ARRAY_OF: dict[int, int] = {
    BOOL: 1000, BYTEA: 1001, CHAR: 1002, NAME: 1003, INT2: 1005, INT4: 1007, TEXT: 1009,
    BPCHAR: 1014, VARCHAR: 1015, INT8: 1016, FLOAT4: 1021, FLOAT8: 1022, OID: 1028,
    TIMESTAMP: 1115, DATE: 1182, TIME: 1183, TIMESTAMPTZ: 1185, INTERVAL: 1187,
    NUMERIC: 1231, UUID: 2951, JSON: 199, JSONB: 3807, REGTYPE: 2211, REGCLASS: 2210,
    REGPROC: 1008,
}
ELEMENT_OF: dict[int, int] = {v: k for k, v in ARRAY_OF.items()}
ELEMENT_OF.update({22: INT2, 30: OID})  # int2vector, oidvector

# Fixed sizes for RowDescription (-1: variable length).
_SIZES = {BOOL: 1, INT2: 2, INT4: 4, INT8: 8, OID: 4, FLOAT4: 4, FLOAT8: 8, DATE: 4,
          TIME: 8, TIMESTAMP: 8, TIMESTAMPTZ: 8, INTERVAL: 16, UUID: 16, CHAR: 1, NAME: 64}

# The gateway's column vocabulary (DESIGN §1.2) -> PostgreSQL types.
GATEWAY_TYPES = {"int": INT8, "float": FLOAT8, "text": TEXT, "bool": BOOL, "date": DATE,
                 "timestamp": TIMESTAMP, "numeric": NUMERIC}
# Lists (APPROX_QUANTILES) as arrays of those.
GATEWAY_TYPES.update({f"{name}[]": ARRAY_OF[oid] for name, oid in list(GATEWAY_TYPES.items())
                      if oid in ARRAY_OF})

_DUCK_SCALARS = {
    "BOOLEAN": BOOL, "TINYINT": INT2, "SMALLINT": INT2, "INTEGER": INT4, "BIGINT": INT8,
    "UTINYINT": INT2, "USMALLINT": INT4, "UINTEGER": OID, "UBIGINT": NUMERIC,
    "HUGEINT": NUMERIC, "UHUGEINT": NUMERIC, "FLOAT": FLOAT4, "DOUBLE": FLOAT8,
    "VARCHAR": TEXT, "BLOB": BYTEA, "DATE": DATE, "TIME": TIME, "TIMESTAMP": TIMESTAMP,
    "TIMESTAMP_NS": TIMESTAMP, "TIMESTAMP_MS": TIMESTAMP, "TIMESTAMP_S": TIMESTAMP,
    "TIMESTAMP WITH TIME ZONE": TIMESTAMPTZ, "INTERVAL": INTERVAL, "UUID": UUID,
    "JSON": JSON, "NULL": TEXT, '"NULL"': TEXT,
}

PG_EPOCH = dt.date(2000, 1, 1)
_PG_EPOCH_DT = dt.datetime(2000, 1, 1)
_PG_EPOCH_TZ = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Field:
    """One column of a RowDescription."""

    name: str
    oid: int
    table_oid: int = 0
    column: int = 0
    typmod: int = -1

    @property
    def size(self) -> int:
        return _SIZES.get(self.oid, -1)


def duck_oid(type_name: str) -> int:
    """The OID for a DuckDB result type (lists become arrays; unknown shapes are text)."""
    t = type_name.upper().strip()
    if t.endswith("[]"):
        elem = duck_oid(t[:-2])
        return ARRAY_OF.get(elem, ARRAY_OF[TEXT])
    if t.startswith("DECIMAL") or t.startswith("NUMERIC"):
        return NUMERIC
    if t.startswith("VARCHAR"):
        return TEXT
    return _DUCK_SCALARS.get(t, TEXT)


# -- coercion: make a value fit the announced type ---------------------------------------

def coerce(value: Any, oid: int) -> Any:
    """Convert an engine value to the Python type the OID's encoders expect."""
    if value is None:
        return None
    elem = ELEMENT_OF.get(oid)
    if elem is not None:
        if isinstance(value, list | tuple):
            return [coerce(v, elem) for v in value]
        return [coerce(value, elem)]
    try:
        if oid in (INT2, INT4, INT8, OID):
            if isinstance(value, float | decimal.Decimal):
                if not math.isfinite(value):
                    return None
                return round(value)
            return int(value)
        if oid in (FLOAT4, FLOAT8):
            return float(value)
        if oid == NUMERIC:
            if isinstance(value, float):
                return decimal.Decimal(repr(value)) if math.isfinite(value) else None
            return decimal.Decimal(value)
        if oid == BOOL:
            return bool(value)
        if oid == DATE:
            return value.date() if isinstance(value, dt.datetime) else value
        if oid in (TIMESTAMP, TIMESTAMPTZ):
            if isinstance(value, dt.datetime):
                return value
            if isinstance(value, dt.date):
                return dt.datetime(value.year, value.month, value.day)
    except (TypeError, ValueError, ArithmeticError):
        return text_out(value)
    return value


# -- text output ------------------------------------------------------------------------

def float_text(v: float) -> str:
    """Shortest exact text, as PostgreSQL 12+ prints float8 (extra_float_digits >= 1)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    r = repr(float(v))
    return r[:-2] if r.endswith(".0") else r


def _ts_text(v: dt.datetime) -> str:
    s = v.strftime("%Y-%m-%d %H:%M:%S")
    if v.microsecond:
        s += f".{v.microsecond:06d}".rstrip("0")
    if v.tzinfo is not None:
        off = v.utcoffset() or dt.timedelta()
        mins = int(off.total_seconds() // 60)
        sign = "+" if mins >= 0 else "-"
        hh, mm = divmod(abs(mins), 60)
        s += f"{sign}{hh:02d}" + (f":{mm:02d}" if mm else "")
    return s


def _interval_text(v: dt.timedelta) -> str:
    days, secs = v.days, v.seconds
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    parts = [f"{days} day{'s' if abs(days) != 1 else ''}"] if days else []
    clock = f"{h:02d}:{m:02d}:{s:02d}" + (f".{v.microseconds:06d}".rstrip("0")
                                         if v.microseconds else "")
    if secs or v.microseconds or not parts:
        parts.append(clock)
    return " ".join(parts)


def _array_elem(v: Any) -> str:
    if v is None:
        return "NULL"
    s = text_out(v)
    if s == "" or s.upper() == "NULL" or any(c in s for c in '{}," \\\t\n'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return s


def text_out(v: Any) -> str:
    """PostgreSQL's text output for a Python value."""
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, float):
        return float_text(v)
    if isinstance(v, decimal.Decimal):
        if v.is_nan():
            return "NaN"
        if v.is_infinite():
            return "Infinity" if v > 0 else "-Infinity"
        return format(v, "f")
    if isinstance(v, dt.datetime):
        return _ts_text(v)
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, dt.time):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return _interval_text(v)
    if isinstance(v, bytes | bytearray | memoryview):
        return "\\x" + bytes(v).hex()
    if isinstance(v, list | tuple):
        return "{" + ",".join(_array_elem(x) for x in v) + "}"
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return str(v)


# -- binary output ----------------------------------------------------------------------

def numeric_binary(d: decimal.Decimal) -> bytes:
    """PostgreSQL's binary numeric: base-10000 digits, weight, sign and display scale."""
    if d.is_nan():
        return struct.pack("!hhHh", 0, 0, 0xC000, 0)
    if d.is_infinite():
        return struct.pack("!hhHh", 0, 0, 0xD000 if d > 0 else 0xF000, 0)
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    dscale = max(0, -exp)
    s = "".join(map(str, digits))
    if exp >= 0:
        int_part, frac = s + "0" * exp, ""
    elif len(s) > -exp:
        int_part, frac = s[:exp], s[exp:]
    else:
        int_part, frac = "", "0" * (-exp - len(s)) + s
    int_part = int_part.lstrip("0")
    int_part = "0" * (-len(int_part) % 4) + int_part
    frac = frac + "0" * (-len(frac) % 4)
    groups = [int(int_part[i:i + 4]) for i in range(0, len(int_part), 4)]
    groups += [int(frac[i:i + 4]) for i in range(0, len(frac), 4)]
    weight = len(int_part) // 4 - 1
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    head = struct.pack("!hhHh", len(groups), weight, 0x4000 if sign else 0, dscale)
    return head + struct.pack(f"!{len(groups)}H", *groups)


def _array_binary(v: list[Any], oid: int) -> bytes:
    elem = ELEMENT_OF[oid]
    if not v:
        return struct.pack("!iiI", 0, 0, elem)
    has_null = any(x is None for x in v)
    out = [struct.pack("!iiIii", 1, int(has_null), elem, len(v), 1)]
    for x in v:
        if x is None:
            out.append(b"\xff\xff\xff\xff")
        else:
            b = binary_out(x, elem)
            out.append(struct.pack("!i", len(b)) + b)
    return b"".join(out)


_PACKERS: dict[int, Callable[[Any], bytes]] = {
    BOOL: lambda v: b"\x01" if v else b"\x00",
    INT2: lambda v: struct.pack("!h", v),
    INT4: lambda v: struct.pack("!i", v),
    INT8: lambda v: struct.pack("!q", v),
    OID: lambda v: struct.pack("!I", v & 0xFFFFFFFF),
    FLOAT4: lambda v: struct.pack("!f", v),
    FLOAT8: lambda v: struct.pack("!d", v),
    NUMERIC: numeric_binary,
    DATE: lambda v: struct.pack("!i", (v - PG_EPOCH).days),
    TIMESTAMP: lambda v: struct.pack("!q", _usec(v.replace(tzinfo=None) - _PG_EPOCH_DT)),
    TIMESTAMPTZ: lambda v: struct.pack("!q", _usec(
        (v if v.tzinfo else v.replace(tzinfo=dt.UTC)) - _PG_EPOCH_TZ)),
    TIME: lambda v: struct.pack("!q", ((v.hour * 60 + v.minute) * 60 + v.second) * 10**6
                                + v.microsecond),
    INTERVAL: lambda v: struct.pack("!qii", v.seconds * 10**6 + v.microseconds, v.days, 0),
    UUID: lambda v: uuid.UUID(str(v)).bytes,
    BYTEA: lambda v: bytes(v),
    JSONB: lambda v: b"\x01" + text_out(v).encode(),
}


def _usec(delta: dt.timedelta) -> int:
    return (delta.days * 86400 + delta.seconds) * 10**6 + delta.microseconds


def binary_out(v: Any, oid: int) -> bytes:
    """PostgreSQL's binary send format for a (coerced) value of type ``oid``."""
    if oid in ELEMENT_OF and oid not in (22, 30):
        return _array_binary(list(v), oid)
    packer = _PACKERS.get(oid)
    if packer is None:
        return text_out(v).encode("utf-8")
    return packer(v)


def encode(v: Any, oid: int, binary: bool) -> bytes | None:
    """Coerce and encode one value; None is SQL NULL."""
    v = coerce(v, oid)
    if v is None:
        return None
    return binary_out(v, oid) if binary else text_out(v).encode("utf-8")


# -- parameters in ----------------------------------------------------------------------

class ParamError(ValueError):
    """A parameter value does not parse as its declared type (SQLSTATE 22P02)."""


def parse_array_text(s: str) -> list[str | None]:
    """Split PostgreSQL array text ``{a,"b c",NULL}`` into element strings (1-D)."""
    s = s.strip()
    if not (s.startswith("{") and s.endswith("}")):
        raise ParamError(f"malformed array literal: {s!r}")
    body, i = s[1:-1], 0
    out: list[str | None] = []
    if not body.strip():
        return []
    while i <= len(body):
        while i < len(body) and body[i] == " ":
            i += 1
        if i < len(body) and body[i] == '"':
            i += 1
            buf = []
            while i < len(body) and body[i] != '"':
                if body[i] == "\\":
                    i += 1
                buf.append(body[i])
                i += 1
            out.append("".join(buf))
            i += 1
            while i < len(body) and body[i] != ",":
                i += 1
        else:
            j = body.find(",", i)
            j = len(body) if j == -1 else j
            tok = body[i:j].strip()
            out.append(None if tok.upper() == "NULL" else tok)
            i = j
        i += 1
    return out


def _bool_text(s: str) -> bool:
    t = s.strip().lower()
    if t in ("t", "true", "y", "yes", "on", "1"):
        return True
    if t in ("f", "false", "n", "no", "off", "0"):
        return False
    raise ParamError(f"invalid input syntax for type boolean: {s!r}")


def _timestamp_text(s: str) -> dt.datetime:
    t = s.strip().replace("T", " ")
    if len(t) > 3 and t[-3] in "+-" and t[-2:].isdigit() and ":" in t[:-3]:
        t += ":00"
    return dt.datetime.fromisoformat(t)


_TEXT_IN: dict[int, Callable[[str], Any]] = {
    BOOL: _bool_text, INT2: int, INT4: int, INT8: int, OID: int, FLOAT4: float,
    FLOAT8: float, NUMERIC: decimal.Decimal, DATE: lambda s: dt.date.fromisoformat(s.strip()),
    TIMESTAMP: _timestamp_text, TIMESTAMPTZ: _timestamp_text,
    TIME: lambda s: dt.time.fromisoformat(s.strip()),
    BYTEA: lambda s: bytes.fromhex(s[2:]) if s.startswith("\\x") else s.encode(),
}


def _numeric_from_binary(b: bytes) -> decimal.Decimal:
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHh", b)
    if sign == 0xC000:
        return decimal.Decimal("NaN")
    if sign in (0xD000, 0xF000):
        return decimal.Decimal("Infinity" if sign == 0xD000 else "-Infinity")
    digits = struct.unpack_from(f"!{ndigits}H", b, 8)
    ctx = decimal.Context(prec=max(28, 4 * ndigits + dscale + 8))  # exact, whatever the size
    value = decimal.Decimal(0)
    for i, d in enumerate(digits):
        value = ctx.add(value, decimal.Decimal(d).scaleb(4 * (weight - i), ctx))
    value = ctx.minus(value) if sign == 0x4000 else value
    return value.quantize(decimal.Decimal(1).scaleb(-dscale), context=ctx)


def _array_from_binary(b: bytes) -> list[Any]:
    ndim, _flags, elem = struct.unpack_from("!iiI", b)
    if ndim == 0:
        return []
    if ndim != 1:
        raise ParamError("only one-dimensional array parameters are supported")
    n, _lb = struct.unpack_from("!ii", b, 12)
    pos = 20
    out: list[Any] = []
    for _ in range(n):
        (size,) = struct.unpack_from("!i", b, pos)
        pos += 4
        if size < 0:
            out.append(None)
            continue
        out.append(decode_param(b[pos:pos + size], elem, True))
        pos += size
    return out


_BINARY_IN: dict[int, Callable[[bytes], Any]] = {
    BOOL: lambda b: b != b"\x00",
    INT2: lambda b: struct.unpack("!h", b)[0],
    INT4: lambda b: struct.unpack("!i", b)[0],
    INT8: lambda b: struct.unpack("!q", b)[0],
    OID: lambda b: struct.unpack("!I", b)[0],
    FLOAT4: lambda b: struct.unpack("!f", b)[0],
    FLOAT8: lambda b: struct.unpack("!d", b)[0],
    NUMERIC: _numeric_from_binary,
    DATE: lambda b: PG_EPOCH + dt.timedelta(days=struct.unpack("!i", b)[0]),
    TIMESTAMP: lambda b: _PG_EPOCH_DT + dt.timedelta(microseconds=struct.unpack("!q", b)[0]),
    TIMESTAMPTZ: lambda b: _PG_EPOCH_TZ + dt.timedelta(microseconds=struct.unpack("!q", b)[0]),
    UUID: lambda b: str(uuid.UUID(bytes=b)),
    BYTEA: bytes,
    JSONB: lambda b: b[1:].decode("utf-8"),
}


def decode_param(raw: bytes | None, oid: int, binary: bool) -> Any:
    """A Bind parameter as a Python value (str when the type is text or unknown)."""
    if raw is None:
        return None
    try:
        if binary:
            if oid in ELEMENT_OF:
                return _array_from_binary(raw)
            fn = _BINARY_IN.get(oid)
            return fn(raw) if fn is not None else raw.decode("utf-8")
        text = raw.decode("utf-8")
        if oid in ELEMENT_OF:
            elem = ELEMENT_OF[oid]
            return [None if x is None else decode_param(x.encode(), elem, False)
                    for x in parse_array_text(text)]
        fn2 = _TEXT_IN.get(oid)
        return fn2(text) if fn2 is not None else text
    except ParamError:
        raise
    except (ValueError, struct.error, UnicodeDecodeError, decimal.InvalidOperation) as e:
        raise ParamError(f"invalid value for parameter of type {oid}: {e}") from None
