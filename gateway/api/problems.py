"""Errors as ``application/problem+json`` (RFC 9457), the one way HTTP reports failure.

Every error body is built here, from a :class:`GatewayError`, so the ``type`` of a
problem is always the stable ``code`` of a class in the one error tree and a
client can switch on it.  The HTTP-only failures (body too large, malformed
body, server saturated, ...) are added to that tree below rather than invented
ad hoc in a route: the client library and the docs enumerate
:data:`PROBLEM_CLASSES`, so a new kind of failure cannot go undocumented.

Nothing here ever copies an exception's text from outside the tree (a stack
trace, a DuckDB message, a pydantic input echo): those can carry data values.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from gateway.errors import ERROR_CLASSES, BackendError, GatewayError, LedgerUnavailable

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class MalformedRequest(GatewayError):
    """The body is not valid JSON or does not match the documented model (422)."""

    code = "malformed_request"
    title = "Malformed request"
    http_status = 422
    sqlstate = "22023"

    def __init__(self, message: str, *, hint: str | None = None,
                 errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.errors = errors or []

    def to_dict(self) -> dict[str, object]:
        out = super().to_dict()
        if self.errors:
            out["errors"] = self.errors
        return out


class PayloadTooLarge(GatewayError):
    code = "payload_too_large"
    title = "Request body too large"
    http_status = 413
    sqlstate = "54000"


class MethodNotAllowed(GatewayError):
    code = "method_not_allowed"
    title = "Method not allowed"
    http_status = 405
    sqlstate = "42601"


class _RetryLater(GatewayError):
    """A failure that says nothing about the request itself: retry after a pause."""

    retry_after_s = 1

    def __init__(self, message: str, *, hint: str | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message, hint=hint)
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class Overloaded(_RetryLater):
    code = "overloaded"
    title = "Server busy"
    http_status = 503
    sqlstate = "53300"


class RequestTimeout(_RetryLater):
    code = "timeout"
    title = "Request timed out"
    http_status = 503
    sqlstate = "57014"


class IdempotencyKeyInUse(_RetryLater):
    """Draft IETF idempotency-key header, section 2.6: a retry while the first runs."""

    code = "idempotency_key_in_use"
    title = "Request with this Idempotency-Key is still running"
    http_status = 409
    sqlstate = "55P03"


class IdempotencyKeyReused(GatewayError):
    code = "idempotency_key_reused"
    title = "Idempotency-Key reused for a different request"
    http_status = 422
    sqlstate = "22023"


class InternalError(GatewayError):
    code = "internal_error"
    title = "Internal error"
    http_status = 500
    sqlstate = "XX000"


HTTP_ERROR_CLASSES: tuple[type[GatewayError], ...] = (
    MalformedRequest, PayloadTooLarge, MethodNotAllowed, Overloaded, RequestTimeout,
    IdempotencyKeyInUse, IdempotencyKeyReused, InternalError,
)

PROBLEM_CLASSES: dict[str, type[GatewayError]] = {
    cls.code: cls for cls in (*ERROR_CLASSES, *HTTP_ERROR_CLASSES)
}
"""Every problem ``type`` the API can answer with, by code."""


def problem_body(err: GatewayError) -> dict[str, Any]:
    """The RFC 9457 members (plus the core's own extensions such as ``rule``/``span``)."""
    body = dict(err.to_dict())
    if isinstance(err, _RetryLater):
        body["retry_after"] = err.retry_after_s
    elif isinstance(err, BackendError | LedgerUnavailable):
        body["retry_after"] = 1  # engine or ledger down: transient for the caller
    return body


def problem_headers(status: int, body: Mapping[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="gateway"'
    retry = body.get("retry_after")
    if isinstance(retry, int | float) and status in (409, 429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    return headers


def json_bytes(content: Any) -> bytes:
    """Strict JSON: NaN/Infinity are not JSON, so they go out as null, never as a 500."""
    try:
        text = json.dumps(content, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = json.dumps(_finite(content), allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8")


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def stored_response(status: int, body: Mapping[str, Any],
                    extra_headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer or a problem, from a status and a body (fresh or replayed)."""
    headers = dict(extra_headers or {})
    if status >= 400:
        headers.update(problem_headers(status, body))
        media = PROBLEM_JSON
    else:
        media = "application/json"
    return Response(json_bytes(body), status_code=status, media_type=media, headers=headers)


def problem_response(err: GatewayError) -> Response:
    if err.http_status >= 500:
        log.warning("%s: %s", err.code, err.message)
    return stored_response(err.http_status, problem_body(err))
