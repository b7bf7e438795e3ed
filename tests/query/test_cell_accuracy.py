"""A 95% half-width per value, from every client.

The finished noisy table has a half-width per group and aggregate; these tests follow
it through post-processing (HAVING, ORDER BY, LIMIT, arithmetic, BI wrappers) to the
in-process QueryResult, the HTTP answer (``ci95`` per row, ``report: 'ci95'``) and the
Python client (``Result.ci95``, a DB-API cursor with ``report='ci95'``).  Real
components throughout: the sample data, a Gateway, a `gateway serve` process.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import Gateway, client
from gateway.client import connect
from gateway.query.cells import KEY, OPAQUE, output_cells
from tests.api.live import LiveServer, add_analysts, write_policy
from tests.support import web_policy

BY_DEVICE = ("SELECT device, COUNT(*) AS n, AVG(spend) AS s, SUM(spend) AS t "
             "FROM visits GROUP BY device")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("cells")
    with Gateway.open(web_policy(folder), state=folder / "state.db") as g:
        yield g


def by_key(gw: Gateway, sql: str, **kw: float) -> dict[str, tuple[float | None, ...]]:
    r = gw.query(sql, epsilon=1.0, **kw)
    assert len(r.ci95) == len(r.rows)
    assert all(len(ci) == len(r.columns) for ci in r.ci95)
    return {row[0]: ci for row, ci in zip(r.rows, r.ci95, strict=True)}


# -- which value: the propagation rules ---------------------------------------------------

@pytest.mark.parametrize(("item", "factor", "rounding"), [
    ("COUNT(*)", 1.0, 0.0),
    ("COUNT(*) * 2", 2.0, 0.0),
    ("-SUM(spend) / 1000", 0.001, 0.0),
    ("3 * SUM(spend) + 7", 3.0, 0.0),
    ("(1 - AVG(age))", 1.0, 0.0),
    ("ROUND(AVG(spend), 1)", 1.0, 0.1),
    ("CAST(AVG(spend) AS BIGINT)", 1.0, 1.0),
    ("CAST(AVG(spend) AS DOUBLE) / 2", 0.5, 0.0),
    ("ROUND(AVG(spend)) * 10", 10.0, 10.0),
])
def test_scalings_of_one_aggregate_propagate_exactly(gw: Gateway, item: str, factor: float,
                                                     rounding: float) -> None:
    plan = gw.plan(f"SELECT device, {item} AS v FROM visits GROUP BY device")
    key, cell = output_cells(plan)
    assert key == KEY
    assert cell.agg is not None and cell.noisy
    assert cell.factor == pytest.approx(factor) and cell.rounding == pytest.approx(rounding)


@pytest.mark.parametrize("item", [
    "SUM(spend) / COUNT(*)", "COUNT(*) - SUM(age)", "ABS(SUM(spend) - 10)",
    "CASE WHEN COUNT(*) > 5 THEN 1 ELSE 0 END", "COUNT(*) * COUNT(*)",
    "CAST(COUNT(*) AS VARCHAR)",
])
def test_other_arithmetic_has_no_half_width(gw: Gateway, item: str) -> None:
    plan = gw.plan(f"SELECT device, {item} AS v FROM visits GROUP BY device")
    assert output_cells(plan) == [KEY, OPAQUE]


# -- which row: through HAVING, ORDER BY, LIMIT and wrappers ----------------------------

def test_cells_of_aggregates(gw: Gateway) -> None:
    r = gw.query(BY_DEVICE, epsilon=1.0)
    acc = {a.column: a for a in r.accuracy}
    assert r.noisy == (False, True, True, True)
    assert len(r.ci95) == len(r.rows) == 4
    for ci in r.ci95:
        assert ci[0] is None  # a key
        assert ci[1] == pytest.approx(acc["n"].ci95)  # counts: from the noise scale
        assert ci[3] == pytest.approx(acc["t"].ci95)
        assert ci[2] is not None and 0 < ci[2] <= 250.0  # AVG: per group, at most (hi-lo)/2
    avgs = [ci[2] for ci in r.ci95]
    assert len(set(avgs)) > 1  # the delta method at each group's noisy count
    assert acc["s"].ci95 == pytest.approx(sorted(avgs)[len(avgs) // 2], rel=0.5)


def test_half_widths_follow_rows_through_post_processing(gw: Gateway) -> None:
    base = by_key(gw, BY_DEVICE)
    post = by_key(gw, "SELECT device, COUNT(*) AS n, AVG(spend) AS s, SUM(spend) AS t "
                      "FROM visits GROUP BY device HAVING COUNT(*) > 100 "
                      "ORDER BY AVG(spend) DESC LIMIT 3")
    assert len(post) == 3
    for device, ci in post.items():
        assert ci == base[device]  # the same release, each row keeps its own half-widths
    # The same statistics (hence the same cached release), post-processed differently.
    scaled = by_key(gw, "SELECT device, COUNT(*) * 2 AS n2, AVG(spend) / 100 AS s, "
                        "SUM(spend) AS t FROM visits GROUP BY device ORDER BY n2")
    for device, ci in scaled.items():
        assert ci[1] == pytest.approx(2 * base[device][1])
        assert ci[2] == pytest.approx(base[device][2] / 100)


@pytest.mark.parametrize("sql", [
    f"SELECT * FROM ({BY_DEVICE}) w WHERE n > 0 ORDER BY s",
    f"SELECT w.device, w.n, w.s, w.t FROM ({BY_DEVICE}) w ORDER BY w.t DESC",
    f"SELECT * FROM (SELECT * FROM ({BY_DEVICE}) a) b LIMIT 10",
    f"WITH q AS ({BY_DEVICE}) SELECT * FROM q",
])
def test_half_widths_follow_rows_through_wrappers(gw: Gateway, sql: str) -> None:
    base = by_key(gw, BY_DEVICE)
    assert by_key(gw, sql) == base


def test_a_wrapper_that_scales_or_aggregates(gw: Gateway) -> None:
    base = by_key(gw, BY_DEVICE)
    got = by_key(gw, f"SELECT device, n * 10 AS n10, s - 1 AS s1 FROM ({BY_DEVICE}) w")
    for device, ci in got.items():
        assert ci[1:] == pytest.approx((10 * base[device][1], base[device][2]))
    r = gw.query(f"SELECT MAX(n) AS top, COUNT(*) AS k FROM ({BY_DEVICE}) w", epsilon=1.0)
    assert r.ci95 == [(None, None)] and r.noisy == (True, False)
    assert any("'top'" in n for n in r.notes) and not any("'k'" in n for n in r.notes)


def test_a_star_with_modifiers_never_understates(gw: Gateway) -> None:
    """``* REPLACE (n * 1000 AS n)`` changes a column behind a star: no half-width
    (the plain star keeps the count's)."""
    inner = "(SELECT COUNT(*) AS n FROM visits) w"
    plain = gw.query(f"SELECT * FROM {inner}", epsilon=1.0)
    assert plain.ci95[0][0] is not None
    for star in ("* REPLACE (n * 1000 AS n)", "* RENAME (n AS m)"):
        r = gw.query(f"SELECT {star} FROM {inner}", epsilon=1.0)
        assert r.ci95 == [(None,)] and r.noisy == (True,)


def test_ratio_of_aggregates_is_null_with_a_note(gw: Gateway) -> None:
    r = gw.query("SELECT device, SUM(spend) / COUNT(*) AS per_visit, COUNT(*) AS n "
                 "FROM visits GROUP BY device", epsilon=1.0)
    assert all(ci[1] is None and ci[2] is not None for ci in r.ci95)
    assert r.notes == ["column 'per_visit' has no per-cell ci95: it is not one aggregate or "
                       "a constant scaling of one (e.g. a ratio of two aggregates); see "
                       "accuracy"]


def test_quantiles_and_partition_selection(gw: Gateway) -> None:
    r = gw.query("SELECT device, MEDIAN(age) AS m, COUNT(*) AS n FROM visits GROUP BY device",
                 epsilon=1.0)
    assert r.noisy == (False, True, True)
    assert all(ci[1] is None and ci[2] is not None for ci in r.ci95)  # ranks: accuracy
    # Keys without public values: partition selection; the cells are the same kind.
    r = gw.query("SELECT CAST(duration_s / 600 AS INT) AS c, COUNT(*) AS n FROM visits "
                 "GROUP BY 1", epsilon=1.0, delta=1e-6)
    assert gw.plan("SELECT CAST(duration_s / 600 AS INT) AS c, COUNT(*) AS n FROM visits "
                   "GROUP BY 1").partition_selection
    assert r.rows and all(ci[0] is None and ci[1] and ci[1] > 0 for ci in r.ci95)


def test_public_queries_have_no_half_widths(gw: Gateway) -> None:
    r = gw.query("SELECT region, COUNT(*) AS n FROM countries GROUP BY region", epsilon=1.0)
    assert r.rows and all(ci == (None, None) for ci in r.ci95) and r.noisy == (False, False)
    assert r.reported("ci95").columns == r.columns


def test_accuracy_ci95_of_ratios_is_never_null(gw: Gateway) -> None:
    sql = ("SELECT device, AVG(spend) AS a, VAR_POP(spend) AS v, STDDEV(spend) AS d "
           "FROM visits GROUP BY device")
    for acc in (gw.explain(sql, epsilon=1.0).accuracy, gw.query(sql, epsilon=1.0).accuracy):
        assert [a.column for a in acc] == ["a", "v", "d"]
        assert all(a.ci95 is not None and math.isfinite(a.ci95) and a.ci95 > 0 for a in acc)
    # explain has no counts: the widest half-width the bounds allow.
    a, v, d = gw.explain(sql, epsilon=1.0).accuracy
    assert (a.ci95, v.ci95, d.ci95) == pytest.approx((250.0, 2 * 250.0**2, 250 * math.sqrt(2)))
    # Nothing released (partition selection kept no group): still a number.
    r = gw.query("SELECT CAST(spend AS VARCHAR) AS k, AVG(spend) AS a FROM visits "
                 "WHERE spend < 0 GROUP BY 1", epsilon=0.1, delta=1e-9)
    assert r.rows == [] and r.accuracy[0].ci95 == pytest.approx(250.0)


def test_reported_adds_a_ci95_column_after_each_noisy_one(gw: Gateway) -> None:
    r = gw.query("SELECT device, COUNT(*) AS n, SUM(spend) / COUNT(*) AS r "
                 "FROM visits GROUP BY device", epsilon=1.0)
    rep = r.reported("ci95")
    assert [(c.name, c.type) for c in rep.columns] == [
        ("device", "text"), ("n", "int"), ("n_ci95", "float"), ("r", "float"),
        ("r_ci95", "float")]
    for row, orig, ci in zip(rep.rows, r.rows, r.ci95, strict=True):
        assert row == (orig[0], orig[1], ci[1], orig[2], None)
    assert rep.to_dict()["columns"][2] == {"name": "n_ci95", "type": "float"}
    assert r.reported("none") is r and r.reported(None) is r


# -- over HTTP and the Python client ------------------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    folder: Path = tmp_path_factory.mktemp("cells_http")
    policy = write_policy(folder)
    state = folder / "state.db"
    keys = add_analysts(policy, state, {"cara": {"epsilon": 30.0}})
    server = LiveServer(policy, state).start()
    try:
        yield server.url, keys["cara"]
    finally:
        server.stop()


def test_http_answer_has_a_half_width_per_value(live: tuple[str, str]) -> None:
    url, key = live
    with connect(url, key) as conn:
        body = conn.request("POST", "/v1/query", json={
            "sql": "SELECT device, COUNT(*) AS n, COUNT(*) * 2 AS n2 FROM visits "
                   "GROUP BY device ORDER BY n DESC LIMIT 2", "epsilon": 0.5})
        assert len(body["ci95"]) == len(body["rows"]) == 2
        [acc] = [a for a in body["accuracy"] if a["column"] == "n"]
        for ci in body["ci95"]:
            assert ci[0] is None and ci[1] == pytest.approx(acc["ci95"])
            assert ci[2] == pytest.approx(2 * acc["ci95"])
        assert body["notes"] == []
        rep = conn.request("POST", "/v1/query", json={
            "sql": "SELECT device, COUNT(*) AS n FROM visits GROUP BY device",
            "epsilon": 0.5, "report": "ci95"})
        assert [c["name"] for c in rep["columns"]] == ["device", "n", "n_ci95"]
        assert all(row[2] == pytest.approx(acc["ci95"], rel=0.05) for row in rep["rows"])
        with pytest.raises(client.InvalidRequest) as err:  # 422, naming the field
            conn.request("POST", "/v1/query", json={"sql": "SELECT COUNT(*) FROM visits",
                                                    "report": "everything"})
        assert err.value.status == 422 and "report" in str(err.value.problem)


def test_client_result_and_cursor(live: tuple[str, str]) -> None:
    url, key = live
    sql = "SELECT device, AVG(spend) AS s FROM visits GROUP BY device"
    with connect(url, key, epsilon=0.5) as conn:
        r = conn.query(sql)
        assert len(r.ci95) == len(r.rows) and all(ci[0] is None and ci[1] for ci in r.ci95)
        cur = conn.cursor()
        cur.execute(sql)
        assert [d[0] for d in cur.description] == ["device", "s"]
        cur.execute(sql, report="ci95")
        assert [(d[0], d[1]) for d in cur.description] == [
            ("device", "text"), ("s", "float"), ("s_ci95", "float")]
        rows = cur.fetchall()
        assert {row[0]: row[2] for row in rows} == {
            row[0]: ci[1] for row, ci in zip(r.rows, r.ci95, strict=True)}  # cached: same
    with connect(url, key, epsilon=0.5, report="ci95") as conn:
        cur = conn.cursor()
        assert cur.report == "ci95"
        cur.execute(sql)
        assert len(cur.description) == 3
        cur.execute(sql, report="none")
        assert len(cur.description) == 2
