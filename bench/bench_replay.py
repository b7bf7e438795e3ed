"""Replay of peers' queries (tests/replay/corpus.yaml): answered fraction, refusals, latency, error.

Run::

    .venv/bin/python bench/bench_replay.py                  # the sample data (100k rows)
    .venv/bin/python bench/bench_replay.py --reps 5
    .venv/bin/python bench/bench_replay.py --rows 1000000   # generated data (bench/.data/)

Every entry of the corpus runs once through ``Gateway.query`` at its own ε/δ (that answer is
the one compared with the truth), then ``--reps`` more times at ε·(1 + i·1e-9), so nothing
comes from the answer cache; the latency is the median of those. The report:

* the answered fraction, overall and per peer, beside what the corpus expects (an entry
  meets its expectation when it is answered, or refused by the expected rule);
* the histogram of refusal rules actually given, and every entry that misses its
  expectation, with the rule and message;
* the median gateway latency per query (answered and refused apart: a refusal stops at
  planning);
* the median relative error of the DP answer against the same SQL run directly on DuckDB
  (no bounding, no noise) for the entries DuckDB can run: per cell of the COUNT, SUM and
  AVG columns of the outer SELECT, cells matched on the other (key) columns, cells whose
  exact value is 0 left out. The error includes the bias of contribution bounding.

Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
from sqlglot import exp  # noqa: E402

from bench.bench_core import SAMPLE_ROWS, log, prepare  # noqa: E402
from gateway import Gateway  # noqa: E402
from gateway.errors import GatewayError, QueryRejected  # noqa: E402
from gateway.sql.parse import parse_statement  # noqa: E402
from tests.replay.corpus import PEERS, Entry, load  # noqa: E402

MEASURED = (exp.Count, exp.Sum, exp.Avg)


@dataclass
class Outcome:
    entry: Entry
    answered: bool = False
    rule: str | None = None          # the QueryRejected rule, when refused
    error: str | None = None         # any other failure (class and message)
    message: str = ""
    first_ms: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    rel_errors: list[float] = field(default_factory=list)
    compared: bool = False

    @property
    def met(self) -> bool:
        if self.entry.refused is None:
            return self.answered
        return self.rule == self.entry.refused

    @property
    def latency_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else self.first_ms


def replay_policy(rows: int, folder: Path) -> Path:
    """bench_core's policy copy for ``rows`` with a δ budget the whole corpus fits in."""
    pol = yaml.safe_load(prepare(rows).read_text())
    big = {"epsilon": 1e9, "delta": 0.9}
    pol["budget"] = {"dataset": dict(big), "per_analyst": dict(big)}
    path = folder / "replay.yaml"
    path.write_text(yaml.safe_dump(pol, sort_keys=False))
    return path


def raw_connection(policy: Path) -> duckdb.DuckDBPyConnection:
    """The data as plain DuckDB views named like the policy's tables."""
    pol = yaml.safe_load(policy.read_text())
    con = duckdb.connect()
    for name, table in pol["tables"].items():
        src = str(table["source"])
        reader = "read_parquet" if src.endswith(".parquet") else "read_csv_auto"
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM {reader}('{src}')")
    return con


def raw_sql(sql: str) -> tuple[str, list[int | None]] | None:
    """The entry's SQL for raw DuckDB (TOP read as LIMIT, qualifiers of table names dropped)
    and, per output column, its position among the measured aggregates (None for keys,
    -1 for other expressions); None when the shape cannot be compared."""
    try:
        tree = parse_statement(sql)
    except GatewayError:
        return None
    if not isinstance(tree, exp.Select):
        return None
    for table in tree.find_all(exp.Table):
        table.set("db", None)
        table.set("catalog", None)
    kinds: list[int | None] = []
    for item in tree.expressions:
        inner = item.unalias() if isinstance(item, exp.Alias) else item
        if isinstance(inner, MEASURED) and not inner.find(exp.Distinct):
            kinds.append(len([k for k in kinds if k is not None and k >= 0]))
        elif inner.find(exp.AggFunc) or isinstance(inner, exp.Star):
            kinds.append(-1)
        else:
            kinds.append(None)
    if not any(k is not None and k >= 0 for k in kinds):
        return None
    return tree.sql(dialect="duckdb"), kinds


def relative_errors(rows: list[tuple[Any, ...]], truth: list[tuple[Any, ...]],
                    kinds: list[int | None]) -> list[float]:
    keys = [i for i, k in enumerate(kinds) if k is None]
    vals = [i for i, k in enumerate(kinds) if k is not None and k >= 0]

    def index(rs: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        out: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for r in rs:
            out.setdefault(tuple(r[i] for i in keys), r)
        return out

    got, want = index(rows), index(truth)
    errors = []
    for key, w in want.items():
        g = got.get(key)
        if g is None:
            continue
        for i in vals:
            a, b = g[i], w[i]
            if not isinstance(a, int | float) or not isinstance(b, int | float) or b == 0:
                continue
            if isinstance(a, bool) or not math.isfinite(float(a)):
                continue
            errors.append(abs(float(a) - float(b)) / abs(float(b)))
    return errors


def run_entry(gw: Gateway, con: duckdb.DuckDBPyConnection, entry: Entry, reps: int) -> Outcome:
    out = Outcome(entry)
    kwargs: dict[str, Any] = {"delta": entry.delta}
    if entry.mechanism:
        kwargs["mechanism"] = entry.mechanism
    t0 = time.perf_counter()
    try:
        result = gw.query(entry.sql, analyst="bench-replay", epsilon=entry.epsilon, **kwargs)
    except QueryRejected as e:
        out.first_ms = (time.perf_counter() - t0) * 1e3
        out.rule, out.message = e.rule, e.message
    except GatewayError as e:
        out.first_ms = (time.perf_counter() - t0) * 1e3
        out.error, out.message = type(e).__name__, e.message
    else:
        out.first_ms = (time.perf_counter() - t0) * 1e3
        out.answered = bool(result.rows)
        if not out.answered:
            out.message = "no rows"
        shape = raw_sql(entry.sql)
        if shape is not None and out.answered:
            sql, kinds = shape
            try:
                truth = con.execute(sql).fetchall()
            except duckdb.Error:
                truth = None
            if truth is not None and all(len(r) == len(kinds) for r in result.rows):
                out.rel_errors = relative_errors(result.rows, truth, kinds)
                out.compared = bool(out.rel_errors)
    if out.error is None:
        for i in range(reps):
            t0 = time.perf_counter()
            with contextlib.suppress(GatewayError):
                gw.query(entry.sql, analyst="bench-replay",
                         epsilon=entry.epsilon * (1.0 + (i + 1) * 1e-9), **kwargs)
            out.latencies_ms.append((time.perf_counter() - t0) * 1e3)
    return out


def pct(n: int, d: int) -> str:
    return f"{n}/{d} ({100.0 * n / d:5.1f}%)" if d else "0/0"


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(outcomes: list[Outcome], rows: int, reps: int) -> None:
    n = len(outcomes)
    answered = [o for o in outcomes if o.answered]
    expect_ans = [o for o in outcomes if o.entry.refused is None]
    met = [o for o in outcomes if o.met]
    print(f"bench_replay: {n} queries from {len(PEERS)} peers, {rows:,} rows, reps={reps}")
    print(f"\nanswered: {pct(len(answered), n)} of the corpus; "
          f"{pct(sum(o.answered for o in expect_ans), len(expect_ans))} of the entries "
          f"expected to be answered")
    print(f"meets expectation: {pct(len(met), n)}")

    print(f"\n{'peer':12s} {'queries':>7s} {'answered':>16s} {'expected':>8s} "
          f"{'met':>16s} {'ms/query':>9s} {'rel.err':>8s}")
    by_peer: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_peer[o.entry.peer].append(o)
    for peer in [*PEERS, *sorted(set(by_peer) - set(PEERS))]:
        os_ = by_peer.get(peer, [])
        if not os_:
            continue
        errs = [med(o.rel_errors) for o in os_ if o.compared]
        print(f"{peer:12s} {len(os_):7d} {pct(sum(o.answered for o in os_), len(os_)):>16s} "
              f"{sum(o.entry.refused is None for o in os_):8d} "
              f"{pct(sum(o.met for o in os_), len(os_)):>16s} "
              f"{med([o.latency_ms for o in os_ if o.answered]):9.1f} {med(errs):8.3f}")

    print("\nrefusal rules given (expected refusals of that rule in brackets)")
    given = Counter(o.rule for o in outcomes if o.rule)
    wanted = Counter(o.entry.refused for o in outcomes if o.entry.refused)
    for rule in sorted(set(given) | set(wanted), key=lambda r: (-given[r], r)):
        print(f"  {rule:22s} {given[rule]:4d}  [{wanted[rule]}]")
    errors = Counter(o.error for o in outcomes if o.error)
    for name, count in errors.items():
        print(f"  {'error: ' + str(name):22s} {count:4d}")

    lat_a = [o.latency_ms for o in outcomes if o.answered]
    lat_r = [o.latency_ms for o in outcomes if o.rule]
    print(f"\nmedian gateway latency per query: answered {med(lat_a):.1f} ms "
          f"(p90 {sorted(lat_a)[int(0.9 * (len(lat_a) - 1))] if lat_a else float('nan'):.1f} "
          f"ms), refused {med(lat_r):.2f} ms")

    compared = [o for o in outcomes if o.compared]
    print(f"\nrelative error against raw DuckDB (COUNT/SUM/AVG cells, at each entry's epsilon): "
          f"{len(compared)} queries, {sum(len(o.rel_errors) for o in compared)} cells")
    if compared:
        per_query = [med(o.rel_errors) for o in compared]
        print(f"  median over queries of the median cell error: {med(per_query):.4f}  "
              f"(median over all cells {med([e for o in compared for e in o.rel_errors]):.4f})")
        worst = sorted(compared, key=lambda o: -med(o.rel_errors))[:5]
        print("  largest: " + ", ".join(f"{o.entry.id} {med(o.rel_errors):.3f}" for o in worst))

    misses = [o for o in outcomes if not o.met]
    print(f"\nentries missing their expectation: {len(misses)}")
    for o in misses:
        got = ("answered" if o.answered else f"refused: {o.rule}" if o.rule
               else f"error: {o.error}")
        gap = "  [known gap]" if o.entry.known_gap else ""
        print(f"  {o.entry.id:40s} expected {o.entry.expect:22s} got {got}{gap}")
        if o.message:
            print(f"      {o.message[:150]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=SAMPLE_ROWS)
    ap.add_argument("--reps", type=int, default=3, help="timed repeats per query")
    args = ap.parse_args()
    entries = load()
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        policy = replay_policy(args.rows, Path(tmp))
        con = raw_connection(policy)
        outcomes = []
        with Gateway.open(policy, state=Path(tmp) / "state.db") as gw:
            for i, entry in enumerate(entries, 1):
                outcomes.append(run_entry(gw, con, entry, args.reps))
                if i % 25 == 0:
                    log(f"  {i}/{len(entries)} queries")
        con.close()
    report(outcomes, args.rows, args.reps)


if __name__ == "__main__":
    main()
