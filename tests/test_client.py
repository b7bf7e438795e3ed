"""The Python client and its DB-API 2.0 layer.

Against a real `gateway serve` for the round trips (pandas, cursors, errors, a
lost response retried without a second charge), and against httpx mock
transports for the retry policy, so those need no network.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway import client
from gateway.api.problems import PROBLEM_CLASSES
from gateway.client import bind, connect
from gateway.client.aio import connect_async
from tests.api.live import LiveServer, add_analysts, write_policy


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("client")
    policy = write_policy(folder)
    state = folder / "state.db"
    keys = add_analysts(policy, state, {"ann": {"epsilon": 30.0}, "poor": {"epsilon": 0.01}})
    server = LiveServer(policy, state).start()
    try:
        yield server.url, keys
    finally:
        server.stop()


# -- PEP 249 surface --------------------------------------------------------------------

def test_module_globals_and_exception_tree() -> None:
    assert client.apilevel == "2.0"
    assert client.threadsafety in (0, 1, 2, 3)
    assert client.paramstyle in ("qmark", "numeric", "named", "format", "pyformat")
    for name in ("Warning", "Error", "InterfaceError", "DatabaseError", "DataError",
                 "OperationalError", "IntegrityError", "InternalError", "ProgrammingError",
                 "NotSupportedError"):
        cls = getattr(client, name)
        assert issubclass(cls, Exception)
        assert getattr(client.Connection, name) is cls
    assert issubclass(client.DatabaseError, client.Error)
    assert issubclass(client.InterfaceError, client.Error)
    assert issubclass(client.QueryRejected, client.ProgrammingError)
    assert issubclass(client.BudgetExceeded, client.OperationalError)
    assert client.NUMBER == "int" and client.NUMBER == "float" and client.STRING == "text"
    assert client.DATETIME == "date" and client.STRING != "int"


def test_every_problem_type_maps_to_an_exception() -> None:
    for code, cls in PROBLEM_CLASSES.items():
        if code == "gateway_error":
            continue
        assert code in client.PROBLEM_TYPES, f"client does not know problem type {code!r}"
        err = client.error_from_response(cls.http_status, {
            "type": code, "title": cls.title, "status": cls.http_status, "detail": "d"})
        assert isinstance(err, client.DatabaseError) and err.type == code
    odd = client.error_from_response(502, None)
    assert isinstance(odd, client.InternalError) and odd.status == 502


# -- parameters ---------------------------------------------------------------------------

def test_bind_builds_literals_never_pastes_text() -> None:
    evil = "US' OR 1=1 --"
    sql = bind("SELECT COUNT(*) FROM visits WHERE country = ? AND age > ?", [evil, 30])
    assert sql == "SELECT COUNT(*) FROM visits WHERE country = 'US'' OR 1=1 --' AND age > 30"
    assert bind("SELECT COUNT(*) FROM visits WHERE age > :a AND age < :b",
                {"a": 20, "b": 40}) == "SELECT COUNT(*) FROM visits WHERE age > 20 AND age < 40"
    assert bind("SELECT COUNT(*) FROM visits WHERE age > $2 AND age < $1", [40, 20]) == \
        "SELECT COUNT(*) FROM visits WHERE age > 20 AND age < 40"
    # '?' inside a string or a comment is not a placeholder.
    assert bind("SELECT '?' AS q, COUNT(*) FROM visits WHERE age > ? -- ?", [3]).startswith(
        "SELECT '?' AS q, COUNT(*) FROM visits WHERE age > 3")
    assert "CAST('2024-03-01' AS DATE)" in bind(
        "SELECT COUNT(*) FROM visits WHERE visit_date > ?", [dt.date(2024, 3, 1)])
    assert bind("SELECT 1", None) == "SELECT 1"


@pytest.mark.parametrize(("sql", "params", "error"), [
    ("SELECT ? FROM t", [], client.ProgrammingError),
    ("SELECT ? FROM t", [1, 2], client.ProgrammingError),
    ("SELECT 1 FROM t", [1], client.ProgrammingError),
    ("SELECT ? FROM t", {"a": 1}, client.ProgrammingError),
    ("SELECT a FROM t WHERE a = :a", {"b": 1}, client.ProgrammingError),
    ("SELECT ? FROM t", "ab", client.ProgrammingError),
    ("SELECT ? FROM t; SELECT 2", [1], client.ProgrammingError),
    ("SELECT ? FROM t", [float("nan")], client.DataError),
    ("SELECT ? FROM t", [object()], client.DataError),
    ("SELECT ? FROM t", [b"x"], client.NotSupportedError),
])
def test_bind_refuses(sql: str, params: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        bind(sql, params)


# -- retries (mock transport) ----------------------------------------------------------------

OK = {"query_id": "q1", "columns": [{"name": "n", "type": "int"}], "rows": [[7]],
      "epsilon_spent": 0.1, "delta_spent": 0.0, "accuracy": [], "cached": False,
      "budget": {"epsilon_remaining": 1.0, "delta_remaining": 0.0}}
UNAVAILABLE = {"type": "ledger_unavailable", "title": "Privacy ledger unavailable",
               "status": 503, "detail": "retry later; nothing was charged"}


def scripted(*steps: Any) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering each request with the next step (a Response or an exception)."""
    seen: list[httpx.Request] = []
    script = list(steps)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step  # type: ignore[no-any-return]

    return httpx.MockTransport(handler), seen


def problem(status: int, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers={"Content-Type":
                                                      "application/problem+json", **headers})


def test_retries_503_and_connection_errors_with_one_idempotency_key() -> None:
    transport, seen = scripted(problem(503, UNAVAILABLE, **{"Retry-After": "1"}),
                               httpx.ConnectError("refused"),
                               problem(409, {**UNAVAILABLE, "type": "idempotency_key_in_use",
                                             "status": 409}),
                               httpx.Response(200, json=OK))
    conn = connect("http://gw", "k", transport=transport, backoff=0.001, max_backoff=0.001)
    r = conn.query("SELECT COUNT(*) AS n FROM visits", epsilon=0.1)
    assert r.rows == [(7,)] and [c.name for c in r.columns] == ["n"]
    keys = {req.headers["idempotency-key"] for req in seen}
    assert len(seen) == 4 and len(keys) == 1
    assert seen[0].headers["authorization"] == "Bearer k"


def test_gives_up_after_retries_with_the_problem() -> None:
    transport, seen = scripted(*[problem(503, UNAVAILABLE)] * 3)
    conn = connect("http://gw", "k", transport=transport, retries=2, backoff=0.001)
    with pytest.raises(client.Unavailable) as info:
        conn.query("SELECT COUNT(*) FROM visits")
    assert info.value.type == "ledger_unavailable" and info.value.status == 503
    assert len(seen) == 3
    transport, _ = scripted(*[httpx.ConnectError("refused")] * 2)
    with pytest.raises(client.InterfaceError):
        connect("http://gw", "k", transport=transport, retries=1, backoff=0.001).budget()


def test_client_errors_are_not_retried() -> None:
    rejected = {"type": "query_rejected", "title": "Query rejected", "status": 400,
                "detail": "raw rows cannot be released", "rule": "raw_release"}
    transport, seen = scripted(problem(400, rejected))
    with pytest.raises(client.QueryRejected) as info:
        connect("http://gw", "k", transport=transport).query("SELECT user_id FROM visits")
    assert len(seen) == 1 and info.value.problem["rule"] == "raw_release"
    assert str(info.value) == "raw rows cannot be released"


def test_free_calls_carry_no_idempotency_key() -> None:
    transport, seen = scripted(httpx.Response(200, json={"epsilon_cost": 0.1}),
                               httpx.Response(200, json={"analyst": "a"}))
    conn = connect("http://gw", "k", transport=transport)
    conn.explain("SELECT COUNT(*) FROM visits")
    conn.budget()
    assert all("idempotency-key" not in r.headers for r in seen)


# -- against a real server ---------------------------------------------------------------

def test_query_result_and_pandas(live: tuple[str, dict[str, str]]) -> None:
    url, keys = live
    with connect(url, keys["ann"]) as conn:
        r = conn.query("SELECT device, COUNT(*) AS n FROM visits GROUP BY device", epsilon=0.2)
        assert [c.name for c in r.columns] == ["device", "n"]
        assert r.columns[1].type == "int" and r.epsilon_spent == 0.2 and not r.cached
        df = r.to_pandas()
        assert list(df.columns) == ["device", "n"] and len(df) == 4
        months = conn.query("SELECT date_trunc('month', visit_date) AS m, COUNT(*) AS n "
                            "FROM visits GROUP BY 1 ORDER BY 1", epsilon=0.2)
        assert isinstance(months.rows[0][0], dt.date)  # ISO strings come back typed
        assert conn.explain("SELECT COUNT(*) FROM visits")["epsilon_cost"] > 0
        assert conn.budget()["analyst"] == "ann"
        assert "visits" in conn.schema()["tables"]


def test_dbapi_cursor(live: tuple[str, dict[str, str]]) -> None:
    url, keys = live
    conn = connect(url, keys["ann"], epsilon=0.1)
    cur = conn.cursor()
    assert cur.description is None and cur.rowcount == -1
    cur.execute("SELECT device, COUNT(*) AS n FROM visits WHERE age > ? GROUP BY device "
                "ORDER BY device", [30])
    assert [d[0] for d in cur.description] == ["device", "n"]  # type: ignore[union-attr]
    assert cur.description[1][1] == client.NUMBER  # type: ignore[index]
    assert cur.rowcount == 4
    first = cur.fetchone()
    assert first is not None and first[0] == "desktop"
    assert len(cur.fetchmany(2)) == 2
    assert len(cur.fetchall()) == 1 and cur.fetchone() is None
    cur.execute("SELECT COUNT(*) AS n FROM visits WHERE country = :c", {"c": "US"})
    assert len(list(cur)) == 1
    assert cur.result is not None and cur.result.epsilon_spent == 0.1
    conn.commit()
    with pytest.raises(client.NotSupportedError):
        conn.rollback()
    cur.close()
    with pytest.raises(client.InterfaceError):
        cur.execute("SELECT COUNT(*) FROM visits")
    conn.close()
    with pytest.raises(client.InterfaceError):
        conn.budget()


def test_pandas_read_sql_over_dbapi(live: tuple[str, dict[str, str]]) -> None:
    import pandas as pd

    url, keys = live
    with connect(url, keys["ann"], epsilon=0.1) as conn, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pandas prefers SQLAlchemy
        df = pd.read_sql("SELECT device, AVG(spend) AS s FROM visits GROUP BY device", conn)
    assert list(df.columns) == ["device", "s"] and len(df) == 4


def test_errors_from_the_server(live: tuple[str, dict[str, str]]) -> None:
    url, keys = live
    with connect(url, keys["ann"]) as conn:
        with pytest.raises(client.QueryRejected) as rejected:
            conn.query("SELECT user_id FROM visits")
        assert isinstance(rejected.value, client.ProgrammingError)
        assert rejected.value.problem["span"]["text"] == "user_id"
    with connect(url, keys["poor"]) as conn, pytest.raises(client.BudgetExceeded) as spent:
        conn.cursor().execute("SELECT COUNT(*) AS n FROM visits WHERE age > 50")
    assert isinstance(spent.value, client.OperationalError) and spent.value.status == 403
    with connect(url, "dpg_wrong") as conn, pytest.raises(client.AuthError):
        conn.budget()


class LoseFirstAnswer(httpx.BaseTransport):
    """Deliver the first query to the server, then drop its answer on the floor."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path == "/v1/query" and self.lost == 0:
            response.read()
            self.lost += 1
            raise httpx.ReadError("connection reset", request=request)
        return response


def test_a_lost_answer_is_retried_and_charged_once(live: tuple[str, dict[str, str]]) -> None:
    url, keys = live
    transport = LoseFirstAnswer()
    with connect(url, keys["ann"], transport=transport, backoff=0.01) as conn:
        before = conn.budget()["charges"]
        r = conn.query("SELECT COUNT(*) AS n FROM visits WHERE age > 77", epsilon=0.3)
        assert transport.lost == 1 and not r.cached and r.epsilon_spent == 0.3
        assert conn.budget()["charges"] == before + 1


def test_async_client(live: tuple[str, dict[str, str]]) -> None:
    url, keys = live

    async def go() -> tuple[Any, ...]:
        async with connect_async(url, keys["ann"]) as conn:
            return await asyncio.gather(
                conn.query("SELECT COUNT(*) AS n FROM visits WHERE age > ?", epsilon=0.1,
                           params=[25]),
                conn.budget(), conn.schema())

    result, budget, schema = asyncio.run(go())
    assert result.rows and budget["analyst"] == "ann" and "visits" in schema["tables"]


# -- accuracy-first (ci95 instead of epsilon) ---------------------------------------------------

def test_accuracy_first_query_explain_and_cursor(live: tuple[str, dict[str, str]]) -> None:
    url, keys = live
    sql = "SELECT country, COUNT(*) AS n FROM visits WHERE age > {} GROUP BY country"
    with connect(url, keys["ann"], epsilon=0.1) as conn:  # a default ε does not interfere
        assert conn.explain(sql.format(20), ci95=50)["epsilon_cost"] == pytest.approx(1.21)
        r = conn.query(sql.format(20), ci95=50)
        assert r.target_ci95 == 50 and r.epsilon_spent == pytest.approx(1.21)
        assert all(ci[1] <= 50 for ci in r.ci95) and "binding column 'n'" in r.notes[-1]
        assert conn.query(sql.format(20), accuracy=50).cached  # the alias, the same ε
        assert conn.query(sql.format(20), epsilon=0.1).target_ci95 is None
        with pytest.raises(client.InvalidRequest, match="either epsilon or a target"):
            conn.query(sql.format(21), epsilon=0.2, ci95=50)
        with pytest.raises(client.ProgrammingError, match="same target"):
            conn.query(sql.format(21), ci95=50, accuracy=40)
        with pytest.raises(client.QueryRejected) as e:
            conn.explain("SELECT MEDIAN(age) FROM visits", ci95=3)
        assert e.value.problem["rule"] == "accuracy_target"
        cur = conn.cursor()
        assert cur.epsilon == 0.1 and cur.ci95 is None
        cur.ci95 = 50
        cur.execute(sql.format(22))
        assert cur.result is not None and cur.result.target_ci95 == 50
        assert cur.result.epsilon_spent == pytest.approx(1.21)
        cur.epsilon = 0.2  # the later choice wins, as SET dp.epsilon over pgwire
        assert cur.ci95 is None
        cur.execute(sql.format(22))
        assert cur.result.epsilon_spent == 0.2 and cur.result.target_ci95 is None
        cur.ci95 = 50
        cur.execute(sql.format(22))
        assert cur.result.cached and cur.result.target_ci95 == 50
        cur.ci95 = None  # back to epsilon = 0.2: cached too
        cur.execute(sql.format(22))
        assert cur.result.cached and cur.result.target_ci95 is None


def test_accuracy_first_request_bodies() -> None:
    transport, seen = scripted(httpx.Response(200, json={**OK, "target_ci95": 50}),
                               httpx.Response(200, json=OK))
    with connect("http://gw", "k", epsilon=0.3, delta=1e-7, transport=transport) as conn:
        r = conn.query("SELECT COUNT(*) FROM visits", ci95=50)
        assert r.target_ci95 == 50
        conn.explain("SELECT COUNT(*) FROM visits", accuracy=25)
    bodies = [json.loads(req.content) for req in seen]
    assert bodies[0] == {"sql": "SELECT COUNT(*) FROM visits", "ci95": 50, "delta": 1e-7}
    assert bodies[1] == {"sql": "SELECT COUNT(*) FROM visits", "ci95": 25, "delta": 1e-7}


def test_async_accuracy_first(live: tuple[str, dict[str, str]]) -> None:
    url, keys = live

    async def go() -> tuple[Any, Any]:
        async with connect_async(url, keys["ann"]) as conn:
            sql = "SELECT COUNT(*) AS n FROM visits WHERE age > 44"
            return await conn.query(sql, ci95=60), await conn.explain(sql, ci95=60)

    r, ex = asyncio.run(go())
    assert r.target_ci95 == 60 and ex["target_ci95"] == 60
    assert r.epsilon_spent == pytest.approx(ex["epsilon_cost"])
