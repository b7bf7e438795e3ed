"""Joins that bound one unit's rows (DESIGN §2): protected ⋈ public only on a key of
the public side, protected ⋈ protected only on the unit, cut to M rows per unit first.

Without these, ``JOIN countries c0 ON v.spend > 400 JOIN countries c1 ON ...`` turned
one victim row into 33⁶ rows, and whether the time limit was reached told whether
the victim existed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlglot import exp

from gateway import Gateway
from gateway.errors import PolicyError, QueryRejected
from gateway.query.noise import calibrate
from gateway.sql.rewrite import rewrite
from tests.support import SAMPLE, read_permit, web_policy


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("joins")
    (folder / "regions.csv").write_text("region,continent\nEurope,Eurasia\nAsia,Eurasia\n"
                                        "Africa,Africa\nAmericas,Americas\nOceania,Oceania\n")
    path = web_policy(folder)
    data = yaml.safe_load(path.read_text())
    data["tables"]["regions"] = {"source": str(folder / "regions.csv"), "public": True,
                                 "columns": {"region": {"type": "text", "key": True}}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    g = Gateway.open(path, state=folder / "s.db")
    yield g
    g.close()


ACCEPTED = [
    "SELECT c.region, COUNT(*) FROM visits v JOIN countries c ON v.country = c.country "
    "GROUP BY c.region",
    "SELECT region, COUNT(*) FROM visits JOIN countries USING (country) GROUP BY region",
    "SELECT c.region, COUNT(*) FROM countries c JOIN visits v ON c.country = v.country "
    "GROUP BY c.region",
    "SELECT COUNT(*) FROM visits v LEFT JOIN countries c ON v.country = c.country "
    "AND c.region = 'Europe'",
    # a chain: regions is reached through the key of countries
    "SELECT r.continent, COUNT(*) FROM visits v JOIN countries c ON v.country = c.country "
    "JOIN regions r ON r.region = c.region GROUP BY r.continent",
    # a constant picks at most one row of a key
    "SELECT COUNT(*) FROM visits v JOIN countries c ON c.country = 'DE'",
    "SELECT COUNT(*) FROM visits a JOIN visits b ON a.user_id = b.user_id",
    "SELECT COUNT(*) FROM visits a JOIN visits b USING (user_id)",
    "SELECT COUNT(*) FROM (SELECT user_id AS x, age FROM visits) a "
    "JOIN (SELECT user_id AS x FROM visits) b USING (x)",
]


@pytest.mark.parametrize("sql", ACCEPTED)
def test_bounded_joins_are_accepted(gw: Gateway, sql: str) -> None:
    gw.plan(sql)


REJECTED = [
    # the red-team fan-out
    "SELECT COUNT(*) FROM visits v " + " ".join(
        f"JOIN countries c{i} ON v.spend > 400" for i in range(6)),
    "SELECT COUNT(*) FROM visits v JOIN countries c ON v.spend > 400",
    "SELECT COUNT(*) FROM visits v JOIN countries c ON v.country = c.country OR v.age > 3",
    "SELECT COUNT(*) FROM visits v JOIN countries c ON c.country = c.country",
    "SELECT COUNT(*) FROM visits v JOIN countries c ON v.country = c.region",
    "SELECT COUNT(*) FROM visits v JOIN countries c ON c.region = 'Europe'",
    "SELECT COUNT(*) FROM visits v CROSS JOIN countries c",
    "SELECT COUNT(*) FROM visits v, countries c WHERE v.country = c.country",
    "SELECT COUNT(*) FROM visits v JOIN countries c ON v.country = c.country "
    "JOIN countries d ON d.region = c.region",
    "SELECT COUNT(*) FROM countries c JOIN countries d ON c.region = d.region "
    "JOIN visits v ON v.country = c.country",
    # USING that does not equate the units once derived tables rename columns
    "SELECT COUNT(*) FROM (SELECT user_id AS x, age AS user_id FROM visits) a "
    "JOIN (SELECT user_id, user_id AS x FROM visits) b USING (user_id)",
    "SELECT COUNT(*) FROM (SELECT user_id AS x, age AS user_id FROM visits) a "
    "JOIN (SELECT age AS x, user_id FROM visits) b USING (user_id, x)",
    # a public subquery with a non-key column
    "SELECT COUNT(*) FROM visits v JOIN (SELECT region FROM countries) c "
    "ON v.country = c.region",
]


@pytest.mark.parametrize("sql", REJECTED)
def test_unbounded_joins_are_rejected_with_a_reason(gw: Gateway, sql: str) -> None:
    with pytest.raises(QueryRejected) as err:
        gw.plan(sql)
    assert err.value.rule in ("join", "join_fan_out"), err.value.message
    assert "unique" in (err.value.hint or "") or "unit" in err.value.detail


def test_public_subqueries_with_a_key_are_accepted(gw: Gateway) -> None:
    gw.plan("SELECT COUNT(*) FROM visits v JOIN (SELECT country, region FROM countries "
            "WHERE region <> 'Asia') c ON v.country = c.country")
    gw.plan("SELECT COUNT(*) FROM visits v JOIN (SELECT region, COUNT(*) AS n FROM countries "
            "GROUP BY region) c ON c.region = 'Europe'")


def test_protected_sides_are_cut_to_m_rows_per_unit_before_the_join(gw: Gateway) -> None:
    sql = "SELECT COUNT(*) FROM visits a JOIN visits b ON a.user_id = b.user_id"
    plan = gw.plan(sql)
    tree = rewrite(plan, calibrate(plan, 1.0, 0.0, "laplace").grids, gw.executor)
    probe = exp.maybe_parse("SELECT MAX(n) FROM (SELECT __dp_unit, COUNT(*) AS n "
                            "FROM __dp_rows GROUP BY 1)", dialect="duckdb")
    probe.set("with_", tree.args["with_"])
    (most,), = gw.executor.execute(probe, permit=read_permit(gw), params={"salt": 3}).rows()
    assert most == 20 * 20  # the heaviest users have far more than 20 visits each
    raw = gw.executor.execute(exp.maybe_parse(
        "SELECT MAX(n) FROM (SELECT user_id, COUNT(*) AS n FROM visits GROUP BY 1)"),
        permit=read_permit(gw)).rows()
    assert raw[0][0] > 20


def test_a_declared_key_must_be_unique(tmp_path: Path) -> None:
    path = web_policy(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["tables"]["countries"]["columns"] = {"country": {"type": "text", "key": True},
                                              "region": {"type": "text", "key": True}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(PolicyError, match=r"tables\.countries\.columns\.region\.key"):
        Gateway.open(path, state=tmp_path / "s.db")


def test_key_is_only_for_public_tables(tmp_path: Path) -> None:
    path = web_policy(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["tables"]["visits"]["columns"]["age"]["key"] = True
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(PolicyError, match="key"):
        Gateway.open(path, state=tmp_path / "s.db")


def test_unique_public_columns_are_found_at_load(gw: Gateway) -> None:
    assert "country" in gw.executor.unique_columns("countries")
    assert "region" not in gw.executor.unique_columns("countries")
    assert SAMPLE.exists()
