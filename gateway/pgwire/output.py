"""Results to bytes: DataRows in the formats the client asked for, and COPY out.

Every value is coerced to the type its RowDescription announced before it is
encoded (:func:`gateway.pgwire.types.encode`), so a Describe and the Execute
after it can never disagree, in text or in binary.
"""

from __future__ import annotations

import csv
import io
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.pgwire import protocol as pq
from gateway.pgwire.types import Field, encode, text_out

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)


def data_rows(fields: Sequence[Field], rows: Iterable[Sequence[Any]],
              formats: Sequence[int]) -> bytes:
    binary = [pq.format_for(formats, i) == 1 for i in range(len(fields))]
    oids = [f.oid for f in fields]
    out = []
    for row in rows:
        out.append(pq.data_row([encode(v, oid, b) for v, oid, b in
                                zip(row, oids, binary, strict=False)]))
    return b"".join(out)


def _copy_text_value(v: Any) -> str:
    if v is None:
        return "\\N"
    s = text_out(v)
    return (s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def copy_out(fields: Sequence[Field], rows: Sequence[Sequence[Any]], fmt: str,
             header: bool) -> bytes:
    """CopyOutResponse, one CopyData per row, CopyDone (CommandComplete is the caller's)."""
    out = [pq.copy_out_response(len(fields), fmt == "binary")]
    if fmt == "binary":
        out.append(pq.copy_data(COPY_SIGNATURE))
        for row in rows:
            parts = [struct.pack("!h", len(fields))]
            for v, f in zip(row, fields, strict=False):
                b = encode(v, f.oid, True)
                parts.append(b"\xff\xff\xff\xff" if b is None else
                             struct.pack("!i", len(b)) + b)
            out.append(pq.copy_data(b"".join(parts)))
        out.append(pq.copy_data(struct.pack("!h", -1)))
    elif fmt == "csv":
        lines = [[f.name for f in fields]] if header else []
        lines += [["" if v is None else text_out(v) for v in row] for row in rows]
        for cells in lines:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerow(cells)
            out.append(pq.copy_data(buf.getvalue().encode("utf-8")))
    else:
        for row in rows:
            line = "\t".join(_copy_text_value(v) for v in row) + "\n"
            out.append(pq.copy_data(line.encode("utf-8")))
    out.append(pq.COPY_DONE)
    return b"".join(out)
