"""Synthetic web-analytics data for demos, tests and DP-error benchmarks.

Differential privacy is easy on tidy data and hard on real data: per-user
contribution counts are heavily skewed, sums have huge outliers, some public
groups are tiny or empty.  The benchmarks measure DP error, so this generator
deliberately reproduces those difficulties instead of drawing uniform noise:

* rows per user follow a casual/regular/heavy mixture (a few users have
  hundreds of rows, which is what contribution bounding has to cope with);
* ``country`` is Zipf-skewed with a handful of almost-empty countries, and
  ``countries.csv`` lists codes that never occur (empty public groups);
* ``spend`` is ~70% zeros with a lognormal body and rare values far above the
  policy clamp bound of 500;
* ``converted`` carries a mild logistic signal in spend/age/device so a DP
  logistic-regression demo has something to find.

Generation is streamed in fixed-size chunks (users are drawn lazily as the
chunks need them) and appended to an on-disk DuckDB table, then written to
Parquet once, so memory stays bounded by the chunk size even for 10M+ rows.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import duckdb
import numpy as np
import pandas as pd

__all__ = ["COUNTRIES", "DEVICES", "GeneratedData", "generate", "main"]

#: (code, region, relative weight).  Weights are roughly Zipf (US first) with a
#: hand-made tail so that a few countries get only a few dozen visits per 100k.
COUNTRIES: tuple[tuple[str, str, float], ...] = (
    ("US", "North America", 30.0),
    ("GB", "Europe", 12.0),
    ("DE", "Europe", 9.0),
    ("IN", "Asia", 8.0),
    ("FR", "Europe", 6.5),
    ("CA", "North America", 5.5),
    ("BR", "South America", 4.5),
    ("JP", "Asia", 3.8),
    ("AU", "Oceania", 3.2),
    ("ES", "Europe", 2.7),
    ("IT", "Europe", 2.3),
    ("NL", "Europe", 2.0),
    ("MX", "North America", 1.7),
    ("KR", "Asia", 1.5),
    ("SE", "Europe", 1.25),
    ("PL", "Europe", 1.05),
    ("CH", "Europe", 0.9),
    ("BE", "Europe", 0.75),
    ("AR", "South America", 0.62),
    ("AT", "Europe", 0.52),
    ("IE", "Europe", 0.43),
    ("SG", "Asia", 0.35),
    ("NO", "Europe", 0.28),
    ("DK", "Europe", 0.22),
    ("ZA", "Africa", 0.17),
    ("NZ", "Oceania", 0.13),
    ("FI", "Europe", 0.09),
    ("PT", "Europe", 0.06),
    ("NG", "Africa", 0.035),
    ("IS", "Europe", 0.02),
)
#: Public codes that never appear in ``visits``: GROUP BY over the public
#: country list must still produce (noisy) rows for them.
UNUSED_COUNTRIES: tuple[tuple[str, str], ...] = (
    ("LU", "Europe"),
    ("KE", "Africa"),
    ("CL", "South America"),
)
DEVICES: tuple[str, ...] = ("desktop", "mobile", "tablet", "tv")
_DEVICE_WEIGHTS = np.array([0.33, 0.55, 0.10, 0.02])
#: Per-device shifts: desktop/tv sessions run longer, desktop converts more.
_DEVICE_LOG_DURATION = np.array([0.25, -0.10, 0.10, 0.80])
_DEVICE_LOGIT = np.array([0.35, 0.0, 0.15, -0.60])

_CHUNK_ROWS = 1_000_000
_USER_BLOCK = 50_000
_DAYS = 366  # 2024 is a leap year
_HOME_STAY = 0.94  # share of a user's visits from the home country
_PRIMARY_DEVICE = 0.85  # share of a user's visits on the primary device

_TABLE_DDL = """
CREATE TABLE visits (
    visit_id BIGINT, user_id BIGINT, visit_date DATE, country VARCHAR,
    device VARCHAR, age INTEGER, duration_s DOUBLE, spend DOUBLE,
    converted BOOLEAN
)"""


@dataclass(frozen=True)
class GeneratedData:
    """What :func:`generate` wrote, so callers can report or reuse it."""

    visits_path: Path
    countries_path: Path
    rows: int
    users: int

    @property
    def paths(self) -> tuple[Path, Path]:
        """Both output files, in the order the CLI prints them."""
        return (self.visits_path, self.countries_path)


def _country_probs() -> np.ndarray:
    weights = np.array([w for _, _, w in COUNTRIES])
    return weights / weights.sum()


def _day_probs() -> np.ndarray:
    """Daily visit weights: weekday rhythm, summer dip, Nov/Dec shopping peak."""
    days = np.arange(_DAYS)
    dates = np.datetime64("2024-01-01") + days
    weekday = days % 7  # 2024-01-01 was a Monday -> 0=Mon .. 6=Sun
    week_factor = np.array([1.05, 1.08, 1.06, 1.04, 1.0, 0.82, 0.85])[weekday]
    month = dates.astype("datetime64[M]").astype(int) % 12
    month_factor = np.array([0.95, 0.92, 0.98, 1.0, 1.0, 0.93, 0.88, 0.88, 1.0, 1.05, 1.3, 1.6])[
        month
    ]
    weights = week_factor * month_factor
    return weights / weights.sum()


def _draw_visit_counts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rows per user from a casual/regular/heavy mixture.

    A single lognormal either gives too few one-visit users or too short a
    tail; the mixture gives ~95% of users 1-5 visits, a tail with dozens and
    ~0.3% heavy users with hundreds — the shape contribution bounding faces.
    """
    kind = rng.choice(3, size=n, p=[0.937, 0.06, 0.003])
    casual = np.minimum(rng.geometric(0.4, size=n), 12)
    regular = np.clip(np.rint(rng.lognormal(np.log(22), 0.55, size=n)), 6, 150)
    heavy = np.clip(np.rint(rng.lognormal(np.log(230), 0.45, size=n)), 100, 2000)
    return np.choose(kind, [casual, regular, heavy]).astype(np.int64)


class _UserPool:
    """Lazily drawn users whose remaining visits are handed out chunk by chunk.

    Drawing users in blocks only when a chunk needs them keeps memory bounded
    independent of the total row count; a user straddling a chunk boundary
    simply carries their remaining visits into the next chunk.
    """

    _ATTRS: ClassVar[dict[str, type]] = {
        "user_id": np.int64,
        "country": np.int64,
        "device": np.int64,
        "age": np.int64,
        "age_null": np.bool_,
        "buyer": np.float64,
    }

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._next_id = 1
        self._remaining = np.empty(0, dtype=np.int64)
        self._attrs: dict[str, np.ndarray] = {
            name: np.empty(0, dtype=t) for name, t in self._ATTRS.items()
        }
        self.max_user_id = 0

    def _grow(self) -> None:
        rng, n = self._rng, _USER_BLOCK
        new = {
            "user_id": np.arange(self._next_id, self._next_id + n, dtype=np.int64),
            "country": rng.choice(len(COUNTRIES), size=n, p=_country_probs()),
            "device": rng.choice(len(DEVICES), size=n, p=_DEVICE_WEIGHTS),
            # Adult ages skewed towards 25-45 with a thin tail to 90.
            "age": np.clip(18 + np.rint(rng.gamma(2.3, 9.5, size=n)), 18, 90).astype(np.int64),
            "age_null": rng.random(n) < 0.01,
            # Per-user purchase propensity, mean 0.3 -> ~70% zero-spend rows.
            "buyer": rng.beta(1.2, 2.8, size=n),
        }
        self._next_id += n
        self._remaining = np.concatenate([self._remaining, _draw_visit_counts(rng, n)])
        for name in self._ATTRS:
            self._attrs[name] = np.concatenate([self._attrs[name], new[name]])

    def take(self, n: int) -> dict[str, np.ndarray]:
        """Per-row user attributes for the next ``n`` rows (user-ordered)."""
        while self._remaining.sum() < n:
            self._grow()
        cum = np.cumsum(self._remaining)
        last = int(np.searchsorted(cum, n))  # first user whose visits reach n
        counts = self._remaining[: last + 1].copy()
        counts[last] -= cum[last] - n
        rows = {name: np.repeat(arr[: last + 1], counts) for name, arr in self._attrs.items()}
        self.max_user_id = max(self.max_user_id, int(self._attrs["user_id"][last]))
        self._remaining[last] -= counts[last]
        keep = last if self._remaining[last] > 0 else last + 1
        self._remaining = self._remaining[keep:]
        self._attrs = {name: arr[keep:] for name, arr in self._attrs.items()}
        return rows


def _loguniform(rng: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(low), np.log(high), size=n))


def _chunk(rng: np.random.Generator, users: dict[str, np.ndarray], first_id: int) -> pd.DataFrame:
    """Visit-level columns for one chunk, as small numeric codes.

    Strings, dates and NULLs are materialised later in SQL, which keeps the
    pandas frame cheap and avoids relying on NaN-to-NULL conversion rules.
    """
    n = len(users["user_id"])
    order = rng.permutation(n)  # interleave users within the chunk
    u = {name: arr[order] for name, arr in users.items()}

    day = rng.choice(_DAYS, size=n, p=_day_probs())
    away = rng.random(n) > _HOME_STAY
    country = np.where(away, rng.choice(len(COUNTRIES), size=n, p=_country_probs()), u["country"])
    switch = rng.random(n) > _PRIMARY_DEVICE
    device = np.where(switch, rng.choice(len(DEVICES), size=n, p=_DEVICE_WEIGHTS), u["device"])

    duration = rng.lognormal(np.log(150) + _DEVICE_LOG_DURATION[device], 1.0)
    long_tail = rng.random(n) < 0.004  # forgotten tabs, TV binges
    duration = np.where(long_tail, _loguniform(rng, 3600, 20_000, n), duration)
    duration = np.round(np.minimum(duration, 20_000), 1)

    december = day >= _DAYS - 31
    bought = rng.random(n) < u["buyer"] * np.where(december, 1.15, 1.0)
    amount = rng.lognormal(np.log(20), 1.1, size=n)
    big = rng.random(n)
    amount = np.where(big < 0.004, _loguniform(rng, 500, 5_000, n), amount)
    amount = np.where(big > 1 - 1.5e-4, _loguniform(rng, 5_000, 50_000, n), amount)
    spend = np.where(bought, np.round(amount, 2), 0.0)

    age_term = np.where(u["age_null"], 0.0, 0.025 * (u["age"] - 40))
    logit = -3.3 + 4.6 * bought + age_term + _DEVICE_LOGIT[device]
    converted = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))

    return pd.DataFrame(
        {
            "visit_id": np.arange(first_id, first_id + n, dtype=np.int64),
            "user_id": u["user_id"].astype(np.int64),
            "day": day.astype(np.int32),
            "country": country.astype(np.int32),
            "device": device.astype(np.int32),
            "age": u["age"].astype(np.int32),
            "age_null": u["age_null"].astype(bool),
            "duration_s": duration,
            "duration_null": rng.random(n) < 0.005,
            "spend": spend,
            "converted": converted,
        }
    )


def _insert_sql() -> str:
    codes = ", ".join(f"'{c}'" for c, _, _ in COUNTRIES)
    devices = ", ".join(f"'{d}'" for d in DEVICES)
    return f"""
        INSERT INTO visits SELECT
            visit_id, user_id, DATE '2024-01-01' + day,
            ([{codes}])[country + 1], ([{devices}])[device + 1],
            CASE WHEN age_null THEN NULL ELSE age END,
            CASE WHEN duration_null THEN NULL ELSE duration_s END,
            spend, converted
        FROM chunk"""


def _write_countries(path: Path) -> None:
    rows = [(c, r) for c, r, _ in COUNTRIES] + list(UNUSED_COUNTRIES)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["country", "region"])
        writer.writerows(sorted(rows))


def generate(
    rows: int = 100_000,
    out_dir: Path = Path("sample_data"),
    seed: int = 7,
    progress: Callable[[int, int], None] | None = None,
    *,
    chunk_rows: int = _CHUNK_ROWS,
) -> GeneratedData:
    """Write ``visits.parquet`` and ``countries.csv`` into ``out_dir``.

    Output is deterministic for a given ``(rows, seed, chunk_rows)``;
    ``chunk_rows`` only exists so tests can exercise multi-chunk streaming
    cheaply.  ``progress(done, total)`` is called after every chunk.
    """
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    visits_path = out_dir / "visits.parquet"
    countries_path = out_dir / "countries.csv"

    # Independent streams: the user population does not depend on how many
    # random numbers each chunk happens to consume.
    user_seq, row_seq = np.random.SeedSequence(seed).spawn(2)
    pool = _UserPool(np.random.default_rng(user_seq))
    row_rng = np.random.default_rng(row_seq)
    insert = _insert_sql()

    # An on-disk scratch database lets DuckDB spill instead of holding all
    # rows in RAM; it lives next to the output so it uses the same disk.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".sample-data-") as scratch:
        con = duckdb.connect(str(Path(scratch) / "scratch.duckdb"))
        try:
            con.execute("SET preserve_insertion_order = true")
            # Cap DuckDB's buffer pool: by default it caches up to 80% of RAM,
            # which would make peak memory grow with the row count.
            con.execute("SET memory_limit = '512MB'")
            con.execute(_TABLE_DDL)
            done = 0
            while done < rows:
                n = min(chunk_rows, rows - done)
                frame = _chunk(row_rng, pool.take(n), done + 1)
                con.register("chunk", frame)
                con.execute(insert)
                con.unregister("chunk")
                done += n
                if progress is not None:
                    progress(done, rows)
            tmp_out = Path(scratch) / "visits.parquet"
            target = tmp_out.as_posix().replace("'", "''")
            con.execute(f"COPY visits TO '{target}' (FORMAT parquet, COMPRESSION zstd)")
        finally:
            con.close()
        os.replace(tmp_out, visits_path)  # never leave a half-written file
    _write_countries(countries_path)
    return GeneratedData(visits_path, countries_path, rows, pool.max_user_id)


def _positive_int(text: str) -> int:
    value = int(text.replace("_", "").replace(",", ""))
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _progress_bar(done: int, total: int, width: int = 30) -> None:
    filled = width * done // total
    bar = "#" * filled + " " * (width - filled)
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r[{bar}] {100 * done // total:3d}% {done:,}/{total:,} rows{end}")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point for ``gateway sample-data``; returns an exit code."""
    parser = argparse.ArgumentParser(
        prog="gateway sample-data",
        description="Generate skewed synthetic web-analytics data (visits.parquet, countries.csv).",
    )
    parser.add_argument(
        "--rows", type=_positive_int, default=100_000, help="number of visit rows (default: 100000)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("sample_data"),
        help="output directory (default: sample_data)",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    args = parser.parse_args(argv)

    result = generate(args.rows, args.out, args.seed, progress=_progress_bar)
    for path in result.paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
