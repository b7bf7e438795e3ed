"""Adversarial data: accepted queries over hostile values must still answer.

A differentially private answer may depend on the data only through noisy
numbers.  An exception at execution, a NaN or an infinity in a released value, or
a refusal that depends on the rows would each be a channel the noise does not
cover.  So hypothesis builds small tables full of NULL, NaN, ±inf, ±1e308, the
extreme 64-bit integers, empty and odd strings, NULL units, one unit with
thousands of rows and dates at the ends of DuckDB's range; a policy declares
bounds over them; and a set of accepted query templates must run on every such
table with finite results in the range the bounds and the noise allow.

The engine itself is checked too: its connection is locked (no file, network,
extension or setting can be reached even by SQL that bypasses the planner) and
its errors are never shown verbatim.
"""

from __future__ import annotations

import functools
import math
import numbers
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
import sqlglot
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway import Gateway
from gateway.errors import BackendError, GatewayError, QueryRejected
from tests.support import read_permit

M = 3  # max_rows_per_unit of the adversarial policy
INT_BOUNDS = (-1000, 1000)
FLOAT_BOUNDS = (-10.0, 10.0)
TEXT_VALUES = ["a", "b", "", "é"]
DATE_BOUNDS = ("2024-01-01", "2024-03-31")  # 91 days: a small public domain
HEAVY_ROWS = 2000

INT_SPECIAL = [0, 1, -1, 999, 1000, 1001, -1000, -1001, 2**31 - 1, -(2**31), 2**53 + 1,
               2**63 - 1, -(2**63)]
FLOAT_SPECIAL = [0.0, -0.0, 1.5, -1.5, 10.0, 10.5, -10.5, math.nan, math.inf, -math.inf,
                 1e308, -1e308, 1.7976931348623157e308, 5e-324, 1e-300]
TEXT_SPECIAL = ["", "a", "b", "é", "e\u0301", "日本語", "😀", "a" * 2000, "NULL", "null",
                "'; DROP TABLE t; --", "a\x00b", " a", "A", "\n", "1", "2024-01-01"]
DATE_SPECIAL = ["2024-01-01", "2024-03-31", "2024-02-29", "2023-12-31", "2024-04-01",
                "1970-01-01", "0001-01-01", "9999-12-31",
                "5881580-07-10", "5877641-06-25 (BC)"]  # DuckDB's largest and smallest DATE


# -- building a table and its policy ------------------------------------------------------

Row = tuple[int | None, int | None, float | None, str | None, bool | None, str | None]


def write_table(folder: Path, rows: list[Row], heavy: int) -> Path:
    """Write rows (date as text, so DuckDB's whole range is reachable) to parquet."""
    path = folder / "t.parquet"
    con = duckdb.connect()
    try:
        con.execute("CREATE TABLE raw (uid BIGINT, i BIGINT, f DOUBLE, s VARCHAR, b BOOLEAN, "
                    "ds VARCHAR)")
        if rows:
            con.executemany("INSERT INTO raw VALUES (?, ?, ?, ?, ?, ?)", rows)
        if heavy:
            # One unit with thousands of rows, values all over the place.
            con.execute(
                "INSERT INTO raw SELECT 1, (range % 7) * 400 - 1200, range / 7.0 - 100, "
                "CASE range % 3 WHEN 0 THEN 'a' WHEN 1 THEN 'b' ELSE 'zz' END, range % 2 = 0, "
                f"CAST(DATE '2024-01-01' + CAST(range % 120 AS INTEGER) AS VARCHAR) "
                f"FROM range({int(heavy)})")
        con.execute(f"COPY (SELECT uid, i, f, s, b, CAST(ds AS DATE) AS d FROM raw) "
                    f"TO '{path}' (FORMAT parquet)")
    finally:
        con.close()
    return path


def write_policy(folder: Path, source: Path, *, date_bounds: tuple[str, str] | None = DATE_BOUNDS,
                 int_bounds: tuple[int, int] = INT_BOUNDS) -> Path:
    d: dict[str, Any] = {"type": "date"}
    if date_bounds is not None:
        d["bounds"] = list(date_bounds)
    policy = {
        "dataset": "adversarial",
        "tables": {"t": {
            "source": str(source), "privacy_unit": "uid",
            "max_rows_per_unit": M, "max_groups_per_unit": 2,
            "columns": {
                "uid": {"type": "int", "role": "privacy_unit"},
                "i": {"type": "int", "bounds": list(int_bounds)},
                "f": {"type": "float", "bounds": list(FLOAT_BOUNDS)},
                "s": {"type": "text", "public_values": TEXT_VALUES},
                "b": {"type": "bool"},
                "d": d,
            }}},
        "budget": {"dataset": {"epsilon": 1e12, "delta": 0.1},
                   "per_analyst": {"epsilon": 1e12, "delta": 0.1}},
        # Date keys over 31 years (11,323 days) are released from their public domain,
        # as these tests expect, not switched to partition selection.
        "limits": {"query_timeout_s": 30, "max_public_groups": 100_000},
    }
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False, allow_unicode=True))
    return path


@dataclass(frozen=True)
class Table:
    rows: list[Row]
    heavy: int

    @property
    def units(self) -> int:
        ids = {r[0] for r in self.rows if r[0] is not None}
        if self.heavy:
            ids.add(1)
        return len(ids)


def open_gateway(folder: Path, table: Table, **policy: Any) -> Gateway:
    source = write_table(folder, table.rows, table.heavy)
    return Gateway.open(write_policy(folder, source, **policy), state=folder / "state.db")


# -- query templates --------------------------------------------------------------------

@dataclass(frozen=True)
class Template:
    sql: str
    delta: float = 0.0
    check: Callable[[Any, Table], None] | None = None


def _col(result: Any, name: str) -> list[Any]:
    i = [c.name for c in result.columns].index(name)
    return [row[i] for row in result.rows]


def _slack(result: Any, name: str) -> float:
    """Ten times the 95% half-width of the column's noise (e^-30 odds for Laplace), and
    never less than 40 noise scales: a discrete Laplace of scale 0.15 has a 95%
    half-width of 0 but is 1 about once in 1,500 draws (40 scales: odds e^-40)."""
    for acc in result.accuracy:
        if acc.column == name and acc.ci95 is not None:
            return max(10.0 * acc.ci95, 40.0 * (acc.noise_scale or 0.0))
    return 0.0


def in_range(name: str, lo: Callable[[Table], float], hi: Callable[[Table], float],
             noisy: bool = True) -> Callable[[Any, Table], None]:
    def check(result: Any, table: Table) -> None:
        slack = _slack(result, name) if noisy else 0.0
        for v in _col(result, name):
            if v is None:
                continue
            assert lo(table) - slack - 1e-9 <= v <= hi(table) + slack + 1e-9, \
                (name, v, lo(table), hi(table), slack)
    return check


def all_of(*checks: Callable[[Any, Table], None]) -> Callable[[Any, Table], None]:
    def check(result: Any, table: Table) -> None:
        for c in checks:
            c(result, table)
    return check


def keys_are(name: str, expected: list[Any]) -> Callable[[Any, Table], None]:
    def check(result: Any, table: Table) -> None:
        assert sorted(_col(result, name), key=repr) == sorted(expected, key=repr)
    return check


def keys_within(name: str, lo: float, hi: float) -> Callable[[Any, Table], None]:
    def check(result: Any, table: Table) -> None:
        for k in _col(result, name):
            assert k is None or lo <= k <= hi, k
    return check


def _rows(t: Table) -> float:
    return float(t.units * M)


def _zero(t: Table) -> float:
    return 0.0


def _const(v: float) -> Callable[[Table], float]:
    return lambda t: v


HALF_F = (FLOAT_BOUNDS[1] - FLOAT_BOUNDS[0]) / 2

TEMPLATES: list[Template] = [
    Template("SELECT COUNT(*) AS n FROM t", check=in_range("n", _zero, _rows)),
    Template("SELECT COUNT(i) AS n, SUM(i) AS s, AVG(i) AS a FROM t",
             check=all_of(in_range("n", _zero, _rows),
                          in_range("s", lambda t: -_rows(t) * 1000, lambda t: _rows(t) * 1000),
                          in_range("a", _const(-1000), _const(1000), noisy=False))),
    Template("SELECT SUM(f) AS s, AVG(f) AS a, STDDEV(f) AS sd, VARIANCE(f) AS v, "
             "VAR_POP(f) AS vp FROM t",
             check=all_of(in_range("s", lambda t: -_rows(t) * 10, lambda t: _rows(t) * 10),
                          in_range("a", _const(-10), _const(10), noisy=False),
                          in_range("sd", _zero, _const(HALF_F * math.sqrt(2)), noisy=False),
                          in_range("v", _zero, _const(2 * HALF_F**2), noisy=False),
                          in_range("vp", _zero, _const(HALF_F**2), noisy=False))),
    Template("SELECT s, COUNT(*) AS n, AVG(f) AS a FROM t GROUP BY s",
             check=all_of(keys_are("s", TEXT_VALUES), in_range("n", _zero, _rows),
                          in_range("a", _const(-10), _const(10), noisy=False))),
    Template("SELECT b, SUM(i) AS total FROM t GROUP BY b",
             check=keys_are("b", [False, True])),
    Template("SELECT s, b, COUNT(*) AS n FROM t GROUP BY s, b",
             check=in_range("n", _zero, _rows)),
    Template("SELECT COUNT(DISTINCT uid) AS u FROM t",
             check=in_range("u", _zero, lambda t: float(t.units))),
    Template("SELECT COUNT(*) AS n FROM t WHERE f * 1e300 > 1 OR f / 1e-300 < -1",
             check=in_range("n", _zero, _rows)),
    Template("SELECT COUNT(*) AS n FROM t "
             "WHERE i * 9223372036854775807 > 1 OR i + 9223372036854775807 < 0 OR -i > 0",
             check=in_range("n", _zero, _rows)),
    Template("SELECT COUNT(*) AS n FROM t "
             "WHERE CAST(s AS INT) > 0 OR CAST(s AS DATE) > DATE '2024-01-01' "
             "OR CAST(f AS BIGINT) > 0 OR CAST(i AS TINYINT) < 0",
             check=in_range("n", _zero, _rows)),
    Template("SELECT SUM(CASE WHEN f > 0 THEN 1 WHEN f < 0 THEN -1 ELSE 0 END) AS sgn FROM t",
             check=in_range("sgn", lambda t: -_rows(t), _rows)),
    Template("SELECT SUM(COALESCE(f, 0)) AS s, SUM(COALESCE(i, -1000)) AS si FROM t",
             check=in_range("s", lambda t: -_rows(t) * 10, lambda t: _rows(t) * 10)),
    Template("SELECT date_trunc('month', d) AS m, COUNT(*) AS n FROM t GROUP BY 1",
             check=all_of(in_range("n", _zero, _rows),
                          lambda r, t: (len(r.rows) == 3) or pytest.fail(str(r.rows)))),
    Template("SELECT year(d) AS y, AVG(i) AS a FROM t GROUP BY 1",
             check=all_of(keys_are("y", [2024]),
                          in_range("a", _const(-1000), _const(1000), noisy=False))),
    Template("SELECT d AS day, COUNT(*) AS n FROM t GROUP BY 1",
             check=lambda r, t: (len(r.rows) == 91) or pytest.fail(str(len(r.rows)))),
    Template("SELECT COUNT(*) AS n FROM t WHERE d BETWEEN DATE '2024-01-15' AND "
             "DATE '2024-02-15' AND isfinite(f)", check=in_range("n", _zero, _rows)),
    Template("SELECT SUM(f / 3) AS s, SUM(i / 7) AS si, SUM(f / (ABS(i) + 1)) AS q FROM t",
             check=in_range("s", lambda t: -_rows(t) * 10 / 3, lambda t: _rows(t) * 10 / 3)),
    Template("SELECT SUM(i) / COUNT(*) AS ratio, SUM(f) * 1e308 AS big FROM t"),
    Template("SELECT i AS k, COUNT(*) AS n FROM t GROUP BY 1",
             check=all_of(keys_within("k", *INT_BOUNDS), in_range("n", _zero, _rows),
                          lambda r, t: (len(r.rows) == 2001) or pytest.fail(str(len(r.rows))))),
    Template("SELECT f AS k, COUNT(*) AS n FROM t GROUP BY 1", delta=1e-6,
             check=in_range("n", _zero, _rows)),
    Template("SELECT COUNT(*) AS n FROM t WHERE s LIKE '%a%' AND length(s) < 5 "
             "AND lower(s) = s AND s || 'x' <> 'x'", check=in_range("n", _zero, _rows)),
    Template("SELECT COUNT(*) FILTER (WHERE b) AS yes, COUNT(*) FILTER (WHERE NOT b) AS no, "
             "AVG(CASE WHEN b THEN 1 ELSE 0 END) AS rate FROM t",
             check=all_of(in_range("yes", _zero, _rows),
                          in_range("rate", _zero, _const(1.0), noisy=False))),
    Template("SELECT SUM(LEAST(GREATEST(f * 1e300, -5), 5)) AS s FROM t",
             check=in_range("s", lambda t: -_rows(t) * 5, lambda t: _rows(t) * 5)),
    Template("SELECT AVG(CAST(f AS BIGINT)) AS a, AVG(ROUND(f, 1)) AS r FROM t",
             check=in_range("a", _const(-10), _const(10), noisy=False)),
    Template("SELECT COUNT(*) AS n FROM t a JOIN t b ON a.uid = b.uid WHERE a.i = b.i",
             check=in_range("n", _zero, _rows)),
    Template("SELECT s, COUNT(*) AS n FROM t GROUP BY s HAVING COUNT(*) >= 0 ORDER BY n DESC "
             "LIMIT 2"),
]

PRIVATE_KEY_COLUMNS = {"k"}  # keys released by partition selection (may be any value)


def run_template(gw: Gateway, tpl: Template) -> tuple[str, Any]:
    """('ok', result) or (rule, None); anything else is raised."""
    try:
        return "ok", gw.query(tpl.sql, analyst="adv", epsilon=20.0, delta=tpl.delta)
    except QueryRejected as e:
        assert e.message and e.hint
        return e.rule, None


def check_result(tpl: Template, result: Any, table: Table) -> None:
    assert result.epsilon_spent > 0 or result.cached
    for row in result.rows:
        assert len(row) == len(result.columns)
        for col, v in zip(result.columns, row, strict=True):
            assert not isinstance(v, np.generic | np.ma.core.MaskedConstant), (col, type(v))
            if isinstance(v, numbers.Real) and not isinstance(v, bool) \
                    and col.name not in PRIVATE_KEY_COLUMNS:
                assert math.isfinite(v), (tpl.sql, col.name, v)
    if tpl.check is not None:
        tpl.check(result, table)


@functools.cache
def reference_outcomes() -> dict[str, str]:
    """How each template fares on an empty table: refusals must not depend on data."""
    with tempfile.TemporaryDirectory() as d, open_gateway(Path(d), Table([], 0)) as gw:
        return {tpl.sql: run_template(gw, tpl)[0] for tpl in TEMPLATES}


def test_templates_are_accepted_on_an_empty_table() -> None:
    outcomes = reference_outcomes()
    assert outcomes == {tpl.sql: "ok" for tpl in TEMPLATES}


# -- the property -----------------------------------------------------------------------

def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


ROWS = st.tuples(
    _maybe(st.one_of(st.integers(1, 6), st.sampled_from([0, -1, 2**63 - 1, -(2**63)]))),
    _maybe(st.one_of(st.sampled_from(INT_SPECIAL), st.integers(-(2**63), 2**63 - 1))),
    _maybe(st.one_of(st.sampled_from(FLOAT_SPECIAL), st.floats())),
    _maybe(st.one_of(st.sampled_from(TEXT_SPECIAL), st.text(max_size=12))),
    _maybe(st.booleans()),
    _maybe(st.sampled_from(DATE_SPECIAL)),
)
TABLES = st.builds(Table, st.lists(ROWS, max_size=25), st.sampled_from([0, 0, HEAVY_ROWS]))

EXTREME = Table(
    rows=[
        (2, 2**63 - 1, math.nan, "a\x00b", True, "5881580-07-10"),
        (2, -(2**63), math.inf, "日本語", None, "5877641-06-25 (BC)"),
        (3, None, -math.inf, "", False, "0001-01-01"),
        (3, 1001, 1e308, None, None, "9999-12-31"),
        (None, 5, 5.0, "a", True, "2024-02-01"),
        (2**63 - 1, -1001, -1e308, "é", False, None),
        (-(2**63), 0, -0.0, "b", True, "2024-03-31"),
        (4, None, None, None, None, None),
    ],
    heavy=HEAVY_ROWS,
)


@pytest.mark.slow
@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example])
@example(table=EXTREME)
@example(table=Table([], 0))
@given(table=TABLES)
def test_accepted_queries_survive_adversarial_data(table: Table) -> None:
    expected = reference_outcomes()
    with tempfile.TemporaryDirectory() as d, open_gateway(Path(d), table) as gw:
        for tpl in TEMPLATES:
            try:
                outcome, result = run_template(gw, tpl)
            except GatewayError as e:  # BackendError & co: execution failed on this data
                pytest.fail(f"{type(e).__name__} on {tpl.sql!r}: {e.message}")
            assert outcome == expected[tpl.sql], \
                f"{tpl.sql!r} was {outcome} here but {expected[tpl.sql]} on an empty table"
            if result is not None:
                check_result(tpl, result, table)


# -- extreme values in keys and bounds --------------------------------------------------------

@pytest.fixture
def extreme_dates(tmp_path: Path) -> Iterator[Gateway]:
    """Unit 1 has ordinary dates, unit 2 one at each end of DuckDB's DATE range; the
    policy's date bounds span more than 1000 days, so no IN list filters the key."""
    table = Table(rows=[(1, 1, 1.0, "a", True, "2024-02-01"), (1, 2, 2.0, "b", False, "2024-02-02"),
                        (2, 3, 3.0, "a", True, "5881580-07-10"),
                        (2, 4, 4.0, "b", True, "5877641-06-25 (BC)")], heavy=0)
    with open_gateway(tmp_path, table, date_bounds=("2000-01-01", "2030-12-31")) as gw:
        yield gw


def test_extreme_dates_in_a_group_key_do_not_change_the_outcome(extreme_dates: Gateway) -> None:
    outcomes = []
    for uid in (1, 2):
        sql = f"SELECT d AS day, COUNT(*) AS n FROM t WHERE uid = {uid} GROUP BY 1"
        try:
            extreme_dates.query(sql, analyst="adv", epsilon=1.0)
            outcomes.append("ok")
        except BackendError:
            outcomes.append("backend_error")
    assert outcomes == ["ok", "ok"]


def test_selected_keys_beyond_year_9999_are_released(tmp_path: Path) -> None:
    source = tmp_path / "far.parquet"
    con = duckdb.connect()
    try:
        con.execute(
            "COPY (SELECT range AS uid, TIMESTAMP '294000-01-01 00:00:00' AS ts FROM range(60) "
            "UNION ALL SELECT 100 + range, TIMESTAMP '2024-05-01 10:00:00' FROM range(60)) "
            f"TO '{source}' (FORMAT parquet)")
    finally:
        con.close()
    policy = {"dataset": "far", "tables": {"t": {
        "source": str(source), "privacy_unit": "uid",
        "columns": {"uid": {"type": "int", "role": "privacy_unit"},
                    "ts": {"type": "timestamp"}}}},
        "budget": {"dataset": {"epsilon": 1e9, "delta": 0.1},
                   "per_analyst": {"epsilon": 1e9, "delta": 0.1}}}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    with Gateway.open(path, state=tmp_path / "state.db") as gw:
        r = gw.query("SELECT date_trunc('year', ts) AS y, COUNT(*) AS n FROM t GROUP BY 1",
                     analyst="adv", epsilon=20.0, delta=1e-3)
        # Keys outside years 1-9999 become NULL row by row (the engine could not hand
        # them over otherwise); both partitions are released.
        assert len(r.rows) == 2 and None in [row[0] for row in r.rows]


# -- the engine connection itself -----------------------------------------------------------

@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("locked")
    table = Table(rows=[(1, 1, 1.0, "a", True, "2024-01-02"), (2, 2, 2.0, "b", False, None)],
                  heavy=0)
    with open_gateway(folder, table) as gw:
        yield gw


SECRET_FILE_LINE = "root:"

BYPASS = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd', header = false)",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_csv('https://example.com/x.csv')",
    "SELECT * FROM read_parquet('{source}')",
    "COPY t TO '{folder}/leak.csv'",
    "COPY (SELECT 1) TO '{folder}/leak.csv'",
    "ATTACH '{folder}/x.db' AS x",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "SET memory_limit = '100GB'",
    "SELECT getenv('HOME')",
]


@pytest.mark.parametrize("sql", BYPASS)
def test_engine_is_locked_even_around_the_planner(locked: Gateway, sql: str, tmp_path: Path
                                                  ) -> None:
    source = locked.policy.resolve_path(locked.policy.tables["t"].source)
    text = sql.format(source=source, folder=tmp_path)
    tree = sqlglot.parse_one(text, dialect="duckdb")
    with pytest.raises(BackendError) as err:
        # With a committed charge, so the SQL reaches the engine's own lock.
        locked.executor.execute(tree, permit=read_permit(locked))
    for part in (err.value.message, err.value.hint or "", err.value.detail):
        assert SECRET_FILE_LINE not in part and "/etc" not in part and "Error:" not in part
        assert str(tmp_path) not in part
    assert not list(tmp_path.iterdir()), "the engine wrote a file"
    settings_now = locked.executor.execute(sqlglot.parse_one(
        "SELECT current_setting('enable_external_access') AS ext, "
        "current_setting('lock_configuration') AS locked", dialect="duckdb")).rows()
    assert [(bool(a), bool(b)) for a, b in settings_now] == [(False, True)]


@pytest.mark.parametrize("sql,secret", [
    ("SELECT error('secret-7f3a')", "secret-7f3a"),
    ("SELECT CAST('zzz-value-91' AS INT)", "zzz-value-91"),
    ("SELECT CAST(s || 'q-val-55' AS INT) FROM t", "q-val-55"),
    ("SELECT nosuch_column_x1 FROM t", "nosuch_column_x1"),
])
def test_engine_errors_are_never_shown_verbatim(locked: Gateway, sql: str, secret: str
                                                ) -> None:
    with pytest.raises(BackendError) as err:
        locked.executor.execute(sqlglot.parse_one(sql, dialect="duckdb"),
                                permit=read_permit(locked))
    e = err.value
    for part in (e.message, e.hint or "", e.detail, str(e.to_dict())):
        assert secret not in part
        assert "Conversion Error" not in part and "Binder Error" not in part
    assert e.to_dict()["status"] == 503


def test_post_processing_failure_is_generic(locked: Gateway) -> None:
    """Arithmetic in SELECT runs on the noisy result; if it fails, the message names no
    value (the noisy statistics are already paid for and cached)."""
    try:
        r = locked.query("SELECT COUNT(*) * 9223372036854775807 AS n FROM t", analyst="adv",
                         epsilon=1.0)
    except BackendError as e:
        assert "9223372036854775807" not in e.detail and "Error:" not in e.detail
    except QueryRejected:
        pass
    else:
        assert all(v is None or math.isfinite(v) for v in _col(r, "n"))
