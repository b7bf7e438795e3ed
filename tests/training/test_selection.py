"""Training queries: what is rejected (with an actionable reason) and what runs."""

from __future__ import annotations

import numpy as np
import pytest

from gateway import Gateway
from gateway.errors import QueryRejected
from gateway.sql.selection import LABEL, UNIT, select_training_rows
from tests.support import read_permit


def _select(gw: Gateway, sql: str, label: str = "y"):  # type: ignore[no-untyped-def]
    return select_training_rows(sql, label, gw._context, gw._tables)


@pytest.mark.parametrize(("sql", "label", "rule", "words"), [
    ("SELECT event_id, x1, y FROM events", "y", "training_identifier", "identifier"),
    ("SELECT user_id, x1, y FROM events", "y", "training_identifier", "privacy unit"),
    ("SELECT user_id * 2 AS u, x1, y FROM events", "y", "training_identifier", "computed"),
    ("SELECT x1, user_id FROM events", "user_id", "training_identifier", "label"),
    ("SELECT score, y FROM events", "y", "unbounded", "bounds"),
    ("SELECT x1 * score AS s, y FROM events", "y", "unbounded", "bounds"),
    ("SELECT note, y FROM events", "y", "training_categorical", "public_values"),
    ("SELECT COUNT(*) AS n, y FROM events", "y", "training_aggregate", "selects rows"),
    ("SELECT AVG(x1) AS m, y FROM events GROUP BY y", "y", "training_aggregate", "rows"),
    ("SELECT MAX(x1) AS m, y FROM events", "y", "training_aggregate", "rows"),
    ("SELECT x1, y FROM events LIMIT 100", "y", "training_shape", "WHERE"),
    ("SELECT x1, y FROM events ORDER BY x1", "y", "training_shape", "ORDER BY"),
    ("SELECT x1, y FROM events GROUP BY x1, y", "y", "training_shape", "GROUP BY"),
    ("SELECT DISTINCT x1, y FROM events", "y", "training_shape", "DISTINCT"),
    ("SELECT x1, y FROM (SELECT x1, y FROM events LIMIT 10) t", "y", "subquery", "LIMIT"),
    ("SELECT x1, SUM(x1) OVER () AS s, y FROM events", "y", "training_window", "window"),
    ("SELECT * FROM events", "y", "training_star", "list"),
    ("SELECT x1, x2 FROM events", "y", "training_label", "x1, x2"),
    ("SELECT y FROM events", "y", "training_shape", "feature"),
    ("SELECT device, family FROM devices", "family", "training_public", "public"),
    ("SELECT e.x1, p.age, e.y FROM events e JOIN profiles p ON e.x1 = p.age", "y", "join",
     "privacy unit"),
])
def test_rejections_say_what_to_do(shared_gw: Gateway, sql: str, label: str, rule: str | None,
                                   words: str) -> None:
    with pytest.raises(QueryRejected) as err:
        _select(shared_gw, sql, label)
    if rule is not None:
        assert err.value.rule == rule
    assert words.lower() in err.value.detail.lower()
    assert err.value.hint


def test_selection_metadata_comes_from_the_policy(shared_gw: Gateway) -> None:
    sel = _select(shared_gw, "SELECT x1, age, device, flag, x1 > 0 AS pos, "
                      "CASE WHEN age < 40 THEN 'young' ELSE 'old' END AS grp, "
                      "LEAST(GREATEST(score, -5), 5) AS s, y FROM events WHERE x2 > 0")
    kinds = {c.name: (c.kind, c.bounds, c.values) for c in sel.features}
    assert kinds["x1"] == ("numeric", (-3.0, 3.0), None)
    assert kinds["age"] == ("numeric", (18.0, 90.0), None)
    assert kinds["device"] == ("categorical", None, ("a", "b", "c"))
    assert kinds["flag"] == ("bool", None, None)
    assert kinds["pos"] == ("bool", None, None)  # a comparison is a boolean feature
    assert kinds["grp"] == ("categorical", None, ("old", "young"))
    assert kinds["s"] == ("numeric", (-5.0, 5.0), None)
    assert sel.label.kind == "bool" and sel.max_rows_per_unit == 5


def test_engine_query_returns_unit_features_label(shared_gw: Gateway, synth) -> None:  # type: ignore[no-untyped-def]
    sel = _select(shared_gw, "SELECT x1 / 2 AS half, device, y FROM events WHERE x2 > 0")
    text = sel.query.sql(dialect="duckdb")
    assert "TRY(" in text  # computed expressions are guarded
    res = shared_gw.executor.execute(sel.query, permit=read_permit(shared_gw))
    assert res.names[0] == UNIT and res.names[-1] == LABEL
    expected = synth.train[synth.train.x2 > 0]
    assert res.num_rows == len(expected)
    assert np.allclose(np.sort(np.asarray(res.columns[1])), np.sort(expected.x1 / 2))


def test_joins_with_public_tables_and_on_the_unit_are_allowed(shared_gw: Gateway) -> None:
    sel = _select(shared_gw, "SELECT e.x1, d.family, e.y FROM events e JOIN devices d "
                      "ON e.device = d.device")
    assert [c.kind for c in sel.features] == ["numeric", "categorical"]
    assert sel.features[1].values == ("desktop", "phone")
    sel = _select(shared_gw, "SELECT e.x1, p.age, e.y FROM events e JOIN profiles p "
                      "ON e.user_id = p.user_id")
    assert sel.tables == frozenset({"events", "profiles"})
    with_cte = _select(shared_gw, "WITH t AS (SELECT x1, y FROM events WHERE x1 > 0) "
                           "SELECT x1, y FROM t")
    assert shared_gw.executor.execute(with_cte.query,
                                      permit=read_permit(shared_gw)).num_rows > 0


def test_rejected_training_costs_nothing(gw: Gateway) -> None:
    with pytest.raises(QueryRejected):
        gw.train("SELECT event_id, y FROM events", label="y", epsilon=1.0, analyst="bob")
    assert gw.budget("bob")["epsilon_spent"] == 0.0
    who = gw.analyst("bob")
    assert gw.models(who) == []
    assert gw.audit("bob")[-1]["outcome"] == "query_rejected"
