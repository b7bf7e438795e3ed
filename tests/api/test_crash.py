"""Crash safety: `kill -9` the server with requests in flight, restart on the same state.

Every answer a client received must have been charged (the charge is committed
before release), and the ledger must be intact: SQLite's integrity check passes,
running totals equal the sum of the charges, and the restarted server reports
exactly that and keeps working.
"""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.api.live import LiveServer, add_analysts, write_policy

SQL = ("SELECT country, COUNT(*) AS n, SUM(spend) AS s FROM visits WHERE age > {} "
       "GROUP BY country")


def _ledger(state: Path) -> tuple[str, list[tuple[str, str, str]], dict[str, tuple[str, int]]]:
    con = sqlite3.connect(state)  # read-write: WAL recovery runs as it would on restart
    try:
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
        charges = con.execute("SELECT query_id, epsilon, sql FROM charges").fetchall()
        totals = {s: (e, n) for s, e, n in con.execute("SELECT scope, epsilon, n FROM totals")}
    finally:
        con.close()
    return check, charges, totals


@pytest.mark.slow
def test_kill_9_with_requests_in_flight(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, dataset=(100.0, 0.0), per_analyst=(50.0, 0.0))
    state = tmp_path / "state.db"
    key = add_analysts(policy, state, {"dora": {}})["dora"]
    server = LiveServer(policy, state).start()
    received: dict[int, dict] = {}
    lock = threading.Lock()
    three = threading.Event()

    def one(i: int) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=30,
                              headers={"Authorization": f"Bearer {key}"}) as c:
                r = c.post("/v1/query", json={"sql": SQL.format(18 + i), "epsilon": 0.2},
                           headers={"Idempotency-Key": f"crash-{i}"})
        except httpx.TransportError:
            return  # the server died under it: nothing was received
        if r.status_code == 200:
            with lock:
                received[i] = r.json()
                if len(received) >= 3:
                    three.set()

    try:
        with ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(one, i) for i in range(24)]
            assert three.wait(60), server.output()
            server.kill()
            for f in futures:
                f.result()
    finally:
        server.kill()
    assert 3 <= len(received) < 24, "the kill must land while requests are in flight"

    check, charges, totals = _ledger(state)
    assert check == "ok"
    charged = {q for q, _, _ in charges}
    assert {r["query_id"] for r in received.values()} <= charged  # every answer was paid for
    spent = sum((Decimal(e) for _, e, _ in charges), Decimal(0))
    assert totals["analyst:web:dora"] == (str(spent), len(charges))
    assert totals["dataset:web"] == (str(spent), len(charges))

    server = LiveServer(policy, state).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60,
                          headers={"Authorization": f"Bearer {key}"}) as c:
            budget = c.get("/v1/budget").json()
            assert Decimal(repr(budget["epsilon_spent"])) == spent
            assert budget["charges"] == len(charges)
            # A retry of a request the crash cut off before its charge is taken over
            # at once (its claim names a dead process), runs, and is charged once.
            paid_sql = {q for _, _, q in charges}
            lost = [i for i in range(24) if SQL.format(18 + i) not in paid_sql]
            assert lost, "with 4 workers some of the 24 requests were still queued"
            if lost:
                r = c.post("/v1/query", json={"sql": SQL.format(18 + lost[0]),
                                              "epsilon": 0.2},
                           headers={"Idempotency-Key": f"crash-{lost[0]}"})
                assert r.status_code == 200, r.text
                assert r.headers.get("idempotent-replayed") is None
        check, charges_after, _ = _ledger(state)
        assert check == "ok" and len(charges_after) == len(charges) + bool(lost)
    finally:
        server.stop()
