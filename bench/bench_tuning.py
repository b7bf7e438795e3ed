"""Accuracy of a fixed contribution bound against one tuned privately per query.

Run::

    .venv/bin/python bench/bench_tuning.py                    # 1M rows, 10 runs each
    .venv/bin/python bench/bench_tuning.py --rows 100000 --reps 20 --epsilon 0.5

The same data (bench/bench_core.py's generated visits, skewed: most users have a
few visits, a few have hundreds) under policies/web.yaml as shipped
(``max_rows_per_unit: 20``), with ``max_rows_per_unit: {auto: true, max: 500}``, and
with spend and duration_s declared ``bounds: auto`` as well (limits 2,000× wider
than the shipped bounds: the range is found by the tuning, not by the operator).
For each query: the median over runs of the median over countries of the relative
error against the exact answer (same clamping), the time per query, and which
bounds the tuning chose.  Every run is a fresh ε (never from the answer cache).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_core import prepare  # noqa: E402
from gateway import Gateway  # noqa: E402

QUERIES = [
    ("COUNT by country", "SELECT country, COUNT(*) AS v FROM visits GROUP BY country",
     "SELECT country, COUNT(*) FROM visits GROUP BY 1"),
    ("SUM(spend) by country", "SELECT country, SUM(spend) AS v FROM visits GROUP BY country",
     "SELECT country, SUM(LEAST(GREATEST(spend, 0), 500)) FROM visits GROUP BY 1"),
    ("AVG(spend) by country", "SELECT country, AVG(spend) AS v FROM visits GROUP BY country",
     "SELECT country, AVG(LEAST(GREATEST(spend, 0), 500)) FROM visits GROUP BY 1"),
    ("AVG(duration_s) by device",
     "SELECT device, AVG(duration_s) AS v FROM visits GROUP BY device",
     "SELECT device, AVG(LEAST(GREATEST(duration_s, 0), 3600)) FROM visits GROUP BY 1"),
]


def _auto_policy(policy: Path, ranges: bool = False) -> Path:
    """M tuned (ceiling 500); with ``ranges``, spend and duration_s also `bounds: auto`
    inside limits 2,000× wider than the shipped bounds."""
    data = yaml.safe_load(policy.read_text())
    visits = data["tables"]["visits"]
    visits["max_rows_per_unit"] = {"auto": True, "max": 500}
    if ranges:
        visits["columns"]["spend"] = {"type": "float", "bounds": "auto", "limits": [0, 1e6]}
        visits["columns"]["duration_s"] = {"type": "float", "bounds": "auto",
                                           "limits": [0, 7.2e6]}
    out = policy.with_name("web_auto_ranges.yaml" if ranges else "web_auto.yaml")
    out.write_text("# Written by bench/bench_tuning.py\n" + yaml.safe_dump(data, sort_keys=False))
    return out


def _tuned(notes: list[str]) -> str | None:
    for n in notes:
        if "tuned privately for this query: " in n:
            return n.split("for this query: ")[1].split(", chosen from")[0]
    return None


def run(rows: int, reps: int, epsilon: float) -> None:
    fixed = prepare(rows)
    print(f"\n== {rows:,} rows, epsilon = {epsilon} ==")
    print(f"{'query':28} {'fixed M=20':>11} {'auto M':>8} {'ratio':>6} {'+ranges':>8} "
          f"{'fixed ms':>9} {'auto ms':>8}  chosen (auto M; auto M + ranges)")
    results: dict[str, dict[str, tuple[float, float, str]]] = collections.defaultdict(dict)
    for label, policy in (("fixed", fixed), ("auto", _auto_policy(fixed)),
                          ("ranges", _auto_policy(fixed, ranges=True))):
        with tempfile.TemporaryDirectory() as tmp, \
                Gateway.open(policy, state=Path(tmp) / "s.db") as gw:
            con = gw.executor._con  # type: ignore[attr-defined]  # the same engine, raw
            for name, sql, exact_sql in QUERIES:
                if label == "ranges":  # the truth clamps to the limits, not the old bounds
                    exact_sql = exact_sql.replace("500)", "1000000)").replace(
                        "3600)", "7200000)")
                exact = dict(con.execute(exact_sql).fetchall())
                errors, times, chosen = [], [], collections.Counter()
                for i in range(reps):
                    t0 = time.perf_counter()
                    res = gw.query(sql, analyst="bench", epsilon=epsilon * (1 + (i + 1) * 1e-9))
                    times.append(time.perf_counter() - t0)
                    rel = [abs(v - exact[k]) / abs(exact[k]) for k, v in res.rows
                           if exact.get(k)]
                    errors.append(statistics.median(rel))
                    chosen[_tuned(res.notes) or "-"] += 1
                common = ", ".join(f"{m} ({c}x)" for m, c in chosen.most_common(3))
                results[name][label] = (statistics.median(errors), statistics.median(times),
                                        common)
    for name, _, _ in QUERIES:
        f, a, r = (results[name][k] for k in ("fixed", "auto", "ranges"))
        print(f"{name:28} {f[0]:11.1%} {a[0]:8.1%} {a[0] / f[0]:6.2f} {r[0]:8.1%} "
              f"{f[1] * 1e3:9.1f} {a[1] * 1e3:8.1f}  {a[2]}; {r[2]}")


def run_groups(rows: int, reps: int, epsilon: float) -> None:
    """L0 fixed (4, the shipped value; 16) against tuned (ceiling 16), on a copy where
    country has no public values: COUNT(DISTINCT user_id) by country needs partition
    selection, and both its noise and the selection scale with L0."""
    base = prepare(rows)
    sql = "SELECT country, COUNT(DISTINCT user_id) AS v FROM visits GROUP BY country"
    print(f"\n== L0, {rows:,} rows, epsilon = {epsilon}, delta = 1e-6: {sql} ==")
    print(f"{'max_groups_per_unit':22} {'median rel err':>15} {'groups released':>16}  chosen")
    for label, l0 in (("4", 4), ("16", 16), ("auto <= 16", {"auto": True, "max": 16})):
        data = yaml.safe_load(base.read_text())
        visits = data["tables"]["visits"]
        visits["columns"]["country"] = {"type": "text"}
        visits["max_groups_per_unit"] = l0
        policy = base.with_name(f"web_groups_{label.split()[0]}.yaml")
        policy.write_text(yaml.safe_dump(data, sort_keys=False))
        with tempfile.TemporaryDirectory() as tmp, \
                Gateway.open(policy, state=Path(tmp) / "s.db") as gw:
            con = gw.executor._con  # type: ignore[attr-defined]
            exact = dict(con.execute("SELECT country, COUNT(DISTINCT user_id) FROM visits "
                                     "GROUP BY 1").fetchall())
            errors, released, chosen = [], [], collections.Counter()
            for i in range(reps):
                res = gw.query(sql, analyst="bench", epsilon=epsilon * (1 + (i + 1) * 1e-9),
                               delta=1e-6)
                got = {k: v for k, v in res.rows}
                errors.append(statistics.median(
                    abs(got[k] - n) / n if k in got else 1.0 for k, n in exact.items()))
                released.append(len(res.rows))
                chosen[_tuned(res.notes) or "-"] += 1
            print(f"{label:22} {statistics.median(errors):15.1%} "
                  f"{statistics.median(released):16.0f}  "
                  f"{', '.join(f'{m} ({c}x)' for m, c in chosen.most_common(2))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[1_000_000])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--epsilon", type=float, default=1.0)
    args = ap.parse_args()
    for rows in args.rows:
        run(rows, args.reps, args.epsilon)
        run_groups(rows, args.reps, args.epsilon)


if __name__ == "__main__":
    main()
