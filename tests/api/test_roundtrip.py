"""Round trips against a real `gateway serve`: query, explain, budget, schema, audit,
idempotent retries (sequential and concurrent), and the training endpoints."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.api.conftest import Live
from tests.api.live import assert_problem

COUNT = "SELECT COUNT(*) AS n FROM visits WHERE age > {}"


def test_healthz(live: Live) -> None:
    with live.server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok", "dataset": "web"}


def test_query_round_trip_then_cached_free(live: Live) -> None:
    sql = "SELECT device, COUNT(*) AS n FROM visits GROUP BY device"
    with live.server.client(live.keys["alice"]) as c:
        before = c.get("/v1/budget").json()
        r = c.post("/v1/query", json={"sql": sql, "epsilon": 0.25})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert set(body) == {"query_id", "columns", "rows", "ci95", "epsilon_spent",
                             "delta_spent", "budget", "accuracy", "cached", "notes"}
        assert body["columns"] == [{"name": "device", "type": "text"},
                                   {"name": "n", "type": "int"}]
        assert sorted(row[0] for row in body["rows"]) == ["desktop", "mobile", "tablet", "tv"]
        assert body["epsilon_spent"] == 0.25 and body["delta_spent"] == 0.0
        assert body["cached"] is False
        assert set(body["budget"]) == {"epsilon_remaining", "delta_remaining"}
        assert body["budget"]["epsilon_remaining"] == pytest.approx(
            before["epsilon_remaining"] - 0.25)
        [acc] = body["accuracy"]
        assert set(acc) == {"column", "mechanism", "noise_scale", "ci95"} and acc["column"] == "n"
        again = c.post("/v1/query", json={"sql": sql, "epsilon": 0.25}).json()
        assert again["cached"] is True and again["epsilon_spent"] == 0.0
        assert again["rows"] == body["rows"]
        after = c.get("/v1/budget").json()
    assert after["charges"] == before["charges"] + 1


def test_explain_charges_nothing(live: Live) -> None:
    with live.server.client(live.keys["alice"]) as c:
        before = c.get("/v1/budget").json()
        r = c.post("/v1/explain", json={"sql": "SELECT AVG(spend) AS s FROM visits",
                                        "epsilon": 0.5})
        assert r.status_code == 200
        body = r.json()
        assert {"rewritten_sql", "aggregates", "partition_selection", "epsilon_cost",
                "delta_cost", "accuracy"} <= set(body)
        assert body["epsilon_cost"] == 0.5
        assert c.get("/v1/budget").json() == before


def test_budget_and_schema(live: Live) -> None:
    with live.server.client(live.keys["bob"]) as c:
        b = c.get("/v1/budget").json()
        s = c.get("/v1/schema").json()
    assert b["analyst"] == "bob" and b["epsilon_total"] == 20.0
    assert {"epsilon_spent", "epsilon_remaining", "delta_total", "delta_spent",
            "delta_remaining", "charges", "dataset"} <= set(b)
    assert b["dataset"]["epsilon_total"] == 100.0
    assert s["dataset"] == "web" and set(s["tables"]) == {"visits", "countries"}
    cols = {c["name"]: c for c in s["tables"]["visits"]["columns"]}
    assert cols["age"]["bounds"] == [18, 90]
    assert cols["device"]["public_values"] == ["desktop", "mobile", "tablet", "tv"]
    assert s["tables"]["countries"]["public"] is True


def test_audit_filters_and_pages(live: Live) -> None:
    t0 = time.time()
    with live.server.client(live.keys["bob"]) as c:
        for i in range(3):
            assert c.post("/v1/query", json={"sql": COUNT.format(70 + i),
                                             "epsilon": 0.1}).status_code == 200
        c.post("/v1/query", json={"sql": "SELECT user_id FROM visits"})
    with live.server.client(live.keys["admin"]) as c:
        r = c.get("/v1/audit", params={"analyst": "bob", "since": t0 - 1})
        entries = r.json()
        assert [e["outcome"] for e in entries][-4:] == ["ok", "ok", "ok", "query_rejected"]
        assert all(e["analyst"] == "bob" for e in entries)
        assert {"id", "ts", "analyst", "action", "sql", "epsilon", "delta", "outcome",
                "query_id"} <= set(entries[-1])
        assert entries[-2]["epsilon"] == 0.1 and entries[-1]["epsilon"] == 0.0
        assert "link" not in r.headers  # the last page
        first = c.get("/v1/audit", params={"analyst": "bob", "limit": 2})
        assert len(first.json()) == 2
        nxt = first.headers["link"].split(";")[0].strip("<>")
        assert "offset=2" in nxt and "analyst=bob" in nxt
        second = c.get(nxt).json()
        assert second[0]["id"] > first.json()[-1]["id"]
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 + 3600))
        assert c.get("/v1/audit", params={"since": iso}).json() == []
        assert c.get("/v1/audit", params={"analyst": "bob", "until": t0 - 3600}).json() == []


def test_idempotent_retry_returns_stored_answer_uncharged(live: Live) -> None:
    key = uuid.uuid4().hex
    body = {"sql": COUNT.format(44), "epsilon": 0.2}
    with live.server.client(live.keys["bob"]) as c:
        before = c.get("/v1/budget").json()["charges"]
        first = c.post("/v1/query", json=body, headers={"Idempotency-Key": key})
        second = c.post("/v1/query", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == second.status_code == 200
        assert second.json() == first.json()  # same query_id, same noise, same budget view
        assert "idempotent-replayed" not in first.headers
        assert second.headers["idempotent-replayed"] == "true"
        assert c.get("/v1/budget").json()["charges"] == before + 1
        # Keys are per analyst: alice's request with bob's key is her own.
    with live.server.client(live.keys["alice"]) as c:
        other = c.post("/v1/query", json=body, headers={"Idempotency-Key": key})
        assert other.status_code == 200 and "idempotent-replayed" not in other.headers
    with live.server.client(live.keys["admin"]) as c:
        outcomes = [e["outcome"] for e in c.get(
            "/v1/audit", params={"analyst": "bob", "limit": 1000}).json()]
    assert "replayed" in outcomes


def test_failures_are_replayed_too(live: Live) -> None:
    key = uuid.uuid4().hex
    with live.server.client(live.keys["poor"]) as c:
        body = {"sql": COUNT.format(45), "epsilon": 0.2}
        first = c.post("/v1/query", json=body, headers={"Idempotency-Key": key})
        second = c.post("/v1/query", json=body, headers={"Idempotency-Key": key})
    assert_problem(first, 403, "budget_exceeded")
    assert_problem(second, 403, "budget_exceeded")
    assert second.json() == first.json()


def test_concurrent_duplicates_charge_once(live: Live) -> None:
    key = uuid.uuid4().hex
    body = {"sql": "SELECT country, SUM(spend) AS s FROM visits WHERE age > 50 "
                   "GROUP BY country", "epsilon": 0.3}
    with live.server.client(live.keys["alice"]) as c, ThreadPoolExecutor(8) as pool:
        before = c.get("/v1/budget").json()["charges"]
        rs = list(pool.map(lambda _: c.post("/v1/query", json=body,
                                            headers={"Idempotency-Key": key}), range(8)))
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
        assert len({r.json()["query_id"] for r in rs}) == 1
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in rs) == 7
        assert c.get("/v1/budget").json()["charges"] == before + 1


# -- training --------------------------------------------------------------------------------

def test_training_round_trip(live: Live) -> None:
    sql = "SELECT age, duration_s, device, converted FROM visits"
    with live.server.client(live.keys["trainer"]) as c:
        before = c.get("/v1/budget").json()["charges"]
        r = c.post("/v1/models", json={"sql": sql, "label": "converted", "model": "logistic",
                                       "epsilon": 1.0, "delta": 1e-6, "epochs": 1})
        assert r.status_code == 202, r.text
        job = r.json()
        assert set(job) == {"model_id", "status"}
        assert r.headers["location"] == f"/v1/models/{job['model_id']}"
        charged = c.get("/v1/budget").json()["charges"]
        assert charged > before  # charged at start (the core may charge in parts)
        deadline = time.monotonic() + 120
        while True:
            info = c.get(f"/v1/models/{job['model_id']}").json()
            if info["status"] not in ("queued", "running", "pending") or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert info["status"] == "done", info
        assert info["epsilon_spent"] <= 1.0 + 1e-9
        assert any(m["model_id"] == job["model_id"] for m in c.get("/v1/models").json())
        p = c.post(f"/v1/models/{job['model_id']}/predict",
                   json={"rows": [{"age": 40, "duration_s": 120.0, "device": "tv"}]})
        assert p.status_code == 200, p.text
        assert len(p.json()["predictions"]) == 1
        assert c.get("/v1/budget").json()["charges"] == charged  # predicting is free


def test_models_of_unknown_id_is_404(live: Live) -> None:
    with live.server.client(live.keys["alice"]) as c:
        assert_problem(c.get("/v1/models/nope"), 404, "not_found")
        assert_problem(c.post("/v1/models/nope/predict", json={"rows": []}), 404, "not_found")


def test_quantiles_over_http_report_their_rank_error(live: Live) -> None:
    sql = ("SELECT device, MEDIAN(spend) AS m, MAX(visit_date) AS last, "
           "APPROX_QUANTILES(age, 2) AS q FROM visits GROUP BY device")
    with live.server.client(live.keys["bob"]) as c:
        body = c.post("/v1/query", json={"sql": sql, "epsilon": 0.9}).json()
    assert [col["type"] for col in body["columns"]] == ["text", "float", "date", "int[]"]
    for _, m, last, q in body["rows"]:
        assert 0 <= m <= 500 and last.startswith("2024-") and len(q) == 3 and q == sorted(q)
    for acc in body["accuracy"]:
        assert acc["mechanism"] == "exponential" and acc["ci95"] is None
        assert acc["rank_error95"] > 0
    assert body["epsilon_spent"] == pytest.approx(0.9)
