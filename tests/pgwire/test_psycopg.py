"""psycopg 3 against a real PgWireServer: protocol, types, transactions, budget."""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import threading

import psycopg
import pytest
from psycopg import errors, pq

from tests.pgwire.conftest import ServerThread, run_client

COUNT = "SELECT COUNT(*) AS n FROM visits"
_SALT = itertools.count(1)


def fresh_count() -> str:
    """A data query no other test asks (the answer cache is shared by all analysts)."""
    return f"SELECT COUNT(*) AS n FROM visits WHERE amount <> {1000 + next(_SALT)}"


def connect(dsn: str, **kw: object) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, **kw)  # type: ignore[arg-type]


def test_startup_reports_postgres_parameters(dsn: str) -> None:
    with connect(dsn, application_name="pytest-app") as conn:
        p = conn.info.parameter_status
        assert p("server_version") == "16.4"
        assert conn.info.server_version == 160004
        assert p("server_encoding") == "UTF8" and p("client_encoding") == "UTF8"
        assert p("DateStyle").startswith("ISO")
        assert p("integer_datetimes") == "on" and p("standard_conforming_strings") == "on"
        assert p("TimeZone") and p("application_name") == "pytest-app"
        assert conn.info.backend_pid > 0
        assert conn.execute("SELECT current_user, current_database()").fetchone()[0] \
            == conn.info.user


def test_data_query_is_noised_charged_and_typed(pg: ServerThread, account: tuple[str, str]
                                                ) -> None:
    name, key = account
    notices: list[str] = []
    with connect(pg.dsn(name, key)) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        cur = conn.execute(
            "SELECT city, COUNT(*) AS n, AVG(amount) AS avg_amount, "
            "ROUND(AVG(amount)::numeric, 2) AS r, converted "
            "FROM visits GROUP BY city, converted ORDER BY city")
        assert [d.name for d in cur.description] == ["city", "n", "avg_amount", "r",
                                                    "converted"]
        assert [d.type_code for d in cur.description] == [25, 20, 701, 1700, 16]
        rows = cur.fetchall()
        assert {r[0] for r in rows} == {"Paris", "Lyon", "Nice", "Lille"}
        assert all(isinstance(r[1], int) and isinstance(r[3], decimal.Decimal) for r in rows)
        assert pg.spent(name) == pytest.approx(0.5)
        assert any("spent epsilon=0.5" in n for n in notices)
        cur = conn.execute("SELECT visit_date, COUNT(*) FROM visits "
                           "WHERE visit_date < DATE '2024-01-05' GROUP BY visit_date")
        assert cur.description[0].type_code == 1082
        assert all(isinstance(r[0], dt.date) for r in cur.fetchall())


def test_simple_and_extended_protocol_give_the_same_cached_answer(pg: ServerThread,
                                                                   account: tuple[str, str]
                                                                   ) -> None:
    name, key = account
    sql = fresh_count()
    with connect(pg.dsn(name, key)) as conn:
        extended = conn.execute(sql).fetchone()
        simple = psycopg.ClientCursor(conn).execute(sql).fetchone()
        assert extended == simple
        res = conn.pgconn.exec_(sql.encode())
        assert res.status == pq.ExecStatus.TUPLES_OK
        assert int(res.get_value(0, 0)) == extended[0]
    assert pg.spent(name) == pytest.approx(0.5)  # one charge, then the cache


@pytest.mark.parametrize("binary", [False, True])
def test_parameters_text_and_binary(pg: ServerThread, account: tuple[str, str],
                                    binary: bool) -> None:
    with connect(pg.dsn(*account)) as conn:
        cur = conn.cursor(binary=binary)
        cur.execute("SELECT COUNT(*) AS n, SUM(amount) AS s FROM visits "
                    "WHERE age > %s AND city = %s AND amount < %s AND visit_date >= %s "
                    "AND converted = %s",
                    [20, "Paris", 99.5, dt.date(2024, 2, 1), False])
        n, s = cur.fetchone()
        assert isinstance(n, int) and isinstance(s, float)
        cur.execute("SELECT %s::int + 1, %s::text, %s::date, %s::float8, %s::bool, "
                    "%s::numeric", [41, "o'k", dt.date(2024, 3, 1), 0.25, True,
                                    decimal.Decimal("1.50")])
        assert cur.fetchone() == (42, "o'k", dt.date(2024, 3, 1), 0.25, True,
                                  decimal.Decimal("1.50"))


def test_binary_results_decode_like_text(dsn: str) -> None:
    with connect(dsn) as conn:
        sql = ("SELECT city, COUNT(*), AVG(amount), MAX(visit_date) AS last FROM visits "
               "GROUP BY city ORDER BY city")
        text = conn.cursor().execute(sql).fetchall()
        binary = conn.cursor(binary=True).execute(sql).fetchall()
        assert text == binary  # same cached answer, decoded from both formats


def test_prepared_statements_charge_once_per_distinct_query(pg: ServerThread,
                                                            account: tuple[str, str]) -> None:
    name, key = account
    with connect(pg.dsn(name, key), prepare_threshold=0) as conn:
        sql = "SELECT COUNT(*) FROM visits WHERE amount <> %s"
        answers = {conn.execute(sql, [-71.5], prepare=True).fetchone()[0] for _ in range(3)}
        assert len(answers) == 1
        conn.execute(sql, [-72.5], prepare=True)
    assert pg.spent(name) == pytest.approx(1.0)


_DESCRIBE = """
import json, sys
import psycopg
from psycopg import pq
conn = psycopg.connect(sys.argv[1], autocommit=True)
pgc, out = conn.pgconn, {}
pgc.prepare(b"s1", b"SELECT city, AVG(amount) AS a FROM visits GROUP BY city")
res = pgc.describe_prepared(b"s1")
out["ok"] = res.status == pq.ExecStatus.COMMAND_OK
out["names"] = [res.fname(i).decode() for i in range(res.nfields)]
out["types"] = [res.ftype(i) for i in range(res.nfields)]
pgc.prepare(b"s2", b"SELECT * FROM visits")
res = pgc.describe_prepared(b"s2")
out["rejected"] = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
out["after"] = conn.execute("SELECT 1").fetchone()[0]
print(json.dumps(out))
"""


def test_describe_is_a_dry_run(pg: ServerThread, account: tuple[str, str]) -> None:
    name, key = account
    out = run_client(_DESCRIBE, pg.dsn(name, key))
    assert out == {"ok": True, "names": ["city", "a"], "types": [25, 701],
                   "rejected": "42000", "after": 1}  # rejected at Describe, for free
    assert pg.spent(name) == 0.0


def test_transactions_rollback_never_refunds(pg: ServerThread, account: tuple[str, str]
                                             ) -> None:
    name, key = account
    with psycopg.connect(pg.dsn(name, key)) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("SET dp.epsilon = 0.3")
        conn.execute(COUNT).fetchone()
        assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
        conn.rollback()
        assert pg.spent(name) == pytest.approx(0.3)
        assert any("not refunded" in n for n in notices)
        # dp.* settings are session-level (DESIGN §1.5): a ROLLBACK does not undo them,
        # so the next query is not silently charged the default
        assert conn.execute("SHOW dp.epsilon").fetchone()[0] == "0.3"
        conn.execute("SET application_name = 'inside'")
        conn.rollback()
        assert conn.execute("SHOW application_name").fetchone()[0] != "inside"
        conn.rollback()
        conn.execute("SET dp.epsilon = 0.5")
        conn.commit()
        conn.rollback()
        with pytest.raises(errors.SyntaxErrorOrAccessRuleViolation):
            conn.execute("SELECT * FROM visits")
        assert conn.info.transaction_status == pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.execute("SAVEPOINT a")
        conn.execute("SET LOCAL dp.epsilon = 0.2")
        assert conn.execute("SHOW dp.epsilon").fetchone()[0] == "0.2"
        conn.execute("ROLLBACK TO SAVEPOINT a")
        assert conn.execute("SHOW dp.epsilon").fetchone()[0] == "0.5"
        conn.execute("RELEASE SAVEPOINT a")
        conn.commit()
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE


@pytest.mark.parametrize("statement", [
    "SET session_authorization = 'bob'", "SET session_authorization TO bob",
    "SET SESSION AUTHORIZATION bob", "SET role = 'bob'", "SET ROLE bob",
    "BEGIN; SET LOCAL session_authorization = 'bob'"])
def test_the_session_identity_cannot_be_changed(pg: ServerThread, account: tuple[str, str],
                                                statement: str) -> None:
    """Who the session is comes from authentication only: every spelling is refused."""
    name, key = account
    with psycopg.connect(pg.dsn(name, key), autocommit=True) as conn:
        for part in statement.split("; ")[:-1]:
            conn.execute(part)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(statement.split("; ")[-1])
        conn.execute("ROLLBACK")
        assert conn.execute("SHOW session_authorization").fetchone()[0] == name


def test_set_and_show_and_startup_options(pg: ServerThread, account: tuple[str, str]) -> None:
    name, key = account
    with connect(pg.dsn(name, key, options="-c dp.epsilon=0.25 -c search_path=public")
                 ) as conn:
        assert conn.execute("SHOW dp.epsilon").fetchone() == ("0.25",)
        assert conn.execute("SHOW search_path").fetchone() == ("public",)
        conn.execute(COUNT).fetchone()
        assert pg.spent(name) == pytest.approx(0.25)
        with pytest.raises(errors.InvalidParameterValue):
            conn.execute("SET dp.epsilon = -1")
        with pytest.raises(errors.InvalidParameterValue):
            conn.execute("SET dp.delta = 2")
        conn.execute("SET dp.epsilon TO 0.1")
        conn.execute("SET TIME ZONE 'Europe/Paris'")
        assert conn.info.parameter_status("TimeZone") == "Europe/Paris"
        assert conn.execute("SHOW TIME ZONE").fetchone() == ("Europe/Paris",)
        assert conn.execute("SELECT current_setting('dp.epsilon')").fetchone() == ("0.1",)
        budget = conn.execute("SHOW dp.budget")
        assert [d.name for d in budget.description][:2] == ["epsilon_remaining",
                                                            "delta_remaining"]
        assert budget.fetchone()[0] == pytest.approx(20.0 - 0.25)
        conn.execute("RESET ALL")
        assert conn.execute("SHOW dp.epsilon").fetchone() == ("0.25",)
        with pytest.raises(errors.UndefinedObject):
            conn.execute("SHOW no_such_setting")


def test_budget_exhausted_is_42501_and_the_connection_stays_usable(pg: ServerThread) -> None:
    name, key = pg.analyst(epsilon=0.6)
    first, second = fresh_count(), fresh_count()
    with connect(pg.dsn(name, key)) as conn:
        conn.execute(first).fetchone()  # 0.5 of 0.6
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute(second)
        assert info.value.sqlstate == "42501"
        message = info.value.diag.message_primary
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute(first).fetchone()  # a repeat is still served, from the cache
    from gateway.errors import BudgetExceeded

    with pytest.raises(BudgetExceeded) as direct:  # the HTTP API sends this same detail
        pg.gateway.query_as(pg.gateway.analyst(name), second, dialect="postgres")
    assert message == direct.value.detail
    with connect(pg.dsn(name, key)) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(second)  # reconnecting does not reset it


@pytest.mark.parametrize("user_known", [True, False])
def test_wrong_password_is_refused(pg: ServerThread, user_known: bool) -> None:
    name, key = pg.analyst()
    user = name if user_known else "nobody"
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(pg.dsn(user, key + "x"))
    assert f'password authentication failed for user "{user}"' in str(info.value)
    assert "28P01" in str(info.value) or info.value.sqlstate in (None, "28P01")


def test_errors_keep_the_connection_usable(dsn: str) -> None:
    with connect(dsn) as conn:
        for sql, err in [("SELEC 1", errors.SyntaxError),
                         ("SELECT * FROM nope", errors.UndefinedTable),
                         ("DELETE FROM visits", errors.SyntaxErrorOrAccessRuleViolation),
                         ("SELECT COUNT(*) FROM visits GROUP BY user_id",
                          errors.SyntaxErrorOrAccessRuleViolation),
                         ("PREPARE p AS SELECT 1", errors.FeatureNotSupported)]:
            with pytest.raises(err):
                conn.execute(sql)
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_multi_statement_simple_query(pg: ServerThread, account: tuple[str, str]) -> None:
    name, key = account
    with connect(pg.dsn(name, key)) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute(f"SET dp.epsilon = 0.1; {fresh_count()}; SHOW dp.epsilon")
        assert cur.statusmessage == "SET"  # one result per statement
        assert cur.nextset() and cur.statusmessage == "SELECT 1"
        assert cur.nextset() and cur.fetchone() == ("0.1",)
        assert pg.spent(name) == pytest.approx(0.1)
        res = conn.pgconn.exec_(b"SELECT 1; SELECT * FROM visits; SELECT 2")
        assert res.status == pq.ExecStatus.FATAL_ERROR  # the error stops the string
        assert conn.execute("SELECT 3").fetchone() == (3,)


def test_empty_probe_queries_cost_nothing(pg: ServerThread, account: tuple[str, str]) -> None:
    name, key = account
    with connect(pg.dsn(name, key)) as conn:
        cur = conn.execute('SELECT * FROM "public"."visits" WHERE 1 = 0')
        assert [d.name for d in cur.description][:3] == ["visit_id", "user_id", "city"]
        assert cur.fetchall() == []
        assert conn.execute("SELECT TRUE FROM visits WHERE 1 <> 1 LIMIT 0").fetchall() == []
    assert pg.spent(name) == 0.0


def test_cursors_declare_fetch_close(pg: ServerThread, account: tuple[str, str]) -> None:
    name, key = account
    with psycopg.connect(pg.dsn(name, key)) as conn:
        conn.execute("DECLARE c CURSOR FOR SELECT city, COUNT(*) AS n FROM visits "
                     "WHERE amount <> -3.25 GROUP BY city ORDER BY city")
        first = conn.execute("FETCH 2 FROM c").fetchall()
        rest = conn.execute("FETCH ALL IN c").fetchall()
        assert [r[0] for r in first + rest] == ["Lille", "Lyon", "Nice", "Paris"]
        assert conn.execute("FETCH NEXT FROM c").fetchall() == []
        conn.execute("MOVE ABSOLUTE 0 IN c")
        assert conn.execute("FETCH FORWARD 1 FROM c").fetchall() == first[:1]
        conn.execute("CLOSE c")
        conn.commit()
        with server_side(conn) as named:
            named.execute("SELECT device, COUNT(*) FROM visits WHERE amount <> -3.5 "
                          "GROUP BY device")
            assert len(named.fetchmany(2)) == 2
        conn.commit()
    assert pg.spent(name) == pytest.approx(1.0)
    with connect(pg.dsn(name, key)) as conn, pytest.raises(errors.NoActiveSqlTransaction):
        conn.execute("DECLARE d CURSOR FOR SELECT 1")


def server_side(conn: psycopg.Connection) -> psycopg.ServerCursor:
    return conn.cursor(name="named_cursor")


def test_copy_to_stdout(dsn: str) -> None:
    with connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy("COPY (SELECT city, COUNT(*) FROM visits GROUP BY city) TO STDOUT") as cp:
            rows = list(cp.rows())
        assert {r[0] for r in rows} == {"Paris", "Lyon", "Nice", "Lille"}
        with cur.copy("COPY (SELECT city FROM clubs ORDER BY city) TO STDOUT (FORMAT csv, "
                      "HEADER)") as cp:
            data = b"".join(bytes(b) for b in cp)
        assert data.decode().splitlines() == ["city", "Lille", "Lyon", "Nice", "Paris"]


def test_discard_all_and_deallocate(dsn: str) -> None:
    with connect(dsn, prepare_threshold=0) as conn:
        conn.execute("SET dp.epsilon = 0.2")
        conn.execute("SELECT 1", prepare=True)
        conn.execute("DISCARD ALL")
        assert conn.execute("SHOW dp.epsilon").fetchone() == ("0.5",)
        conn.execute("DEALLOCATE ALL")
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_explain_charges_nothing(pg: ServerThread, account: tuple[str, str]) -> None:
    name, key = account
    with connect(pg.dsn(name, key)) as conn:
        lines = [r[0] for r in conn.execute(f"EXPLAIN {fresh_count()}").fetchall()]
        assert "epsilon=0.5" in lines[0]
        assert any("Rewritten" in line for line in lines)
    assert pg.spent(name) == 0.0


_CANCEL = """
import json, sys, threading, time
import psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
threading.Timer(0.5, conn.cancel).start()
started, state = time.monotonic(), None
try:
    conn.execute("SELECT count(*) FROM pg_attribute a, pg_attribute b, pg_attribute c, "
                 "pg_attribute d")
except psycopg.Error as e:
    state = e.sqlstate
print(json.dumps({"state": state, "seconds": time.monotonic() - started,
                  "after": conn.execute("SELECT 1").fetchone()[0]}))
"""


def test_cancel_request_stops_a_long_catalog_query(dsn: str) -> None:
    out = run_client(_CANCEL, dsn)
    assert out["state"] == "57014" and out["seconds"] < 8 and out["after"] == 1


def test_ssl_and_gss_requests_are_declined(dsn: str) -> None:
    with connect(dsn + " sslmode=prefer gssencmode=prefer") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn + " sslmode=require")


def test_many_concurrent_connections(pg: ServerThread, account: tuple[str, str]) -> None:
    name, key = account
    sql = fresh_count()
    with connect(pg.dsn(name, key)) as conn:
        expected = conn.execute(sql).fetchone()
    results: list[object] = []

    def client() -> None:
        try:
            with connect(pg.dsn(name, key)) as c:
                results.append((c.execute("SELECT 1").fetchone(), c.execute(sql).fetchone()))
        except Exception as e:  # collected and asserted below
            results.append(e)

    threads = [threading.Thread(target=client) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [((1,), expected)] * 32
    assert pg.spent(name) == pytest.approx(0.5)
