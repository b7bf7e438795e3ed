"""Errors as the wire sees them: a SQLSTATE, a message, maybe a hint.

Gateway errors keep their own SQLSTATE and the very text the HTTP API sends
(``GatewayError.detail``), so a rejected query or an exhausted budget reads the
same in a BI tool as in curl.  Errors that only exist on the wire (a bad
``SET``, an unknown cursor, a catalog query DuckDB cannot run) are
:class:`PgError` with PostgreSQL's own codes.
"""

from __future__ import annotations

import re

FEATURE_NOT_SUPPORTED = "0A000"
INVALID_PARAMETER_VALUE = "22023"
UNDEFINED_OBJECT = "42704"
UNDEFINED_TABLE = "42P01"
UNDEFINED_FUNCTION = "42883"
SYNTAX_ERROR = "42601"
INVALID_CURSOR_NAME = "34000"
INVALID_SQL_STATEMENT_NAME = "26000"
IN_FAILED_TRANSACTION = "25P02"
NO_ACTIVE_TRANSACTION = "25P01"
ACTIVE_TRANSACTION = "25001"
QUERY_CANCELED = "57014"
INVALID_TEXT = "22P02"
INTERNAL = "XX000"


class PgError(Exception):
    """An error to send as an ErrorResponse (the connection stays usable)."""

    def __init__(self, sqlstate: str, message: str, *, hint: str | None = None,
                 detail: str | None = None, severity: str = "ERROR") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint
        self.detail = detail
        self.severity = severity



_DUCK_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Table with name (\S+) does not exist"), UNDEFINED_TABLE),
    (re.compile(r"Referenced table .* not found"), UNDEFINED_TABLE),
    (re.compile(r"Scalar Function with name (\S+) does not exist"), UNDEFINED_FUNCTION),
    (re.compile(r"Table Function with name (\S+) does not exist"), UNDEFINED_FUNCTION),
    (re.compile(r"Referenced column (\S+) not found"), "42703"),
    (re.compile(r"Parser Error"), SYNTAX_ERROR),
    (re.compile(r"Conversion Error|Could not convert"), INVALID_TEXT),
    (re.compile(r"Interrupt|INTERRUPT"), QUERY_CANCELED),
)


def from_duckdb(e: Exception) -> PgError:
    """A catalog query DuckDB could not answer (only ever about metadata, never data)."""
    text = str(e).split("\n", 1)[0]
    for pattern, state in _DUCK_PATTERNS:
        if pattern.search(text):
            return PgError(state, text)
    return PgError(FEATURE_NOT_SUPPORTED, f"catalog query not supported: {text}",
                   hint="the proxy emulates the PostgreSQL catalog from the policy's "
                   "public schema; this query uses a part it does not cover")
