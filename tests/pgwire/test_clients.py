"""Real clients other than psycopg: psql, SQLAlchemy (+ pandas) and pgjdbc."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from tests.pgwire.conftest import ServerThread

PSQL = shutil.which("psql")
JAVA, JAVAC = shutil.which("java"), shutil.which("javac")
JARS = sorted(glob.glob("/usr/share/java/postgresql*.jar")) + sorted(
    glob.glob(os.path.expanduser("~/.m2/repository/org/postgresql/postgresql/*/postgresql-*.jar")))


def psql(pg: ServerThread, user: str, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": key, "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run([PSQL or "psql", "-X", "-h", "127.0.0.1", "-p", str(pg.port),
                           "-U", user, "-d", "bi", *args],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.skipif(PSQL is None, reason="psql is not installed")
def test_psql_meta_commands_and_queries(pg: ServerThread, account: tuple[str, str]) -> None:
    user, key = account
    out = psql(pg, user, key, "-c", r"\dt", "-c", r"\d visits", "-c", r"\l",
               "-c", r"\d+ visits", "-c", "SET dp.epsilon = 0.3",
               "-c", "SELECT city, COUNT(*) AS n FROM visits GROUP BY city ORDER BY city")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "public | clubs  | table" in text and "public | visits | table" in text
    assert 'Table "public.visits"' in text and "double precision" in text
    assert "privacy unit: may only be counted" in text  # \d+ shows the descriptions
    assert "Lille" in text and "(4 rows)" in text
    assert "differential privacy: spent epsilon=0.3" in out.stderr  # the NOTICE
    assert pg.spent(user) == pytest.approx(0.3)


@pytest.mark.skipif(PSQL is None, reason="psql is not installed")
def test_psql_errors_and_multi_statement_strings(pg: ServerThread, account: tuple[str, str]
                                                 ) -> None:
    user, key = account
    out = psql(pg, user, key, "-v", "ON_ERROR_STOP=1", "-c", "SELECT * FROM visits")
    assert out.returncode == 1
    assert "ERROR:  raw rows of a protected table cannot be released" in out.stderr
    out = psql(pg, user, key, "-c", "SET dp.epsilon = 0.2; SHOW dp.epsilon; SHOW dp.budget")
    assert out.returncode == 0 and "epsilon_remaining" in out.stdout
    out = psql(pg, "nobody", key, "-c", "SELECT 1")
    assert out.returncode != 0 and 'password authentication failed for user "nobody"' \
        in out.stderr


def test_sqlalchemy_reflection(pg: ServerThread, account: tuple[str, str]) -> None:
    engine = sa.create_engine(pg.url(*account))
    try:
        insp = sa.inspect(engine)
        assert set(insp.get_table_names()) == {"visits", "clubs"}
        assert "public" in insp.get_schema_names()
        cols = {c["name"]: c for c in insp.get_columns("visits")}
        assert list(cols)[:3] == ["visit_id", "user_id", "city"]
        assert isinstance(cols["amount"]["type"], sa.Float)
        assert isinstance(cols["age"]["type"], sa.BigInteger)
        assert isinstance(cols["visit_date"]["type"], sa.Date)
        assert cols["amount"]["comment"].startswith("bounds")
        assert insp.get_pk_constraint("visits")["constrained_columns"] == []
        assert insp.get_foreign_keys("visits") == []
        assert insp.get_indexes("visits") == []
        assert insp.get_unique_constraints("visits") == []
        assert insp.get_view_names() == []
        assert insp.has_table("visits") and not insp.has_table("nope")
        assert "privacy unit" in (insp.get_table_comment("visits")["text"] or "")
        table = sa.Table("visits", sa.MetaData(), autoload_with=engine)
        with engine.connect() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            assert isinstance(n, int)
    finally:
        engine.dispose()


def test_pandas_read_sql(pg: ServerThread, account: tuple[str, str]) -> None:
    engine = sa.create_engine(pg.url(*account))
    try:
        with engine.connect() as conn:
            df = pd.read_sql("SELECT city, AVG(amount) AS avg_amount FROM visits GROUP BY city",
                             conn)
            assert list(df.columns) == ["city", "avg_amount"] and len(df) == 4
            assert df["avg_amount"].dtype == "float64"
            df = pd.read_sql(sa.text("SELECT COUNT(*) AS n FROM visits WHERE age > :a"), conn,
                             params={"a": 40})
            assert df["n"].dtype == "int64"
    finally:
        engine.dispose()


@pytest.mark.skipif(JAVA is None or JAVAC is None, reason="no java/javac on this machine")
@pytest.mark.skipif(not JARS, reason="no PostgreSQL JDBC driver jar available offline "
                    "(/usr/share/java/postgresql*.jar or ~/.m2)")
def test_pgjdbc_metadata_queries_and_prepared_statements(pg: ServerThread, tmp_path: Path,
                                                         account: tuple[str, str]) -> None:
    user, key = account
    src = Path(__file__).parent / "java" / "JdbcCheck.java"
    subprocess.run([JAVAC or "javac", "-d", str(tmp_path), str(src)], check=True, timeout=120)
    out = subprocess.run([JAVA or "java", "-cp", f"{tmp_path}{os.pathsep}{JARS[-1]}",
                          "JdbcCheck", f"jdbc:postgresql://127.0.0.1:{pg.port}/bi", user, key],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "product PostgreSQL 16.4" in lines
    assert {"schema public", "schema information_schema"} <= set(lines)
    assert any(line.startswith("table visits private table") for line in lines)
    assert "column amount float8 8" in lines and "column city text 12" in lines
    assert not any(line.startswith(("pk ", "fk ", "ek ", "index ")) for line in lines)
    assert "types true" in lines and "tabletype TABLE" in lines
    assert {line for line in lines if line.startswith("tabpriv")} == {"tabpriv SELECT"}
    assert sum(line.startswith("row ") for line in lines) == 4
    prepared = {line.split()[-1] for line in lines if line.startswith("prepared ")}
    assert len(prepared) == 2  # two distinct queries, each answered once then cached
    assert any(line.startswith("error 42000") for line in lines)
    assert "fetched 4" in lines  # setFetchSize(2): portal suspension, then the rest
