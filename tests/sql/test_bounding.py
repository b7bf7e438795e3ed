"""Contribution bounding inside the engine (DESIGN §2), checked on the stages of
the rewritten query itself: group choice, per-unit caps, NULL units."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlglot import exp

from gateway import Gateway
from gateway.query.noise import calibrate
from gateway.sql.rewrite import rewrite
from tests.support import read_permit, web_policy


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("bounding")
    g = Gateway.open(web_policy(folder, max_groups_per_unit=2), state=folder / "s.db")
    yield g
    g.close()


def _stage(gw: Gateway, sql: str, select: str, salt: int = 99) -> list[tuple[Any, ...]]:
    """Run ``select`` over the CTEs of the rewritten query of ``sql``."""
    plan = gw.plan(sql)
    tree = rewrite(plan, calibrate(plan, 1.0, 1e-6, "laplace").grids, gw.executor)
    probe = exp.maybe_parse(select, dialect="duckdb")
    probe.set("with_", tree.args["with_"])
    params = {"salt": salt} if any(True for _ in probe.find_all(exp.Placeholder)) else None
    return gw.executor.execute(probe, permit=read_permit(gw), params=params).rows()


def test_each_unit_keeps_at_most_l0_groups(gw: Gateway) -> None:
    sql = "SELECT country, COUNT(*) FROM visits GROUP BY country"
    (most,), = _stage(gw, sql, "SELECT MAX(n) FROM (SELECT __dp_unit, COUNT(*) AS n "
                               "FROM __dp_kept GROUP BY 1)")
    assert most == 2
    (before,), = _stage(gw, sql, "SELECT MAX(n) FROM (SELECT __dp_unit, COUNT(*) AS n "
                                 "FROM __dp_groups GROUP BY 1)")
    assert before > 2, "the data must have units in more groups for this test to mean much"


def test_totals_are_recomputed_over_kept_groups(gw: Gateway) -> None:
    sql = "SELECT country, COUNT(*) FROM visits GROUP BY country"
    bad = _stage(gw, sql, "SELECT __dp_unit FROM __dp_kept GROUP BY __dp_unit "
                          "HAVING SUM(__dp_s0) <> MAX(__dp_t0)")
    assert bad == []


def test_group_choice_depends_on_the_salt_not_the_values(gw: Gateway) -> None:
    sql = "SELECT country, COUNT(*) FROM visits GROUP BY country"
    q = ("SELECT k.__dp_unit, k.__dp_k0 FROM __dp_kept k JOIN __dp_units u USING (__dp_unit) "
         "WHERE u.__dp_ng > 2 ORDER BY 1, 2")
    a, b = _stage(gw, sql, q, salt=1), _stage(gw, sql, q, salt=2)
    assert len(a) == len(b) and a != b


def test_per_unit_contribution_is_capped(gw: Gateway) -> None:
    sql = "SELECT device, SUM(spend) FROM visits GROUP BY device"
    # 20 rows of at most 500: no unit may add more than 10,000 in total.
    (top,), = _stage(gw, sql, "SELECT MAX(t) FROM (SELECT __dp_unit, "
                              "SUM(CASE WHEN __dp_t0 <= 10000 THEN __dp_s0 "
                              "ELSE 10000 * __dp_s0 / __dp_t0 END) AS t FROM __dp_kept GROUP BY 1)")
    assert top <= 10000 + 1e-6


def test_rows_without_a_unit_are_dropped(tmp_path: Path) -> None:
    import duckdb

    data = tmp_path / "t.parquet"
    con = duckdb.connect()
    con.execute(f"COPY (SELECT CASE WHEN i < 500 THEN NULL ELSE i % 10 END AS u, 1.0 AS x "
                f"FROM range(1000) r(i)) TO '{data}' (FORMAT parquet)")
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "dataset: nulls\ntables:\n  t:\n    source: " + str(data) + "\n    privacy_unit: u\n"
        "    max_rows_per_unit: 5\n    columns:\n      u: {type: int, role: privacy_unit}\n"
        "      x: {type: float, bounds: [0, 1]}\n"
        "budget:\n  dataset: {epsilon: 1.0e+9, delta: 0}\n"
        "  per_analyst: {epsilon: 1.0e+9, delta: 0}\n")
    with Gateway.open(policy, tmp_path / "s.db") as g:
        # 500 NULL-unit rows must not become one unit with 500 rows: 10 units x 5 rows.
        assert g.query("SELECT COUNT(*) FROM t", epsilon=1e7).rows[0][0] == 50
