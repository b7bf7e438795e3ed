"""Training endpoints (DESIGN §1.3): submit a DP-SGD job, follow it, predict with it.

``POST /v1/models`` answers 202 as soon as the core has validated the request
and charged the budget; training continues in the core's background thread.
Prediction is post-processing of a released model, so it is free.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from starlette.responses import Response

from gateway.api.context import ApiContext, get_context, principal
from gateway.api.models import ModelJob, ModelRequest, PredictRequest, PredictResponse
from gateway.api.openapi import errors
from gateway.api.problems import stored_response
from gateway.api.routes import IdemKey
from gateway.errors import NotFound
from gateway.query.results import jsonable
from gateway.service import Gateway
from gateway.state.idempotency import fingerprint
from gateway.state.ledger import Analyst

router = APIRouter(tags=["models"])

Ctx = Annotated[ApiContext, Depends(get_context)]
Caller = Annotated[Analyst, Depends(principal)]
ModelId = Annotated[str, Path(min_length=1, max_length=128)]


def _training(gw: Gateway) -> Gateway:
    """Training lands in the core separately; until it does, say so with a 404."""
    if not hasattr(gw, "submit_training"):
        raise NotFound("model training is not available on this server",
                       hint="upgrade the gateway to a version with DP training")
    return gw


@router.post("/v1/models", status_code=202, response_model=ModelJob,
             responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
             summary="Start DP training on rows selected by SQL; budget charged at start")
async def train(body: ModelRequest, who: Caller, ctx: Ctx,
                idempotency_key: IdemKey = None) -> Response:
    gw = _training(ctx.gateway)

    def work() -> dict[str, Any]:
        model_id = gw.submit_training(who, body.sql, body.label, body.model,
                                      body.epsilon, body.delta, **body.hyper())
        return {"model_id": model_id, "status": str(gw.model(who, model_id)["status"])}

    digest = fingerprint("train", body.model_dump())
    return await ctx.charged(
        who, "train", idempotency_key, digest, work, status=202,
        headers=lambda b: {"Location": f"/v1/models/{b['model_id']}"})


@router.get("/v1/models", response_model=list[dict[str, Any]],
            responses=errors(401, 404, 503), summary="The caller's models and their status")
async def list_models(who: Caller, ctx: Ctx) -> Response:
    gw = _training(ctx.gateway)
    return stored_response(200, await ctx.run(lambda: gw.models(who)))


@router.get("/v1/models/{model_id}", response_model=dict[str, Any],
            responses=errors(401, 404, 503),
            summary="Status, progress, ε/δ spent, hyper-parameters, metrics, coefficients")
async def get_model(model_id: ModelId, who: Caller, ctx: Ctx) -> Response:
    gw = _training(ctx.gateway)
    return stored_response(200, await ctx.run(
        lambda: gw.model(who, model_id)))


@router.post("/v1/models/{model_id}/predict", response_model=PredictResponse,
             responses=errors(400, 401, 404, 413, 422, 503),
             summary="Predictions for caller-supplied rows (post-processing: free)")
async def predict(model_id: ModelId, body: PredictRequest, who: Caller, ctx: Ctx) -> Response:
    gw = _training(ctx.gateway)
    predictions = await ctx.run(
        lambda: gw.predict(who, model_id, body.rows))
    return stored_response(200, {"model_id": model_id,
                                 "predictions": [_plain(p) for p in predictions]})


def _plain(value: Any) -> Any:
    """numpy scalars and arrays from the model become JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return jsonable(value)
