"""Shared helpers for tests: policies written to a temporary folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
WEB_POLICY = ROOT / "policies" / "web.yaml"


def web_policy(folder: Path, *, dataset_budget: tuple[float, float] = (1e12, 1e-3),
               analyst_budget: tuple[float, float] = (1e12, 1e-3), **visits: Any) -> Path:
    """A copy of policies/web.yaml with absolute sources, big budgets and overrides."""
    data = yaml.safe_load(WEB_POLICY.read_text())
    data["tables"]["visits"]["source"] = str(SAMPLE / "visits.parquet")
    data["tables"]["countries"]["source"] = str(SAMPLE / "countries.csv")
    data["tables"]["visits"].update(visits)
    data["budget"] = {
        "dataset": {"epsilon": dataset_budget[0], "delta": dataset_budget[1]},
        "per_analyst": {"epsilon": analyst_budget[0], "delta": analyst_budget[1]},
    }
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_policy(folder: Path, data: dict[str, Any], name: str = "policy.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def read_permit(gw: Any, analyst: str = "engine-probe") -> Any:
    """A real committed charge of a tiny ε: the permit the executor requires to read
    protected rows, for tests that drive the engine directly."""
    import uuid

    from gateway.privacy.events import LaplaceEvent
    from gateway.state.ledger import Cost

    who = gw.ledger.ensure_analyst(analyst)
    return gw.ledger.reserve(who, uuid.uuid4().hex, "query", "engine probe in a test",
                             Cost(1e-3, 0.0, (LaplaceEvent(1e-3),)))


def write_parquet(path: Path, schema: str, rows: list[tuple[Any, ...]]) -> None:
    """Rows written as a Parquet file through DuckDB, e.g. schema "u BIGINT, x DOUBLE"."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"CREATE TABLE t ({schema})")
    if rows:
        con.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(rows[0]))})", rows)
    con.execute(f"COPY t TO '{path}' (FORMAT parquet)")
    con.close()
