"""OpenAPI: every error response documented as problem+json, with its possible types.

FastAPI documents declared ``responses`` as ``application/json`` and adds its
own 422 model to every route with parameters; neither is what the server
sends.  Routes declare only the statuses they can answer with (:func:`errors`);
:func:`build_openapi` then writes each as ``application/problem+json`` with the
:class:`Problem` schema and the problem ``type`` values that status can carry,
so a client generator or a fuzzer sees exactly what the server does.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.api.models import Problem
from gateway.api.problems import PROBLEM_CLASSES, PROBLEM_JSON

DESCRIPTIONS = {
    400: "The request is well formed but cannot be answered as asked "
         "(a query that cannot be shown to be private, an ε outside the policy's limits).",
    401: "No API key, or not a valid one. Send `Authorization: Bearer <key>`.",
    403: "The privacy budget cannot afford the request, or the caller may not do this.",
    404: "No such route, model or analyst.",
    409: "A request with the same Idempotency-Key is still running; retry after "
         "`Retry-After` to collect its answer.",
    413: "The request body is larger than the server accepts.",
    422: "The body is not JSON, misses a required field, has a field of the wrong type or "
         "a field the endpoint does not know, or an Idempotency-Key was reused.",
    500: "A bug in the gateway; the response says nothing more.",
    503: "The query engine or the privacy ledger is unavailable, the server is saturated, "
         "or the request timed out. Retry after `Retry-After`; with an Idempotency-Key a "
         "retry is never charged twice.",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the error statuses it can answer with (plus 500)."""
    return {s: {"description": DESCRIPTIONS[s]} for s in (*statuses, 500)}


def types_for(status: int) -> list[str]:
    return sorted(code for code, cls in PROBLEM_CLASSES.items() if cls.http_status == status)


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(title=app.title, version=app.version, description=app.description,
                       routes=app.routes, tags=app.openapi_tags)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    for path in spec.get("paths", {}).values():
        for op in path.values():
            responses = op.get("responses", {})
            for code, resp in list(responses.items()):
                status = int(code)
                if status < 400:
                    continue
                kinds = types_for(status)
                resp["description"] = DESCRIPTIONS.get(status, resp.get("description", ""))
                if kinds:
                    resp["description"] += " Problem types: " + ", ".join(
                        f"`{k}`" for k in kinds) + "."
                resp["content"] = {PROBLEM_JSON: {
                    "schema": {"$ref": "#/components/schemas/Problem"},
                    "example": _example(status, kinds)}}
                if status in (409, 503):
                    resp["headers"] = {"Retry-After": {
                        "description": "seconds to wait before retrying",
                        "schema": {"type": "integer"}}}
                if status == 401:
                    resp["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    app.openapi_schema = spec
    return spec


def _example(status: int, kinds: list[str]) -> dict[str, Any]:
    code = kinds[0] if kinds else "internal_error"
    cls = PROBLEM_CLASSES[code]
    return {"type": code, "title": cls.title, "status": status,
            "detail": DESCRIPTIONS.get(status, cls.title)}
