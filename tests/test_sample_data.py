"""Tests for the synthetic sample-data generator.

The benchmarks rely on the data being *hard* for DP (skewed users, outliers,
empty public groups), so besides schema and ranges these tests pin down the
skew properties that make the data useful.
"""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb
import pytest

from gateway.cli.sample_data import GeneratedData, generate, main

ROWS = 5_000
REPO_ROOT = Path(__file__).resolve().parents[1]
EXPECTED_SCHEMA = [
    ("visit_id", "BIGINT"),
    ("user_id", "BIGINT"),
    ("visit_date", "DATE"),
    ("country", "VARCHAR"),
    ("device", "VARCHAR"),
    ("age", "INTEGER"),
    ("duration_s", "DOUBLE"),
    ("spend", "DOUBLE"),
    ("converted", "BOOLEAN"),
]


def _query(path: Path, sql: str) -> list[tuple]:
    """Run ``sql`` against the parquet file exposed as ``visits``."""
    con = duckdb.connect()
    try:
        con.execute(f"CREATE VIEW visits AS SELECT * FROM read_parquet('{path.as_posix()}')")
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _one(path: Path, sql: str) -> tuple:
    return _query(path, sql)[0]


def _countries(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> GeneratedData:
    return generate(ROWS, tmp_path_factory.mktemp("sample"), seed=11)


def test_result_describes_written_files(data: GeneratedData) -> None:
    assert data.visits_path.is_file()
    assert data.countries_path.is_file()
    assert data.rows == ROWS
    assert data.users == _one(data.visits_path, "SELECT count(DISTINCT user_id) FROM visits")[0]
    # No scratch database or temp parquet left behind.
    assert sorted(p.name for p in data.visits_path.parent.iterdir()) == [
        "countries.csv",
        "visits.parquet",
    ]


def test_deterministic_for_seed(tmp_path: Path, data: GeneratedData) -> None:
    again = generate(ROWS, tmp_path / "again", seed=11)
    other = generate(ROWS, tmp_path / "other", seed=12)
    everything = "SELECT * FROM visits ORDER BY visit_id"
    rows = _query(data.visits_path, everything)
    assert rows == _query(again.visits_path, everything)
    assert rows != _query(other.visits_path, everything)
    assert again.users == data.users
    assert again.countries_path.read_bytes() == data.countries_path.read_bytes()


def test_schema_and_types(data: GeneratedData) -> None:
    described = _query(data.visits_path, "DESCRIBE visits")
    assert [(row[0], row[1]) for row in described] == EXPECTED_SCHEMA


def test_visit_ids_unique_and_dense(data: GeneratedData) -> None:
    count, distinct, lo, hi = _one(
        data.visits_path,
        "SELECT count(*), count(DISTINCT visit_id), min(visit_id), max(visit_id) FROM visits",
    )
    assert (count, distinct, lo, hi) == (ROWS, ROWS, 1, ROWS)


def test_value_ranges(data: GeneratedData) -> None:
    row = _one(
        data.visits_path,
        """SELECT min(visit_date), max(visit_date), min(age), max(age),
                  count(*) FILTER (WHERE age IS NULL),
                  count(*) FILTER (WHERE duration_s IS NULL),
                  min(duration_s), min(spend),
                  count(*) FILTER (WHERE visit_id IS NULL OR user_id IS NULL
                                   OR visit_date IS NULL OR country IS NULL
                                   OR device IS NULL OR spend IS NULL OR converted IS NULL)
           FROM visits""",
    )
    min_date, max_date, min_age, max_age, null_age, null_dur, min_dur, min_spend, others = row
    assert str(min_date) >= "2024-01-01"
    assert str(max_date) <= "2024-12-31"
    assert 18 <= min_age <= max_age <= 90
    assert 0 < null_age < 0.05 * ROWS
    assert 0 < null_dur < 0.02 * ROWS
    assert min_dur > 0
    assert min_spend >= 0
    assert others == 0
    devices = {r[0] for r in _query(data.visits_path, "SELECT DISTINCT device FROM visits")}
    assert devices <= {"desktop", "mobile", "tablet", "tv"}


def test_device_and_country_frequencies_are_skewed(data: GeneratedData) -> None:
    devices = _query(
        data.visits_path, "SELECT device FROM visits GROUP BY 1 ORDER BY count(*) DESC"
    )
    assert devices[0][0] == "mobile"
    assert devices[-1][0] == "tv"
    countries = _query(
        data.visits_path, "SELECT country, count(*) FROM visits GROUP BY 1 ORDER BY 2 DESC"
    )
    assert countries[0][0] == "US"
    assert countries[0][1] > 20 * countries[-1][1]


def test_user_attributes_are_per_user(data: GeneratedData) -> None:
    varying_age, mostly_home = _one(
        data.visits_path,
        """WITH per_user AS (
               SELECT user_id, count(DISTINCT age) AS ages, count(*) AS n,
                      max(c) AS home
               FROM (SELECT user_id, age,
                            count(*) OVER (PARTITION BY user_id, country) AS c
                     FROM visits)
               GROUP BY user_id)
           SELECT count(*) FILTER (WHERE ages > 1), avg(home / n) FROM per_user""",
    )
    assert varying_age == 0
    assert mostly_home > 0.85


def test_rows_per_user_are_skewed(data: GeneratedData) -> None:
    median, top, share_small = _one(
        data.visits_path,
        """WITH c AS (SELECT user_id, count(*) AS n FROM visits GROUP BY user_id)
           SELECT median(n), max(n), avg((n <= 5)::INT) FROM c""",
    )
    assert median <= 3
    assert top >= 20 * median
    assert share_small > 0.75
    # Roughly 15-25k users per 100k rows.
    assert 0.12 * ROWS < data.users < 0.3 * ROWS


def test_spend_and_duration_have_outliers(data: GeneratedData) -> None:
    zero_share, above_bound, long_visits = _one(
        data.visits_path,
        """SELECT avg((spend = 0)::INT), count(*) FILTER (WHERE spend > 500),
                  count(*) FILTER (WHERE duration_s > 3600)
           FROM visits""",
    )
    assert zero_share >= 0.5
    assert above_bound > 0
    assert long_visits > 0


def test_converted_tracks_spend(data: GeneratedData) -> None:
    rates = dict(
        _query(data.visits_path, "SELECT spend > 0, avg(converted::INT) FROM visits GROUP BY 1")
    )
    assert rates[True] > 0.6
    assert rates[False] < 0.15


def test_countries_csv_covers_visits_and_has_empty_groups(data: GeneratedData) -> None:
    table = _countries(data.countries_path)
    assert list(table[0]) == ["country", "region"]
    codes = {row["country"] for row in table}
    assert len(codes) == len(table)
    assert all(len(code) == 2 and code.isupper() for code in codes)
    assert all(row["region"] for row in table)
    used = {r[0] for r in _query(data.visits_path, "SELECT DISTINCT country FROM visits")}
    assert used <= codes
    assert len(codes - used) >= 2


def test_streams_across_chunks(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    result = generate(
        ROWS, tmp_path, seed=3, progress=lambda d, t: calls.append((d, t)), chunk_rows=700
    )
    assert calls == [(min(d, ROWS), ROWS) for d in range(700, ROWS + 700, 700)]
    count, distinct, users, varying_age = _one(
        result.visits_path,
        """SELECT count(*), count(DISTINCT visit_id), count(DISTINCT user_id),
                  (SELECT count(*) FROM (SELECT user_id FROM visits GROUP BY 1
                                         HAVING count(DISTINCT age) > 1))
           FROM visits""",
    )
    assert (count, distinct, varying_age) == (ROWS, ROWS, 0)
    assert users == result.users


def test_rejects_non_positive_rows(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rows"):
        generate(0, tmp_path)


def test_committed_sample_data() -> None:
    visits = REPO_ROOT / "sample_data" / "visits.parquet"
    countries = REPO_ROOT / "sample_data" / "countries.csv"
    assert visits.is_file()
    assert countries.is_file()
    assert visits.stat().st_size < 3_000_000
    assert _one(visits, "SELECT count(*) FROM visits")[0] == 100_000
    assert [(r[0], r[1]) for r in _query(visits, "DESCRIBE visits")] == EXPECTED_SCHEMA
    codes = {row["country"] for row in _countries(countries)}
    used = {r[0] for r in _query(visits, "SELECT DISTINCT country FROM visits")}
    assert used < codes


def test_main_writes_files_and_reports_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    assert main(["--rows", "2000", "--out", str(out), "--seed", "5"]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == [str(out / "visits.parquet"), str(out / "countries.csv")]
    assert "100%" in captured.err
    assert "2,000/2,000 rows" in captured.err
    assert _one(out / "visits.parquet", "SELECT count(*) FROM visits")[0] == 2_000


def test_main_rejects_bad_rows(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["--rows", "0"])
    assert excinfo.value.code == 2
    assert "positive" in capsys.readouterr().err
