"""The red-team findings of the side-channel issue, over the PostgreSQL wire: refused
with SQLSTATE 42000 and a reason, never an engine error, nothing charged."""

from __future__ import annotations

import psycopg
import pytest

REFUSED = [
    "SELECT DISTINCT CASE visit_date WHEN age THEN 'x' ELSE 'y' END AS k FROM visits "
    "WHERE user_id = 3 AND amount > 21.5",
    "SELECT COUNT(*) FROM visits WHERE user_id = 3 AND CASE WHEN city THEN TRUE END",
    "SELECT city, COUNT(*) FROM visits WHERE user_id = 3 GROUP BY city "
    "ORDER BY SUM(CASE WHEN visit_date = age THEN 1 ELSE 0 END)",
    "SELECT COUNT(*) FROM visits v " + " ".join(
        f"JOIN clubs c{i} ON v.amount > 40" for i in range(6)),
]


@pytest.mark.parametrize("sql", REFUSED)
def test_red_team_queries_are_refused(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = conn.execute("SHOW dp.budget").fetchall()
        with pytest.raises(psycopg.Error) as err:
            conn.execute(sql)
        assert err.value.sqlstate == "42000", str(err.value)
        assert conn.execute("SHOW dp.budget").fetchall() == before
