"""Partition selection: units a group needs to be released, and groups released, per strategy.

Run::

    .venv/bin/python bench/bench_partition.py              # about a minute
    .venv/bin/python bench/bench_partition.py --reps 100   # tighter empirical rates

Two generated datasets, at ε = 1, δ = 1e-6 (laplace unless said):

1. **One group per unit** (max_groups_per_unit 1, max_rows_per_unit 5).  For each
   n = 1..80, 40 groups with exactly n units; every unit has M = 5 rows in its group
   (table ``t``), or one row (table ``t1``).  For ``SELECT k, COUNT(DISTINCT user_id)``
   and ``SELECT k, COUNT(*)``: the predicted number of units a group needs to be kept
   half of the time (n50, from the calibration alone) and the measured one — the
   bounded query runs once on the engine and the gateway's own ``perturb`` releases it
   ``--reps`` times; the rate at which groups of n units are released is counted.
   "before" is the truncated geometric at a separate share of ε (what every query got
   before), "after" is the strategy the gateway now chooses.
2. **Units in ~100 groups** (max_groups_per_unit 100, max_rows_per_unit 100): 20,000
   units, each with one row in each of 100 groups drawn from 5,000 groups with
   Zipf-like popularity.  Groups released (mean over ``--reps`` releases) by each
   strategy, forced, and by the one chosen, for COUNT(DISTINCT user_id), COUNT(*) and
   SELECT DISTINCT, under both mechanisms.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway import Gateway  # noqa: E402
from gateway.privacy.events import LaplaceEvent  # noqa: E402
from gateway.privacy.random import SeededRandom  # noqa: E402
from gateway.query.noise import STRATEGIES, calibrate  # noqa: E402
from gateway.query.perturb import perturb  # noqa: E402
from gateway.sql.rewrite import rewrite  # noqa: E402
from gateway.state.ledger import Cost  # noqa: E402

EPSILON, DELTA = 1.0, 1e-6


def _write(con: Any, table: str, path: Path) -> None:
    con.execute(f"COPY {table} TO '{path}' (FORMAT parquet)")


def _policy(folder: Path, tables: dict[str, Path], m: int, l0: int) -> Path:
    spec = {}
    for name, path in tables.items():
        spec[name] = {"source": str(path), "privacy_unit": "user_id", "max_rows_per_unit": m,
                      "max_groups_per_unit": l0,
                      "columns": {"user_id": {"type": "int", "role": "privacy_unit"},
                                  "k": {"type": "text"}}}
    out = folder / "policy.yaml"
    out.write_text(yaml.safe_dump({
        "dataset": "bench_partition", "tables": spec,
        "budget": {"dataset": {"epsilon": 1e12, "delta": 0.5},
                   "per_analyst": {"epsilon": 1e12, "delta": 0.5}}}, sort_keys=False))
    return out


def _permit(gw: Gateway) -> Any:
    """A committed charge of a tiny ε: the executor reads protected rows only with one."""
    who = gw.ledger.ensure_analyst("bench")
    return gw.ledger.reserve(who, uuid.uuid4().hex, "query", "bench_partition engine run",
                             Cost(1e-3, 0.0, (LaplaceEvent(1e-3),)))


def _releases(gw: Gateway, sql: str, mechanism: str, strategy: str | None, reps: int,
              seed: int) -> tuple[Any, dict[str, int], list[dict[Any, bool]]]:
    """Calibrate (strategy forced, or chosen), run the bounded query once, release it
    ``reps`` times: the calibration, the engine's unit count per group, and per release
    the set of groups kept."""
    plan = gw.plan(sql)
    cal = calibrate(plan, EPSILON, DELTA, mechanism, selection=strategy)
    res = gw.executor.execute(rewrite(plan, cal.grids, gw.executor), permit=_permit(gw),
                              params={"salt": 12345})
    cols = dict(zip(res.names, res.columns, strict=True))
    keys = list(cols[plan.keys[0].name])
    units = dict(zip(keys, (int(u) for u in cols["__dp_units"]), strict=True))
    rng = SeededRandom(seed)
    kept = []
    for _ in range(reps):
        release = perturb(plan, cal, res, rng)
        kept.append({k for (k,) in release.keys})
    return cal, units, kept


# -- 1. one group per unit ---------------------------------------------------------------

def _one_group_data(folder: Path) -> Path:
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE t (user_id BIGINT, k VARCHAR)")
    con.execute("CREATE TABLE t1 (user_id BIGINT, k VARCHAR)")
    con.execute("""
        INSERT INTO t1
        SELECT (n * 100000 + g * 100 + u) AS user_id, 'n' || n || '_g' || g AS k
        FROM range(1, 81) r1(n), range(40) r2(g), range(80) r3(u) WHERE u < n""")
    con.execute("INSERT INTO t SELECT user_id, k FROM t1, range(5)")  # M = 5 rows per unit
    tables = {"t": folder / "t.parquet", "t1": folder / "t1.parquet"}
    for name, path in tables.items():
        _write(con, name, path)
    con.close()
    return _policy(folder, tables, m=5, l0=1)


def _measured_n50(units: dict[str, int], kept: list[set[Any]]) -> tuple[int | None, dict]:
    """Smallest n whose groups were released in at least half of the trials."""
    rate = {}
    for n in range(1, 81):
        groups = [k for k, u in units.items() if u == n]
        hits = sum(k in s for s in kept for k in groups)
        rate[n] = hits / (len(groups) * len(kept))
    n50 = next((n for n in range(1, 81) if rate[n] >= 0.5), None)
    return n50, rate


def one_group(reps: int) -> dict[str, Any]:
    print(f"\n== 1. One group per unit: epsilon = {EPSILON:g}, delta = {DELTA:g}, "
          "max_groups_per_unit = 1, max_rows_per_unit = 5 ==")
    print("40 groups with n units each, n = 1..80; measured over "
          f"{reps} releases of one engine run (gateway's perturb)\n")
    print(f"{'query':46} {'strategy':42} {'n50 predicted':>13} {'n50 measured':>13}")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        policy = _one_group_data(Path(tmp))
        with Gateway.open(policy, state=Path(tmp) / "s.db") as gw:
            rows = [
                ("COUNT(DISTINCT user_id), M rows/unit",
                 "SELECT k, COUNT(DISTINCT user_id) AS n FROM t GROUP BY k"),
                ("COUNT(*), each unit M = 5 rows",
                 "SELECT k, COUNT(*) AS n FROM t GROUP BY k"),
                ("COUNT(*), each unit 1 row (n50 assumes M/2)",
                 "SELECT k, COUNT(*) AS n FROM t1 GROUP BY k"),
            ]
            for i, (label, sql) in enumerate(rows):
                for when, strategy in (("before", "truncated_geometric"), ("after", None)):
                    cal, units, kept = _releases(gw, sql, "laplace", strategy, reps, 10 + i)
                    p = cal.partition
                    measured, _ = _measured_n50(units, kept)
                    name = f"{when}: {p.strategy}" + (f" on {p.label}" if p.label else "")
                    print(f"{label:46} {name:42} {p.units_for_half:>13} "
                          f"{measured if measured is not None else '>80':>13}")
                    out[(label, when)] = (p.strategy, p.units_for_half, measured)
    return out


# -- 2. units in ~100 groups ---------------------------------------------------------------

def _many_groups_data(folder: Path, units: int, groups: int, per_unit: int) -> Path:
    import duckdb

    rng = np.random.default_rng(5)
    popularity = 1.0 / np.arange(1, groups + 1) ** 0.8
    popularity /= popularity.sum()
    user_ids, keys = [], []
    for u in range(units):
        chosen = rng.choice(groups, size=per_unit, replace=False, p=popularity)
        user_ids.append(np.full(per_unit, u, dtype=np.int64))
        keys.append(chosen)
    con = duckdb.connect()
    import pandas as pd
    frame = pd.DataFrame({"user_id": np.concatenate(user_ids),
                          "k": np.char.add("g", np.concatenate(keys).astype(str))})
    con.register("frame", frame)
    con.execute("CREATE TABLE t AS SELECT * FROM frame")
    path = folder / "t.parquet"
    _write(con, "t", path)
    con.close()
    return _policy(folder, {"t": path}, m=per_unit, l0=per_unit)


def many_groups(reps: int, units: int = 20_000, groups: int = 5_000,
                per_unit: int = 100) -> dict[str, Any]:
    print(f"\n== 2. Units in ~{per_unit} groups: {units:,} units x {per_unit} groups each out of "
          f"{groups:,}; max_groups_per_unit = {per_unit}; epsilon = {EPSILON:g}, "
          f"delta = {DELTA:g} ==")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        policy = _many_groups_data(Path(tmp), units, groups, per_unit)
        print(f"(data generated in {time.perf_counter() - t0:.1f} s)")
        with Gateway.open(policy, state=Path(tmp) / "s.db") as gw:
            queries = [("COUNT(DISTINCT user_id)",
                        "SELECT k, COUNT(DISTINCT user_id) AS n FROM t GROUP BY k"),
                       ("COUNT(*)", "SELECT k, COUNT(*) AS n FROM t GROUP BY k"),
                       ("SELECT DISTINCT k", "SELECT DISTINCT k FROM t")]
            for mechanism in ("laplace", "gaussian"):
                print(f"\nmechanism = {mechanism}: groups released (mean of {reps}), "
                      "n50 predicted; * = chosen")
                print(f"{'query':26}" + "".join(f"{s:>26}" for s in STRATEGIES)
                      + f"{'groups in data':>16}")
                for label, sql in queries:
                    chosen = calibrate(gw.plan(sql), EPSILON, DELTA, mechanism).partition
                    assert chosen is not None
                    cells = []
                    total = 0
                    for j, strategy in enumerate(STRATEGIES):
                        try:
                            cal, units_by_group, kept = _releases(gw, sql, mechanism, strategy,
                                                                  reps, 100 + j)
                        except Exception:  # not applicable to this query (no count)
                            cells.append(f"{'n/a':>26}")
                            continue
                        total = len(units_by_group)
                        p = cal.partition
                        mark = "*" if strategy == chosen.strategy else " "
                        released = float(np.mean([len(s) for s in kept]))
                        cells.append(f"{released:>12.1f} (n50 {p.units_for_half:>5}){mark:>2}")
                        out[(mechanism, label, strategy)] = (released, p.units_for_half)
                    print(f"{label:26}" + "".join(cells) + f"{total:>16,}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=40, help="releases per measurement")
    ap.add_argument("--units", type=int, default=20_000, help="units in dataset 2")
    args = ap.parse_args()
    t0 = time.perf_counter()
    first = one_group(args.reps)
    second = many_groups(max(3, args.reps // 8), units=args.units)
    print("\n== Summary ==")
    before = first[("COUNT(DISTINCT user_id), M rows/unit", "before")]
    after = first[("COUNT(DISTINCT user_id), M rows/unit", "after")]
    goal = after[1] <= 15 and (after[2] or 99) <= 15
    print(f"COUNT(DISTINCT user_id), L0 = 1: units for 50% keep {before[1]} -> {after[1]} "
          f"predicted, {before[2]} -> {after[2]} measured (goal <= 15): "
          f"{'PASS' if goal else 'MISS'}")
    rows = first[("COUNT(*), each unit M = 5 rows", "after")]
    print(f"COUNT(*), L0 = 1, units of M rows: {rows[1]} predicted, {rows[2]} measured")
    for mechanism in ("laplace", "gaussian"):
        parts = [f"{s} {second[(mechanism, 'COUNT(DISTINCT user_id)', s)][0]:.0f}"
                 for s in STRATEGIES if (mechanism, "COUNT(DISTINCT user_id)", s) in second]
        print(f"L0 = 100, COUNT(DISTINCT user_id), {mechanism}: groups released: "
              + ", ".join(parts))
    print(f"(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
