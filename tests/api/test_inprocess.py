"""The ASGI app in process, for failures a live server cannot be made to produce on
demand: engine and ledger down (503, fail closed), a bug in the core (500).

None of them may leak a backend message, a data value or a stack trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from gateway.api import Settings, create_app
from gateway.errors import BackendError, LedgerUnavailable
from gateway.service import Gateway
from tests.api.live import assert_problem, write_policy

SECRET = "4242.1337"  # stands for a value read from private data


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("inproc")
    with Gateway.open(write_policy(folder), folder / "state.db") as g:
        yield g


class Client:
    """Requests straight into the ASGI app (no lifespan, no network)."""

    def __init__(self, app: Any) -> None:
        self.transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport, base_url="http://t") as c:
                return await c.request(method, path, **kw)

        return asyncio.run(go())


@pytest.fixture
def client(gw: Gateway) -> tuple[Client, str]:
    key = gw.add_analyst(f"a{id(object())}", epsilon=10.0)
    return Client(create_app(gw, Settings(workers=2, queue=2))), key


def _query(c: Client, key: str, **headers: str) -> httpx.Response:
    return c.request("POST", "/v1/query",
                     json={"sql": "SELECT COUNT(*) FROM visits", "epsilon": 0.1},
                     headers={"Authorization": f"Bearer {key}", **headers})


@pytest.mark.parametrize(("error", "type_"), [
    (BackendError("the query engine failed"), "backend_error"),
    (LedgerUnavailable("the ledger is unavailable", hint="retry later; nothing was charged"),
     "ledger_unavailable"),
])
def test_core_outage_is_503(client: tuple[Client, str], gw: Gateway,
                            monkeypatch: pytest.MonkeyPatch, error: Exception,
                            type_: str) -> None:
    c, key = client

    def down(*_a: object, **_k: object) -> None:
        raise error

    monkeypatch.setattr(gw, "query_as", down)
    assert_problem(_query(c, key), 503, type_)
    # A transient failure is not stored under the idempotency key: the retry runs again.
    assert_problem(_query(c, key, **{"Idempotency-Key": "k1"}), 503, type_)
    monkeypatch.undo()
    ok = _query(c, key, **{"Idempotency-Key": "k1"})
    assert ok.status_code == 200


def test_bug_in_core_is_500_without_details(client: tuple[Client, str], gw: Gateway,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    c, key = client

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError(f"duckdb said: value {SECRET} out of range")

    monkeypatch.setattr(gw, "query_as", broken)
    r = _query(c, key)
    body = assert_problem(r, 500, "internal_error")
    assert SECRET not in r.text and "RuntimeError" not in r.text
    assert "incident" in body["detail"]


def test_nan_in_an_answer_is_null_not_a_crash(client: tuple[Client, str], gw: Gateway,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    c, key = client
    real = gw.query_as

    def nan(*a: object, **k: object) -> object:
        return replace(real(*a, **k), rows=[(float("nan"),)])

    monkeypatch.setattr(gw, "query_as", nan)
    r = _query(c, key)
    assert r.status_code == 200
    assert r.json()["rows"] == [[None]]


def test_healthz_needs_no_key(gw: Gateway) -> None:
    r = Client(create_app(gw)).request("GET", "/healthz")
    assert r.json() == {"status": "ok", "dataset": "web"}
