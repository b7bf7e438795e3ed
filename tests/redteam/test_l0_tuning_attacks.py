"""Red team: L0 tuned per query (``max_groups_per_unit: {auto: true, max: K}``).

D′ = D plus one victim (unit 999) touching 400 groups of its own, with NULL keys,
NaN/±Infinity float keys, multiple keys and expression keys, NaN/huge values, and
groups that exist only in quantile / COUNT(DISTINCT col) stages.  Attacks tried, none
of which broke the defence; these tests pin what held:

* the tuning histogram (rows × value × groups cells): the victim changes exactly one
  cell, by exactly 1, for every query shape tried;
* partition selection at every candidate L0: the calibration's L0 (τ and its union
  bound) is the L0 the rewrite keeps per unit (``__dp_kept``), the threshold's δ holds
  for the sampler actually given, and the engine returns at most L0 victim groups;
  every candidate is calibrated with the same strategy, so the charge does not depend
  on the chosen L0;
* on D and D′ (same seeded randomness) the error outcome, the ledger's charge and its
  recorded events, the columns, the notes (tuned values aside) and explain agree;
* the chosen L0 is the same in the note of the first answer, its cached repeat and
  after a restart (read from the stored release);
* a UNION ALL of two tuned SELECTs records two tuning histograms in one charge.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlglot import exp

from gateway import Gateway
from gateway.privacy.random import SeededRandom
from gateway.privacy.thresholding import threshold_delta
from gateway.query.tuning import TunedCalibration, histogram_query, tuned_plan
from gateway.sql.relations import SALT
from tests.redteam.worlds import VICTIM, open_world, outcome
from tests.support import read_permit

COLUMNS = {"uid": {"type": "int", "role": "privacy_unit"}, "g": {"type": "text"},
           "h": {"type": "int"}, "f": {"type": "float", "bounds": [-100, 100]},
           "x": {"type": "float", "bounds": [0, 10]}}
CEILING = 64


def _others() -> list[tuple[str, ...]]:
    return [(str(u), f"'g{(u * 7 + i) % 16}'", str(i % 3), f"{i}.5", "5.0")
            for u in range(120) for i in range(1 + u % 5)]


def _victim() -> list[tuple[str, ...]]:
    rows = []
    for i in range(400):
        g = "NULL" if i % 50 == 0 else f"'v{i}'"
        f = "'NaN'::DOUBLE" if i % 7 == 0 else ("'Infinity'::DOUBLE" if i % 11 == 0
                                                  else f"{i}.25")
        x = "'NaN'::DOUBLE" if i % 5 == 0 else ("NULL" if i % 4 == 0 else "1e308")
        rows.append((str(VICTIM), g, "NULL" if i % 3 == 0 else str(i), f, x))
    return rows


def _open(folder: Path, rows: list[tuple[str, ...]]) -> Gateway:
    return open_world(folder, COLUMNS, rows, max_rows=CEILING,
                      max_groups={"auto": True, "max": CEILING})


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("l0_pair")
    d = _open(root / "d", _others())
    dp = _open(root / "dp", [*_others(), *_victim()])
    yield d, dp
    d.close()
    dp.close()


QUERIES = [
    "SELECT g, COUNT(*) AS n FROM t GROUP BY g",
    "SELECT g, COUNT(DISTINCT uid) AS n FROM t GROUP BY g",
    "SELECT g, h, COUNT(*) AS n FROM t GROUP BY g, h",
    "SELECT f, COUNT(*) AS n FROM t GROUP BY f",
    "SELECT upper(g) AS k, COUNT(DISTINCT uid) AS n FROM t GROUP BY upper(g)",
    "SELECT g, MEDIAN(x) AS m FROM t GROUP BY g",
    "SELECT g, COUNT(DISTINCT h) AS n FROM t GROUP BY g",
    "SELECT g, SUM(x) AS s FROM t GROUP BY g",
    "SELECT g, AVG(x) AS a FROM t GROUP BY g",
]


def _exact_histogram(gw: Gateway, sql: str) -> tuple[np.ndarray, TunedCalibration]:
    prep = gw.prepare(sql, 20.0, 1e-5, "laplace")
    cal = prep.cal
    assert isinstance(cal, TunedCalibration) and cal.tuning is not None
    assert cal.tuning.groups, "L0 is tuned for this query"
    tree = histogram_query(prep.tree, cal.tuning)  # type: ignore[arg-type]
    salted = any(p.name == SALT for p in tree.find_all(exp.Placeholder))
    res = gw.executor.execute(tree, permit=read_permit(gw), params={SALT: 7} if salted else None,
                              timeout_s=30, sql=gw.executor.render(tree))
    exact = np.zeros(cal.tuning.bins)
    cols = dict(zip(res.names, res.columns, strict=True))
    for b, n in zip(cols.get("__dp_bin", []), cols.get("__dp_n", []), strict=True):
        exact[int(b)] += float(n)
    return exact, cal


@pytest.mark.parametrize("sql", QUERIES)
def test_victim_moves_one_histogram_cell_by_one(pair: Any, sql: str) -> None:
    d, dp = pair
    a, cal = _exact_histogram(d, sql)
    b, _ = _exact_histogram(dp, sql)
    diff = b - a
    assert np.count_nonzero(diff) == 1 and diff.sum() == 1.0, np.nonzero(diff)
    assert float(np.abs(diff).sum()) == 1.0
    assert cal.tuning is not None and cal.events[0].to_dict() == \
        cal.tuning.event().to_dict()


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
@pytest.mark.parametrize("sql", [QUERIES[0], QUERIES[1], QUERIES[5], QUERIES[8]])
def test_tau_uses_the_l0_the_rewrite_keeps(pair: Any, sql: str, mechanism: str) -> None:
    """At every candidate L0: τ's union bound is over the L0 ``__dp_kept`` enforces, the
    threshold's δ holds for the count's sampler, the engine returns at most L0 of the
    victim's groups, and the events (charge) are those of the ceiling."""
    _, dp = pair
    prep = dp.prepare(sql, 20.0, 1e-5, mechanism)
    cal = prep.cal
    assert isinstance(cal, TunedCalibration) and cal.tuning is not None
    strategy = cal.request[2]
    assert strategy in ("threshold", "truncated_geometric")
    charged = [e.to_dict() for e in cal.events]
    for g in cal.tuning.group_choices:
        choice = (cal.tuning.ceiling, 0, g)
        noise = cal.at(choice)
        assert noise is not None
        plan = tuned_plan(prep.plan, choice)
        p = noise.partition
        assert p is not None and p.strategy == strategy
        assert p.max_partitions == plan.max_groups == min(g, CEILING)
        if p.strategy == "threshold":
            assert p.statistic is not None
            s = noise.stats[p.statistic]
            real = threshold_delta(s.kind, s.scale, p.contribution, plan.max_groups, p.threshold)
            assert real <= p.delta_threshold * (1 + 1e-9)
        tree, rendered, salted = dp._rewrite(plan, noise)
        assert f"<= {plan.max_groups}" in rendered.replace('"', "")
        res = dp.executor.execute(tree, permit=read_permit(dp),
                                  params={SALT: 11} if salted else None, timeout_s=30,
                                  sql=rendered)
        keys = res.columns[0]
        victim = [k for k in keys if k is None or str(k).startswith("v")]
        assert len(victim) <= plan.max_groups
    assert [e.to_dict() for e in cal.events] == charged


def _observe(gw: Gateway, sql: str, eps: float, seed: int) -> dict[str, Any]:
    gw._rng = SeededRandom(seed)
    box: dict[str, Any] = {}

    def call() -> None:
        r = gw.query(sql, analyst="attacker", epsilon=eps, delta=1e-5)
        box["columns"] = [(c.name, c.type) for c in r.columns]
        box["notes"] = [re.sub(r"max_groups_per_unit \d+", "L0", n) for n in r.notes]
        box["spent"] = (r.epsilon_spent, r.delta_spent)

    box["outcome"] = outcome(call)
    with sqlite3.connect(gw.ledger.path) as con:
        rows = con.execute("SELECT epsilon, delta, events FROM charges WHERE analyst = ? "
                           "ORDER BY id DESC LIMIT 1", ("attacker",)).fetchall()
    box["charge"] = rows
    box["explain"] = gw.explain(sql, epsilon=eps, delta=1e-5).to_dict()
    return box


@pytest.mark.parametrize("sql", [QUERIES[1], QUERIES[3], QUERIES[5]])
def test_only_noisy_values_and_tuned_l0_differ(pair: Any, sql: str) -> None:
    d, dp = pair
    for seed, eps in enumerate((5.0, 20.0)):
        a, b = _observe(d, sql, eps, seed), _observe(dp, sql, eps, seed)
        assert a["outcome"] == b["outcome"] == ("ok", "")
        for what in ("columns", "notes", "spent", "charge", "explain"):
            assert a[what] == b[what], what
        events = json.loads(a["charge"][0][2])
        assert events[0]["kind"] == "discrete_laplace" and events[0]["sensitivity"] == 1


def _note_l0(notes: list[str]) -> int:
    [note] = [n for n in notes if "tuned privately" in n]
    found = re.search(r"max_groups_per_unit (\d+)", note)
    assert found is not None
    return int(found.group(1))


def test_chosen_l0_is_stable_across_repeats_and_restarts(tmp_path: Path) -> None:
    sql = "SELECT g, COUNT(DISTINCT uid) AS n FROM t GROUP BY g"
    folder = tmp_path / "w"
    gw = _open(folder, [*_others(), *_victim()])
    state = gw.ledger.path
    policy = folder / "policy.yaml"
    try:
        first = gw.query(sql, analyst="a", epsilon=20.0, delta=1e-5)
        again = gw.query(sql, analyst="a", epsilon=20.0, delta=1e-5)
        assert again.cached and _note_l0(again.notes) == _note_l0(first.notes)
        assert again.rows == first.rows
    finally:
        gw.close()
    with Gateway.open(policy, state=state) as fresh:
        later = fresh.query(sql, analyst="a", epsilon=20.0, delta=1e-5)
        assert later.cached and _note_l0(later.notes) == _note_l0(first.notes)
        assert later.rows == first.rows


def test_union_all_of_tuned_selects_charges_every_histogram(pair: Any) -> None:
    _, dp = pair
    sql = f"{QUERIES[1]} UNION ALL {QUERIES[0]}"
    res = dp.query(sql, analyst="union", epsilon=20.0, delta=1e-5)
    assert res.epsilon_spent == pytest.approx(20.0)
    with sqlite3.connect(dp.ledger.path) as con:
        [(events,)] = con.execute("SELECT events FROM charges WHERE analyst = ?",
                                  ("union",)).fetchall()
    histograms = [e for e in json.loads(events) if e["kind"] == "discrete_laplace"
                  and e.get("sensitivity") == 1]
    assert len(histograms) == 2
    assert sum(n.count("tuned privately") for n in res.notes) == 2
