"""ε, δ and every numeric training parameter are JSON numbers: anything else is a 422.

pydantic's lax mode used to read ``"epsilon": true`` as ε = 1.0 and ``"0.5"`` as
0.5, so a client bug (a checkbox value, a form field left as text) spent budget
nobody asked for.  Each bad body here must be refused as ``malformed_request``
*before* the core sees it: the caller's budget (``GET /v1/budget``) must not move.
``null`` is refused as well (omit the field for the default): ``JSON.stringify``
writes NaN and Infinity as ``null``, and that must not quietly become the default ε.
Good bodies (an integer ε, a float ε) must still work.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from gateway.client import connect
from tests.api.conftest import Live
from tests.api.live import assert_problem

SQL = "SELECT COUNT(*) AS n FROM visits WHERE age > 30"
TRAIN_SQL = "SELECT age, duration_s, device, converted FROM visits"
TRAIN: dict[str, Any] = {"sql": TRAIN_SQL, "label": "converted", "model": "logistic",
                         "epsilon": 1.0, "delta": 1e-6, "epochs": 1}

NOT_A_NUMBER: list[Any] = [True, False, None, "0.5", "1", "NaN", "", [0.5], {"value": 0.5}]
"""Values that are not JSON numbers (``null`` included), sent as real JSON."""

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400]
"""Raw JSON tokens: Python's json module reads the first five as non-finite floats and
the last as an integer no float can hold (a strict JSON encoder writes none of them,
but a server must not read any of them as a budget or a batch size)."""

QUERY_FIELDS = ["epsilon", "delta"]
MODEL_REALS = ["epsilon", "delta", "epochs", "clip", "learning_rate", "momentum",
               "noise_multiplier", "l2", "average", "count_epsilon", "holdout", "eval_epsilon"]
MODEL_COUNTS = ["batch_size", "units", "max_rows_per_unit"]


def _raw(body: dict[str, Any], field: str, token: str) -> bytes:
    """``body`` as JSON with ``field`` set to a raw JSON token (json.dumps cannot write them)."""
    marker = "__RAW__"
    text = json.dumps({**body, field: marker})
    return text.replace(json.dumps(marker), token).encode()


def _budget(c: httpx.Client) -> dict[str, Any]:
    r = c.get("/v1/budget")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _refused(c: httpx.Client, path: str, field: str, **send: Any) -> None:
    """A 422 malformed_request that names ``field``, and not one ε or δ charged for it."""
    before = _budget(c)
    r = c.post(path, **send)
    problem = assert_problem(r, 422, "malformed_request")
    assert any(field in e["loc"] for e in problem["errors"]), problem
    assert _budget(c) == before


def _cases(fields: list[str], values: list[Any]) -> list[Any]:
    return [pytest.param(f, v, id=f"{f}={v!r}") for f in fields for v in values]


# -- /v1/query and /v1/explain ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/query", "/v1/explain"])
@pytest.mark.parametrize(("field", "value"), _cases(QUERY_FIELDS, NOT_A_NUMBER))
def test_query_budget_fields_must_be_numbers(live: Live, path: str, field: str,
                                             value: Any) -> None:
    with live.server.client(live.keys["alice"]) as c:
        _refused(c, path, field, json={"sql": SQL, "epsilon": 0.5, field: value})


@pytest.mark.parametrize("path", ["/v1/query", "/v1/explain"])
@pytest.mark.parametrize(("field", "token"), _cases(QUERY_FIELDS, NON_FINITE))
def test_query_budget_fields_must_be_finite(live: Live, path: str, field: str,
                                            token: str) -> None:
    with live.server.client(live.keys["alice"]) as c:
        _refused(c, path, field, content=_raw({"sql": SQL, "epsilon": 0.5}, field, token),
                 headers={"Content-Type": "application/json"})


def test_a_boolean_epsilon_with_an_idempotency_key_stores_nothing(live: Live) -> None:
    """The refusal is not kept under the key: the corrected retry runs and is charged once."""
    with live.server.client(live.keys["alice"]) as c:
        headers = {"Idempotency-Key": "request-types-bool"}
        _refused(c, "/v1/query", "epsilon", json={"sql": SQL, "epsilon": True},
                 headers=headers)
        before = _budget(c)
        r = c.post("/v1/query", json={"sql": SQL + " AND age < 80", "epsilon": 0.125},
                   headers=headers)
        assert r.status_code == 200, r.text
        assert _budget(c)["epsilon_spent"] == pytest.approx(before["epsilon_spent"] + 0.125)


@pytest.mark.parametrize(("epsilon", "spent"), [(1, 1.0), (0.5, 0.5)])
def test_integer_and_float_epsilon_are_spent_as_sent(live: Live, epsilon: float,
                                                     spent: float) -> None:
    sql = f"SELECT COUNT(*) AS n FROM visits WHERE age > {20 + int(epsilon * 10)}"
    with live.server.client(live.keys["alice"]) as c:
        before = _budget(c)
        r = c.post("/v1/query", json={"sql": sql, "epsilon": epsilon, "delta": 0})
        assert r.status_code == 200, r.text
        assert r.json()["epsilon_spent"] == spent
        after = _budget(c)
        assert after["epsilon_spent"] == pytest.approx(before["epsilon_spent"] + spent)
        assert after["charges"] == before["charges"] + 1
        ex = c.post("/v1/explain", json={"sql": sql, "epsilon": epsilon, "delta": 0})
        assert ex.status_code == 200, ex.text
        assert ex.json()["epsilon_cost"] == spent
        assert _budget(c) == after


def test_omitted_epsilon_is_the_policy_default(live: Live) -> None:
    """Leaving ε out is how to ask for the default (what ``null`` used to mean)."""
    with live.server.client(live.keys["alice"]) as c:
        r = c.post("/v1/explain", json={"sql": SQL})
        assert r.status_code == 200, r.text
        assert r.json()["epsilon_cost"] > 0


# -- /v1/models ---------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    *_cases(MODEL_REALS, [True, None, "0.5"]),
    *_cases(MODEL_COUNTS, [True, None, "64", 64.5]),
    pytest.param("hidden", [True], id="hidden=[True]"),
    pytest.param("hidden", ["32"], id="hidden=['32']"),
    pytest.param("hidden", [32.5], id="hidden=[32.5]"),
    pytest.param("hidden", None, id="hidden=None"),
    pytest.param("hidden", "32", id="hidden='32'"),
])
def test_training_numbers_must_be_numbers(live: Live, field: str, value: Any) -> None:
    body = {**TRAIN, "model": "mlp"} if field == "hidden" else TRAIN
    with live.server.client(live.keys["trainer"]) as c:
        _refused(c, "/v1/models", field, json={**body, field: value})


@pytest.mark.parametrize(("field", "token"),
                         _cases(["epsilon", "delta", "epochs", "clip", "noise_multiplier"],
                                NON_FINITE[:3]) + _cases(["batch_size"], NON_FINITE))
def test_training_numbers_must_be_finite(live: Live, field: str, token: str) -> None:
    with live.server.client(live.keys["trainer"]) as c:
        _refused(c, "/v1/models", field, content=_raw(TRAIN, field, token),
                 headers={"Content-Type": "application/json"})


def test_integer_training_numbers_still_train(live: Live) -> None:
    """ε = 1 (an integer), epochs = 1 and batch_size = 64.0 (integral: an integer in
    JSON Schema) are accepted and spent as sent."""
    with live.server.client(live.keys["trainer"]) as c:
        before = _budget(c)
        r = c.post("/v1/models", json={**TRAIN, "epsilon": 1, "epochs": 1, "batch_size": 64.0})
        assert r.status_code == 202, r.text
        model_id = r.json()["model_id"]
        deadline = time.monotonic() + 120
        info = c.get(f"/v1/models/{model_id}").json()
        while info["status"] in ("queued", "running", "pending") and \
                time.monotonic() < deadline:
            time.sleep(0.25)
            info = c.get(f"/v1/models/{model_id}").json()
        assert info["status"] == "done", info
        assert info["hyper_parameters"]["batch_size"] == 64
        after = _budget(c)
        assert 0 < after["epsilon_spent"] - before["epsilon_spent"] <= 1.0 + 1e-9


# -- the Python client -----------------------------------------------------------------------


def test_client_sends_budgets_as_json_numbers() -> None:
    """The client passes ε/δ through as the caller gave them: numbers stay numbers."""
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        if request.url.path == "/v1/models":
            return httpx.Response(202, json={"model_id": "m1", "status": "queued"})
        return httpx.Response(200, json={
            "query_id": "q", "columns": [], "rows": [], "epsilon_spent": 0.5,
            "delta_spent": 0.0, "budget": {"epsilon_remaining": 1.0, "delta_remaining": 0.0},
            "accuracy": [], "cached": False})

    conn = connect("http://gateway.test", "key", epsilon=0.25, delta=0,
                   transport=httpx.MockTransport(handler))
    try:
        conn.query(SQL, epsilon=1)
        conn.query(SQL)
        conn.explain(SQL, epsilon=0.5, delta=1e-7)
        with conn.cursor() as cur:
            cur.execute(SQL)
        conn.train(TRAIN_SQL, "converted", epsilon=1, delta=1e-6, epochs=2, batch_size=64,
                   wait=False)
    finally:
        conn.close()
    numbers = [(body[k], type(body[k])) for body in sent for k in
               ("epsilon", "delta", "epochs", "batch_size") if k in body]
    assert numbers and all(t in (int, float) for _, t in numbers), numbers
    assert [b["epsilon"] for b in sent] == [1, 0.25, 0.5, 0.25, 1]
