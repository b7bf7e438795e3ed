"""UNION ALL of DP SELECTs through the PostgreSQL wire (psycopg 3, both protocols)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from tests.pgwire.conftest import ServerThread

UNION = ("SELECT 'Paris' AS city, COUNT(*) AS n FROM visits WHERE city = 'Paris' "
         "UNION ALL SELECT 'Lyon', COUNT(*) FROM visits WHERE city = 'Lyon' "
         "UNION ALL SELECT club, 0 FROM clubs ORDER BY n DESC LIMIT 3")


def test_union_all_over_psycopg(pg: ServerThread, account: tuple[str, str]) -> None:
    name, key = account
    with psycopg.connect(pg.dsn(name, key), autocommit=True) as conn:
        conn.execute("SET dp.epsilon = 0.6")
        cur = conn.execute(UNION)  # extended protocol: Describe plans every SELECT
        assert [d.name for d in cur.description] == ["city", "n"]
        assert [d.type_code for d in cur.description] == [25, 20]  # text, int8
        rows = cur.fetchall()
        assert len(rows) == 3 and {r[0] for r in rows[:2]} == {"Paris", "Lyon"}
        assert all(isinstance(r[1], int) for r in rows)
        assert pg.spent(name) == pytest.approx(0.6)  # one charge for both DP SELECTs
        charges = [c for c in pg.gateway.ledger.charges(name)]
        assert len(charges) == 1 and charges[0]["epsilon"] == pytest.approx(0.6)
        simple = psycopg.ClientCursor(conn)  # simple protocol: the text as it is
        simple.execute(UNION)
        assert simple.fetchall() == rows  # the same statement: cached, free
        assert pg.spent(name) == pytest.approx(0.6)
        with pytest.raises(errors.SyntaxErrorOrAccessRuleViolation) as err:
            conn.execute("SELECT COUNT(*) AS n FROM visits UNION ALL "
                         "SELECT city FROM visits GROUP BY city")
        assert "SELECT 2" in str(err.value) and "text" in str(err.value)
        assert pg.spent(name) == pytest.approx(0.6)
