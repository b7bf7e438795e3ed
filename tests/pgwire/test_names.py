"""Names as BI tools write them, over the PostgreSQL wire with psycopg: schema-qualified
tables (``public.``, ``main.``, the database name, a table's own ``schema:``), quoted
identifiers, and T-SQL's TOP.  The server runs over the conftest dataset with
``visits`` declared ``schema: analytics``."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors

from tests.pgwire.conftest import ServerThread, write_dataset

CITIES = {"Paris", "Lyon", "Nice", "Lille"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    folder = tmp_path_factory.mktemp("pgnames")
    policy = write_dataset(folder)
    text = policy.read_text()
    assert "    source: visits.csv\n" in text
    policy.write_text(text.replace("    source: visits.csv\n",
                                   "    source: visits.csv\n    schema: analytics\n", 1))
    srv = ServerThread(policy, folder / "state.db")
    yield srv
    srv.close()


@pytest.fixture()
def conn(server: ServerThread) -> Iterator[psycopg.Connection]:
    name, key = server.analyst(epsilon=1000.0)
    with psycopg.connect(server.dsn(name, key), autocommit=True) as c:
        c.execute("SET dp.epsilon = 5")
        yield c


@pytest.mark.parametrize("table", [
    "public.visits", '"public"."visits"', "main.visits", "bi.visits", "bi.public.visits",
    "analytics.visits", '"analytics"."visits"', "ANALYTICS.VISITS",
])
def test_schema_qualified_tables(conn: psycopg.Connection, table: str) -> None:
    cur = conn.execute(f"SELECT city, COUNT(*) AS n FROM {table} GROUP BY city")
    assert [d.name for d in cur.description] == ["city", "n"]
    assert {r[0] for r in cur.fetchall()} == CITIES


def test_quoted_identifiers_as_bi_tools_send_them(conn: psycopg.Connection) -> None:
    # Metabase: every name quoted, columns qualified by schema and table.
    cur = conn.execute(
        'SELECT "public"."visits"."city" AS "city", count(*) AS "count" '
        'FROM "public"."visits" GROUP BY "public"."visits"."city" '
        'ORDER BY "public"."visits"."city" ASC')
    assert [d.name for d in cur.description] == ["city", "count"]
    assert [r[0] for r in cur.fetchall()] == sorted(CITIES)
    # A quoted alias keeps its case, as in PostgreSQL; an unquoted one folds.
    cur = conn.execute('SELECT "city", COUNT(*) AS "Visits", AVG(amount) AS Mean '
                       'FROM "visits" GROUP BY "city"')
    assert [d.name for d in cur.description] == ["city", "Visits", "mean"]


def test_quoted_names_are_exact_and_other_schemas_refused(server: ServerThread,
                                                          conn: psycopg.Connection) -> None:
    name = conn.info.user
    before = server.spent(name)
    with pytest.raises(errors.SyntaxErrorOrAccessRuleViolation) as err:
        conn.execute('SELECT COUNT(*) FROM "Visits"')
    assert "quoted" in str(err.value) and '"visits"' in str(err.value)
    with pytest.raises(errors.SyntaxErrorOrAccessRuleViolation):
        conn.execute('SELECT AVG("Amount") FROM visits')
    with pytest.raises(errors.SyntaxErrorOrAccessRuleViolation) as err:
        conn.execute("SELECT COUNT(*) FROM sales.visits")
    assert "analytics.visits" in str(err.value)  # the hint names what is accepted
    with pytest.raises(errors.SyntaxErrorOrAccessRuleViolation):
        conn.execute("SELECT COUNT(*) FROM otherdb.public.visits")
    assert server.spent(name) == before


def test_empty_probe_of_a_qualified_table_is_answered_from_the_catalog(
        server: ServerThread, conn: psycopg.Connection) -> None:
    """BI tools read a table's columns with ``SELECT * FROM t WHERE 1 = 0``: free."""
    name = conn.info.user
    before = server.spent(name)
    for table in ("analytics.visits", "bi.public.visits", "main.visits"):
        cur = conn.execute(f"SELECT * FROM {table} WHERE 1 = 0")
        assert "city" in [d.name for d in cur.description] and cur.fetchall() == []
    assert server.spent(name) == before


def test_top_and_variance_spellings(conn: psycopg.Connection) -> None:
    cur = conn.execute("SELECT TOP 2 city, COUNT(*) AS n FROM analytics.visits GROUP BY city "
                       "ORDER BY n DESC")
    rows = cur.fetchall()
    assert len(rows) == 2 and rows[0][1] >= rows[1][1]
    cur = conn.execute("SELECT VAR(amount) AS v, STD(amount) AS s FROM visits")
    v, s = cur.fetchone()  # type: ignore[misc]
    assert v >= 0 and s >= 0

