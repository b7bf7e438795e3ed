"""Several DP results in one statement over HTTP (a real `gateway serve`) and through
the Python client: one charge, free repeats, per-branch explain, refusals as 400."""

from __future__ import annotations

import pytest

from gateway.client import connect
from gateway.client.http import QueryRejected
from tests.api.conftest import Live
from tests.api.live import assert_problem

UNION = ("SELECT 'mobile' AS device, COUNT(*) AS n FROM visits WHERE device = 'mobile' "
         "UNION ALL SELECT 'tv', COUNT(*) FROM visits WHERE device = 'tv' ORDER BY n DESC")


def test_union_all_over_http_and_the_client(live: Live) -> None:
    with live.server.client(live.keys["alice"]) as c:
        before = c.get("/v1/budget").json()
        ex = c.post("/v1/explain", json={"sql": UNION, "epsilon": 0.4}).json()
        assert ex["epsilon_cost"] == 0.4
        assert [(b["branch"], b["kind"], b["epsilon_cost"]) for b in ex["branches"]] == \
            [(1, "dp", 0.2), (2, "dp", 0.2)]
        r = c.post("/v1/query", json={"sql": UNION, "epsilon": 0.4})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["columns"] == [{"name": "device", "type": "text"},
                                   {"name": "n", "type": "int"}]
        assert [row[0] for row in body["rows"]] == ["mobile", "tv"]
        assert body["epsilon_spent"] == 0.4 and body["cached"] is False
        assert [a["column"] for a in body["accuracy"]] == ["n"]
        after = c.get("/v1/budget").json()
        assert after["charges"] == before["charges"] + 1  # one ledger entry
        assert after["epsilon_spent"] == pytest.approx(before["epsilon_spent"] + 0.4)
        bad = c.post("/v1/query", json={
            "sql": "SELECT COUNT(*) AS n FROM visits UNION ALL SELECT device FROM visits "
                   "GROUP BY device", "epsilon": 0.4})
        problem = assert_problem(bad, 400, "query_rejected")
        assert problem["rule"] == "set_operation" and "SELECT 2" in problem["detail"]
    conn = connect(live.url, api_key=live.keys["bob"])
    try:
        again = conn.query(UNION, epsilon=0.4)  # the same statement: cached, free, for anyone
        assert again.cached and again.epsilon_spent == 0
        assert again.rows == [tuple(row) for row in body["rows"]]
        cur = conn.cursor()
        cur.execute(UNION.replace("ORDER BY n DESC", "ORDER BY 1 LIMIT 1"))
        assert [d[0] for d in cur.description] == ["device", "n"]
        assert [row[0] for row in cur.fetchall()] == ["mobile"]
        with pytest.raises(QueryRejected, match="at most"):
            conn.query(" UNION ALL ".join(["SELECT COUNT(*) FROM visits"] * 40), epsilon=0.4)
    finally:
        conn.close()
