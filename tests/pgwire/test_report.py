"""``SET dp.report = 'ci95'`` over the PostgreSQL wire (psycopg 3, real server).

Each column computed from noisy aggregates gets a ``<col>_ci95`` float8 column after it
holding that value's 95% half-width; keys do not.  Session-level like dp.epsilon;
RESET or ``'none'`` turns it off.  Describe (a dry run) announces the same columns the
answer has.  Notes of the answer (e.g. groups chosen by partition selection) arrive as
NOTICEs.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from tests.pgwire.conftest import ServerThread, run_client

FLOAT8 = 701
SQL = ("SELECT city, COUNT(*) AS n, AVG(amount) AS a, COUNT(*) * 2 AS n2 "
       "FROM visits GROUP BY city ORDER BY city")


def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True)


def test_report_adds_a_ci95_column_after_each_noisy_column(pg: ServerThread,
                                                           account: tuple[str, str]) -> None:
    name, key = account
    with connect(pg.dsn(name, key)) as conn:
        assert conn.execute("SHOW dp.report").fetchone() == ("none",)
        plain = conn.execute(SQL)
        assert [d.name for d in plain.description] == ["city", "n", "a", "n2"]
        before = plain.fetchall()
        conn.execute("SET dp.report = 'ci95'")
        assert conn.execute("SHOW dp.report").fetchone() == ("ci95",)
        cur = conn.execute(SQL)
        assert [d.name for d in cur.description] == [
            "city", "n", "n_ci95", "a", "a_ci95", "n2", "n2_ci95"]
        assert [d.type_code for d in cur.description][2::2] == [FLOAT8] * 3
        rows = cur.fetchall()
        assert [(r[0], r[1], r[3], r[5]) for r in rows] == before  # the cached answer
        for r in rows:
            assert r[2] > 0 and r[4] > 0 and r[6] == pytest.approx(2 * r[2])
        assert pg.spent(name) == pytest.approx(0.5)  # one charge: the report is free
        conn.execute("RESET dp.report")
        assert len(conn.execute(SQL).description) == 4
        conn.execute("SET dp.report TO ci95")
        assert len(conn.execute(SQL).description) == 7
        conn.execute("SET dp.report = 'none'")
        assert len(conn.execute(SQL).description) == 4


def test_report_with_arithmetic_and_the_simple_protocol(pg: ServerThread,
                                                        account: tuple[str, str]) -> None:
    with connect(pg.dsn(*account)) as conn:
        conn.execute("SET dp.report = 'ci95'")
        cur = psycopg.ClientCursor(conn)
        cur.execute("SELECT device, SUM(amount) / COUNT(*) AS per_visit FROM visits "
                    "GROUP BY device")
        assert [d.name for d in cur.description] == ["device", "per_visit", "per_visit_ci95"]
        assert all(r[2] is None for r in cur.fetchall())  # a ratio: no exact half-width


_DESCRIBE = """
import json, sys
import psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
conn.execute("SET dp.report = 'ci95'")
sql = "SELECT device, COUNT(*) AS n FROM visits WHERE amount > 1 GROUP BY device"
pgc, out = conn.pgconn, {}
pgc.prepare(b"rep", sql.encode())
res = pgc.describe_prepared(b"rep")
out["names"] = [res.fname(i).decode() for i in range(res.nfields)]
out["types"] = [res.ftype(i) for i in range(res.nfields)]
out["executed"] = [d.name for d in conn.execute(sql).description]
probe = conn.execute(f"SELECT * FROM ({sql}) q LIMIT 0")
out["probe"] = [d.name for d in probe.description]
print(json.dumps(out))
"""


def test_describe_announces_the_ci95_columns(pg: ServerThread,
                                             account: tuple[str, str]) -> None:
    # In a process of its own: PQdescribePrepared keeps the GIL (see run_client).
    out = run_client(_DESCRIBE, pg.dsn(*account))
    names = ["device", "n", "n_ci95"]
    assert out["names"] == names and out["types"][2] == FLOAT8  # Describe: a dry run
    assert out["executed"] == names  # the answer has what Describe announced
    assert out["probe"] == names  # a column probe (LIMIT 0), answered by the catalog, too


def test_bad_report_value(pg: ServerThread, account: tuple[str, str]) -> None:
    with connect(pg.dsn(*account)) as conn:
        with pytest.raises(errors.InvalidParameterValue, match=r"dp\.report"):
            conn.execute("SET dp.report = 'all'")
        assert conn.execute("SHOW dp.report").fetchone() == ("none",)


def test_notes_arrive_as_notices(pg: ServerThread, account: tuple[str, str]) -> None:
    notices: list[str] = []
    with connect(pg.dsn(*account)) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("SET dp.delta = 1e-6")
        # 4 cities × 3 devices × 73 ages × 366 days: far more than max_public_groups.
        conn.execute("SELECT city, device, age, visit_date, COUNT(*) AS n FROM visits "
                     "GROUP BY city, device, age, visit_date").fetchall()
    assert any("partition selection" in n and "max_public_groups" in n for n in notices)


def test_dp_report_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "pgwire.md").read_text()
    assert "SET dp.report = 'ci95'" in doc and "<col>_ci95" in doc
