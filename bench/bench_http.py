"""HTTP benchmark: requests/s and p50/p99 latency of small DP queries through
`gateway serve`, with 1, 8 and 32 concurrent clients, cached and uncached,
against in-process ``Gateway.query_as`` latency measured in the same run.

    .venv/bin/python bench/bench_http.py [--requests 300] [--clients 1,8,32] [--json out.json]

Cached: every client sends the same query at the same ε (answered from the
answer cache, free).  Uncached: every request is a different query (new WHERE
constants), so each one plans, charges, runs on DuckDB and perturbs.  Clients
are threads with one keep-alive connection each (``http.client``: the lightest
Python HTTP client, so the load generator steals as little CPU as possible
from the server on the same machine).  The server and the load generator share
the machine's cores; say so when reporting.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._stats import pct  # noqa: E402
from tests.api.live import LiveServer, add_analysts, write_policy  # noqa: E402

CACHED_SQL = "SELECT COUNT(*) AS n FROM visits WHERE age > 40"
UNCACHED_SQL = "SELECT COUNT(*) AS n FROM visits WHERE age > {a} AND duration_s > {b}"
EPSILON = 0.01


def summary(lat: list[float], wall: float) -> dict[str, float]:
    return {"n": len(lat), "rps": len(lat) / wall, "p50_ms": 1000 * pct(lat, 0.50),
            "p99_ms": 1000 * pct(lat, 0.99), "mean_ms": 1000 * statistics.fmean(lat)}


class Uncached:
    """A stream of never-repeated queries, shared by all threads."""

    def __init__(self, start: int) -> None:
        self._it = itertools.count(start)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            i = next(self._it)
        return UNCACHED_SQL.format(a=18 + i % 60, b=i // 60)


def in_process(policy: Path, state: Path, n: int, stream: Uncached) -> dict[str, Any]:
    from gateway.service import Gateway

    out: dict[str, Any] = {}
    with Gateway.open(policy, state) as gw:
        who = gw.ledger.ensure_analyst("bench")
        gw.query_as(who, CACHED_SQL, EPSILON)
        for mode in ("cached", "uncached", "budget"):
            lat = []
            t0 = time.perf_counter()
            for _ in range(n):
                sql = CACHED_SQL if mode == "cached" else stream.next()
                t = time.perf_counter()
                if mode == "budget":
                    gw.budget_of(who)
                else:
                    gw.query_as(who, sql, EPSILON)
                lat.append(time.perf_counter() - t)
            out[mode] = summary(lat, time.perf_counter() - t0)
    return out


def http_get(port: int, key: str, path: str, n: int) -> dict[str, float]:
    """One client, n sequential GETs: the HTTP stack's own cost (healthz) and a pool hop
    with a trivial core call (budget)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {key}"}
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        lat.append(time.perf_counter() - t)
        assert resp.status == 200, resp.status
    conn.close()
    return summary(lat, time.perf_counter() - t0)


def http_load(port: int, key: str, clients: int, total: int, mode: str, stream: Uncached,
              idempotency: bool = False) -> dict[str, float]:
    per = max(1, total // clients)
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        barrier.wait()
        for j in range(per):
            sql = CACHED_SQL if mode == "cached" else stream.next()
            body = json.dumps({"sql": sql, "epsilon": EPSILON})
            h = dict(headers, **({"Idempotency-Key": f"b{i}-{j}-{time.time_ns()}"}
                                 if idempotency else {}))
            t = time.perf_counter()
            conn.request("POST", "/v1/query", body, h)
            resp = conn.getresponse()
            data = resp.read()
            lat[i].append(time.perf_counter() - t)
            if resp.status != 200:
                errors.append(f"{resp.status} {data[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return summary([x for xs in lat for x in xs], wall)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="requests per cached scenario")
    ap.add_argument("--uncached-requests", type=int, default=96)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--workers", type=int, default=4, help="gateway serve --workers")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]

    folder = Path(tempfile.mkdtemp(prefix="bench_http_"))
    policy = write_policy(folder, dataset=(1e9, 0.0), per_analyst=(1e9, 0.0))
    state = folder / "server.db"
    key = add_analysts(policy, state, {"bench": {}})["bench"]
    report: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg_before": os.getloadavg(),
                              "workers": args.workers}

    print(f"in-process Gateway.query_as ({args.requests} cached, {args.uncached_requests} "
          "uncached, one thread) ...", file=sys.stderr)
    report["in_process"] = in_process(policy, folder / "inproc.db",
                                      args.requests, Uncached(0))
    server = LiveServer(policy, state, args=["--workers", str(args.workers)]).start()
    stream = Uncached(1_000_000)
    try:
        http_load(server.port, key, 1, 20, "cached", stream)  # warm up, fill the cache
        rows = [{"mode": "GET /healthz", "clients": 1,
                 **http_get(server.port, key, "/healthz", args.requests)},
                {"mode": "GET /v1/budget", "clients": 1,
                 **http_get(server.port, key, "/v1/budget", args.requests)}]
        for mode in ("cached", "uncached"):
            n = args.requests if mode == "cached" else args.uncached_requests
            for c in clients:
                print(f"HTTP {mode}, {c} clients ...", file=sys.stderr)
                rows.append({"mode": mode, "clients": c,
                             **http_load(server.port, key, c, max(n, c), mode, stream)})
        rows.append({"mode": "cached+Idempotency-Key", "clients": 1,
                     **http_load(server.port, key, 1, args.requests // 2, "cached", stream,
                                 idempotency=True)})
        report["http"] = rows
    finally:
        server.stop()
    report["load_avg_after"] = os.getloadavg()

    ip = report["in_process"]
    print(f"\nmachine: {report['cpus']} cpus, load average before "
          f"{report['load_avg_before'][0]:.1f}, after {report['load_avg_after'][0]:.1f}; "
          f"server --workers {args.workers}; load generator on the same machine")
    print(f"in-process   cached   p50 {ip['cached']['p50_ms']:7.2f} ms  p99 "
          f"{ip['cached']['p99_ms']:7.2f} ms  {ip['cached']['rps']:7.1f} q/s (1 thread)")
    print(f"in-process   uncached p50 {ip['uncached']['p50_ms']:7.2f} ms  p99 "
          f"{ip['uncached']['p99_ms']:7.2f} ms  {ip['uncached']['rps']:7.1f} q/s (1 thread)")
    print(f"in-process   budget   p50 {ip['budget']['p50_ms']:7.2f} ms")
    print(f"{'mode':<24}{'clients':>8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}"
          f"{'p50 - in-process':>18}")
    for r in report["http"]:
        base = {"uncached": ip["uncached"]["p50_ms"], "GET /healthz": 0.0,
                "GET /v1/budget": ip["budget"]["p50_ms"]}.get(r["mode"], ip["cached"]["p50_ms"])
        print(f"{r['mode']:<24}{r['clients']:>8}{r['rps']:>10.1f}{r['p50_ms']:>10.2f}"
              f"{r['p99_ms']:>10.2f}{r['p50_ms'] - base:>18.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
