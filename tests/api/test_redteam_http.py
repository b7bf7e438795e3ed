"""The red-team findings of the side-channel issue, over HTTP: each is refused before
anything runs (400 query_rejected with a reason, nothing charged) or answered
harmlessly; none reaches the engine as an error (503 backend_error)."""

from __future__ import annotations

import pytest

from tests.api.conftest import Live

REFUSED = [
    # an operand CASE comparing a date with an int: an implicit BIGINT -> DATE cast per row
    "SELECT DISTINCT CASE visit_date WHEN age THEN 'x' ELSE 'y' END AS k FROM visits "
    "WHERE user_id = 3 AND spend > 21.5",
    # text used as a boolean
    "SELECT COUNT(*) FROM visits WHERE user_id = 3 AND CASE WHEN country THEN TRUE END",
    # a mismatched comparison inside an aggregate that only HAVING uses
    "SELECT device, COUNT(*) FROM visits WHERE user_id = 3 GROUP BY device "
    "HAVING SUM(CASE WHEN visit_date = age THEN 1 ELSE 0 END) > 0",
    # join fan-out
    "SELECT COUNT(*) FROM visits v " + " ".join(
        f"JOIN countries c{i} ON v.spend > 400" for i in range(6)),
    # USING that does not equate the units
    "SELECT COUNT(*) FROM (SELECT user_id AS x, age AS user_id FROM visits) a "
    "JOIN (SELECT age AS x, user_id FROM visits) b USING (user_id, x)",
    # YEAR of an int
    "SELECT SUM(YEAR(age)) FROM visits",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_red_team_queries_are_refused_before_anything_runs(live: Live, sql: str) -> None:
    with live.server.client(live.keys["alice"]) as c:
        before = c.get("/v1/budget").json()
        r = c.post("/v1/query", json={"sql": sql, "epsilon": 0.5})
        assert r.status_code == 400, r.text
        problem = r.json()
        assert problem["type"] == "query_rejected" and problem["detail"]
        assert c.get("/v1/budget").json() == before


def test_a_distinct_over_public_values_reads_nothing_and_costs_nothing(live: Live) -> None:
    sql = ("SELECT DISTINCT device FROM visits WHERE user_id = 3 AND "
           "TRY_CAST(country AS INT) > 5")
    with live.server.client(live.keys["alice"]) as c:
        before = c.get("/v1/budget").json()
        r = c.post("/v1/query", json={"sql": sql, "epsilon": 0.5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["epsilon_spent"] == 0 and not body["cached"]
        assert sorted(row[0] for row in body["rows"]) == ["desktop", "mobile", "tablet", "tv"]
        assert c.get("/v1/budget").json()["epsilon_spent"] == before["epsilon_spent"]


def test_variance_is_not_served_as_a_standard_deviation(live: Live) -> None:
    with live.server.client(live.keys["bob"]) as c:
        sd = c.post("/v1/query", json={"sql": "SELECT STDDEV_POP(spend) AS x FROM visits",
                                       "epsilon": 2.0}).json()
        var = c.post("/v1/query", json={"sql": "SELECT VAR_POP(spend) AS x FROM visits",
                                        "epsilon": 2.0}).json()
    assert var["cached"] and var["epsilon_spent"] == 0  # the same release, post-processed
    assert var["rows"][0][0] == pytest.approx(sd["rows"][0][0] ** 2, rel=1e-9)


@pytest.mark.parametrize("value", [True, "0.5", None])
def test_epsilon_must_be_a_number(live: Live, value: object) -> None:
    with live.server.client(live.keys["alice"]) as c:
        r = c.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM visits", "epsilon": value})
    assert r.status_code == 422
