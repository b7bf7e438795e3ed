"""Every failure is problem+json with a stable type, against a real `gateway serve`.

The shape is pinned once (``assert_problem``) and checked for every endpoint and
every status the API documents: 400, 401, 403, 404, 405, 409, 413, 422, 503.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.api.conftest import Live
from tests.api.live import LiveServer, add_analysts, assert_problem, write_policy

ENDPOINTS = [
    ("POST", "/v1/query", {"sql": "SELECT COUNT(*) AS n FROM visits", "epsilon": 0.1}),
    ("POST", "/v1/explain", {"sql": "SELECT COUNT(*) AS n FROM visits"}),
    ("GET", "/v1/budget", None),
    ("GET", "/v1/schema", None),
    ("GET", "/v1/audit", None),
    ("POST", "/v1/models", {"sql": "SELECT age, converted FROM visits", "label": "converted",
                            "model": "logistic", "epsilon": 1.0, "delta": 0.0}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/m1", None),
    ("POST", "/v1/models/m1/predict", {"rows": [{"age": 40}]}),
]
POSTS = [e for e in ENDPOINTS if e[0] == "POST"]
ids = [f"{m} {p}" for m, p, _ in ENDPOINTS]


def call(client: httpx.Client, method: str, path: str, body: object,
         **kw: object) -> httpx.Response:
    return client.request(method, path, json=body, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ids)
def test_missing_key_is_401(live: Live, method: str, path: str, body: object) -> None:
    with live.server.client() as c:
        assert_problem(call(c, method, path, body), 401, "unauthorized")


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ids)
def test_bad_key_is_401(live: Live, method: str, path: str, body: object) -> None:
    with live.server.client("dpg_not-a-key") as c:
        assert_problem(call(c, method, path, body), 401, "unauthorized")
    with live.server.client() as c:  # not a Bearer token at all
        r = call(c, method, path, body, headers={"Authorization": "Basic YWxpY2U6eA=="})
        assert_problem(r, 401, "unauthorized")


@pytest.mark.parametrize(("method", "path", "body"), POSTS, ids=[f"POST {p}" for _, p, _ in POSTS])
def test_malformed_bodies_are_422(live: Live, method: str, path: str, body: dict) -> None:
    with live.server.client(live.keys["alice"]) as c:
        unknown = call(c, method, path, {**body, "analyst": "admin"})
        problem = assert_problem(unknown, 422, "malformed_request")
        assert any(e["type"] == "extra_forbidden" for e in problem["errors"])
        key = next(iter(body))
        assert_problem(call(c, method, path, {**body, key: {"not": "ok"}}), 422,
                       "malformed_request")
        r = c.request(method, path, content=b'{"sql": ', headers={"Content-Type":
                                                                   "application/json"})
        assert_problem(r, 422, "malformed_request")
        assert_problem(call(c, method, path, []), 422, "malformed_request")


@pytest.mark.parametrize(("method", "path", "body"), POSTS, ids=[f"POST {p}" for _, p, _ in POSTS])
def test_large_bodies_are_413(live: Live, method: str, path: str, body: dict) -> None:
    big = json.dumps({**body, "sql": "SELECT 1 " + " " * (2 << 20)}).encode()
    with live.server.client(live.keys["alice"]) as c:
        assert_problem(c.request(method, path, content=big), 413, "payload_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
            for i in range(0, len(big), 65536):
                yield big[i:i + 65536]

        assert_problem(c.request(method, path, content=chunks()), 413, "payload_too_large")


@pytest.mark.parametrize("path", ["/v1/query", "/v1/explain"])
def test_rejected_query_is_400_with_rule_and_span(live: Live, path: str) -> None:
    sql = "SELECT user_id, spend FROM visits WHERE spend > 100"
    with live.server.client(live.keys["alice"]) as c:
        body = assert_problem(c.post(path, json={"sql": sql}), 400, "query_rejected")
    assert body["rule"]
    span = body["span"]
    assert sql[span["start"]:span["end"]] == span["text"]


def test_sql_longer_than_the_policy_allows_is_400(live: Live) -> None:
    sql = "SELECT COUNT(*) FROM visits WHERE " + " OR ".join(["age = 30"] * 3000)
    with live.server.client(live.keys["alice"]) as c:
        body = assert_problem(c.post("/v1/query", json={"sql": sql}), 400, "query_rejected")
    assert body["rule"] == "too_long"


def test_invalid_epsilon_is_400(live: Live) -> None:
    with live.server.client(live.keys["alice"]) as c:
        r = c.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM visits", "epsilon": 1e-9})
        assert_problem(r, 400, "invalid_request")
        assert_problem(c.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM visits",
                                                 "epsilon": -1}), 422, "malformed_request")
        assert_problem(c.post("/v1/query", json={"sql": "SELECT 1", "mechanism": "magic"}),
                       422, "malformed_request")
        assert_problem(c.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM visits"},
                              headers={"Idempotency-Key": "x" * 300}), 400, "invalid_request")


def test_budget_exceeded_is_403_and_says_nothing_of_data(live: Live) -> None:
    with live.server.client(live.keys["poor"]) as c:
        r = c.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM visits WHERE age > 33",
                                      "epsilon": 0.1})
    body = assert_problem(r, 403, "budget_exceeded")
    assert "remaining" in body["detail"]


def test_audit_is_admin_only(live: Live) -> None:
    with live.server.client(live.keys["alice"]) as c:
        assert_problem(c.get("/v1/audit"), 403, "forbidden")
    with live.server.client(live.keys["admin"]) as c:
        assert_problem(c.get("/v1/audit", params={"limit": 0}), 422, "malformed_request")
        assert_problem(c.get("/v1/audit", params={"since": "yesterday"}), 422,
                       "malformed_request")
        assert_problem(c.get("/v1/audit", params={"analist": "bob"}), 422,
                       "malformed_request")  # a typo must not widen the filter


def test_unknown_route_and_method(live: Live) -> None:
    with live.server.client(live.keys["alice"]) as c:
        assert_problem(c.get("/v1/nope"), 404, "not_found")
        assert_problem(c.delete("/v1/query"), 405, "method_not_allowed")
        assert_problem(c.get("/v1/models/does-not-exist"), 404, "not_found")


def test_idempotency_key_reused_for_another_request_is_422(live: Live) -> None:
    key = uuid.uuid4().hex
    with live.server.client(live.keys["bob"]) as c:
        first = c.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM visits WHERE age > 61",
                                          "epsilon": 0.1}, headers={"Idempotency-Key": key})
        assert first.status_code == 200
        other = c.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM visits WHERE age > 62",
                                          "epsilon": 0.1}, headers={"Idempotency-Key": key})
    assert_problem(other, 422, "idempotency_key_reused")


# -- a saturated server: one worker, no queue, a short request timeout ------------------

SLOW = ("SELECT country, COUNT(*) AS n, SUM(spend) AS s, AVG(duration_s) AS d FROM visits "
        "WHERE age > {} GROUP BY country")


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("tight")
    policy = write_policy(folder)
    state = folder / "state.db"
    keys = add_analysts(policy, state, {"alice": {"epsilon": 50.0}})
    server = LiveServer(policy, state, args=["--workers", "1", "--queue", "0",
                                             "--request-timeout", "0.02"]).start()
    try:
        yield Live(server, keys, policy, state)
    finally:
        server.stop()


def test_timeout_then_overload_then_idempotent_collect(tight: Live) -> None:
    """A timed-out query keeps its worker (503 timeout), so the next request finds the
    pool full (503 overloaded); retrying the first with its key collects the answer,
    charged once."""
    key = uuid.uuid4().hex
    body = {"sql": SLOW.format(18), "epsilon": 0.5}
    with tight.server.client(tight.keys["alice"]) as c:
        assert_problem(c.post("/v1/query", json=body, headers={"Idempotency-Key": key}),
                       503, "timeout")
        assert_problem(c.post("/v1/query", json={"sql": SLOW.format(19), "epsilon": 0.5}),
                       503, "overloaded")
        deadline = time.monotonic() + 30
        while True:
            r = c.post("/v1/query", json=body, headers={"Idempotency-Key": key})
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            assert r.status_code in (409, 503), r.text
            time.sleep(0.05)
        assert r.status_code == 200, r.text
        assert r.headers.get("idempotent-replayed") == "true"
        again = c.post("/v1/query", json=body, headers={"Idempotency-Key": key})
        assert again.json()["query_id"] == r.json()["query_id"]
        deadline = time.monotonic() + 30
        while (b := c.get("/v1/budget")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert b.json()["charges"] == 1
    assert b.json()["epsilon_spent"] == pytest.approx(0.5)


def test_overload_answers_fast_with_retry_after(tight: Live) -> None:
    with tight.server.client(tight.keys["alice"]) as c, ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(
            lambda i: c.post("/v1/explain", json={"sql": SLOW.format(30 + i)}), range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert 503 in statuses, statuses
    for r in responses:
        if r.status_code == 503:
            assert_problem(r, 503)
            assert r.json()["type"] in ("overloaded", "timeout")
