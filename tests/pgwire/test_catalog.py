"""The catalog: what BI tools send on connect, and that it never reveals data.

The replay corpus is fixtures/catalog_queries.json (79 queries from nine tools;
see its README).  Each tool's queries run in order on one connection,
as the tool would send them, through both the simple and (for single
statements) the extended protocol.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import errors, pq

from tests.pgwire.conftest import ROWS, USERS, ServerThread, corpus

CORPUS = corpus()


def _replay(conn: psycopg.Connection, queries: list[str]) -> tuple[list[str], list[Any]]:
    """Run each query; return (failures, every value that came back)."""
    failures, values = [], []
    for i, sql in enumerate(queries, 1):
        res = conn.pgconn.exec_(sql.encode())  # simple protocol: what psql and Tableau use
        if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            failures.append(f"#{i} {res.error_message.decode().strip()} :: {sql[:90]}")
            continue
        values += [res.get_value(r, c) for r in range(res.ntuples) for c in range(res.nfields)]
        if ";" in sql.strip().rstrip(";") or sql.lstrip()[:5].upper() in ("CLOSE", "COMMI"):
            continue
        try:  # the extended protocol too (pgjdbc, Npgsql and psycopg send that)
            cur = conn.execute(sql)
            if cur.description is not None:
                values += [v for row in cur.fetchall() for v in row]
        except psycopg.Error as e:
            failures.append(f"#{i} (extended) {e.sqlstate} {e} :: {sql[:90]}")
    return failures, values


@pytest.mark.parametrize("tool", sorted(CORPUS))
def test_catalog_corpus_replays_without_error(pg: ServerThread, tool: str) -> None:
    name, key = pg.analyst()
    with psycopg.connect(pg.dsn(name, key), autocommit=True) as conn:
        failures, values = _replay(conn, CORPUS[tool])
    assert failures == []
    real = {str(ROWS), str(USERS)}
    shown = [str(v.decode() if isinstance(v, bytes) else v) for v in values]
    assert not [v for v in shown if v in real]


def test_corpus_has_79_queries_from_nine_tools() -> None:
    assert sum(len(v) for v in CORPUS.values()) == 79 and len(CORPUS) == 9


def test_no_catalog_query_returns_a_real_count(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        q = conn.execute
        assert q("SELECT reltuples, relpages FROM pg_class WHERE relname = 'visits'"
                 ).fetchall() == [(-1.0, 0)]
        assert q("SELECT n_live_tup FROM pg_stat_user_tables").fetchall() == []
        assert q("SELECT * FROM pg_catalog.pg_stats").fetchall() == []
        assert q("SELECT pg_relation_size('visits'), pg_total_relation_size("
                 "'public.visits'::regclass), pg_table_size(16384)").fetchone() == (0, 0, 0)
        assert q("SELECT count(*) FROM visits WHERE 1 = 0").fetchone() == (0,)
        assert q("SELECT count(*) FROM visits LIMIT 0").fetchall() == []
        for sql in ("SELECT * FROM read_csv('visits.csv')",
                    "SELECT * FROM main.visits",
                    "SELECT * FROM query_table('visits')",
                    "SELECT * FROM duckdb_tables()",
                    "COPY visits TO '/tmp/x.csv'"):
            with pytest.raises(psycopg.Error):
                q(sql)
        assert q("SELECT 1").fetchone() == (1,)


def test_private_tables_are_listed_with_columns_and_types(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position").fetchall()
        visits = [(c, t) for table, c, t in rows if table == "visits"]
        assert visits[:4] == [("visit_id", "bigint"), ("user_id", "bigint"), ("city", "text"),
                              ("device", "text")]
        assert ("amount", "double precision") in visits and ("visit_date", "date") in visits
        assert {table for table, _, _ in rows} == {"visits", "clubs"}
        desc = conn.execute("SELECT col_description('visits'::regclass, 5), "
                            "obj_description('visits'::regclass, 'pg_class')").fetchone()
        assert desc[0].startswith("bounds [0") and "privacy unit: user_id" in desc[1]


@pytest.mark.parametrize("sql, expected", [
    ("SELECT version()", None),
    ("SELECT current_schema(), current_schemas(true)", ("public", ["pg_catalog", "public"])),
    ("SELECT current_setting('standard_conforming_strings')", ("on",)),
    ("SELECT to_regtype('integer')::oid, to_regtype('text')::oid", (23, 25)),
    ("SELECT 'pg_class'::regclass::oid, 'visits'::regclass::text", (1259, "visits")),
    ("SELECT format_type(20, -1), format_type(1114, NULL), format_type(1007, -1)",
     ("bigint", "timestamp without time zone", "integer[]")),
    ("SELECT pg_get_expr(NULL, 0), pg_table_is_visible('visits'::regclass)", (None, True)),
    ("SELECT has_table_privilege('visits', 'SELECT'), has_table_privilege('visits', 'INSERT'),"
     " has_schema_privilege('public', 'USAGE')", (True, False, True)),
    ("SELECT typname FROM pg_type WHERE oid = 'int8'::regtype", ("int8",)),
    ("SELECT c.relname FROM pg_class c WHERE c.oid = 'visits'::regclass", ("visits",)),
    ("SELECT quote_ident('visits'), quote_ident('Select'), pg_backend_pid() > 0",
     ("visits", '"Select"', True)),
])
def test_probes(dsn: str, sql: str, expected: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
        if expected is None:
            assert row[0].startswith("PostgreSQL 16.")
        else:
            assert row == expected


def test_unknown_relations_and_functions_are_errors(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(errors.UndefinedTable):
            conn.execute("SELECT * FROM pg_catalog.pg_nothing")
        with pytest.raises(errors.UndefinedFunction):
            conn.execute("SELECT * FROM some_function()")
        assert conn.execute("SELECT 1").fetchone() == (1,)
