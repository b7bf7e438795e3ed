"""The gateway against SmartNoise SQL and exact DuckDB: accuracy, released groups, time.

Run::

    make compare                                  # installs .[compare], then this script
    .venv/bin/python bench/compare.py             # 100k visits, eps 0.1/0.3/1/3, 20 reps (~4 min)
    .venv/bin/python bench/compare.py --quick     # 5 reps, 2,000 n-gram users: a check, not the doc
    .venv/bin/python bench/compare.py --rows 1000000 --reps 10 --out /tmp/accuracy.md
    .venv/bin/python bench/compare.py --gateway-auto-bounds   # see GATEWAY_AUTO_BOUNDS

The same queries run on the same rows through (1) the gateway in process
(``Gateway.query``), (2) SmartNoise SQL (``snsql``, the optional ``compare`` extra) over a
DuckDB connection holding the same rows, and (3) plain DuckDB for the exact answers, at
each ε of ``EPSILONS``, ``REPS`` times each. Both DP systems get the **same total ε per
query** (SmartNoise's ε is per noisy column, so each of its k columns gets ε/k: see
bench/compare_smartnoise.py), the same δ for dropping rare groups, and the same
contribution bounds (SmartNoise's metadata is generated from the gateway policy).

It writes ``docs/accuracy.md`` (every number in it comes from this run) with the plots
in ``docs/accuracy/*.png`` (bench/compare_report.py), and prints a summary to stdout;
progress goes to stderr.

Data: the committed ``sample_data/`` (100k visits), or for ``--rows N`` bench_core's
generated ``bench/.data/<N>/`` (made once, reused), plus a generated ``ngrams`` table
(``--ngram-users``, 10,000 by default): users × ~100 distinct n-grams each, with
long-tailed (Zipf) n-gram popularity, so every user touches ~100 groups (its gateway
policy allows 100 groups per user).

Switches for gateway features still being built (off by default; the script runs with
the gateway as it is, and picks up whatever the gateway does by itself later):

* ``GATEWAY_AUTO_BOUNDS`` / ``--gateway-auto-bounds``: every protected table of the
  gateway policy gets ``max_rows_per_unit: {auto: true, max: GATEWAY_AUTO_MAX}``
  (SmartNoise keeps the fixed bound: it has no tuning). If the policy loader refuses
  it, the script stops and says so.
* ``GATEWAY_TABLE_OPTIONS`` / ``--gateway-table-option KEY=YAML``: extra keys merged
  into every protected table of the gateway policy (e.g. a partition-selection option).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import math
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from bench.bench_core import SAMPLE_POLICY, SAMPLE_ROWS, data_dir, log, prepare  # noqa: E402
from gateway import Gateway  # noqa: E402
from gateway.cli.sample_data import generate  # noqa: E402

# --------------------------------------------------------------------------- configuration

EPSILONS: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
DELTA = 1e-6  # for partition selection / SmartNoise's threshold, on both sides
REPS = 20  # repetitions per (query, ε); median error over them
ROWS = SAMPLE_ROWS  # the committed sample_data/ (100k rows); --rows 1000000 for bench/.data
HEAVY_REPS_DIVISOR = 4  # queries with thousands of groups (n-grams) run REPS // 4 times (≥ 3)
EXACT_REPS = 5  # timed runs of the exact query (median)
HEADLINE_EPS = 1.0

# The n-gram table: every user touches ~NGRAM_PER_USER groups.
NGRAM_USERS = 10_000  # ~1M rows
NGRAM_PER_USER = 100
NGRAM_VOCAB = 5_000
NGRAM_ZIPF = 1.1  # popularity of the n-gram of rank r ∝ 1 / (r + 5)^NGRAM_ZIPF
NGRAM_ROWS_PER_UNIT = 100  # gateway max_rows_per_unit = SmartNoise max_ids
NGRAM_GROUPS_PER_UNIT = 100  # gateway max_groups_per_unit
NGRAM_SEED = 11
# The n-gram queries' error is taken over their NGRAM_TOP largest groups (the head an
# analyst looks at; no DP system releases the long tail), released groups over all.
NGRAM_TOP = 100

# Gateway features under development (see the module docstring). Off by default.
GATEWAY_AUTO_BOUNDS = False
GATEWAY_AUTO_MAX = 500
GATEWAY_TABLE_OPTIONS: dict[str, Any] = {}

ANALYST = "compare"


@dataclass(frozen=True)
class CompareQuery:
    key: str
    family: str
    sql: str
    grouped: bool
    selection: bool = False  # the gateway must choose the groups (keys not public): δ > 0
    heavy: bool = False  # thousands of groups: fewer repetitions
    top: int | None = None  # error over the `top` largest groups of the exact answer only

    @property
    def table(self) -> str:
        return self.sql.split(" FROM ", 1)[1].split()[0]


FAMILIES: dict[str, str] = {
    "count_group": "COUNT by group (public keys on the gateway)",
    "sum": "SUM",
    "avg": "AVG",
    "partition": "grouped, with partition selection",
    "distinct": "COUNT(DISTINCT user)",
}

QUERIES: tuple[CompareQuery, ...] = (
    CompareQuery("count_country", "count_group",
                 "SELECT country, COUNT(*) AS n FROM visits GROUP BY country", True),
    CompareQuery("count_device", "count_group",
                 "SELECT device, COUNT(*) AS n FROM visits GROUP BY device", True),
    CompareQuery("sum_spend", "sum", "SELECT SUM(spend) AS s FROM visits", False),
    CompareQuery("sum_spend_device", "sum",
                 "SELECT device, SUM(spend) AS s FROM visits GROUP BY device", True),
    CompareQuery("avg_duration", "avg", "SELECT AVG(duration_s) AS a FROM visits", False),
    CompareQuery("avg_duration_device", "avg",
                 "SELECT device, AVG(duration_s) AS a FROM visits GROUP BY device", True),
    CompareQuery("ps_count_country", "partition",
                 "SELECT country, COUNT(*) AS n FROM visits_private_keys GROUP BY country",
                 True, selection=True),
    CompareQuery("ps_sum_country", "partition",
                 "SELECT country, SUM(spend) AS s FROM visits_private_keys GROUP BY country",
                 True, selection=True),
    CompareQuery("ps_count_ngram", "partition",
                 "SELECT ngram, COUNT(*) AS n FROM ngrams GROUP BY ngram",
                 True, selection=True, heavy=True, top=NGRAM_TOP),
    CompareQuery("users", "distinct", "SELECT COUNT(DISTINCT user_id) AS u FROM visits", False),
    CompareQuery("users_device", "distinct",
                 "SELECT device, COUNT(DISTINCT user_id) AS u FROM visits GROUP BY device", True),
    CompareQuery("users_ngram", "distinct",
                 "SELECT ngram, COUNT(DISTINCT user_id) AS u FROM ngrams GROUP BY ngram",
                 True, selection=True, heavy=True, top=NGRAM_TOP),
)


@dataclass
class Config:
    rows: int = ROWS
    reps: int = REPS
    epsilons: tuple[float, ...] = EPSILONS
    delta: float = DELTA
    ngram_users: int = NGRAM_USERS
    ngram_vocab: int = NGRAM_VOCAB
    data_dir: Path | None = None  # None: bench/.data/<rows>/ (shared with bench_core)
    smartnoise: bool = True
    auto_bounds: bool = GATEWAY_AUTO_BOUNDS
    auto_max: int = GATEWAY_AUTO_MAX
    table_options: dict[str, Any] = field(default_factory=lambda: dict(GATEWAY_TABLE_OPTIONS))
    exact_reps: int = EXACT_REPS
    queries: tuple[str, ...] | None = None  # a subset by key
    save: Path | None = None  # pickle the Results here
    render: Path | None = None  # report from pickled Results instead of running

    def reps_for(self, q: CompareQuery) -> int:
        return max(3, self.reps // HEAVY_REPS_DIVISOR) if q.heavy else self.reps



# --------------------------------------------------------------------------- data


def make_ngrams(users: int, path: Path, *, per_user: int = NGRAM_PER_USER,
                vocab: int = NGRAM_VOCAB, zipf: float = NGRAM_ZIPF, seed: int = NGRAM_SEED
                ) -> Path:
    """``ngrams(user_id, ngram)``: one row per distinct (user, n-gram); each user has about
    ``per_user`` n-grams (Poisson), drawn by Zipf popularity without repeats. The n-gram of
    popularity rank r is named ``g<r>`` (zero-padded), so names sort by popularity."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    weights = 1.0 / (np.arange(1, vocab + 1) + 5.0) ** zipf
    weights /= weights.sum()
    k = np.clip(rng.poisson(per_user, users), 10, 4 * per_user)
    draws = 3 * k
    uid = np.repeat(np.arange(1, users + 1, dtype=np.int64), draws)
    rank = rng.choice(vocab, size=int(draws.sum()), p=weights)
    df = pd.DataFrame({"user_id": uid, "rank": rank}).drop_duplicates()
    keep = df.groupby("user_id").cumcount().to_numpy() < k[df["user_id"].to_numpy() - 1]
    df = df[keep]
    width = len(str(vocab))
    df = pd.DataFrame({"user_id": df["user_id"].to_numpy(),
                       "ngram": [f"g{r + 1:0{width}d}" for r in df["rank"].to_numpy()]})
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.register("df", df)
    tmp = path.with_suffix(".tmp.parquet")
    con.execute(f"COPY (SELECT * FROM df ORDER BY user_id) TO '{tmp}' (FORMAT parquet)")
    con.close()
    tmp.replace(path)
    return path


@dataclass
class Inputs:
    policy_path: Path  # the gateway's policy for this run
    policy: dict[str, Any]  # the same, loaded
    sn_policy: dict[str, Any]  # the policy SmartNoise's metadata is built from (fixed bounds)
    visits_rows: int
    visits_users: int
    ngram_rows: int
    ngram_users: int
    ngram_groups: int


def _base_policy(cfg: Config) -> tuple[dict[str, Any], Path]:
    """The sample policy with absolute sources for cfg.rows of visits, and its folder."""
    if cfg.data_dir is None:
        path = prepare(cfg.rows)  # bench/.data/<rows>/web.yaml, data generated once
        return yaml.safe_load(path.read_text()), data_dir(cfg.rows)
    folder = cfg.data_dir
    folder.mkdir(parents=True, exist_ok=True)
    if cfg.rows == SAMPLE_ROWS:
        src = ROOT / "sample_data"
    else:
        src = folder
        if not (folder / "visits.parquet").exists():
            log(f"generating {cfg.rows:,} visits into {folder} ...")
            generate(rows=cfg.rows, out_dir=folder)
    pol = yaml.safe_load(SAMPLE_POLICY.read_text())
    pol["tables"]["visits"]["source"] = str((src / "visits.parquet").resolve())
    pol["tables"]["countries"]["source"] = str((src / "countries.csv").resolve())
    return pol, folder


def prepare_inputs(cfg: Config, state_dir: Path) -> Inputs:
    base, folder = _base_policy(cfg)
    users = cfg.ngram_users
    ngrams = folder / (f"ngrams-{users}u-{NGRAM_PER_USER}pu-{cfg.ngram_vocab}v-"
                       f"z{NGRAM_ZIPF:g}-s{NGRAM_SEED}.parquet")
    if not ngrams.exists():
        log(f"generating the n-gram table ({users:,} users x ~{NGRAM_PER_USER}) ...")
        make_ngrams(users, ngrams, vocab=cfg.ngram_vocab)

    pol = copy.deepcopy(base)
    visits = pol["tables"]["visits"]
    # The same rows with no public key lists: GROUP BY country needs partition selection.
    private_keys = copy.deepcopy(visits)
    for col in ("country", "device"):
        private_keys["columns"][col] = {"type": "text"}
    tables = {"visits": visits, "visits_private_keys": private_keys,
              "ngrams": {
                  "source": str(ngrams.resolve()), "privacy_unit": "user_id",
                  "max_rows_per_unit": NGRAM_ROWS_PER_UNIT,
                  "max_groups_per_unit": NGRAM_GROUPS_PER_UNIT,
                  "columns": {"user_id": {"type": "int", "role": "privacy_unit"},
                              "ngram": {"type": "text"}}}}
    tables.update({k: v for k, v in pol["tables"].items() if k not in tables})
    pol["tables"] = tables
    big = {"epsilon": 1e9, "delta": 0.9}
    pol["budget"] = {"dataset": dict(big), "per_analyst": dict(big)}
    sn_policy = copy.deepcopy(pol)
    for t in pol["tables"].values():
        if t.get("public") or not t.get("privacy_unit"):
            continue
        if cfg.auto_bounds:
            t["max_rows_per_unit"] = {"auto": True, "max": cfg.auto_max}
        t.update(copy.deepcopy(cfg.table_options))
    path = state_dir / "compare-policy.yaml"
    path.write_text("# Written by bench/compare.py for one run.\n"
                    + yaml.safe_dump(pol, sort_keys=False))

    con = duckdb.connect()
    v = con.execute(f"SELECT COUNT(*), COUNT(DISTINCT user_id) FROM "
                    f"read_parquet('{visits['source']}')").fetchone()
    n = con.execute(f"SELECT COUNT(*), COUNT(DISTINCT user_id), COUNT(DISTINCT ngram) FROM "
                    f"read_parquet('{ngrams}')").fetchone()
    con.close()
    return Inputs(path, pol, sn_policy, int(v[0]), int(v[1]), int(n[0]), int(n[1]), int(n[2]))


def exact_connection(policy: dict[str, Any]) -> duckdb.DuckDBPyConnection:
    """Plain DuckDB with the policy's protected tables loaded in memory (as the gateway's
    engine loads them), two threads like the gateway's engine."""
    con = duckdb.connect(config={"threads": 2})
    for name, t in policy["tables"].items():
        src = str(t["source"])
        reader = "read_parquet" if src.endswith(".parquet") else "read_csv_auto"
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM {reader}(\'{src}\')')
    return con


# --------------------------------------------------------------------------- measuring

Key = Any  # a group key, () without GROUP BY


def as_answer(rows: list[tuple[Any, ...]], grouped: bool) -> dict[Key, float | None]:
    """Rows (key?, value) -> {key: value}; None for a NULL or non-finite value."""
    out: dict[Key, float | None] = {}
    for row in rows:
        key = row[0] if grouped else ()
        v = row[-1]
        try:
            f = float(v) if v is not None else None
        except (TypeError, ValueError):
            f = None
        out[key] = f if f is not None and math.isfinite(f) else None
    return out


def relative_errors(truth: dict[Key, float | None], answer: dict[Key, float | None]
                    ) -> dict[Key, float]:
    """Per group of the exact answer with a non-zero value: |noisy - exact| / |exact|; a group
    the system did not release (or released as NULL) counts as 100%."""
    out = {}
    for key, exact in truth.items():
        if not exact:
            continue
        got = answer.get(key)
        out[key] = 1.0 if got is None else abs(got - exact) / abs(exact)
    return out


@dataclass
class Run:
    """One system, one query, one ε: every repetition."""

    errors: dict[Key, list[float]] = field(default_factory=dict)
    released: list[int] = field(default_factory=list)  # groups of the data released, per rep
    extra: list[int] = field(default_factory=list)  # released groups not in the data
    coverage: list[float] = field(default_factory=list)  # share of the exact total released
    times_ms: list[float] = field(default_factory=list)
    spent: tuple[float, float] | None = None  # (ε, δ) the system charged/reported
    failures: int = 0
    failure: str | None = None
    released_keys: dict[Key, int] = field(default_factory=dict)  # times each key came out

    def add(self, truth: dict[Key, float | None], answer: dict[Key, float | None],
            ms: float, scored: dict[Key, float | None] | None = None) -> None:
        """One answer: errors over ``scored`` (default: every group of ``truth``), released
        groups and mass over ``truth``."""
        for k, e in relative_errors(truth if scored is None else scored, answer).items():
            self.errors.setdefault(k, []).append(e)
        self.released.append(sum(1 for k in answer if k in truth))
        self.extra.append(sum(1 for k in answer if k not in truth))
        total = sum(abs(v) for v in truth.values() if v)
        if total:
            self.coverage.append(sum(abs(truth[k] or 0.0) for k in answer if k in truth) / total)
        for k in answer:
            self.released_keys[k] = self.released_keys.get(k, 0) + 1
        self.times_ms.append(ms)

    def fail(self, scored: dict[Key, float | None], message: str) -> None:
        self.failures += 1
        self.failure = message
        for k, e in relative_errors(scored, {}).items():
            self.errors.setdefault(k, []).append(e)

    @property
    def reps(self) -> int:
        return len(self.times_ms) + self.failures

    @property
    def median_error(self) -> float | None:
        """Median over groups of each group's median error over the repetitions."""
        if not self.times_ms or not self.errors:
            return None
        return statistics.median(statistics.median(v) for v in self.errors.values())

    @property
    def median_released(self) -> float | None:
        return statistics.median(self.released) if self.released else None

    @property
    def median_coverage(self) -> float | None:
        return statistics.median(self.coverage) if self.coverage else None

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.times_ms) if self.times_ms else None


@dataclass
class QueryInfo:
    truth: dict[Key, float | None]
    exact_ms: float
    scored: dict[Key, float | None] = field(default_factory=dict)  # groups the error is over
    sn_mechanisms: tuple[str, ...] = ()
    sn_thresholded: bool = False
    sn_reported: dict[float, tuple[float, float]] = field(default_factory=dict)
    sn_failure: str | None = None


@dataclass
class Results:
    cfg: Config
    inputs: Inputs
    queries: list[CompareQuery]
    info: dict[str, QueryInfo]
    runs: dict[tuple[str, str, float], Run]  # (system, query key, ε)
    systems: tuple[str, ...]
    env: dict[str, str]
    seconds: float

    def run(self, system: str, q: str, eps: float) -> Run | None:
        return self.runs.get((system, q, eps))

    def error(self, system: str, q: str, eps: float) -> float | None:
        r = self.run(system, q, eps)
        return r.median_error if r else None

    def ratio(self, q: str, eps: float) -> float | None:
        g, s = self.error("gateway", q, eps), self.error("smartnoise", q, eps)
        if g is None or s is None:
            return None
        if s == 0:
            return math.inf if g > 0 else 1.0
        return g / s

    def blank(self, q: str, eps: float) -> bool:
        """Neither system released the median group: both errors 100%, a ratio of 1 that
        says nothing about their noise."""
        g, s = self.error("gateway", q, eps), self.error("smartnoise", q, eps)
        return g is not None and s is not None and g >= 1.0 and s >= 1.0

    def ratios(self, qs: list[CompareQuery] | None = None, eps: float | None = None, *,
               informative: bool = False) -> list[float]:
        """Per (query, ε) cell, gateway error / SmartNoise error; ``informative``: without
        the cells where neither system released the median group."""
        out = []
        for q in qs if qs is not None else self.queries:
            for e in [eps] if eps is not None else list(self.cfg.epsilons):
                r = self.ratio(q.key, e)
                if r is not None and not (informative and self.blank(q.key, e)):
                    out.append(r)
        return out


def _first_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _environment(cfg: Config) -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    env = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "commit": git("rev-parse", "--short", "HEAD") or "unknown",
           "dirty": "yes" if git("status", "--porcelain", "--", "gateway") else "no",
           "duckdb": duckdb.__version__, "python": platform.python_version(),
           "cpus": str(os.cpu_count()), "load": f"{os.getloadavg()[0]:.2f}"}
    if cfg.smartnoise:
        from bench.compare_smartnoise import version

        env["smartnoise"] = version()
        from importlib.metadata import version as dist_version

        env["opendp"] = dist_version("opendp")
    return env


def run(cfg: Config) -> Results:
    """Every query × ε × repetition through the gateway (and SmartNoise), against DuckDB."""
    started = time.perf_counter()
    queries = [q for q in QUERIES if cfg.queries is None or q.key in cfg.queries]
    env = _environment(cfg)
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        inputs = prepare_inputs(cfg, Path(tmp))
        log(f"visits: {inputs.visits_rows:,} rows, {inputs.visits_users:,} users; ngrams: "
            f"{inputs.ngram_rows:,} rows, {inputs.ngram_users:,} users, "
            f"{inputs.ngram_groups:,} n-grams")
        try:
            gw = Gateway.open(inputs.policy_path, state=Path(tmp) / "state.db")
        except Exception as e:
            if cfg.auto_bounds or cfg.table_options:
                raise SystemExit(
                    f"the gateway refused the compare policy with the switches on "
                    f"(auto bounds={cfg.auto_bounds}, table options={cfg.table_options}): "
                    f"{_first_line(e)}\nrun without --gateway-auto-bounds / "
                    f"--gateway-table-option until the gateway accepts them") from None
            raise
        con = exact_connection(inputs.policy)
        sn = None
        systems: tuple[str, ...] = ("gateway",)
        if cfg.smartnoise:
            from bench.compare_smartnoise import SmartNoise

            sn = SmartNoise(con, inputs.sn_policy)
            systems = ("gateway", "smartnoise")
        info: dict[str, QueryInfo] = {}
        runs: dict[tuple[str, str, float], Run] = {}
        try:
            for qi, q in enumerate(queries, 1):
                log(f"[{qi}/{len(queries)}] {q.key}: {q.sql}")
                cur = con.cursor()
                times = []
                truth_rows: list[tuple[Any, ...]] = []
                for _ in range(cfg.exact_reps + 1):  # the first run warms up
                    t0 = time.perf_counter()
                    truth_rows = cur.execute(q.sql).fetchall()
                    times.append((time.perf_counter() - t0) * 1e3)
                cur.close()
                truth = as_answer(truth_rows, q.grouped)
                scored = truth
                if q.top is not None:
                    head = sorted(truth, key=lambda k: -abs(truth[k] or 0.0))[: q.top]
                    scored = {k: truth[k] for k in head}
                qinfo = QueryInfo(truth, statistics.median(times[1:] or times), scored)
                info[q.key] = qinfo
                acc = None
                if sn is not None:
                    try:
                        acc = sn.accounting(q.sql, q.grouped)
                        qinfo.sn_mechanisms = acc.mechanisms
                        qinfo.sn_thresholded = acc.thresholded
                    except Exception as e:
                        qinfo.sn_failure = _first_line(e)
                        log(f"  SmartNoise cannot plan it: {qinfo.sn_failure}")
                for eps in cfg.epsilons:
                    g_run = runs[("gateway", q.key, eps)] = Run()
                    s_run = None
                    privacy = None
                    if sn is not None:
                        s_run = runs[("smartnoise", q.key, eps)] = Run()
                        if acc is None:
                            s_run.failure = qinfo.sn_failure
                        else:
                            privacy = sn.privacy(eps, cfg.delta, acc)
                            qinfo.sn_reported[eps] = sn.reported_cost(q.sql, q.grouped, privacy)
                            s_run.spent = qinfo.sn_reported[eps]
                    for i in range(cfg.reps_for(q)):
                        # A fresh ε for every call: a repeat at the same ε is the cached answer.
                        e_i = eps * (1.0 + (i + 1) * 1e-9)
                        if not (g_run.failures and not g_run.times_ms):  # refused: stop
                            _gateway_call(gw, q, e_i, cfg.delta, qinfo, g_run)
                        if s_run is not None and privacy is not None and not (
                                s_run.failures and not s_run.times_ms):
                            _smartnoise_call(sn, q, privacy, qinfo, s_run)
                    log(f"  eps={eps:<4g} gateway {_brief(g_run)}  smartnoise "
                        f"{_brief(s_run) if s_run else '-'}")
        finally:
            gw.close()
            con.close()
    env["load_end"] = f"{os.getloadavg()[0]:.2f}"
    return Results(cfg, inputs, queries, info, runs, systems, env,
                   time.perf_counter() - started)


def _gateway_call(gw: Gateway, q: CompareQuery, eps: float, delta: float, info: QueryInfo,
                  out: Run) -> None:
    t0 = time.perf_counter()
    try:
        r = gw.query(q.sql, analyst=ANALYST, epsilon=eps, delta=delta)
    except Exception as e:
        out.fail(info.scored, _first_line(e))
        if out.failures == 1 and not out.times_ms:
            log("  gateway failed: " + traceback.format_exc().strip().splitlines()[-1])
        return
    ms = (time.perf_counter() - t0) * 1e3
    if out.spent is None:
        out.spent = (float(r.epsilon_spent), float(r.delta_spent))
    out.add(info.truth, as_answer(r.rows, q.grouped), ms, info.scored)


def _smartnoise_call(sn: Any, q: CompareQuery, privacy: Any, info: QueryInfo, out: Run
                     ) -> None:
    t0 = time.perf_counter()
    try:
        rows = sn.query(q.sql, q.grouped, privacy)
    except Exception as e:
        out.fail(info.scored, _first_line(e))
        return
    out.add(info.truth, as_answer(rows, q.grouped), (time.perf_counter() - t0) * 1e3,
            info.scored)


def _brief(r: Run) -> str:
    if r.median_error is None:
        return f"failed ({r.failure})"
    return (f"err {r.median_error:7.2%} released {r.median_released:g} "
            f"{r.median_ms:7.1f} ms" + (f" [{r.failures} failed]" if r.failures else ""))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> tuple[Config, Path, Path]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=lambda s: int(float(s.lower().replace("k", "e3")
                                                      .replace("m", "e6"))), default=ROWS,
                    help="visits rows (100k uses the committed sample_data/)")
    ap.add_argument("--reps", type=int, default=REPS)
    ap.add_argument("--eps", default=",".join(f"{e:g}" for e in EPSILONS),
                    help="comma-separated epsilons")
    ap.add_argument("--ngram-users", type=int, default=NGRAM_USERS)
    ap.add_argument("--ngram-vocab", type=int, default=NGRAM_VOCAB)
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="where the data is generated (default: bench/.data/<rows>/)")
    ap.add_argument("--exact-reps", type=int, default=EXACT_REPS)
    ap.add_argument("--queries", default=None, help="comma-separated query keys (a subset)")
    ap.add_argument("--quick", action="store_true", help="5 reps, 2,000 n-gram users")
    ap.add_argument("--no-smartnoise", action="store_true",
                    help="gateway and DuckDB only (also when snsql is not installed)")
    ap.add_argument("--gateway-auto-bounds", action="store_true", default=GATEWAY_AUTO_BOUNDS,
                    help=f"max_rows_per_unit: {{auto: true, max: {GATEWAY_AUTO_MAX}}} on the "
                    "gateway's protected tables")
    ap.add_argument("--gateway-auto-max", type=int, default=GATEWAY_AUTO_MAX)
    ap.add_argument("--gateway-table-option", action="append", default=[], metavar="KEY=YAML",
                    help="an extra key for every protected table of the gateway policy")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "accuracy.md",
                    help="the markdown file to write")
    ap.add_argument("--png-dir", type=Path, default=None,
                    help="where the plots go (default: <out without .md>/)")
    ap.add_argument("--save", type=Path, default=None,
                    help="also pickle the run's results here (for --render)")
    ap.add_argument("--render", type=Path, default=None,
                    help="run nothing: write the report from results saved by --save")
    a = ap.parse_args(argv)
    options = dict(GATEWAY_TABLE_OPTIONS)
    for item in a.gateway_table_option:
        k, sep, v = item.partition("=")
        if not sep:
            ap.error(f"--gateway-table-option wants KEY=YAML, got {item!r}")
        options[k.strip()] = yaml.safe_load(v)
    cfg = Config(rows=a.rows, reps=5 if a.quick else a.reps,
                 epsilons=tuple(float(x) for x in a.eps.split(",")),
                 ngram_users=2000 if a.quick else a.ngram_users, ngram_vocab=a.ngram_vocab,
                 data_dir=a.data_dir, exact_reps=a.exact_reps, auto_bounds=a.gateway_auto_bounds,
                 auto_max=a.gateway_auto_max, table_options=options,
                 queries=tuple(a.queries.split(",")) if a.queries else None)
    if not a.no_smartnoise:
        try:
            import snsql  # noqa: F401
        except ImportError:
            log("snsql is not installed (pip install -e '.[compare]'): gateway and DuckDB only")
            cfg.smartnoise = False
    else:
        cfg.smartnoise = False
    cfg.save, cfg.render = a.save, a.render
    png = a.png_dir if a.png_dir is not None else a.out.with_suffix("")
    return cfg, a.out, png


def main(argv: list[str] | None = None) -> int:
    from bench.compare_report import summary, write_report

    cfg, out, png_dir = parse_args(argv)
    if cfg.render is not None:
        with cfg.render.open("rb") as fh:
            res = pickle.load(fh)
    else:
        log(f"compare: {cfg.rows:,} rows, eps {cfg.epsilons}, {cfg.reps} reps, delta "
            f"{cfg.delta:g}, SmartNoise {'on' if cfg.smartnoise else 'off'}, gateway auto "
            f"bounds {'on' if cfg.auto_bounds else 'off'}")
        res = run(cfg)
        if cfg.save is not None:
            with cfg.save.open("wb") as fh:
                pickle.dump(res, fh)
    write_report(res, out, png_dir)
    print(summary(res))
    log(f"wrote {out} and {png_dir}/ in {res.seconds:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
