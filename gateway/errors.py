"""One error tree for every adapter.

Each class carries a stable ``code`` (the problem ``type`` over HTTP), an HTTP
status and a SQLSTATE, so HTTP, the PostgreSQL-wire proxy, the CLI and the
client map a failure the same way without knowing its details.  Messages are
written for the analyst: what rule was broken and what to do instead.  They
never contain a value read from private data or a backend's own message.

::

    GatewayError
    ├── PolicyError        policy file is wrong (operator error)
    ├── InvalidRequest     bad epsilon/delta/mechanism or malformed input
    ├── QueryRejected      the SQL cannot be shown to be safe
    ├── BudgetExceeded     the ledger cannot afford the query
    ├── AuthError          no or bad credentials
    ├── Forbidden          authenticated but not allowed (e.g. not admin)
    ├── NotFound           unknown model, analyst, ...
    ├── BackendError       the engine failed or is down
    ├── LedgerUnavailable  the ledger cannot be written: fail closed
    └── InternalError      a safety check inside the gateway failed: a bug, logged
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """Character offsets [start, end) of the offending part of the SQL text."""

    start: int
    end: int
    text: str


class GatewayError(Exception):
    """Base of every error the gateway reports to a user."""

    code = "gateway_error"
    title = "Gateway error"
    http_status = 500
    sqlstate = "XX000"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    @property
    def detail(self) -> str:
        if not self.hint:
            return self.message
        stop = "" if self.message.rstrip().endswith((".", "!", "?", ":")) else "."
        return f"{self.message}{stop} {self.hint}"

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "type": self.code,
            "title": self.title,
            "status": self.http_status,
            "detail": self.detail,
        }
        return out


class PolicyError(GatewayError):
    code = "policy_error"
    title = "Invalid policy"
    http_status = 500
    sqlstate = "F0000"


class InvalidRequest(GatewayError):
    code = "invalid_request"
    title = "Invalid request"
    http_status = 400
    sqlstate = "22023"


class QueryRejected(GatewayError):
    """The query cannot be shown to be differentially private as written."""

    code = "query_rejected"
    title = "Query rejected"
    http_status = 400
    sqlstate = "42000"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        rule: str = "unsupported",
        span: Span | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.rule = rule
        self.span = span

    def to_dict(self) -> dict[str, object]:
        out = super().to_dict()
        out["rule"] = self.rule
        if self.span is not None:
            out["span"] = {"start": self.span.start, "end": self.span.end, "text": self.span.text}
        return out


class BudgetExceeded(GatewayError):
    code = "budget_exceeded"
    title = "Privacy budget exceeded"
    http_status = 403
    sqlstate = "42501"


class AuthError(GatewayError):
    code = "unauthorized"
    title = "Authentication failed"
    http_status = 401
    sqlstate = "28P01"


class Forbidden(GatewayError):
    code = "forbidden"
    title = "Not allowed"
    http_status = 403
    sqlstate = "42501"


class NotFound(GatewayError):
    code = "not_found"
    title = "Not found"
    http_status = 404
    sqlstate = "42704"


class BackendError(GatewayError):
    code = "backend_error"
    title = "Query engine unavailable"
    http_status = 503
    sqlstate = "58000"


class LedgerUnavailable(GatewayError):
    code = "ledger_unavailable"
    title = "Privacy ledger unavailable"
    http_status = 503
    sqlstate = "53000"


class InternalError(GatewayError):
    """A safety invariant did not hold (a row-level expression not proven total, a read
    of protected rows without a committed charge).  Nothing was released; the
    operator's log has the details.  Always a bug in the gateway."""

    code = "internal_error"
    title = "Internal error"
    http_status = 500
    sqlstate = "XX000"


ERROR_CLASSES: tuple[type[GatewayError], ...] = (
    GatewayError,
    PolicyError,
    InvalidRequest,
    QueryRejected,
    BudgetExceeded,
    AuthError,
    Forbidden,
    NotFound,
    BackendError,
    LedgerUnavailable,
    InternalError,
)
