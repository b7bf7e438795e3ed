"""Neighbouring datasets D and D′ = D + one hostile unit, and their policy.

D holds ordinary users with well-behaved values.  D′ adds the *victim* (unit
``VICTIM``) with thousands of rows that cycle through every value an engine
finds hard: 64-bit extremes, NaN and infinities, text that fails every cast,
dates and timestamps at the ends of DuckDB's range (and ``infinity``).  Both
datasets get the *same* policy text, differing only in the source paths, so
every planning decision must come out identical; only noisy numbers may differ.

Dates and timestamps are written as text first and cast inside DuckDB, so the
engine's whole range is reachable (Python's datetime stops at year 9999).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import duckdb
import yaml

VICTIM = 999
M = 5  # max_rows_per_unit
L0 = 3  # max_groups_per_unit
DATASET = "sidechannel"
T2_SCHEMA = "lake"  # t2's own schema (`schema:` in the policy)
USERS = 150
VICTIM_ROWS = 3000  # rows of the victim in t
VICTIM_ROWS_T2 = 600  # rows of the victim in t2 (joined with t on the unit)
TIMEOUT_S = 3.0
# Public key domains are enumerated by evaluating the key on every combination of its
# columns' values (gateway/sql/domains.py), which costs about 0.1 ms per combination:
# a cap keeps planning fast.  i (2001 values) is then bounded but not enumerable.
MAX_GROUPS = 1500
# Keys whose public domains multiply to more rows than this are released by partition
# selection instead (limits.max_public_groups): d alone (1277 days) is released in full,
# k × cat × code × b (2400) is not.
MAX_PUBLIC_GROUPS = 1300

I_BOUNDS = (-1000, 1000)
K_BOUNDS = (0, 9)
F_BOUNDS = (-10.0, 10.0)
X_BOUNDS = (0.0, 100.0)
J_BOUNDS = (0, 50)
D_BOUNDS = ("2022-01-01", "2025-06-30")
E_BOUNDS = ("2023-01-01", "2023-12-31")
TS_BOUNDS = ("2023-01-01 00:00:00", "2024-12-31 23:59:59")
YEAR_BOUNDS = (2022, 2025)
CATS = ["a", "b", "c", "d"]
TAGS = ["p", "q", "r"]
CODES = [f"c{i:02d}" for i in range(30)]
REGIONS = ["north", "south", "east", "west"]

INT_HOSTILE: list[int | None] = [2**63 - 1, -(2**63 - 1), -(2**63), 0, None, 1, -1]
FLOAT_HOSTILE: list[float | None] = [math.nan, math.inf, -math.inf, 1e308, -1e308, -0.0,
                                     5e-324, None]
TEXT_HOSTILE: list[str | None] = [
    "abc", "", "NaN", "1e999", "2024-13-45", "'; DROP TABLE t; --", "x" * 5000, "日本語😀",
    "true", "t", None, " ", "e\u0301", "-9223372036854775809", "infinity", "%_\\",
]
# DuckDB's largest and smallest DATE, its infinities, and Python's limits.
DATE_HOSTILE: list[str | None] = ["0001-01-01", "9999-12-31", "5881580-07-10",
                                  "5877641-06-25 (BC)", "infinity", "-infinity", None,
                                  "1970-01-01"]
TS_HOSTILE: list[str | None] = ["0001-01-01 00:00:00", "9999-12-31 23:59:59",
                                "294247-01-10 04:00:54.775806", "290309-12-22 (BC) 00:00:00",
                                "infinity", "-infinity", None]
# The victim's t2.j also names ordinary units, and each of the first BRIDGED users has a
# row with t.i = BRIDGE: a join that equates a unit with a non-unit column (t.uid = t2.j,
# t.i = t2.uid) then lets the victim's rows land in many other units.
BRIDGE = VICTIM
BRIDGED = 40
J_VICTIM: list[int | None] = INT_HOSTILE + list(range(1, BRIDGED + 1))
BOOL_HOSTILE: list[bool | None] = [None, True, False]
CAT_HOSTILE: list[str | None] = ["a", "zz", "", None, "A", "x" * 5000, "d "]
CODE_HOSTILE: list[str | None] = ["c00", "c29", "nope", None, "", "C01", "x" * 5000]
TAG_HOSTILE: list[str | None] = ["p", "s", None, "", "P"]


# Column declarations of the protected tables, as the policy states them.
COLUMNS: dict[str, dict[str, dict[str, Any]]] = {
    "t": {
        "uid": {"type": "int", "role": "privacy_unit"},
        "i": {"type": "int", "bounds": list(I_BOUNDS)},
        "k": {"type": "int", "bounds": list(K_BOUNDS)},
        "n": {"type": "int"},
        "f": {"type": "float", "bounds": list(F_BOUNDS)},
        "g": {"type": "float"},
        "s": {"type": "text"},
        "cat": {"type": "text", "public_values": CATS},
        "code": {"type": "text", "public_values_from": "pub.code"},
        "b": {"type": "bool"},
        "d": {"type": "date", "bounds": list(D_BOUNDS)},
        "ts": {"type": "timestamp", "bounds": list(TS_BOUNDS)},
    },
    "t2": {
        "uid": {"type": "int", "role": "privacy_unit"},
        "x": {"type": "float", "bounds": list(X_BOUNDS)},
        "j": {"type": "int", "bounds": list(J_BOUNDS)},
        "tag": {"type": "text", "public_values": [*TAGS, None]},  # NULL: a group too
        "e": {"type": "date", "bounds": list(E_BOUNDS)},
        "s": {"type": "text"},
    },
}
# The public table's columns (every value of each is public).
PUB_COLUMNS = {"code": "text", "region": "text", "weight": "float", "rank": "int"}


def _cycle(values: list[Any], r: int) -> Any:
    return values[r % len(values)]


def _t_rows(victim: bool) -> list[tuple[Any, ...]]:
    """(uid, i, k, n, f, g, s, cat, code, b, d, ts) with d and ts as text."""
    rng = random.Random(20240611)
    rows: list[tuple[Any, ...]] = []
    for uid in range(1, USERS + 1):
        for r in range(rng.randint(1, 10)):
            day = rng.randint(0, 1276)
            rows.append((
                uid, BRIDGE if r == 0 and uid <= BRIDGED else rng.randint(-1000, 1000),
                rng.randint(0, 9), rng.randint(-10**6, 10**6),
                round(rng.uniform(-10, 10), 3), round(rng.uniform(-1e3, 1e3), 3),
                str(rng.randint(0, 99)), rng.choice(CATS), rng.choice(CODES),
                rng.random() < 0.5, f"DATE '2022-01-01' + {day}",
                f"TIMESTAMP '2022-01-01' + INTERVAL {day * 86400 + rng.randint(0, 86399)} "
                "SECOND"))
    if victim:
        for r in range(VICTIM_ROWS):
            rows.append((
                VICTIM, _cycle(INT_HOSTILE, r), _cycle(INT_HOSTILE, r + 3),
                _cycle(INT_HOSTILE, r + 5), _cycle(FLOAT_HOSTILE, r),
                _cycle(FLOAT_HOSTILE, r + 3), _cycle(TEXT_HOSTILE, r), _cycle(CAT_HOSTILE, r),
                _cycle(CODE_HOSTILE, r), _cycle(BOOL_HOSTILE, r), _cycle(DATE_HOSTILE, r),
                _cycle(TS_HOSTILE, r)))
    return rows


def _t2_rows(victim: bool) -> list[tuple[Any, ...]]:
    """(uid, x, j, tag, e, s) with e as text."""
    rng = random.Random(7)
    rows: list[tuple[Any, ...]] = []
    for uid in range(1, USERS + 1, 2):
        for _ in range(rng.randint(1, 5)):
            rows.append((uid, round(rng.uniform(0, 100), 2), rng.randint(0, 50),
                         rng.choice(TAGS), f"DATE '2023-01-01' + {rng.randint(0, 364)}",
                         str(rng.randint(0, 9))))
    if victim:
        for r in range(VICTIM_ROWS_T2):
            rows.append((VICTIM, _cycle(FLOAT_HOSTILE, r), _cycle(J_VICTIM, r),
                         _cycle(TAG_HOSTILE, r), _cycle(DATE_HOSTILE, r),
                         _cycle(TEXT_HOSTILE, r + 1)))
    return rows


def _date_sql(v: str | None, kind: str) -> str:
    """SQL for a date/timestamp cell: an expression (ordinary rows) or a literal."""
    if v is None:
        return "NULL"
    if v.startswith(("DATE ", "TIMESTAMP ")):
        return f"CAST({v} AS {kind})"
    return f"CAST('{v}' AS {kind})"


def _write(con: duckdb.DuckDBPyConnection, name: str, columns: str,
           rows: list[tuple[Any, ...]], temporal: dict[int, str], path: Path) -> None:
    """Insert rows (temporal cells as SQL snippets, which executemany cannot bind) and
    COPY the table to parquet."""
    con.execute(f"CREATE OR REPLACE TABLE {name} ({columns})")
    # Temporal cells are SQL snippets (executemany cannot bind them): a VALUES list per
    # chunk of rows, the other cells as parameters.
    for start in range(0, len(rows), 500):
        chunk = rows[start:start + 500]
        values = []
        params: list[Any] = []
        for row in chunk:
            cells = []
            for i, v in enumerate(row):
                if i in temporal:
                    cells.append(_date_sql(v, temporal[i]))
                else:
                    cells.append("?")
                    params.append(v)
            values.append("(" + ", ".join(cells) + ")")
        con.execute(f"INSERT INTO {name} VALUES " + ", ".join(values), params)
    con.execute(f"COPY {name} TO '{path}' (FORMAT parquet)")


def write_dataset(folder: Path, *, victim: bool) -> dict[str, Path]:
    """Write t, t2 and pub as parquet files under ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {n: folder / f"{n}.parquet" for n in ("t", "t2", "pub")}
    con = duckdb.connect()
    try:
        _write(con, "t", "uid BIGINT, i BIGINT, k BIGINT, n BIGINT, f DOUBLE, g DOUBLE, "
               "s VARCHAR, cat VARCHAR, code VARCHAR, b BOOLEAN, d DATE, ts TIMESTAMP",
               _t_rows(victim), {10: "DATE", 11: "TIMESTAMP"}, paths["t"])
        _write(con, "t2", "uid BIGINT, x DOUBLE, j BIGINT, tag VARCHAR, e DATE, s VARCHAR",
               _t2_rows(victim), {4: "DATE"}, paths["t2"])
        pub = [(c, REGIONS[i % len(REGIONS)], float(i) / 3.0, i) for i, c in enumerate(CODES)]
        assert list(PUB_COLUMNS) == ["code", "region", "weight", "rank"]
        con.execute("CREATE TABLE pub (code VARCHAR, region VARCHAR, weight DOUBLE, rank BIGINT)")
        con.executemany("INSERT INTO pub VALUES (?, ?, ?, ?)", pub)
        con.execute(f"COPY pub TO '{paths['pub']}' (FORMAT parquet)")
    finally:
        con.close()
    return paths


def policy_dict(paths: dict[str, Path]) -> dict[str, Any]:
    """The policy (DESIGN §1.1); identical for D and D′ except for the source paths."""
    protected = {name: {"source": str(paths[name]), "privacy_unit": "uid",
                        "max_rows_per_unit": M, "max_groups_per_unit": L0, "columns": cols}
                 for name, cols in COLUMNS.items()}
    protected["t2"]["schema"] = T2_SCHEMA  # queries may write lake.t2
    # t2's M is tuned per query (a DP histogram of rows per unit picks it, up to M):
    # queries over it run the tuning step too.
    protected["t2"]["max_rows_per_unit"] = {"auto": True, "max": M}
    protected["t2"]["max_groups_per_unit"] = {"auto": True, "max": L0}
    # ... and sums and means of x get a range tuned inside its bounds.
    protected["t2"]["columns"] = {**protected["t2"]["columns"],
                                  "x": {"type": "float", "bounds": "auto",
                                        "limits": list(X_BOUNDS)}}
    return {
        "dataset": DATASET,
        "tables": {**protected, "pub": {"source": str(paths["pub"]), "public": True}},
        "budget": {"dataset": {"epsilon": 1e15, "delta": 0.5},
                   "per_analyst": {"epsilon": 1e15, "delta": 0.5}},
        "defaults": {"epsilon": 1.0, "delta": 1e-6, "mechanism": "laplace"},
        "limits": {"query_timeout_s": TIMEOUT_S, "max_groups": MAX_GROUPS,
                   "max_public_groups": MAX_PUBLIC_GROUPS},
    }


def write_world(folder: Path, *, victim: bool) -> Path:
    """Data and policy for D (``victim=False``) or D′; returns the policy path."""
    paths = write_dataset(folder, victim=victim)
    policy = folder / "policy.yaml"
    policy.write_text(yaml.safe_dump(policy_dict(paths), sort_keys=False))
    return policy
