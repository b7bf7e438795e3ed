"""What one statement produced, before it is encoded on the wire (shared by the
session and the commands it answers itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.pgwire.types import Field


@dataclass
class Result:
    """What one statement produced, ready to be encoded."""

    tag: str
    fields: list[Field] | None = None  # None: a command, no RowDescription
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    reported: list[str] = field(default_factory=list)  # GUCs to send as ParameterStatus
    copy: str | None = None  # COPY ... TO STDOUT format: text, csv or binary
    copy_header: bool = False
    empty: bool = False  # EmptyQueryResponse
