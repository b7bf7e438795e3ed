"""NULL as a group key: its own group when the policy lists ``null`` among a column's
public values, kept as a group by partition selection, dropped otherwise (as before).

A small dataset with NULLs in every kind of key column (text, int, bool), run through
the real Gateway at a huge ε, so the released counts are the bounded truth.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import Gateway
from gateway.errors import PolicyError
from gateway.policy import load_policy
from tests.support import write_parquet, write_policy

HUGE = 1e7
USERS = 300


def _rows() -> list[tuple[Any, ...]]:
    """(u, c, n, b, s, plain): one row per unit, so counts are exact at a huge ε."""
    rng = random.Random(11)
    return [(u, rng.choice(["a", "b", None, "zz"]), rng.choice([1, 2, None]),
             rng.choice([True, False, None]), rng.choice(["x", "y", None]),
             rng.choice(["p", "q", None])) for u in range(1, USERS + 1)]


ROWS = _rows()


def policy(folder: Path, rows: list[tuple[Any, ...]], **limits: Any) -> Path:
    write_parquet(folder / "t.parquet",
                  "u BIGINT, c VARCHAR, n BIGINT, b BOOLEAN, s VARCHAR, plain VARCHAR", rows)
    return write_policy(folder, {
        "dataset": "nulls",
        "tables": {"t": {
            "source": str(folder / "t.parquet"), "privacy_unit": "u",
            "columns": {
                "u": {"type": "int", "role": "privacy_unit"},
                "c": {"type": "text", "public_values": ["a", "b", None]},
                "n": {"type": "int", "public_values": [1, 2, None]},
                "b": {"type": "bool", "public_values": [True, False, None]},
                "s": {"type": "text"},  # no public values: partition selection
                "plain": {"type": "text", "public_values": ["p", "q"]},  # NULL not listed
            }}},
        "budget": {"dataset": {"epsilon": 1e12, "delta": 0.1},
                   "per_analyst": {"epsilon": 1e12, "delta": 0.1}},
        **({"limits": limits} if limits else {}),
    })


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("nulls")
    with Gateway.open(policy(folder, ROWS), state=folder / "state.db") as g:
        yield g


def truth(column: int) -> Counter[Any]:
    return Counter(r[column] for r in ROWS)


def answer(gw: Gateway, sql: str, **kw: Any) -> dict[Any, Any]:
    r = gw.query(sql, analyst="nia", epsilon=HUGE, **kw)
    return {row[0]: row[1] for row in r.rows}


def test_policy_reads_null_as_a_public_value(tmp_path: Path) -> None:
    spec = load_policy(policy(tmp_path, ROWS)).tables["t"].columns
    assert spec["c"].public_values == ("a", "b", None)  # not the string "None"
    assert spec["n"].public_values == (1, 2, None)
    assert spec["b"].public_values == (True, False, None)


def test_null_listed_twice_is_a_duplicate(tmp_path: Path) -> None:
    path = policy(tmp_path, ROWS)
    data = yaml.safe_load(path.read_text())
    data["tables"]["t"]["columns"]["c"]["public_values"] = ["a", None, None]
    with pytest.raises(PolicyError, match="duplicates"):
        load_policy(write_policy(tmp_path, data, "twice.yaml"))


@pytest.mark.parametrize(("column", "index"), [("c", 1), ("n", 2), ("b", 3)])
def test_declared_null_is_a_group_of_its_own(gw: Gateway, column: str, index: int) -> None:
    got = answer(gw, f"SELECT {column}, COUNT(*) AS k FROM t GROUP BY {column}")
    expected = {v: truth(index)[v] for v in gw.policy.tables["t"].columns[column]
                .public_values or ()}
    assert got == expected  # NULL included; 'zz' (outside the domain) dropped
    assert None in got and got[None] > 0


def test_null_group_is_released_when_empty_and_costs_no_delta(tmp_path: Path) -> None:
    no_nulls = [r for r in ROWS if r[1] is not None]
    with Gateway.open(policy(tmp_path, no_nulls), state=tmp_path / "s.db") as g:
        r = g.query("SELECT c, COUNT(*) AS k FROM t GROUP BY c", epsilon=1.0)
        assert {row[0] for row in r.rows} == {"a", "b", None}  # from the domain, not data
        assert r.delta_spent == 0.0


def test_key_types_survive_a_null(gw: Gateway) -> None:
    r = gw.query("SELECT n, COUNT(*) AS k FROM t GROUP BY n ORDER BY n", epsilon=HUGE)
    assert [c.type for c in r.columns] == ["int", "int"]
    assert [row[0] for row in r.rows] == [1, 2, None]  # not 1.0, 2.0, NaN
    assert all(isinstance(row[0], int) for row in r.rows[:2])
    r = gw.query("SELECT b, COUNT(*) AS k FROM t GROUP BY b HAVING COUNT(*) > 0",
                 epsilon=HUGE)
    assert r.columns[0].type == "bool" and {row[0] for row in r.rows} == {True, False, None}


def test_null_through_post_processing_and_wrappers(gw: Gateway) -> None:
    got = gw.query("SELECT * FROM (SELECT c, COUNT(*) AS k FROM t GROUP BY c) w "
                   "WHERE c IS NULL", epsilon=HUGE).rows
    assert got == [(None, truth(1)[None])]
    ordered = gw.query("SELECT c, COUNT(*) AS k FROM t GROUP BY c ORDER BY c NULLS FIRST",
                       epsilon=HUGE).rows
    assert [row[0] for row in ordered] == [None, "a", "b"]


def test_expressions_over_a_nullable_domain(gw: Gateway) -> None:
    t = truth(1)
    assert answer(gw, "SELECT UPPER(c) AS uc, COUNT(*) AS k FROM t GROUP BY 1") == {
        "A": t["a"], "B": t["b"], None: t[None]}
    assert answer(gw, "SELECT COALESCE(c, 'none') AS uc, COUNT(*) AS k FROM t GROUP BY 1") \
        == {"a": t["a"], "b": t["b"], "none": t[None]}
    # The key is the expression: 'zz' (outside c's values) is not NULL, so it is FALSE.
    assert answer(gw, "SELECT c IS NULL AS missing, COUNT(*) AS k FROM t GROUP BY 1") == {
        True: t[None], False: t["a"] + t["b"] + t["zz"]}


def test_several_keys_with_null_multiply_their_domains(gw: Gateway) -> None:
    r = gw.query("SELECT c, n, COUNT(*) AS k FROM t GROUP BY c, n", epsilon=HUGE)
    expected = Counter((row[1], row[2]) for row in ROWS if row[1] != "zz")
    assert {(row[0], row[1]): row[2] for row in r.rows} == {
        (c, n): expected[(c, n)] for c in ("a", "b", None) for n in (1, 2, None)}
    assert gw.plan("SELECT c, n, COUNT(*) FROM t GROUP BY c, n").domain_size == 9


def test_distinct_over_public_values_with_null_is_free(gw: Gateway) -> None:
    r = gw.query("SELECT DISTINCT c FROM t", epsilon=1.0)
    assert {row[0] for row in r.rows} == {"a", "b", None} and r.epsilon_spent == 0.0


def test_null_not_declared_is_dropped_as_before(gw: Gateway) -> None:
    assert answer(gw, "SELECT plain, COUNT(*) AS k FROM t GROUP BY plain") == {
        "p": truth(5)["p"], "q": truth(5)["q"]}
    # A CASE without ELSE over a column without NULL: its NULLs are not a group either.
    got = answer(gw, "SELECT CASE WHEN plain = 'p' THEN 'yes' END AS k0, COUNT(*) AS k "
                     "FROM t GROUP BY 1")
    assert got == {"yes": truth(5)["p"]}


def test_partition_selection_keeps_the_null_group(gw: Gateway) -> None:
    got = answer(gw, "SELECT s, COUNT(*) AS k FROM t GROUP BY s", delta=1e-6)
    assert got == dict(truth(4))  # ~100 units per group: always kept at this ε
    assert None in got


def test_engine_filter_keeps_null_rows(gw: Gateway) -> None:
    prep = gw.prepare("SELECT c, COUNT(*) AS k FROM t GROUP BY c", 1.0, 0.0, "laplace")
    assert "IS NULL" in prep.sql.upper() and "IN (" in prep.sql.upper()
