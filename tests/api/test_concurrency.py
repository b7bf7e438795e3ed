"""Concurrent requests can never overspend: 40 × ε=0.1 against a pure-ε budget of 1.0."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest

from tests.api.conftest import Live
from tests.api.live import LiveServer, add_analysts, assert_problem, write_policy


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("concurrency")
    policy = write_policy(folder, dataset=(100.0, 0.0), per_analyst=(1.0, 0.0))
    state = folder / "state.db"
    keys = add_analysts(policy, state, {"carol": {}})  # the policy's default: ε 1.0, δ 0
    srv = LiveServer(policy, state).start()
    try:
        yield Live(srv, keys, policy, state)
    finally:
        srv.stop()


def test_forty_parallel_queries_exactly_ten_succeed(server: Live) -> None:
    n = 40
    # Different WHERE constants: identical queries would be answered from the cache.
    sqls = [f"SELECT COUNT(*) AS n FROM visits WHERE age > {18 + i}" for i in range(n)]
    start = threading.Barrier(n)

    def one(sql: str) -> httpx.Response:
        with server.server.client(server.keys["carol"]) as c:
            start.wait()
            return c.post("/v1/query", json={"sql": sql, "epsilon": 0.1})

    with ThreadPoolExecutor(n) as pool:
        responses = list(pool.map(one, sqls))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 403]
    assert len(ok) == 10 and len(refused) == 30, sorted(r.status_code for r in responses)
    for r in refused:
        assert_problem(r, 403, "budget_exceeded")
    assert all(r.json()["epsilon_spent"] == 0.1 for r in ok)

    with server.server.client(server.keys["carol"]) as c:
        budget = c.get("/v1/budget").json()
    assert budget["epsilon_spent"] == 1.0 and budget["epsilon_remaining"] == 0.0
    assert budget["charges"] == 10

    con = sqlite3.connect(f"file:{server.state}?mode=ro", uri=True)
    try:
        charges = con.execute("SELECT query_id, epsilon FROM charges WHERE analyst = 'carol'"
                              ).fetchall()
        total = con.execute("SELECT epsilon FROM totals WHERE scope = 'analyst:web:carol'"
                            ).fetchone()
    finally:
        con.close()
    assert sum(Decimal(e) for _, e in charges) == Decimal("1.0")
    assert Decimal(total[0]) == Decimal("1.0")
    assert {q for q, _ in charges} == {r.json()["query_id"] for r in ok}
