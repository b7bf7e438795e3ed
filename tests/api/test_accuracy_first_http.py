"""Accuracy-first over HTTP against a real `gateway serve`: ``{"sql", "ci95": 50}`` on
/v1/query and /v1/explain, the charge, refusals as problem+json, and the OpenAPI field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.api import create_app
from gateway.service import Gateway
from tests.api.conftest import Live
from tests.api.live import assert_problem, write_policy

BY_COUNTRY = "SELECT country, COUNT(*) AS n FROM visits GROUP BY country"


def test_query_with_a_target_spends_the_chosen_epsilon(live: Live) -> None:
    sql = "SELECT country, COUNT(*) AS n FROM visits WHERE age > 25 GROUP BY country"
    with live.server.client(live.keys["alice"]) as c:
        ex = c.post("/v1/explain", json={"sql": sql, "ci95": 50})
        assert ex.status_code == 200, ex.text
        ex_body = ex.json()
        assert ex_body["target_ci95"] == 50 and ex_body["epsilon_cost"] == pytest.approx(1.21)
        assert "binding column 'n'" in ex_body["notes"][-1]
        before = c.get("/v1/budget").json()
        r = c.post("/v1/query", json={"sql": sql, "ci95": 50})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["target_ci95"] == 50 and body["cached"] is False
        assert body["epsilon_spent"] == pytest.approx(ex_body["epsilon_cost"])
        assert all(row[1] <= 50 for row in body["ci95"])
        assert all(a["ci95"] <= 50 for a in body["accuracy"])
        assert "epsilon=1.21 " in body["notes"][-1]
        after = c.get("/v1/budget").json()
        assert after["epsilon_spent"] - before["epsilon_spent"] == pytest.approx(1.21)
        again = c.post("/v1/query", json={"sql": sql, "ci95": 50}).json()
        assert again["cached"] is True and again["epsilon_spent"] == 0
        assert again["rows"] == body["rows"]
        # with the report columns
        rep = c.post("/v1/query", json={"sql": sql, "ci95": 50, "report": "ci95"}).json()
        assert [col["name"] for col in rep["columns"]] == ["country", "n", "n_ci95"]
        # δ that the budget has not: the ledger's own refusal (a wider target would not help)
        g = c.post("/v1/query", json={"sql": sql, "ci95": 50, "mechanism": "gaussian",
                                      "delta": 1e-7})
        assert_problem(g, 403, "budget_exceeded")
    with live.server.client(live.keys["trainer"]) as c:  # has δ
        g = c.post("/v1/query", json={"sql": sql, "ci95": 50, "mechanism": "gaussian",
                                      "delta": 1e-7})
        assert g.status_code == 200, g.text
        assert g.json()["epsilon_spent"] == pytest.approx(4.09)
        assert g.json()["delta_spent"] == pytest.approx(1e-7)


def test_targets_that_cannot_be_met_are_problems(live: Live) -> None:
    with live.server.client(live.keys["bob"]) as c:
        both = c.post("/v1/query", json={"sql": BY_COUNTRY, "epsilon": 0.5, "ci95": 50})
        assert "either epsilon or a target" in assert_problem(both, 400, "invalid_request")[
            "detail"]
        for bad in ("50", None, True, 0, -1):
            assert_problem(c.post("/v1/query", json={"sql": BY_COUNTRY, "ci95": bad}), 422,
                           "malformed_request")
        q = c.post("/v1/query", json={"sql": "SELECT MEDIAN(age) AS m FROM visits",
                                      "ci95": 5})
        p = assert_problem(q, 400, "query_rejected")
        assert p["rule"] == "accuracy_target" and "rank_error95" in p["detail"]
        far = c.post("/v1/explain", json={"sql": "SELECT SUM(spend) AS s FROM visits",
                                          "ci95": 1})
        p = assert_problem(far, 400, "query_rejected")
        assert p["rule"] == "accuracy_target" and "the best is ±" in p["detail"]
        assert c.get("/v1/budget").json()["epsilon_spent"] == 0
    with live.server.client(live.keys["poor"]) as c:  # ε = 0.05 left
        p = assert_problem(c.post("/v1/query", json={"sql": BY_COUNTRY, "ci95": 50}), 400,
                           "query_rejected")
        assert p["rule"] == "accuracy_target"
        assert "more than the remaining budget of the analyst 'poor'" in p["detail"]
        assert "what is left buys at best" in p["detail"]
        assert c.get("/v1/budget").json()["epsilon_spent"] == 0


def test_openapi_documents_the_target(tmp_path: Path) -> None:
    with Gateway.open(write_policy(tmp_path), tmp_path / "state.db") as gw:
        schemas = create_app(gw).openapi()["components"]["schemas"]
    field = schemas["QueryRequest"]["properties"]["ci95"]
    assert field["type"] == "number" and field["exclusiveMinimum"] == 0
    assert "instead of epsilon" in field["description"]
    assert any(ex.get("ci95") == 50 for ex in schemas["QueryRequest"]["examples"])
    for name in ("QueryResponse", "ExplainResponse"):
        assert "target_ci95" in schemas[name]["properties"]
        assert "target_ci95" not in schemas[name].get("required", [])
