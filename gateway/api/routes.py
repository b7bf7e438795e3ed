"""The HTTP endpoints (DESIGN §1.3): each one translates, calls the Gateway, returns.

Blocking work (planning, DuckDB, the ledger) runs in the work pool; what a
route does on the event loop is parse the request and pick the core method.
The analyst is always the authenticated principal.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import Response

from gateway.api.context import ApiContext, get_context, principal
from gateway.api.models import (
    AuditEntry,
    AuditQuery,
    BudgetResponse,
    ExplainResponse,
    HealthResponse,
    QueryRequest,
    QueryResponse,
    SchemaResponse,
)
from gateway.api.openapi import errors
from gateway.api.problems import stored_response
from gateway.errors import Forbidden
from gateway.state.idempotency import fingerprint
from gateway.state.ledger import Analyst

router = APIRouter()

Ctx = Annotated[ApiContext, Depends(get_context)]
Caller = Annotated[Analyst, Depends(principal)]
IdemKey = Annotated[str | None, Header(
    alias="Idempotency-Key", description="makes a retry return the stored answer, uncharged")]


def ok(body: Any, status: int = 200) -> Response:
    return stored_response(status, body)


@router.get("/healthz", response_model=HealthResponse, tags=["meta"],
            summary="Liveness: the process is up and serving")
async def healthz(ctx: Ctx) -> Response:
    return ok({"status": "ok", "dataset": ctx.gateway.policy.dataset})


@router.post("/v1/query", response_model=QueryResponse, tags=["queries"],
             responses=errors(400, 401, 403, 409, 413, 422, 503),
             summary="Run a DP query; charged before anything is released")
async def query(body: QueryRequest, who: Caller, ctx: Ctx,
                idempotency_key: IdemKey = None) -> Response:
    def work() -> dict[str, Any]:
        return ctx.gateway.query_as(who, body.sql, body.epsilon, body.delta, body.mechanism,
                                    ci95=body.ci95).reported(body.report).to_dict()

    digest = fingerprint("query", body.model_dump())
    return await ctx.charged(who, "query", idempotency_key, digest, work)


@router.post("/v1/explain", response_model=ExplainResponse, tags=["queries"],
             responses=errors(400, 401, 413, 422, 503),
             summary="Plan, cost and expected error of a query; charges nothing")
async def explain(body: QueryRequest, who: Caller, ctx: Ctx) -> Response:
    result = await ctx.run(lambda: ctx.gateway.explain(
        body.sql, body.epsilon, body.delta, body.mechanism, ci95=body.ci95).to_dict())
    return ok(result)


@router.get("/v1/budget", response_model=BudgetResponse, tags=["budget"],
            responses=errors(401, 503), summary="The caller's budget: totals, spent, remaining")
async def budget(who: Caller, ctx: Ctx) -> Response:
    return ok(await ctx.run(lambda: ctx.gateway.budget_of(who)))


@router.get("/v1/schema", response_model=SchemaResponse, tags=["metadata"],
            responses=errors(401, 503),
            summary="Tables, columns, types, bounds and public values an analyst may know")
async def schema(who: Caller, ctx: Ctx) -> Response:
    return ok(await ctx.run(ctx.gateway.schema))


@router.get("/v1/audit", response_model=list[AuditEntry], tags=["admin"],
            responses=errors(401, 403, 422, 503),
            summary="Admin only: every request, who, what SQL, ε/δ charged, outcome")
async def audit(request: Request, who: Caller, ctx: Ctx,
                q: Annotated[AuditQuery, Query()]) -> Response:
    """Oldest first; a full page carries ``Link: <...>; rel="next"`` (RFC 8288)."""
    if not who.is_admin:
        raise Forbidden("the audit log is for administrators",
                        hint="ask an operator to run `gateway analyst add NAME --admin`")
    lo, hi = q.window()
    entries = await ctx.run(lambda: ctx.gateway.audit(q.analyst, lo, hi, q.limit, q.offset))
    headers = {}
    if len(entries) == q.limit:
        nxt = request.url.include_query_params(offset=q.offset + q.limit)
        headers["Link"] = f'<{nxt.path}?{nxt.query}>; rel="next"'
    return stored_response(200, entries, headers)
