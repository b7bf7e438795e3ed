"""DP quantiles against DuckDB's exact ``quantile_cont`` on the same data, in one run.

Run::

    .venv/bin/python bench/bench_quantiles.py                 # 1M and 10M rows
    .venv/bin/python bench/bench_quantiles.py --rows 1000000 --reps 5

For each query: ``Gateway.query`` end to end (a slightly different ε each time, so
never from the answer cache) and the exact, unbounded query on the gateway's own
DuckDB connection, interleaved; medians and their ratio.  Then the accuracy at
ε = 1: the median absolute error of the DP answer against the exact one over the
groups, in value units, beside the stated 95% rank error.

Data: the generated files of bench/bench_core.py (``bench/.data/<rows>/``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_core import prepare  # noqa: E402
from gateway import Gateway  # noqa: E402

QUERIES = [
    ("median by country",
     "SELECT country, MEDIAN(spend) AS m FROM visits GROUP BY country",
     "SELECT country, quantile_cont(spend, 0.5) AS m FROM visits GROUP BY country"),
    ("p90 of age",
     "SELECT PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY age) AS p FROM visits",
     "SELECT quantile_cont(age, 0.9) AS p FROM visits"),
    ("min/max visit_date",
     "SELECT MIN(visit_date) AS lo, MAX(visit_date) AS hi FROM visits",
     "SELECT MIN(visit_date) AS lo, MAX(visit_date) AS hi FROM visits"),
    ("quartiles of duration by device",
     "SELECT device, APPROX_QUANTILES(duration_s, 4) AS q FROM visits GROUP BY device",
     "SELECT device, quantile_cont(duration_s, [0, 0.25, 0.5, 0.75, 1]) AS q FROM visits "
     "GROUP BY device"),
]


def run(rows: int, reps: int) -> None:
    policy = prepare(rows)
    with tempfile.TemporaryDirectory() as tmp, \
            Gateway.open(policy, state=Path(tmp) / "s.db") as gw:
        con = gw.executor._con  # type: ignore[attr-defined]  # the same engine, raw
        print(f"\n== {rows:,} rows ==")
        print(f"{'query':34} {'gateway ms':>11} {'raw ms':>9} {'ratio':>6}")
        for name, sql, raw in QUERIES:
            gw.query(sql, analyst="bench", epsilon=1.0)  # plan + warm
            con.execute(raw).fetchall()
            g_times, r_times = [], []
            for i in range(reps):
                t0 = time.perf_counter()
                gw.query(sql, analyst="bench", epsilon=1.0 + (i + 1) * 1e-9)
                g_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                con.execute(raw).fetchall()
                r_times.append(time.perf_counter() - t0)
            g, r = statistics.median(g_times), statistics.median(r_times)
            print(f"{name:34} {g * 1e3:11.1f} {r * 1e3:9.1f} {g / r:6.2f}")
        print("\naccuracy at epsilon = 1 (median over groups of |DP - exact|)")
        for name, sql, raw in QUERIES[:3]:
            res = gw.query(sql, analyst="bench", epsilon=1.0 + 0.5e-9)
            exact = con.execute(raw).fetchall()
            keyed = len(res.columns) > 1 and res.columns[0].type == "text"
            errors = []
            if keyed:
                truth = {r[0]: r[1] for r in exact}
                errors = [abs(row[1] - truth[row[0]]) for row in res.rows
                          if truth.get(row[0]) is not None]
            else:
                for got, want in zip(res.rows[0], exact[0], strict=True):
                    diff = got - want
                    errors.append(abs(diff.days) if hasattr(diff, "days") else abs(diff))
            rank = max(a.rank_error95 or 0 for a in res.accuracy)
            print(f"  {name:32} {statistics.median(errors):10.3f}   "
                  f"(stated 95% rank error: {rank:.0f} values)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 10_000_000])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    for rows in args.rows:
        run(rows, args.reps)


if __name__ == "__main__":
    main()
