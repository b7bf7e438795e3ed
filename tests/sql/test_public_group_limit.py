"""limits.max_public_groups: public key domains that would release too many rows.

GROUP BY age releases its 73 public values (empty ones too) at no δ; keys whose domains
multiply past the limit (device × converted × age × country = 19,272 > 10,000) switch to
DP partition selection when δ > 0 — said in the notes, charged δ and a share of ε, keys
still only from the domains — and are refused without δ, naming the limit and the fixes.
The switch depends on the SQL and the policy only (checked on an empty dataset too).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import Gateway
from gateway.errors import PolicyError, QueryRejected
from gateway.policy import Limits, load_policy
from gateway.privacy.events import ApproxDpEvent
from tests.support import web_policy, write_parquet, write_policy

WIDE = ("SELECT device, converted, age, country, COUNT(*) AS n FROM visits "
        "GROUP BY device, converted, age, country")
WIDE_ROWS = 4 * 2 * 73 * 33  # 19,272


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("groups")
    with Gateway.open(web_policy(folder), state=folder / "state.db") as g:
        yield g


def limited(folder: Path, limit: int) -> Path:
    path = web_policy(folder)
    data = yaml.safe_load(path.read_text())
    data["limits"] = {**data.get("limits", {}), "max_public_groups": limit}
    return write_policy(folder, data, "limited.yaml")


def test_default_limit() -> None:
    assert Limits().max_public_groups == 10_000
    assert Limits().max_groups == 100_000  # the enumeration limit is a different one


def test_limit_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="max_public_groups"):
        load_policy(limited(tmp_path, 0))


def test_small_domain_is_released_in_full_without_delta(gw: Gateway) -> None:
    r = gw.query("SELECT age, COUNT(*) AS n FROM visits GROUP BY age", epsilon=1.0)
    assert len(r.rows) == 73 and r.delta_spent == 0.0 and r.notes == []
    assert gw.plan("SELECT age, COUNT(*) FROM visits GROUP BY age").too_many_groups is None


def test_too_many_public_groups_without_delta_is_refused(gw: Gateway) -> None:
    with pytest.raises(QueryRejected) as err:
        gw.query(WIDE, analyst="refused", epsilon=1.0)
    e = err.value
    assert e.rule == "partition_selection"
    assert "limits.max_public_groups (10,000)" in e.message and "19,272" in e.message
    assert "delta" in (e.hint or "") and "fewer keys" in (e.hint or "")
    assert gw.budget("refused")["epsilon_spent"] == 0.0  # refused before any charge


def test_too_many_public_groups_with_delta_use_partition_selection(gw: Gateway) -> None:
    plan = gw.plan(WIDE)
    assert plan.too_many_groups == (WIDE_ROWS, 10_000) and plan.partition_selection
    assert all(k.domain is not None for k in plan.keys)  # the domains still filter
    r = gw.query(WIDE, analyst="wes", epsilon=5.0, delta=1e-6)
    assert r.epsilon_spent == pytest.approx(5.0) and r.delta_spent == pytest.approx(1e-6)
    assert len(r.notes) == 1 and "partition selection" in r.notes[0]
    assert "max_public_groups" in r.notes[0]
    assert 0 < len(r.rows) < WIDE_ROWS  # groups with few units are not released
    domains = [set(k.domain or ()) for k in plan.keys]
    assert all(row[j] in domains[j] for row in r.rows for j in range(4))
    # The charge follows the mechanism used: one partition-selection event with all of δ
    # (its own share of ε for the truncated geometric; none for thresholding the count).
    prep = gw.prepare(WIDE, 5.0, 1e-6, "laplace")
    assert prep.cal is not None and prep.cal.partition is not None
    [ps] = [e for e in prep.cal.events if isinstance(e, ApproxDpEvent)]
    separate = prep.cal.partition.strategy == "truncated_geometric"
    assert ps.delta == pytest.approx(1e-6) and ps.epsilon == pytest.approx(2.5 if separate
                                                                           else 0.0)


def test_explain_says_so(gw: Gateway) -> None:
    e = gw.explain(WIDE, epsilon=1.0, delta=1e-6)
    assert e.partition_selection is not None and e.delta_cost == pytest.approx(1e-6)
    assert e.notes and "max_public_groups" in e.notes[0]
    assert e.to_dict()["notes"] == e.notes
    assert gw.explain("SELECT age, COUNT(*) FROM visits GROUP BY age").notes == []


def test_distinct_over_too_many_public_groups(gw: Gateway) -> None:
    sql = "SELECT DISTINCT device, converted, age, country FROM visits"
    with pytest.raises(QueryRejected, match="max_public_groups"):
        gw.query(sql, epsilon=1.0)
    r = gw.query(sql, epsilon=1.0, delta=1e-6)
    assert r.epsilon_spent == pytest.approx(1.0) and r.notes  # no longer free: data is read


def test_policy_limit_applies_to_one_key(tmp_path: Path) -> None:
    with Gateway.open(limited(tmp_path, 50), state=tmp_path / "s.db") as g:
        sql = "SELECT age, COUNT(*) AS n FROM visits GROUP BY age"
        assert g.plan(sql).too_many_groups == (73, 50)
        with pytest.raises(QueryRejected, match=r"limits.max_public_groups \(50\)"):
            g.query(sql, epsilon=1.0)
        r = g.query(sql, epsilon=1.0, delta=1e-6)
        assert r.notes and r.delta_spent == pytest.approx(1e-6)
        assert g.query("SELECT device, COUNT(*) AS n FROM visits GROUP BY device",
                       epsilon=1.0).notes == []  # 4 keys: under the limit


def _empty_visits(folder: Path) -> Path:
    """policies/web.yaml over a visits table without a row (same columns)."""
    write_parquet(folder / "visits.parquet",
                  "visit_id BIGINT, user_id BIGINT, visit_date DATE, country VARCHAR, "
                  "device VARCHAR, age BIGINT, duration_s DOUBLE, spend DOUBLE, "
                  "converted BOOLEAN", [])
    path = web_policy(folder)
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    data["tables"]["visits"]["source"] = str(folder / "visits.parquet")
    return write_policy(folder, data, "empty.yaml")


def test_switch_does_not_depend_on_the_data(gw: Gateway, tmp_path: Path) -> None:
    with Gateway.open(_empty_visits(tmp_path), state=tmp_path / "s.db") as empty:
        for sql in (WIDE, "SELECT age, COUNT(*) FROM visits GROUP BY age"):
            assert empty.plan(sql).too_many_groups == gw.plan(sql).too_many_groups
        a = empty.query(WIDE, epsilon=1.0, delta=1e-6)
        b = gw.query(WIDE, analyst="other", epsilon=1.0, delta=1e-6)
        assert (a.epsilon_spent, a.delta_spent, a.notes) == (b.epsilon_spent, b.delta_spent,
                                                             b.notes)
        with pytest.raises(QueryRejected) as on_empty:
            empty.query(WIDE, epsilon=1.0)
        with pytest.raises(QueryRejected) as on_full:
            gw.query(WIDE, epsilon=1.0)
        assert on_empty.value.message == on_full.value.message
