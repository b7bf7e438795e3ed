"""What every route needs: the one Gateway, the work pool, settings, and the caller.

Routes get these through FastAPI dependencies, so tests can build an app around
any Gateway (or override a dependency) without a process or a network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from gateway.api.pool import WorkPool
from gateway.api.problems import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    problem_body,
    stored_response,
)
from gateway.errors import AuthError, GatewayError, LedgerUnavailable
from gateway.service import Gateway
from gateway.state.idempotency import Claim, IdempotencyStore, KeyReused, Stored, check_key
from gateway.state.ledger import Analyst

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """Limits of one server; ``gateway serve`` flags map one to one onto these."""

    workers: int = 4
    queue: int = 64
    request_timeout_s: float = 65.0
    max_body_bytes: int = 1 << 20
    retry_after_s: int = 1
    idempotency_ttl_s: float = 86_400.0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.queue < 0 or self.max_body_bytes < 1024:
            raise ValueError("workers >= 1, queue >= 0 and max_body_bytes >= 1024 are required")
        if not self.request_timeout_s > 0:
            raise ValueError("request_timeout_s must be positive")


class ApiContext:
    """One per app: shared by all requests, so there is one Gateway and one ledger."""

    def __init__(self, gateway: Gateway, settings: Settings) -> None:
        self.gateway = gateway
        self.settings = settings
        self.pool = WorkPool(settings.workers, settings.queue,
                             retry_after_s=settings.retry_after_s)
        # A claim older than the longest a request can run was left by a dead server.
        self.idempotency = IdempotencyStore(
            gateway.ledger, gateway.ledger.dataset, gateway.ledger.audit,
            ttl_s=settings.idempotency_ttl_s,
            stale_after_s=max(120.0, 2 * settings.request_timeout_s))

    async def run(self, fn: Callable[[], Any]) -> Any:
        return await self.pool.run(fn, self.settings.request_timeout_s)

    async def charged(self, who: Analyst, action: str, key: str | None, digest: str,
                      work: Callable[[], dict[str, Any]], status: int = 200,
                      headers: Callable[[dict[str, Any]], dict[str, str]] | None = None
                      ) -> Response:
        """Run work that may charge budget, honouring an Idempotency-Key if one was sent."""
        if key is None:
            body = await self.run(work)
            return stored_response(status, body, headers(body) if headers else None)
        key = check_key(key)
        store = self.idempotency

        def job() -> Claim:
            claim = store.claim(who.name, key, digest)
            if claim.state == "done":
                assert claim.stored is not None
                store.record_replay(who.name, action, claim.stored)
            if claim.state != "new":
                return claim
            try:
                result = Stored(status, work())
            except GatewayError as e:
                if e.http_status >= 500:  # transient: let the retry run again
                    store.release(who.name, key)
                    raise
                result = Stored(e.http_status, problem_body(e))
            except BaseException:
                store.release(who.name, key)
                raise
            try:
                store.complete(who.name, key, digest, result)
            except LedgerUnavailable:
                # The charge is committed and the answer paid for: deliver it; a retry
                # with this key waits for the stale claim, then is served from the cache.
                log.warning("could not store the answer under an Idempotency-Key")
            return Claim("new", result)

        try:
            claim = await self.run(job)
            deadline = time.monotonic() + self.settings.request_timeout_s
            while claim.state == "pending":
                if time.monotonic() > deadline:
                    raise IdempotencyKeyInUse(
                        "a request with this Idempotency-Key is still running",
                        hint="retry after the delay in Retry-After to collect its answer",
                        retry_after_s=self.settings.retry_after_s)
                await asyncio.sleep(0.02)
                if store.lookup(who.name, key, digest).state != "pending":
                    claim = await self.run(job)  # collect it (or run it, if it failed)
        except KeyReused:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was already used for a different request",
                hint="use a fresh key for each new request") from None
        assert claim.stored is not None
        extra = {"Idempotency-Key": key}
        if claim.state == "done":
            extra["Idempotent-Replayed"] = "true"
        if headers is not None and claim.stored.status < 400:
            extra.update(headers(claim.stored.body))
        return stored_response(claim.stored.status, claim.stored.body, extra)


def get_context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.context
    return ctx


_bearer = HTTPBearer(auto_error=False, description="an API key from `gateway analyst add`")


async def principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ctx: Annotated[ApiContext, Depends(get_context)],
) -> Analyst:
    """The authenticated analyst: the only source of identity (never a header or field).

    ``async`` on purpose: the key lookup is one indexed read of a WAL database,
    cheaper than the hop to a thread; a missing, malformed or unknown key is a 401.
    """
    if creds is None:
        if request.headers.get("authorization"):
            raise AuthError("the Authorization header is not a Bearer token",
                            hint="send Authorization: Bearer <key>")
        raise AuthError("no API key was given", hint="send Authorization: Bearer <key>")
    return ctx.gateway.authenticate(creds.credentials)
