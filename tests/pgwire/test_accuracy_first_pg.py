"""``SET dp.ci95 = 50`` over the PostgreSQL wire (psycopg 3, real server): accuracy-first
queries, and their precedence with ``dp.epsilon`` (the later SET wins; RESET dp.ci95 goes
back to dp.epsilon)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from gateway.query.accuracy_first import choose
from tests.pgwire.conftest import ServerThread

SQL = "SELECT city, COUNT(*) AS n FROM visits GROUP BY city ORDER BY city"


def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True)


def chosen(pg: ServerThread, sql: str, target: float) -> float:
    return choose(pg.gateway, sql, target, None, None, dialect="postgres").epsilon


def test_set_ci95_spends_the_chosen_epsilon(pg: ServerThread,
                                            account: tuple[str, str]) -> None:
    name, key = account
    eps = chosen(pg, SQL, 20)
    notices: list[str] = []
    with connect(pg.dsn(name, key)) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        assert conn.execute("SHOW dp.ci95").fetchone() == ("none",)
        conn.execute("SET dp.ci95 = 20")
        assert conn.execute("SHOW dp.ci95").fetchone() == ("20",)
        conn.execute("SET dp.report = 'ci95'")
        rows = conn.execute(SQL).fetchall()
        assert len(rows) == 4 and all(r[2] <= 20 for r in rows)
        assert pg.spent(name) == pytest.approx(eps)
        assert any(f"epsilon={eps:g} " in n and "binding column 'n'" in n for n in notices)
        # a repeat is the cached answer (same ε), free
        assert conn.execute(SQL).fetchall() == rows
        assert pg.spent(name) == pytest.approx(eps)
        # the extended protocol too
        assert conn.execute(SQL.replace("GROUP BY", "WHERE age > %s GROUP BY"),
                            [30]).fetchall()
        assert pg.spent(name) == pytest.approx(2 * eps)
        plan = [r[0] for r in conn.execute(f"EXPLAIN {SQL}").fetchall()]
        assert plan[0].startswith(f"Differentially private query: epsilon={eps:.6g} ")
        assert any("accuracy-first" in line for line in plan)


def test_the_later_of_dp_epsilon_and_dp_ci95_wins(pg: ServerThread,
                                                  account: tuple[str, str]) -> None:
    name, key = account
    sql = SQL.replace("GROUP BY", "WHERE amount > 10 GROUP BY")
    with connect(pg.dsn(name, key)) as conn:
        conn.execute("SET dp.epsilon = 0.3")
        conn.execute("SET dp.ci95 = 25")
        conn.execute(sql)
        spent = chosen(pg, sql, 25)
        assert pg.spent(name) == pytest.approx(spent)
        conn.execute("RESET dp.ci95")  # back to the session's dp.epsilon
        assert conn.execute("SHOW dp.ci95").fetchone() == ("none",)
        conn.execute(sql)
        assert pg.spent(name) == pytest.approx(spent + 0.3)
        conn.execute("SET dp.ci95 = 25")
        conn.execute("SET dp.epsilon = 0.4")  # an ε set later ends accuracy-first
        assert conn.execute("SHOW dp.ci95").fetchone() == ("none",)
        conn.execute(sql)
        assert pg.spent(name) == pytest.approx(spent + 0.7)
        conn.execute("SET dp.ci95 TO 25")
        conn.execute(sql)  # the first answer again: cached
        conn.execute("SET dp.ci95 = none")
        conn.execute(sql)  # dp.epsilon = 0.4 again: cached
        assert pg.spent(name) == pytest.approx(spent + 0.7)


def test_transactions_and_startup_options(pg: ServerThread, account: tuple[str, str]) -> None:
    name, key = account
    sql = SQL.replace("GROUP BY", "WHERE amount > 20 GROUP BY")
    with connect(pg.dsn(name, key, options="-c dp.ci95=30")) as conn:
        assert conn.execute("SHOW dp.ci95").fetchone() == ("30",)
        conn.execute(sql)
        assert pg.spent(name) == pytest.approx(chosen(pg, sql, 30))
        conn.execute("BEGIN")
        conn.execute("SET LOCAL dp.epsilon = 0.2")  # only for this transaction
        assert conn.execute("SHOW dp.ci95").fetchone() == ("none",)
        conn.execute("COMMIT")
        assert conn.execute("SHOW dp.ci95").fetchone() == ("30",)
    with connect(pg.dsn(name, key, options="-c dp.ci95=30 -c dp.epsilon=0.2")) as conn:
        assert conn.execute("SHOW dp.ci95").fetchone() == ("none",)  # the later one wins


def test_bad_targets_and_refusals_are_errors(pg: ServerThread,
                                             account: tuple[str, str]) -> None:
    name, key = account
    with connect(pg.dsn(name, key)) as conn:
        for bad in ("-1", "0", "'abc'", "'nan'"):
            with pytest.raises(errors.InvalidParameterValue, match=r"dp\.ci95"):
                conn.execute(f"SET dp.ci95 = {bad}")
        conn.execute("SET dp.ci95 = 5")
        with pytest.raises(psycopg.Error) as e:
            conn.execute("SELECT MEDIAN(age) AS m FROM visits")
        assert e.value.sqlstate == "42000" and "quantile" in str(e.value)
        with pytest.raises(psycopg.Error) as e:
            conn.execute("SELECT SUM(amount) AS s FROM visits")
        assert e.value.sqlstate == "42000" and "more than the remaining budget" in str(e.value)
        assert pg.spent(name) == 0
