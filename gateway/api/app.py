"""The FastAPI application: wiring only (routes, limits, error mapping, lifespan).

``create_app(gateway)`` builds an app around an open :class:`Gateway`; the
caller owns the Gateway (``gateway serve`` opens and closes it), so tests can
serve any Gateway in process.  ``companions`` are other servers with async
``start()``/``stop()`` (the PostgreSQL-wire proxy) that live and die with the app.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import gateway
from gateway.api import routes, routes_models
from gateway.api.context import ApiContext, Settings
from gateway.api.openapi import build_openapi
from gateway.api.problems import (
    InternalError,
    MalformedRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    problem_response,
)
from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.service import Gateway

log = logging.getLogger(__name__)

DESCRIPTION = """\
SQL over HTTP with differential privacy. Every answer is noisy, and its cost in
ε/δ is charged to the caller's budget *before* it is released; the same query
at the same ε is answered from the cache for free. Authenticate with
`Authorization: Bearer <key>` (keys come from `gateway analyst add NAME`).
Errors are `application/problem+json` (RFC 9457) whose `type` is a stable code.
Send an `Idempotency-Key` header on POST /v1/query and POST /v1/models to make a
retry return the stored answer without a second charge.
"""


class Companion(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def create_app(gw: Gateway, settings: Settings | None = None,
               companions: Sequence[Companion] = ()) -> FastAPI:
    settings = settings or Settings()
    context = ApiContext(gw, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        started: list[Companion] = []
        try:
            for c in companions:
                await c.start()
                started.append(c)
            yield
        finally:
            for c in reversed(started):
                try:
                    await c.stop()
                except Exception:
                    log.exception("stopping %s failed", type(c).__name__)
            await asyncio.to_thread(context.pool.shutdown)

    app = FastAPI(title="DP SQL gateway", version=gateway.__version__, description=DESCRIPTION,
                  lifespan=lifespan, docs_url="/docs", redoc_url=None,
                  openapi_url="/openapi.json")
    app.state.context = context
    app.include_router(routes.router)
    app.include_router(routes_models.router)
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    _install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


# -- errors --------------------------------------------------------------------------


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(_r: Request, exc: GatewayError) -> Response:
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def malformed(_r: Request, exc: RequestValidationError) -> Response:
        # loc/msg/type only: pydantic's ``input`` and ``ctx`` echo what was sent.
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                    "type": str(e.get("type", ""))} for e in exc.errors()[:20]]
        where = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5])
        return problem_response(MalformedRequest(
            f"the request does not match the API: {where}",
            hint="see /docs for the request models", errors=details))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return problem_response(_from_http(request, exc.status_code))

    @app.exception_handler(Exception)
    async def crash(_r: Request, exc: Exception) -> Response:
        incident = uuid.uuid4().hex[:12]
        log.error("internal error %s", incident, exc_info=exc)
        return problem_response(InternalError(
            f"the gateway failed to handle the request (incident {incident}); this is a bug",
            hint="the operator's log has the details under the incident id"))


def _from_http(request: Request, status: int) -> GatewayError:
    if status == 404:
        return NotFound(f"no such resource: {request.url.path}", hint="see /docs for the API")
    if status == 405:
        return MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}",
                                hint="see /docs for the methods of each path")
    if status == 413:
        return PayloadTooLarge("the request body is too large",
                               hint="send less (the limit is set by the operator)")
    if status == 422:
        return MalformedRequest("the request does not match the API")
    return InvalidRequest("the request could not be read", hint="send a JSON body")


# -- limits ----------------------------------------------------------------------------


class BodyLimit:
    """Refuse bodies over ``max_bytes`` (413) before reading them, chunked ones included."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            await _send(problem_response(PayloadTooLarge(
                f"the request body has {length} bytes; the limit is {self.max_bytes}",
                hint="send less")), scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413)
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    await response(scope, receive, send)
