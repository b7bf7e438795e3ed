"""asyncio client for `gateway serve`: the same calls as :mod:`gateway.client.http`, awaitable.

    async with connect_async(url, api_key) as conn:
        df = (await conn.query("SELECT COUNT(*) FROM visits", epsilon=0.1)).to_pandas()

Same retries (503/409/connection errors, ``Retry-After``, one ``Idempotency-Key``
for every attempt of a charged request), same results and exceptions as the
synchronous client; there is no DB-API layer (PEP 249 is synchronous).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from gateway.client.http import (
    RETRY_STATUSES,
    InterfaceError,
    OperationalError,
    Result,
    accuracy_target,
    backoff_delay,
    bind,
    error_from_response,
    spend_body,
)


class AsyncConnection:
    def __init__(self, url: str, api_key: str, *, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 0.25, max_backoff: float = 8.0,
                 epsilon: float | None = None, delta: float | None = None,
                 mechanism: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.epsilon, self.delta, self.mechanism = epsilon, delta, mechanism
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=timeout, transport=transport,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "dp-gateway-client"})

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, Any] | None = None, charged: bool = False,
                      idempotency_key: str | None = None) -> Any:
        """One logical request; see :meth:`gateway.client.Connection.request`."""
        if self._http.is_closed:
            raise InterfaceError("the connection is closed")
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex} if charged else {}
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                resp = await self._http.request(method, path, json=json, params=params,
                                                headers=headers)
            except httpx.TransportError as e:
                if last:
                    raise InterfaceError(f"cannot reach the gateway at {self.url}: "
                                         f"{type(e).__name__}") from None
                await asyncio.sleep(backoff_delay(attempt, self.backoff, self.max_backoff,
                                                  None))
                continue
            if resp.status_code in RETRY_STATUSES and not last:
                await asyncio.sleep(backoff_delay(attempt, self.backoff, self.max_backoff,
                                                  resp.headers.get("Retry-After")))
                continue
            try:
                body = resp.json()
            except ValueError:
                body = None
            if resp.status_code >= 400:
                raise error_from_response(resp.status_code, body)
            if body is None:
                raise InterfaceError(f"unreadable answer from {self.url}{path}")
            return body
        raise AssertionError("unreachable")  # pragma: no cover

    def _spend(self, sql: str, epsilon: float | None, delta: float | None,
               mechanism: str | None, ci95: float | None = None) -> dict[str, Any]:
        return spend_body(sql, self.epsilon if epsilon is None and ci95 is None else epsilon,
                          self.delta if delta is None else delta,
                          self.mechanism if mechanism is None else mechanism, ci95)

    async def query(self, sql: str, epsilon: float | None = None, delta: float | None = None,
                    mechanism: str | None = None, *, params: Any = None,
                    idempotency_key: str | None = None, report: str | None = None,
                    ci95: float | None = None, accuracy: float | None = None) -> Result:
        """As :meth:`gateway.client.Connection.query` (``ci95=``: accuracy-first)."""
        body = self._spend(bind(sql, params), epsilon, delta, mechanism,
                           accuracy_target(ci95, accuracy))
        if report is not None:
            body["report"] = report  # 'ci95': <col>_ci95 columns, as Connection.query
        return Result.from_json(await self.request("POST", "/v1/query", json=body,
                                                   charged=True,
                                                   idempotency_key=idempotency_key))

    async def explain(self, sql: str, epsilon: float | None = None,
                      delta: float | None = None, mechanism: str | None = None, *,
                      params: Any = None, ci95: float | None = None,
                      accuracy: float | None = None) -> dict[str, Any]:
        body = self._spend(bind(sql, params), epsilon, delta, mechanism,
                           accuracy_target(ci95, accuracy))
        return await self.request("POST", "/v1/explain", json=body)

    async def budget(self) -> dict[str, Any]:
        return await self.request("GET", "/v1/budget")

    async def schema(self) -> dict[str, Any]:
        return await self.request("GET", "/v1/schema")

    async def train(self, sql: str, label: str, model: str = "logistic", *,
                    epsilon: float | None = None, delta: float | None = None,
                    wait: bool = True, poll_s: float = 0.5,
                    idempotency_key: str | None = None, **hyper: Any) -> dict[str, Any]:
        """DP training; waits for the model unless ``wait=False`` (then: the job)."""
        body = {k: v for k, v in {"sql": sql, "label": label, "model": model,
                                  "epsilon": epsilon, "delta": delta, **hyper}.items()
                if v is not None}
        info: dict[str, Any] = await self.request(
            "POST", "/v1/models", json=body, charged=True, idempotency_key=idempotency_key)
        while wait and info.get("status") in ("queued", "running"):
            await asyncio.sleep(poll_s)
            info = await self.model(info["model_id"])
        if info.get("status") == "failed":
            raise OperationalError(f"training failed: {info.get('error')}", problem=info)
        return info

    async def models(self) -> list[dict[str, Any]]:
        return await self.request("GET", "/v1/models")

    async def model(self, model_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/v1/models/{model_id}")

    async def predict(self, model_id: str, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        body = await self.request("POST", f"/v1/models/{model_id}/predict",
                                  json={"rows": [dict(r) for r in rows]})
        return list(body["predictions"])

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def connect_async(url: str, api_key: str, **options: Any) -> AsyncConnection:
    """An asyncio session (options as for :func:`gateway.client.connect`); nothing is
    sent until the first call, so this needs no ``await``."""
    return AsyncConnection(url, api_key, **options)
