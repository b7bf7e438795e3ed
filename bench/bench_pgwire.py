"""PostgreSQL-wire benchmark: a small DP query over pgwire (psycopg) vs HTTP (httpx)
vs in-process ``Gateway.query_as``, in one run; connections/s; 32 concurrent clients.

    .venv/bin/python bench/bench_pgwire.py [--requests 300] [--json out.json]

One ``gateway serve`` process serves both HTTP and pgwire on one Gateway (as in
production), so the two transports are measured against the same server, the
same ledger and the same answer cache.  Scenarios:

* **cached**: the same query at the same ε each time (answered from the answer
  cache, free): the transport's own overhead on top of a ~ms core call;
* **uncached**: a new query each time (new WHERE constants): plan, charge, run
  on DuckDB over the 100k-row sample, perturb;
* **connections/s**: connect (SCRAM-SHA-256, 4096 PBKDF2 iterations on the
  client), ``SELECT 1``, close; one client, then 8 in parallel;
* **32 clients**: 32 threads, each with its own connection, cached queries.

psycopg runs each ``execute`` as Parse/Bind/Describe/Execute/Sync in one round
trip (extended protocol); "simple" rows use the simple Query message.  The load
generator shares the machine with the server (and, on the team machine, with
other people's work): the report prints the core count and load averages.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._stats import pct  # noqa: E402
from tests.api.live import LiveServer, add_analysts, free_port, write_policy  # noqa: E402

CACHED_SQL = "SELECT COUNT(*) AS n FROM visits WHERE age > 41"
UNCACHED_SQL = "SELECT COUNT(*) AS n FROM visits WHERE age > {a} AND duration_s > {b}"
EPSILON = 0.01


def summary(lat: list[float], wall: float) -> dict[str, float]:
    return {"n": len(lat), "per_s": len(lat) / wall, "p50_ms": 1000 * pct(lat, 0.50),
            "p95_ms": 1000 * pct(lat, 0.95), "p99_ms": 1000 * pct(lat, 0.99),
            "mean_ms": 1000 * statistics.fmean(lat)}


class Uncached:
    """Never-repeated queries, shared by all transports and threads."""

    def __init__(self) -> None:
        self._it = itertools.count(1)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            i = next(self._it)
        return UNCACHED_SQL.format(a=18 + i % 60, b=i // 60)


def timed(fn: Callable[[str], Any], sqls: list[str]) -> dict[str, float]:
    lat = []
    t0 = time.perf_counter()
    for sql in sqls:
        t = time.perf_counter()
        fn(sql)
        lat.append(time.perf_counter() - t)
    return summary(lat, time.perf_counter() - t0)


def load(clients: int, per_client: int, make: Callable[[], Callable[[str], Any]],
         sql: str) -> dict[str, float]:
    """``clients`` threads, each with its own connection, ``per_client`` queries each."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        try:
            run = make()
            barrier.wait()
            for _ in range(per_client):
                t = time.perf_counter()
                run(sql)
                lat[i].append(time.perf_counter() - t)
        except BaseException as e:  # reported after the run
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed, e.g. {errors[0]!r}")
    return summary([x for xs in lat for x in xs], time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="queries per cached scenario")
    ap.add_argument("--uncached", type=int, default=60, help="queries per uncached scenario")
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="bench_pgwire_"))
    policy = write_policy(folder, dataset=(1e9, 0.0), per_analyst=(1e9, 0.0))
    state = folder / "server.db"
    key = add_analysts(policy, state, {"bench": {}})["bench"]
    stream = Uncached()
    report: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg_before": os.getloadavg()}

    from gateway.service import Gateway

    print("in-process ...", file=sys.stderr)
    with Gateway.open(policy, folder / "inproc.db") as gw:
        who = gw.ledger.ensure_analyst("bench")

        def inproc(sql: str) -> Any:
            return gw.query_as(who, sql, EPSILON, dialect="postgres").rows

        inproc(CACHED_SQL)
        report["in_process"] = {
            "cached": timed(inproc, [CACHED_SQL] * args.requests),
            "uncached": timed(inproc, [stream.next() for _ in range(args.uncached)])}

    pg_port = free_port()
    server = LiveServer(policy, state, pg_port=pg_port).start()
    dsn = f"host=127.0.0.1 port={pg_port} user=bench password={key} dbname=web"
    try:
        http = httpx.Client(base_url=server.url, timeout=120,
                            headers={"Authorization": f"Bearer {key}"})

        def over_http(sql: str) -> Any:
            r = http.post("/v1/query", json={"sql": sql, "epsilon": EPSILON})
            r.raise_for_status()
            return r.json()["rows"]

        conn = psycopg.connect(dsn, autocommit=True)
        conn.execute(f"SET dp.epsilon = {EPSILON}")

        def over_pg(sql: str) -> Any:
            return conn.execute(sql).fetchall()

        simple = psycopg.ClientCursor(conn)

        def over_pg_simple(sql: str) -> Any:
            return simple.execute(sql).fetchall()

        over_http(CACHED_SQL)
        over_pg(CACHED_SQL)
        rows: dict[str, Any] = {}
        print("sequential latency ...", file=sys.stderr)
        # Interleave transports in rounds so background load hits them alike.
        for name, fn in (("http", over_http), ("pgwire", over_pg),
                         ("pgwire_simple", over_pg_simple)):
            rows[name] = {"cached": timed(fn, [CACHED_SQL] * args.requests)}
        for name, fn in (("http", over_http), ("pgwire", over_pg)):
            rows[name]["uncached"] = timed(fn, [stream.next() for _ in range(args.uncached)])
        conn.close()
        http.close()

        print("connections/s ...", file=sys.stderr)

        def connect_once(_: str) -> Any:
            with psycopg.connect(dsn, autocommit=True) as c:
                return c.execute("SELECT 1").fetchone()

        rows["pgwire"]["connect"] = timed(connect_once, [""] * args.connections)
        rows["pgwire"]["connect_8_clients"] = load(
            8, max(1, args.connections // 8), lambda: connect_once, "")

        print(f"{args.clients} concurrent clients ...", file=sys.stderr)
        per = max(1, args.requests // args.clients * 2)

        def pg_client() -> Callable[[str], Any]:
            c = psycopg.connect(dsn, autocommit=True)
            c.execute(f"SET dp.epsilon = {EPSILON}")
            return lambda sql: c.execute(sql).fetchall()

        def http_client() -> Callable[[str], Any]:
            c = httpx.Client(base_url=server.url, timeout=300,
                             headers={"Authorization": f"Bearer {key}"})

            def run(sql: str) -> Any:
                r = c.post("/v1/query", json={"sql": sql, "epsilon": EPSILON})
                r.raise_for_status()
                return r.json()

            return run

        rows["pgwire"]["clients_32"] = load(args.clients, per, pg_client, CACHED_SQL)
        rows["http"]["clients_32"] = load(args.clients, per, http_client, CACHED_SQL)
        report.update(rows)
    finally:
        server.stop()
    report["load_avg_after"] = os.getloadavg()
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def print_report(r: dict[str, Any]) -> None:
    print(f"\nmachine: {r['cpus']} cpus, load average {r['load_avg_before'][0]:.1f} before, "
          f"{r['load_avg_after'][0]:.1f} after; one `gateway serve` process (HTTP and pgwire), "
          "load generator on the same machine")
    print(f"{'transport':<16}{'scenario':<20}{'n':>6}{'per s':>9}{'p50 ms':>9}{'p95 ms':>9}"
          f"{'p99 ms':>9}")
    lines = [("in-process", k, v) for k, v in r["in_process"].items()]
    for transport in ("http", "pgwire", "pgwire_simple"):
        lines += [(transport, k, v) for k, v in r[transport].items()]
    for transport, scenario, s in lines:
        print(f"{transport:<16}{scenario:<20}{s['n']:>6}{s['per_s']:>9.1f}{s['p50_ms']:>9.2f}"
              f"{s['p95_ms']:>9.2f}{s['p99_ms']:>9.2f}")
    for scenario in ("cached", "uncached", "clients_32"):
        ratio = r["pgwire"][scenario]["p50_ms"] / r["http"][scenario]["p50_ms"]
        verdict = "PASS" if ratio <= 1.5 else "MISS"
        print(f"goal pgwire p50 <= 1.5 x HTTP p50, {scenario}: {ratio:.2f}x  {verdict}")


if __name__ == "__main__":
    raise SystemExit(main())
