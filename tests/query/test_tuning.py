"""Contribution bounds tuned privately per query (``max_rows_per_unit: {auto: ...}``).

The bound is picked from a DP histogram of rows per unit (gateway/query/tuning.py):
one charge covers the histogram and the release, both engine runs follow it, the
result says which bound was used, explain says it cannot know it, and the
accuracy on skewed data is much better than a fixed guess.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway import Gateway
from gateway.errors import PolicyError
from gateway.policy import load_policy
from gateway.privacy.events import ApproxDpEvent, DiscreteLaplaceEvent, event_from_dict
from gateway.query.tuning import TunedCalibration, candidates
from tests.support import web_policy, write_parquet, write_policy
from tests.test_charge_before_read import Spy

AUTO = {"auto": True, "max": 500}
COUNT = "SELECT country, COUNT(*) AS n FROM visits GROUP BY country"


@pytest.fixture()
def auto_gw(tmp_path: Path) -> Iterator[Gateway]:
    with Gateway.open(web_policy(tmp_path, max_rows_per_unit=AUTO),
                      state=tmp_path / "s.db") as gw:
        yield gw


# -- policy --------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "message"), [
    ({"auto": True, "max": 0}, "greater than or equal to 1"),
    ({"auto": False, "max": 10}, "auto"),
    ({"auto": True}, "max"),
    (0, "larger number"),
    (2_000_000, "smaller"),
])
def test_policy_refuses_bad_auto_bounds(tmp_path: Path, value: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        load_policy(web_policy(tmp_path, max_rows_per_unit=value))


def test_schema_shows_the_ceiling_and_that_it_is_tuned(auto_gw: Gateway) -> None:
    visits = auto_gw.schema()["tables"]["visits"]
    assert visits["max_rows_per_unit"] == 500
    assert visits["max_rows_per_unit_auto"] is True


def test_candidates_are_fixed_by_the_ceiling() -> None:
    assert candidates(1) == (1,)
    assert candidates(5) == (1, 2, 4, 5)
    assert candidates(500) == (1, 2, 4, 8, 16, 32, 64, 128, 256, 500)


# -- one charge, two engine runs -------------------------------------------------------


def test_tuned_query_charges_the_requested_epsilon_once(auto_gw: Gateway, tmp_path: Path
                                                         ) -> None:
    res = auto_gw.query(COUNT, analyst="a", epsilon=1.0)
    assert res.epsilon_spent == pytest.approx(1.0)
    assert res.delta_spent == 0.0
    assert _tuned(res) in candidates(500)
    with sqlite3.connect(tmp_path / "s.db") as con:
        rows = con.execute("SELECT epsilon, events FROM charges WHERE analyst = 'a'").fetchall()
    assert len(rows) == 1
    events = [event_from_dict(e) for e in json.loads(rows[0][1])]
    # The histogram (ε/10, one unit in one bin) and the count at the rest of ε, in a
    # form that does not depend on the bound chosen after the charge.
    assert events[0] == DiscreteLaplaceEvent(0.1, 1)
    assert events[1:] == [ApproxDpEvent(0.9, 0.0)]
    assert float(rows[0][0]) == pytest.approx(sum(e.epsilon for e in events))


def test_the_repeat_is_the_same_answer_for_free(auto_gw: Gateway) -> None:
    first = auto_gw.query(COUNT, analyst="a", epsilon=1.0)
    again = auto_gw.query(COUNT, analyst="a", epsilon=1.0)
    assert again.cached and again.epsilon_spent == 0.0
    assert again.rows == first.rows and again.notes == first.notes


def test_both_engine_runs_follow_the_one_committed_charge(tmp_path: Path) -> None:
    state = tmp_path / "s.db"
    with Gateway.open(web_policy(tmp_path, max_rows_per_unit=AUTO), state=state) as gw:
        spy = Spy(gw, state)
        gw.executor._run = spy  # type: ignore[attr-defined, method-assign]
        gw.query(COUNT, analyst="a", epsilon=1.0)
        assert spy.protected_runs() == [True, True]  # histogram, then the release


def test_explain_says_the_bound_is_tuned_and_prices_the_whole_query(auto_gw: Gateway) -> None:
    ex = auto_gw.explain(COUNT, epsilon=1.0).to_dict()
    assert ex["epsilon_cost"] == pytest.approx(1.0)
    tuning = ex["tuning"]
    [bound] = tuning["bounds"]
    assert bound["bound"] == "max_rows_per_unit" and bound["ceiling"] == 500
    assert tuning["epsilon"] == pytest.approx(0.1)
    assert bound["candidates"][-1] == 500
    assert any("cannot be known in advance" in n for n in ex["notes"])
    # The statistic's noise is the ceiling's at the rest of ε: an upper bound.
    [stat] = ex["aggregates"][0]["statistics"]
    assert stat["epsilon"] == pytest.approx(0.9)
    assert stat["sensitivity_l1"] == 500


def test_nothing_is_tuned_when_no_noise_depends_on_the_bound(auto_gw: Gateway) -> None:
    sql = "SELECT country, COUNT(DISTINCT user_id) AS u FROM visits GROUP BY country"
    prep = auto_gw.prepare(sql, 1.0, 0.0, "laplace")
    assert not isinstance(prep.cal, TunedCalibration)
    res = auto_gw.query(sql, analyst="a", epsilon=1.0)
    assert not any("tuned" in n for n in res.notes)
    assert "tuning" not in auto_gw.explain(sql, epsilon=1.0).to_dict()


def test_tuning_share_comes_from_the_policy(tmp_path: Path) -> None:
    path = web_policy(tmp_path, max_rows_per_unit=AUTO)
    data = __import__("yaml").safe_load(path.read_text())
    data["limits"]["tuning_epsilon_share"] = 0.25
    path = write_policy(tmp_path, data, "p2.yaml")
    with Gateway.open(path, state=tmp_path / "s.db") as gw:
        assert gw.explain(COUNT, epsilon=2.0).to_dict()["tuning"]["epsilon"] == 0.5


# -- the bound follows the data ----------------------------------------------------------


def _uniform_world(folder: Path, rows_per_unit: int, units: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(u, ("a", "b", "c")[i % 3], float(i % 7)) for u in range(units)
            for i in range(rows_per_unit)]
    write_parquet(folder / "t.parquet", "u BIGINT, g VARCHAR, x DOUBLE", rows)
    return write_policy(folder, {
        "dataset": "tune",
        "tables": {"t": {"source": str(folder / "t.parquet"), "privacy_unit": "u",
                         "max_rows_per_unit": {"auto": True, "max": 64},
                         "max_groups_per_unit": 3,
                         "columns": {"u": {"type": "int", "role": "privacy_unit"},
                                     "g": {"type": "text", "public_values": ["a", "b", "c"]},
                                     "x": {"type": "float", "bounds": [0, 10]}}}},
        "budget": {"dataset": {"epsilon": 1e6, "delta": 1e-3},
                   "per_analyst": {"epsilon": 1e6, "delta": 1e-3}},
    })


def _tuned(res: Any) -> int:
    [note] = [n for n in res.notes if "tuned privately" in n]
    return int(note.split("max_rows_per_unit ")[1].split()[0])


@pytest.mark.parametrize(("rows_per_unit", "expected"), [(3, {4}), (40, {32, 64})])
def test_the_tuned_bound_follows_rows_per_unit(tmp_path: Path, rows_per_unit: int,
                                               expected: set[int]) -> None:
    policy = _uniform_world(tmp_path / f"w{rows_per_unit}", rows_per_unit, 400)
    with Gateway.open(policy, state=tmp_path / "s.db") as gw:
        res = gw.query("SELECT g, COUNT(*) AS n FROM t GROUP BY g", analyst="a", epsilon=20.0)
        assert _tuned(res) in expected
        exact = dict(gw.executor._con.execute(  # type: ignore[attr-defined]
            "SELECT g, COUNT(*) FROM t GROUP BY 1").fetchall())
        assert all(abs(n - exact[g]) < 0.05 * exact[g] for g, n in res.rows)


def test_auto_bounds_beat_the_fixed_guess_on_skewed_data(tmp_path: Path) -> None:
    """The sample data is skewed (a few units with hundreds of visits): the fixed
    max_rows_per_unit of 20 drops a quarter of the rows; the tuned bound keeps them."""
    errors = {}
    for name, bound in (("fixed", 20), ("auto", AUTO)):
        folder = tmp_path / name
        folder.mkdir()
        with Gateway.open(web_policy(folder, max_rows_per_unit=bound),
                          state=folder / "s.db") as gw:
            exact = dict(gw.executor._con.execute(  # type: ignore[attr-defined]
                "SELECT country, COUNT(*) FROM visits GROUP BY 1").fetchall())
            res = gw.query(COUNT, analyst="a", epsilon=10.0)
            errors[name] = float(np.median([abs(n - exact[c]) / exact[c]
                                            for c, n in res.rows if exact.get(c)]))
    assert errors["fixed"] > 0.15
    assert errors["auto"] < 0.10  # measured 0.02-0.07 over 30 runs


# -- ranges tuned inside hard limits ------------------------------------------------------


@pytest.mark.parametrize(("column", "message"), [
    ({"type": "float", "bounds": "auto"}, "needs `limits"),
    ({"type": "text", "bounds": "auto", "limits": [0, 1]}, "int and float"),
    ({"type": "float", "bounds": [0, 1], "limits": [0, 2]}, "goes with `bounds: auto`"),
    ({"type": "float", "bounds": "auto", "limits": [5, 1]}, "above upper limit"),
])
def test_policy_refuses_bad_auto_ranges(tmp_path: Path, column: dict[str, Any],
                                        message: str) -> None:
    path = web_policy(tmp_path)
    data = __import__("yaml").safe_load(path.read_text())
    data["tables"]["visits"]["columns"]["spend"] = column
    with pytest.raises(PolicyError, match=message):
        load_policy(write_policy(tmp_path, data, "bad.yaml"))


def _ranged_world(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(u, ("a", "b", "c")[i % 3], float((u * 7 + i) % 10)) for u in range(600)
            for i in range(4)]
    write_parquet(folder / "t.parquet", "u BIGINT, g VARCHAR, x DOUBLE", rows)
    return write_policy(folder, {
        "dataset": "tune",
        "tables": {"t": {"source": str(folder / "t.parquet"), "privacy_unit": "u",
                         "max_rows_per_unit": 8, "max_groups_per_unit": 3,
                         "columns": {"u": {"type": "int", "role": "privacy_unit"},
                                     "g": {"type": "text", "public_values": ["a", "b", "c"]},
                                     "x": {"type": "float", "bounds": "auto",
                                           "limits": [0, 1_000_000]}}}},
        "budget": {"dataset": {"epsilon": 1e6, "delta": 1e-3},
                   "per_analyst": {"epsilon": 1e6, "delta": 1e-3}},
    })


def test_a_range_is_tuned_to_the_values_not_the_limits(tmp_path: Path) -> None:
    """Values in [0, 9] under limits [0, 10^6]: the tuned range is about [0, 15], so the
    SUM's noise is 60,000 times smaller than the limits would give."""
    with Gateway.open(_ranged_world(tmp_path / "w"), state=tmp_path / "s.db") as gw:
        sql = "SELECT g, SUM(x) AS s, AVG(x) AS m FROM t GROUP BY g"
        ex = gw.explain(sql, epsilon=50.0).to_dict()
        assert [b["bound"] for b in ex["tuning"]["bounds"]] == ["range", "range"]
        assert ex["tuning"]["bounds"][0]["limits"] == [0.0, 1_000_000.0]
        res = gw.query(sql, analyst="a", epsilon=50.0)
        [note] = [n for n in res.notes if "tuned privately" in n]
        assert "SUM(x) in [0, 15.2588]" in note and "max_rows_per_unit" not in note
        exact = {g: (s, m) for g, s, m in gw.executor._con.execute(  # type: ignore[attr-defined]
            "SELECT g, SUM(x), AVG(x) FROM t GROUP BY 1").fetchall()}
        for g, s, m in res.rows:
            assert abs(s - exact[g][0]) < 0.05 * exact[g][0]
            assert abs(m - exact[g][1]) < 0.5
        assert res.epsilon_spent == pytest.approx(50.0)
        assert gw.schema()["tables"]["t"]["columns"][2]["bounds"] == "auto"


# -- L0 tuned -----------------------------------------------------------------------------


def _groups_world(folder: Path, groups_per_unit: int) -> Path:
    """400 units, each in ``groups_per_unit`` of 64 groups without public values."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(u, f"g{(u * 7 + i) % 64}") for u in range(400) for i in range(groups_per_unit)]
    write_parquet(folder / "t.parquet", "u BIGINT, g VARCHAR", rows)
    return write_policy(folder, {
        "dataset": "tune",
        "tables": {"t": {"source": str(folder / "t.parquet"), "privacy_unit": "u",
                         "max_rows_per_unit": 64,
                         "max_groups_per_unit": {"auto": True, "max": 64},
                         "columns": {"u": {"type": "int", "role": "privacy_unit"},
                                     "g": {"type": "text"}}}},
        "budget": {"dataset": {"epsilon": 1e6, "delta": 1e-3},
                   "per_analyst": {"epsilon": 1e6, "delta": 1e-3}},
    })


@pytest.mark.parametrize(("groups_per_unit", "tuned"), [(1, (1,)), (4, (4, 8))])
def test_l0_is_tuned_to_the_groups_units_touch(tmp_path: Path, groups_per_unit: int,
                                               tuned: tuple[int, ...]) -> None:
    """Units in 1 (or 4) groups: L0 = 1 (or 4-8: the bin [4, 8) stands for 5.5 groups)
    instead of the ceiling 64, so the unit counts have far less noise and partition
    selection needs far fewer units."""
    with Gateway.open(_groups_world(tmp_path / "w", groups_per_unit),
                      state=tmp_path / "s.db") as gw:
        assert gw.schema()["tables"]["t"]["max_groups_per_unit_auto"] is True
        sql = "SELECT g, COUNT(DISTINCT u) AS n FROM t GROUP BY g"
        ex = gw.explain(sql, epsilon=20.0, delta=1e-6).to_dict()
        assert [b["bound"] for b in ex["tuning"]["bounds"]] == ["max_groups_per_unit"]
        res = gw.query(sql, analyst="a", epsilon=20.0, delta=1e-6)
        [note] = [n for n in res.notes if "tuned privately" in n]
        assert any(f"max_groups_per_unit {t} (ceiling 64)" in note for t in tuned), note
        exact = dict(gw.executor._con.execute(  # type: ignore[attr-defined]
            "SELECT g, COUNT(DISTINCT u) FROM t GROUP BY 1").fetchall())
        assert len(res.rows) == 64  # every group has 6-25 units: all kept at this epsilon
        assert all(abs(n - exact[g]) <= 3 for g, n in res.rows)
        assert res.epsilon_spent == pytest.approx(20.0) and res.delta_spent == 1e-6


def test_the_choice_never_fails_after_the_charge(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """If no choice at the range cut the data picked were allowed, the ceiling is used
    (an error there would come after the charge, and depend on the data)."""
    from gateway.query import tuning

    with Gateway.open(_ranged_world(tmp_path / "w"), state=tmp_path / "s.db") as gw:
        prep = gw.prepare("SELECT g, SUM(x) AS s FROM t GROUP BY g", 5.0, 0.0, "laplace")
        cal = prep.cal
        assert isinstance(cal, TunedCalibration) and cal.tuning is not None
        monkeypatch.setattr(tuning, "range_cut", lambda hist, t: 7)
        monkeypatch.setattr(TunedCalibration, "at",
                            lambda self, choice: self.main if choice == self.ceiling else None)
        hist = np.full((cal.tuning.row_bins, cal.tuning.value_bins, cal.tuning.group_bins),
                       100.0)
        assert tuning.choose(cal, hist) == cal.ceiling
