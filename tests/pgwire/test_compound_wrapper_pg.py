"""A BI tool's wrapper around a UNION ALL of DP SELECTs, over the PostgreSQL wire.

``SELECT * FROM (<statement>) AS t ...`` is post-processing of the statement's release:
Describe plans it (columns, ``<col>_ci95`` under ``dp.report = 'ci95'``), the answer
costs what the statement costs, and the unwrapped statement is then a free repeat.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from tests.pgwire.conftest import ServerThread

UNION = ("SELECT 'Paris' AS city, COUNT(*) AS n FROM visits WHERE city = 'Paris' "
         "UNION ALL SELECT 'Lyon', COUNT(*) FROM visits WHERE city = 'Lyon'")


def test_wrapped_union_all_over_psycopg(pg: ServerThread, account: tuple[str, str]) -> None:
    name, key = account
    with psycopg.connect(pg.dsn(name, key), autocommit=True) as conn:
        conn.execute("SET dp.epsilon = 0.4")
        conn.execute("SET dp.report = 'ci95'")
        wrapped = f"SELECT city, n * 2 AS m FROM ({UNION}) AS t ORDER BY m DESC LIMIT 1000"
        cur = conn.execute(wrapped)  # extended protocol: Describe plans the wrapper
        assert cur.description is not None
        assert [d.name for d in cur.description] == ["city", "m", "m_ci95"]
        rows = cur.fetchall()
        assert {r[0] for r in rows} == {"Paris", "Lyon"}
        assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
        assert all(isinstance(r[2], float) and r[2] > 0 for r in rows)
        assert pg.spent(name) == pytest.approx(0.4)  # the statement's one charge
        conn.execute("SET dp.report = 'none'")
        plain = {r[0]: r[1] for r in conn.execute(UNION).fetchall()}
        assert {r[0]: r[1] for r in rows} == {c: 2 * n for c, n in plain.items()}
        assert pg.spent(name) == pytest.approx(0.4)  # the unwrapped statement: cached
        simple = psycopg.ClientCursor(conn)  # simple protocol: the text as it is
        simple.execute(f"SELECT SUM(n) AS total FROM ({UNION}) t")
        assert simple.fetchall() == [(sum(plain.values()),)]
        ordered = conn.execute(f"({UNION}) ORDER BY n DESC")  # parenthesised, ordered
        assert ordered.fetchall() == sorted(plain.items(), key=lambda r: -r[1])
        with pytest.raises(errors.SyntaxErrorOrAccessRuleViolation) as err:
            conn.execute(f"SELECT * FROM ({UNION}) t JOIN visits v ON v.city = t.city")
        assert "released rows" in str(err.value)
        assert pg.spent(name) == pytest.approx(0.4)
        charges = pg.gateway.ledger.charges(name)
        assert len(charges) == 1 and charges[0]["epsilon"] == pytest.approx(0.4)
