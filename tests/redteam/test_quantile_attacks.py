"""Red team: DP quantiles (MEDIAN, PERCENTILE_CONT/DISC, QUANTILE_CONT, APPROX_QUANTILES,
MIN/MAX) and COUNT(DISTINCT col) of non-unit columns.

D and D' are neighbouring datasets: D' is D plus one victim (uid 999) with the nastiest
values we could think of — int64 extremes, NULL, NaN, ±inf, ±0.0, ±1.7e308, dates
'infinity' / '-infinity' / year 5881580 / the ends of the calendar, 600 rows, 600
distinct values of a partition-selected key, NULL and out-of-domain public keys.

Findings (tests that FAIL until fixed):

* ``test_bin_overflow_is_a_data_dependent_error`` / ``..._over_http`` /
  ``test_bin_overflow_oracle_recovers_a_victims_exact_value`` (critical): the histogram
  stage ``__dp_qr<i>`` computes each row's bin with unguarded arithmetic
  (``sql/rewrite._bin``: ``CAST(FLOOR((v - lo) * (B / (hi - lo))) AS BIGINT)``) and
  ``sql/verify.verify_total`` exempts every ``__dp_q*`` stage from the totality check.
  When ``hi - lo`` overflows a double, or ``v - lo`` is done in BIGINT and overflows,
  the engine fails iff some row holds a value near the top of the bounds: a one-bit
  oracle at any ε.  The analyst controls the bounds through the expression
  (``MEDIAN(CASE WHEN <predicate> THEN 1e308 ELSE -1e308 END)``), so any predicate on
  any row becomes observable: a victim's exact value in ~30 queries.
* ``test_empty_rank_list_is_refused_before_the_charge`` (low): ``QUANTILE_CONT(x, [])``
  ends in a bare ValueError (HTTP 500) in ``service._quantile_accuracy`` — after the
  charge when the query has another noisy aggregate.
* ``test_quantile_groups_per_unit_are_bounded`` (low): with partition selection the
  quantile histogram stage is not cut to L0 groups per unit, so the engine returns one
  row (with two arrays) per group the victim touches, all converted in Python: a run-time
  amplification of ~12x over COUNT for the same victim.

What held (tests that PASS and keep it covered): every other observable of a battery of
quantile and distinct-count queries is identical on D and D' (errors, column types,
released public keys, list lengths, accuracy, charge); the engine histograms move by at
most M per value and the distinct counts by at most M in total under self-joins, public
joins, CTEs, FILTER, NULL keys, partition selection, dates and several values at once;
the exponential mechanism at ranks 0.01 / 0.99 passes an empirical ε check with the
sensitivity max(α, 1-α)·M (and fails it with α·M); a unit spread over groups loses ε in
all; the charge is exactly the composition of the events (Laplace and Gaussian paths,
compound statements); repeats are free and identical.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import httpx
import numpy as np
import pytest
import yaml
from sqlglot import exp

from gateway import Gateway
from gateway.errors import GatewayError
from gateway.privacy.events import ExponentialEvent
from gateway.privacy.quantiles import select_quantile_bins
from gateway.privacy.random import SeededRandom
from gateway.query.noise import calibrate
from gateway.query.perturb import _histograms
from gateway.sql.rewrite import rewrite
from tests.privacy.dp_check import privacy_loss_lower_bound
from tests.support import read_permit

# -- worlds ---------------------------------------------------------------------------------

VICTIM = 999
M, L0 = 4, 2
DEVS = ["a", "b", "c"]
ENGINE = {"int": "BIGINT", "float": "DOUBLE", "text": "VARCHAR", "date": "DATE",
          "bool": "BOOLEAN"}

COLUMNS: dict[str, dict[str, Any]] = {
    "uid": {"type": "int", "role": "privacy_unit"},
    "x": {"type": "int", "bounds": [-5, 5]},
    "f": {"type": "float", "bounds": [-10, 10]},
    "secret": {"type": "float", "bounds": [0, 1000]},
    # Extreme (but valid) policy bounds: the bin arithmetic overflows on them.
    "w": {"type": "float", "bounds": [-1e308, 1e308]},
    "bx": {"type": "int", "bounds": [-4503599627370496, 9223372036854774784]},
    "s": {"type": "text"},
    "dev": {"type": "text", "public_values": DEVS},
    "d": {"type": "date", "bounds": ["0001-01-01", "9999-12-31"]},
    "e": {"type": "date", "bounds": ["2000-01-01", "2000-03-31"]},
}


def _others() -> list[tuple[str, ...]]:
    rng = np.random.default_rng(5)
    rows: list[tuple[str, ...]] = []
    for u in range(1, 61):
        for _ in range(int(rng.integers(1, 5))):
            rows.append((str(u), str(int(rng.integers(-5, 6))), repr(float(rng.uniform(-9, 7))),
                         repr(float(rng.uniform(0, 1000))), repr(float(rng.uniform(-1, 1))),
                         str(int(rng.integers(-100, 100))), f"'s{int(rng.integers(0, 5))}'",
                         f"'{DEVS[int(rng.integers(0, 3))]}'",
                         f"DATE '2000-01-{int(rng.integers(1, 29)):02d}'",
                         f"DATE '2000-02-{int(rng.integers(1, 29)):02d}'"))
    return rows


def _victim() -> list[tuple[str, ...]]:
    xs = ["NULL", "9223372036854775807", "-9223372036854775808", "5", "-5"]
    fs = ["'nan'::DOUBLE", "'inf'::DOUBLE", "'-inf'::DOUBLE", "1.7e308", "-1.7e308", "NULL",
          "'-0.0'::DOUBLE", "10.0"]
    devs = ["'a'", "'b'", "'c'", "NULL", "'zz'"]
    ds = ["DATE 'infinity'", "DATE '-infinity'", "DATE '5881580-07-10'", "NULL",
          "DATE '0001-01-01'", "DATE '9999-12-31'"]
    es = ["DATE 'infinity'", "DATE '-infinity'", "DATE '2000-03-31'", "NULL", "DATE '1999-01-01'"]
    rows: list[tuple[str, ...]] = []
    for i in range(600):
        rows.append((str(VICTIM), xs[i % 5], fs[i % 8], "123.456", "1e308",
                     "9223372036854774784", "NULL" if i % 50 == 0 else f"'v{i}'", devs[i % 5],
                     ds[i % 6], es[i % 5]))
    return rows


def _world(folder: Path, columns: dict[str, dict[str, Any]], rows: Sequence[Sequence[str]],
           *, max_rows: int = M, max_groups: int = L0, public: bool = True) -> Gateway:
    """A Gateway over ``t`` (rows as SQL expressions, so DATE 'infinity' fits) and, with
    ``public``, a public table ``regions(dev unique, region)``."""
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        con.execute("CREATE TABLE t (" + ", ".join(f"{n} {ENGINE[c['type']]}"
                                                   for n, c in columns.items()) + ")")
        if rows:
            con.execute("INSERT INTO t VALUES " + ", ".join("(" + ", ".join(r) + ")"
                                                            for r in rows))
        con.execute(f"COPY t TO '{folder / 't.parquet'}' (FORMAT parquet)")
        con.execute(f"COPY (SELECT * FROM (VALUES ('a', 'north'), ('b', 'south'), "
                    f"('c', 'north'), ('zz', 'west')) v(dev, region)) TO "
                    f"'{folder / 'regions.parquet'}' (FORMAT parquet)")
    finally:
        con.close()
    tables: dict[str, Any] = {"t": {"source": str(folder / "t.parquet"), "privacy_unit": "uid",
                                    "max_rows_per_unit": max_rows,
                                    "max_groups_per_unit": max_groups, "columns": columns}}
    if public:
        tables["regions"] = {"source": str(folder / "regions.parquet"), "public": True}
    policy = {"dataset": "rtq", "tables": tables,
              "budget": {"dataset": {"epsilon": 1e12, "delta": 0.5},
                         "per_analyst": {"epsilon": 1e12, "delta": 0.5}},
              "defaults": {"epsilon": 1.0, "delta": 0.0, "mechanism": "laplace"},
              "limits": {"query_timeout_s": 20.0, "min_epsilon_per_query": 1e-6}}
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return Gateway.open(path, state=folder / f"state-{time.time_ns()}.db")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Gateway]]:
    """(D, D'): D' holds the victim's 600 rows as well."""
    root = tmp_path_factory.mktemp("quantile_attacks")
    others = _others()
    d = _world(root / "d", COLUMNS, others)
    d_prime = _world(root / "d_prime", COLUMNS, [*others, *_victim()])
    yield d, d_prime
    d.close()
    d_prime.close()


def _outcome(fn: Callable[[], Any]) -> tuple[str, str]:
    """("ok", "") or (error code, message without query ids); "crash" for an exception
    that is not a GatewayError (an HTTP 500)."""
    try:
        fn()
    except GatewayError as e:
        return e.code, re.sub(r"[0-9a-f]{32}", "<id>", e.message)
    except Exception as e:
        return "crash", f"{type(e).__name__}: {e}"
    return "ok", ""


# -- findings -------------------------------------------------------------------------------

ORACLES = [
    # The analyst sets the bounds through the expression: [-1e308, 1e308] overflows
    # hi - lo (= inf, so the scale is 0) and v - lo (= inf; inf * 0 = NaN; CAST fails).
    "SELECT MEDIAN(CASE WHEN uid = 999 THEN 1e308 ELSE -1e308 END) FROM t",
    # The same in BIGINT: lo is an integer literal (|lo| < 2^53), so v - lo is a BIGINT
    # subtraction, which overflows for v near the top.
    "SELECT MEDIAN(CASE WHEN uid = 999 THEN 9223372036854774784 ELSE -4503599627370496 END) "
    "FROM t",
    # Arithmetic on a bounded column: f in [-10, 10] gives [-1e308, 1e308]; fails iff some
    # clamped f > 7.97.
    "SELECT MIN(f * 1e307) FROM t",
    # Policy bounds alone, no trick in the SQL.
    "SELECT MAX(w) FROM t",
    "SELECT dev, APPROX_QUANTILES(bx, 4) AS q FROM t GROUP BY dev",
]


@pytest.mark.parametrize("sql", ORACLES)
def test_bin_overflow_is_a_data_dependent_error(pair: tuple[Gateway, Gateway], sql: str
                                                ) -> None:
    """FINDING (critical).  ``_bin`` (sql/rewrite.py) is row-level arithmetic that is
    neither guarded nor re-checked (verify.QUANTILE_STAGE skips ``__dp_q*`` stages), so a
    value near the top of wide bounds makes the engine fail: ``backend_error`` on D',
    an answer on D.  The error is a deterministic function of the data, so it leaks at
    any ε (the charge is the minimum per query).

    Fix: reject quantiles whose ``hi - lo`` (or B / (hi - lo)) is not finite at planning;
    compute the bin in DOUBLE only (``(CAST(v AS DOUBLE) - lo) * scale``, or better
    ``v * scale - lo * scale`` with both finite), never in the value's integer type; and
    stop exempting ``__dp_qr*`` from ``verify_total`` (or guard the bin and map a NULL bin
    to a fixed bin)."""
    d, d_prime = pair
    a = _outcome(lambda: d.query(sql, analyst="oracle", epsilon=1e-3))
    b = _outcome(lambda: d_prime.query(sql, analyst="oracle", epsilon=1e-3))
    assert a == b, f"D: {a}  D': {b}"


def test_bin_overflow_is_a_data_dependent_error_over_http(pair: tuple[Gateway, Gateway]
                                                          ) -> None:
    """FINDING (critical), as an analyst sees it over HTTP: 200 on D, 503 backend_error on
    D' (the live server on :8765 and the PostgreSQL wire, SQLSTATE 58000, behave alike)."""
    from gateway.api import Settings, create_app

    sql = ORACLES[0]

    def status(gw: Gateway) -> tuple[int, str | None]:
        key = gw.add_analyst(f"h{time.time_ns()}", epsilon=10.0)
        transport = httpx.ASGITransport(app=create_app(gw, Settings(workers=1, queue=2)),
                                        raise_app_exceptions=False)

        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await c.post("/v1/query", json={"sql": sql, "epsilon": 0.001},
                                    headers={"Authorization": f"Bearer {key}"})

        r = asyncio.run(go())
        return r.status_code, r.json().get("type")

    d, d_prime = pair
    assert status(d) == status(d_prime)


def test_bin_overflow_oracle_recovers_a_victims_exact_value(pair: tuple[Gateway, Gateway]
                                                            ) -> None:
    """FINDING (critical), its impact: binary search with the oracle finds the victim's
    ``secret`` (123.456) to 1e-6 in ~30 queries costing 3e-5 ε in all; nothing about one
    unit should be learnable to that precision at that budget."""
    _, d_prime = pair
    lo, hi = 0.0, 1000.0
    for _ in range(30):
        mid = (lo + hi) / 2
        sql = (f"SELECT MEDIAN(CASE WHEN uid = 999 AND secret > {mid!r} THEN 1e308 "
               "ELSE -1e308 END) FROM t")
        failed = _outcome(lambda q=sql: d_prime.query(  # type: ignore[misc]
            q, analyst="search", epsilon=1e-6))[0] != "ok"
        lo, hi = (mid, hi) if failed else (lo, mid)
    pinned = hi - lo < 1e-5 and lo <= 123.456 <= hi
    assert not pinned, f"victim's secret recovered: {lo!r} .. {hi!r} for ε = 3e-5"


@pytest.mark.parametrize("sql", ["SELECT QUANTILE_CONT(x, []) FROM t",
                                 "SELECT QUANTILE_CONT(x, []) AS q, COUNT(*) AS n FROM t"])
def test_empty_rank_list_is_refused_before_the_charge(pair: tuple[Gateway, Gateway], sql: str
                                                      ) -> None:
    """FINDING (low, data-independent).  An empty rank list passes planning (``_ranks``
    returns no rank) and ``service._quantile_accuracy`` then calls ``max([])``: a bare
    ValueError (HTTP 500), after ε was charged when another aggregate is noisy.
    Fix: refuse an empty list in ``AggregateBuilder._ranks`` (QueryRejected)."""
    d, _ = pair
    before = d.budget("empty")["epsilon_spent"]
    code, msg = _outcome(lambda: d.query(sql, analyst="empty", epsilon=1.0))
    assert code in ("ok", "query_rejected"), (code, msg)
    if code != "ok":
        assert d.budget("empty")["epsilon_spent"] == before, "charged for a refused query"


def _engine(gw: Gateway, sql: str, epsilon: float = 1.0, delta: float = 1e-3,
            mechanism: str = "laplace", salt: int = 7) -> tuple[Any, Any, dict[str, Any]]:
    """The rewritten query run directly (with a committed permit and a fixed salt): what
    leaves the engine."""
    plan = gw.plan(sql)
    cal = calibrate(plan, epsilon, delta, mechanism)
    tree = rewrite(plan, cal.grids, gw.executor)
    salted = any(True for _ in tree.find_all(exp.Placeholder))
    res = gw.executor.execute(tree, permit=read_permit(gw),
                              params={"salt": salt} if salted else None)
    return plan, cal, dict(zip(res.names, res.columns, strict=True))


def _rows_out(gw: Gateway, sql: str) -> int:
    _, _, cols = _engine(gw, sql)
    return len(next(iter(cols.values())))


def test_quantile_groups_per_unit_are_bounded(pair: tuple[Gateway, Gateway]) -> None:
    """FINDING (low: run time).  With partition selection COUNT keeps L0 groups per unit
    (``__dp_kept``) but the quantile stages keep every group of the unit, and
    ``_with_quantiles`` unions their keys into the result: the engine returns one row, with
    two arrays, per group the victim touches, and Python converts them all
    (``perturb._python_values``).  Measured: a victim with 300k rows in 300k groups adds
    0.49 s to MEDIAN vs 0.03 s to COUNT — the same victim, 12x the timing signal (and a
    timeout on D' only, sooner).  Fix: with partition selection, take the quantile parts'
    groups from ``__dp_m`` (LEFT JOIN onto the main part instead of a UNION of keys), or
    cut the quantile rows to the unit's L0 kept groups."""
    d, d_prime = pair
    count = "SELECT s, COUNT(*) AS n FROM t GROUP BY s"
    median = "SELECT s, MEDIAN(x) AS m FROM t GROUP BY s"
    assert _rows_out(d_prime, count) - _rows_out(d, count) <= L0
    extra = _rows_out(d_prime, median) - _rows_out(d, median)
    assert extra <= L0, f"the victim adds {extra} engine rows to MEDIAN (L0 = {L0})"


# -- what held ------------------------------------------------------------------------------

# (sql, mechanism, delta, keys are public so the released keys must be identical)
BATTERY: list[tuple[str, str, float, bool]] = [
    ("SELECT MEDIAN(x), MIN(x), MAX(x) FROM t", "laplace", 0.0, True),
    ("SELECT dev, MEDIAN(f) AS m, PERCENTILE_CONT(0.25) WITHIN GROUP (ORDER BY f) AS p "
     "FROM t GROUP BY dev", "laplace", 0.0, True),
    ("SELECT dev, APPROX_QUANTILES(x, 7) AS q FROM t GROUP BY dev", "laplace", 0.0, True),
    ("SELECT QUANTILE_CONT(f, [0, 0.5, 0.5, 1]) AS q, PERCENTILE_DISC(0.9) WITHIN GROUP "
     "(ORDER BY x DESC) AS p FROM t", "laplace", 0.0, True),
    ("SELECT MIN(d), MAX(d), MEDIAN(e) FROM t", "laplace", 0.0, True),
    ("SELECT dev, APPROX_QUANTILES(e, 3) AS q, MIN(d) AS m FROM t GROUP BY dev", "laplace",
     0.0, True),
    ("SELECT e, MEDIAN(f) AS m, COUNT(DISTINCT s) AS n FROM t GROUP BY e", "laplace", 0.0,
     True),
    ("SELECT COUNT(DISTINCT s), COUNT(DISTINCT f) AS nf, COUNT(DISTINCT d) AS nd FROM t",
     "laplace", 0.0, True),
    ("SELECT dev, COUNT(DISTINCT s) FILTER (WHERE x > 0) AS n, COUNT(DISTINCT e) AS ne "
     "FROM t GROUP BY dev", "gaussian", 1e-6, True),
    ("SELECT MEDIAN(f) FILTER (WHERE s = 'v7') AS m, MEDIAN(f) AS m2 FROM t", "laplace", 0.0,
     True),
    ("SELECT MEDIAN(a.f) AS m FROM t a JOIN t b ON a.uid = b.uid", "laplace", 0.0, True),
    ("SELECT r.region, MEDIAN(t.x) AS m, COUNT(DISTINCT t.s) AS n FROM t JOIN regions r "
     "ON t.dev = r.dev GROUP BY r.region", "laplace", 0.0, True),
    ("WITH c AS (SELECT uid, f * 2 AS g, dev FROM t WHERE x IS NOT NULL) "
     "SELECT dev, MEDIAN(g) AS m FROM c GROUP BY dev", "laplace", 0.0, True),
    ("SELECT MEDIAN(f * 1e299) AS m FROM t", "laplace", 0.0, True),  # bounds ±1e300
    ("SELECT MEDIAN(x * 0 + 3) AS m, PERCENTILE_DISC(1) WITHIN GROUP (ORDER BY x) AS p, "
     "PERCENTILE_CONT(0) WITHIN GROUP (ORDER BY f) AS q FROM t", "laplace", 0.0, True),
    ("SELECT MEDIAN(x * 1e-322) AS m FROM t", "laplace", 0.0, True),  # refused on both
    ("SELECT dev, MEDIAN(x) AS m FROM t GROUP BY dev HAVING MEDIAN(x) > -9 "
     "ORDER BY MEDIAN(f)", "laplace", 0.0, True),
    ("SELECT MEDIAN(x) AS m FROM t UNION ALL SELECT COUNT(DISTINCT s) FROM t", "gaussian",
     1e-6, True),
    ("SELECT dev, MEDIAN(YEAR(d)) AS y, SUM(x) AS s, COUNT(DISTINCT s) AS n FROM t "
     "GROUP BY dev", "gaussian", 1e-6, True),
    ("SELECT s, MEDIAN(x) AS m, MIN(e) AS e0 FROM t GROUP BY s", "laplace", 1e-3, False),
    ("SELECT s, COUNT(DISTINCT f) AS n, APPROX_QUANTILES(f, 2) AS q FROM t GROUP BY s",
     "gaussian", 1e-3, False),
]


def _observe(gw: Gateway, sql: str, mechanism: str, delta: float, keys: bool) -> Any:
    """Everything an analyst sees but the noisy values themselves."""
    box: dict[str, Any] = {}

    def run() -> None:
        box["r"] = gw.query(sql, analyst="battery", epsilon=1.0, delta=delta,
                            mechanism=mechanism)

    code = _outcome(run)
    if code[0] != "ok":
        return code
    r = box["r"]
    shape = [tuple(len(v) if isinstance(v, list) else type(v).__name__ for v in row)
             for row in r.rows]
    released = sorted(repr(tuple(v for v, noisy in zip(row, r.noisy, strict=True) if not noisy))
                      for row in r.rows) if keys else None
    # Partition selection may release no row: the types of an empty answer are then
    # 'unknown' for some plans (a function of the DP release, so no leak), so types are
    # compared for public keys only.
    types = [(c.name, c.type if keys else None) for c in r.columns]
    return (code, types, r.epsilon_spent, r.delta_spent, [a.to_dict() for a in r.accuracy],
            r.noisy, r.notes, shape if keys else len({len(s) for s in shape}) <= 1, released)


@pytest.mark.parametrize(("sql", "mechanism", "delta", "keys"), BATTERY)
def test_victim_changes_nothing_but_the_noisy_values(pair: tuple[Gateway, Gateway], sql: str,
                                                     mechanism: str, delta: float, keys: bool
                                                     ) -> None:
    """HELD: errors and their messages, column names and types, released public keys,
    row counts, list lengths (APPROX_QUANTILES: n + 1; QUANTILE_CONT with duplicate ranks
    keeps them), accuracy (rank_error95 from ε, M and B only), charge and notes are the
    same with and without the victim."""
    d, d_prime = pair
    a = _observe(d, sql, mechanism, delta, keys)
    b = _observe(d_prime, sql, mechanism, delta, keys)
    assert a == b


ENGINE_CONFIGS = [
    "SELECT MEDIAN(x) FROM t",
    "SELECT dev, MEDIAN(f), MIN(x) FROM t GROUP BY dev",
    "SELECT s, MEDIAN(f) FROM t GROUP BY s",  # partition selection, victim in 588 groups
    "SELECT dev, s, APPROX_QUANTILES(x, 4) AS q, MEDIAN(f) FROM t GROUP BY dev, s",
    "SELECT MEDIAN(a.f) FROM t a JOIN t b ON a.uid = b.uid",  # ≤ M² joined rows
    "SELECT r.region, MEDIAN(t.x) FROM t JOIN regions r ON t.dev = r.dev GROUP BY r.region",
    "WITH c AS (SELECT uid, dev, x FROM t) SELECT dev, MEDIAN(x) FROM c GROUP BY dev",
    "SELECT dev, MEDIAN(f) FILTER (WHERE x > 0), MEDIAN(f) FROM t GROUP BY dev",
    "SELECT e, MIN(d), MAX(e), MEDIAN(x) FROM t GROUP BY e",  # date keys, date values
    "SELECT CASE WHEN x > 0 THEN 'p' ELSE 'n' END AS k, MEDIAN(f) FROM t GROUP BY k",
]


@pytest.mark.parametrize("sql", ENGINE_CONFIGS)
def test_one_unit_moves_each_histogram_by_at_most_m(pair: tuple[Gateway, Gateway], sql: str
                                                    ) -> None:
    """HELD: per value, the weights the engine returns move by at most M in total over all
    groups and bins (truncated weight floor(M·1024/t) per row), whatever the joins,
    filters, keys and dates; every bin index is inside [0, B)."""
    d, d_prime = pair
    runs = [_engine(g, sql) for g in (d, d_prime)]
    plan = runs[0][0]
    assert plan.quantiles
    for q in plan.quantiles:
        hists = []
        for p, _, cols in runs:
            n = len(next(iter(cols.values())))
            keys = [tuple(cols[k.name][i] for k in p.keys) for i in range(n)]
            h = _histograms(q, cols, np.arange(n), n)
            assert h.shape[1] == q.bins
            for i in range(n):
                b = cols[f"{q.name}_b"][i]
                if b is not None and b is not np.ma.masked:
                    assert all(0 <= int(j) < q.bins for j in b)
            hists.append({repr(k): h[i] for i, k in enumerate(keys)})
        a, b = hists
        zero = np.zeros(q.bins)
        moved = sum(np.abs(a.get(k, zero) - b.get(k, zero)).sum() for k in set(a) | set(b))
        assert 0 < moved <= M + 1e-9, (q.name, moved)


DISTINCT_CONFIGS = [
    "SELECT COUNT(DISTINCT s) FROM t",
    "SELECT dev, COUNT(DISTINCT f) FROM t GROUP BY dev",  # NaN, ±inf, ±0.0, NULL dev
    "SELECT s, dev, COUNT(DISTINCT d), COUNT(DISTINCT e) FROM t GROUP BY s, dev",
    "SELECT e, COUNT(DISTINCT x) FILTER (WHERE f > 0) FROM t GROUP BY e",
    "SELECT r.region, COUNT(DISTINCT t.s) FROM t JOIN regions r ON t.dev = r.dev "
    "GROUP BY r.region",
    "SELECT COUNT(DISTINCT b.s) FROM t a JOIN t b ON a.uid = b.uid",
    "SELECT t.dev, COUNT(DISTINCT r.region) FROM t JOIN regions r ON t.dev = r.dev "
    "GROUP BY t.dev",
]


@pytest.mark.parametrize("sql", DISTINCT_CONFIGS)
def test_one_unit_moves_distinct_counts_by_at_most_m(pair: tuple[Gateway, Gateway], sql: str
                                                     ) -> None:
    """HELD: each unit keeps at most M (group, value) pairs (keyed hash), so all distinct
    counts of one statistic move by at most M together (L1, hence L2), the sensitivity
    both the discrete Laplace and the Gaussian noise are calibrated for."""
    d, d_prime = pair
    runs = [_engine(g, sql) for g in (d, d_prime)]
    plan = runs[0][0]
    stats = [s for s in plan.stats if s.kind == "distinct"]
    assert stats
    for s in stats:
        assert s.sensitivity(plan.max_rows, plan.max_groups) == (M, M)
        counts = []
        for p, _, cols in runs:
            n = len(next(iter(cols.values())))
            counts.append({repr(tuple(cols[k.name][i] for k in p.keys)): float(cols[s.name][i])
                           for i in range(n)})
        a, b = counts
        moved = sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))
        assert moved <= M, (s.name, moved)


# -- the exponential mechanism on real engine histograms -----------------------------------

LEVELS: dict[str, dict[str, Any]] = {"uid": {"type": "int", "role": "privacy_unit"},
          "level": {"type": "int", "bounds": [0, 20]},
          "dev": {"type": "text", "public_values": DEVS}}


@pytest.fixture(scope="module")
def extremes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Gateway]]:
    """Others at levels 8..12; the victim has 400 rows at the bottom (0) or the top (20)
    spread over every dev group."""
    root = tmp_path_factory.mktemp("extremes")
    rng = np.random.default_rng(9)
    others = [(str(u), str(int(rng.integers(8, 13))), f"'{DEVS[u % 3]}'") for u in range(1, 31)]
    worlds = {"none": others,
              "low": [*others, *[(str(VICTIM), "0", f"'{DEVS[i % 3]}'") for i in range(400)]],
              "high": [*others, *[(str(VICTIM), "20", f"'{DEVS[i % 3]}'") for i in range(400)]]}
    gws = {k: _world(root / k, LEVELS, rows, public=False) for k, rows in worlds.items()}
    yield gws
    for g in gws.values():
        g.close()


def _weights(gw: Gateway, sql: str) -> tuple[Any, Any, np.ndarray]:
    plan, cal, cols = _engine(gw, sql, delta=0.0)
    n = len(next(iter(cols.values())))
    q = plan.quantiles[0]
    keys = [tuple(cols[k.name][i] for k in plan.keys) for i in range(n)]
    h = _histograms(q, cols, np.arange(n), n)
    order = [keys.index(k) for k in sorted(keys, key=repr)]
    return plan, cal, h[order]


DRAWS = 60_000


@pytest.mark.parametrize(("sql", "side"), [("SELECT MIN(level) FROM t", "low"),
                                           ("SELECT MAX(level) FROM t", "high")])
def test_min_max_are_epsilon_dp_with_sensitivity_max_alpha(extremes: dict[str, Gateway],
                                                           sql: str, side: str) -> None:
    """HELD: MIN/MAX (ranks 0.01 / 0.99) over the real engine's histograms, the victim
    weighing M at the far end: the empirical privacy loss stays within ε = 1 with
    Δ = max(α, 1-α)·M, and shows far beyond ε with Δ = α·M (the check has power)."""
    _, cal, a = _weights(extremes["none"], sql)
    _, _, b = _weights(extremes[side], sql)
    noise = cal.quantiles[0]
    assert noise.sensitivity == pytest.approx(max(noise.alpha, 1 - noise.alpha) * M)
    edges = np.arange(-1, 21) + 0.5
    for sens, ok in ((noise.sensitivity, True), (min(noise.alpha, 1 - noise.alpha) * M, False)):
        draws = [select_quantile_bins(np.repeat(h, DRAWS, axis=0), noise.alpha, noise.epsilon,
                                      sens, SeededRandom(seed)) for h, seed in ((a, 1), (b, 2))]
        loss = privacy_loss_lower_bound(draws[0], draws[1], edges)
        assert bool(loss <= noise.epsilon) is ok, (sens, loss)


def test_unit_spread_over_groups_loses_epsilon_in_all(extremes: dict[str, Gateway]) -> None:
    """HELD: the victim's 400 rows at level 0 spread over the three dev groups (weights
    c_g, Σ c_g ≤ M); the joint release of the three groups' medians stays within the one
    ε charged.  Negative control: if each group weighed the unit at M (no cross-group
    bound), the joint loss exceeds ε."""
    sql = "SELECT dev, MEDIAN(level) FROM t GROUP BY dev"
    _, cal, a = _weights(extremes["none"], sql)
    _, _, b = _weights(extremes["low"], sql)
    assert len(cal.quantiles) == 1 and cal.epsilon == pytest.approx(1.0)
    noise = cal.quantiles[0]
    per_group_victim = (b - a).sum(axis=1)
    assert per_group_victim.sum() <= M + 1e-9 and (per_group_victim > 0).all()
    unbounded = a + (b - a) * (M / per_group_victim)[:, None]
    for other, ok in ((b, True), (unbounded, False)):
        joint = []
        for h, seed in ((a, 3), (other, 4)):
            rng = SeededRandom(seed)
            picks = [select_quantile_bins(np.repeat(h[g:g + 1], 200_000, axis=0), noise.alpha,
                                          noise.epsilon, noise.sensitivity, rng)
                     for g in range(3)]
            joint.append(picks[0] * 441 + picks[1] * 21 + picks[2])
        # Coarsen to the bins that matter (levels 0..12 hold all the mass) for power.
        coarse = [np.minimum(j // 441, 12) * 169 + np.minimum(j // 21 % 21, 12) * 13
                  + np.minimum(j % 21, 12) for j in joint]
        loss = privacy_loss_lower_bound(coarse[0], coarse[1], np.arange(-1, 13**3) + 0.5)
        assert bool(loss <= noise.epsilon) is ok, loss


# -- the charge -----------------------------------------------------------------------------

@pytest.mark.parametrize(("sql", "mechanism", "delta", "ranks"), [
    ("SELECT MEDIAN(x), MIN(x), MAX(x) FROM t", "laplace", 0.0, 3),
    ("SELECT MEDIAN(x), PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY x) FROM t", "laplace", 0.0,
     1),
    # 101 values, 99 distinct ranks: 1/100 and 99/100 are MIN's and MAX's 0.01 and 0.99.
    ("SELECT APPROX_QUANTILES(f, 100) FROM t", "laplace", 0.0, 99),
    ("SELECT QUANTILE_CONT(f, [0.5, 0.5, 0.1]), MEDIAN(f) FILTER (WHERE x > 0) FROM t",
     "laplace", 0.0, 3),
    ("SELECT MEDIAN(x) FROM t", "gaussian", 1e-6, 1),
    ("SELECT dev, MEDIAN(x), COUNT(DISTINCT s), SUM(f) FROM t GROUP BY dev", "gaussian", 1e-6,
     1),
    ("SELECT s, MEDIAN(x), COUNT(DISTINCT f) FROM t GROUP BY s", "gaussian", 1e-6, 1),
    ("SELECT s, MIN(d), MAX(d) FROM t GROUP BY s", "laplace", 1e-6, 2),
])
def test_charge_is_the_composition_of_the_events(pair: tuple[Gateway, Gateway], sql: str,
                                                 mechanism: str, delta: float, ranks: int
                                                 ) -> None:
    """HELD: one ExponentialEvent per distinct rank of a value (shared by MEDIAN and
    PERCENTILE_CONT(0.5)), each an equal share; the charge is the composition of the
    events (ε exactly the request, δ only for partition selection and Gaussian noise,
    never for quantiles alone); a repeat is free and returns the same release."""
    d, _ = pair
    plan = d.plan(sql)
    cal = calibrate(plan, 0.7, delta, mechanism)
    exps = [e for e in cal.events if isinstance(e, ExponentialEvent)]
    assert len(exps) == ranks == len(cal.quantiles)
    assert cal.epsilon == pytest.approx(0.7, rel=1e-12)
    assert cal.epsilon <= 0.7 * (1 + 1e-15)
    assert cal.delta == pytest.approx(sum(e.delta for e in cal.events))
    if not plan.partition_selection and not any(
            s.sensitivity(plan.max_rows, plan.max_groups)[0] > 0 for s in plan.stats):
        assert cal.delta == 0.0
    who = f"charge{time.time_ns()}"
    first = d.query(sql, analyst=who, epsilon=0.7, delta=delta, mechanism=mechanism)
    again = d.query(sql, analyst=who, epsilon=0.7, delta=delta, mechanism=mechanism)
    assert first.epsilon_spent == pytest.approx(cal.epsilon)
    assert first.delta_spent == pytest.approx(cal.delta)
    assert again.epsilon_spent == 0.0 and again.cached and again.rows == first.rows
    assert d.budget(who)["epsilon_spent"] == pytest.approx(cal.epsilon)


def test_compound_quantile_branches_compose(pair: tuple[Gateway, Gateway]) -> None:
    """HELD: quantile-only SELECTs count as noisy branches of a UNION ALL (ε split over
    them), take no δ under the Gaussian mechanism, and the charge composes every branch's
    events."""
    d, _ = pair
    sql = ("SELECT MEDIAN(x) AS v FROM t UNION ALL SELECT COUNT(DISTINCT s) FROM t "
           "UNION ALL SELECT MAX(f) FROM t")
    r = d.query(sql, analyst=f"cmp{time.time_ns()}", epsilon=0.9, delta=1e-6,
                mechanism="gaussian")
    assert r.epsilon_spent == pytest.approx(0.9) and r.epsilon_spent <= 0.9
    assert r.delta_spent == pytest.approx(1e-6)
    assert len(r.rows) == 3
