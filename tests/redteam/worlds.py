"""Neighbouring datasets for the red-team reproducers: D, and D′ = D plus one victim.

Each world is one protected table ``t`` (privacy unit ``uid``) written to parquet
under a temporary folder, with a policy that is identical for D and D′ except for
the source path.  Rows are given as SQL value tuples so that values Python cannot
hold (DATE 'infinity', year 5881580) can be written too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import yaml

from gateway import Gateway
from gateway.errors import GatewayError

VICTIM = 999
ENGINE_TYPES = {"int": "BIGINT", "float": "DOUBLE", "text": "VARCHAR", "bool": "BOOLEAN",
                "date": "DATE", "timestamp": "TIMESTAMP"}


def open_world(folder: Path, columns: dict[str, dict[str, Any]],
               rows: Sequence[Sequence[str]], *, max_rows: int = 5, max_groups: int = 3,
               limits: dict[str, Any] | None = None) -> Gateway:
    """A Gateway over table ``t`` holding ``rows`` (tuples of SQL expressions)."""
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        decl = ", ".join(f"{n} {ENGINE_TYPES[c['type']]}" for n, c in columns.items())
        con.execute(f"CREATE TABLE t ({decl})")
        if rows:
            values = ", ".join("(" + ", ".join(r) + ")" for r in rows)
            con.execute(f"INSERT INTO t VALUES {values}")
        con.execute(f"COPY t TO '{folder / 't.parquet'}' (FORMAT parquet)")
    finally:
        con.close()
    policy = {
        "dataset": "redteam",
        "tables": {"t": {"source": str(folder / "t.parquet"), "privacy_unit": "uid",
                         "max_rows_per_unit": max_rows, "max_groups_per_unit": max_groups,
                         "columns": columns}},
        "budget": {"dataset": {"epsilon": 1e12, "delta": 0.5},
                   "per_analyst": {"epsilon": 1e12, "delta": 0.5}},
        "defaults": {"epsilon": 1.0, "delta": 1e-6, "mechanism": "laplace"},
        "limits": {"query_timeout_s": 5.0, **(limits or {})},
    }
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return Gateway.open(path, state=folder / f"state-{time.time_ns()}.db")


@dataclass
class Pair:
    d: Gateway
    d_prime: Gateway

    def close(self) -> None:
        self.d.close()
        self.d_prime.close()


def open_pair(tmp: Path, columns: dict[str, dict[str, Any]], others: Sequence[Sequence[str]],
              victim: Sequence[Sequence[str]], **kw: Any) -> Pair:
    """D holds ``others``; D′ holds ``others`` and the victim's rows."""
    return Pair(open_world(tmp / "d", columns, others, **kw),
                open_world(tmp / "d_prime", columns, [*others, *victim], **kw))


def outcome(fn: Any) -> tuple[str, str]:
    """What an analyst observes of a call: ("ok", "") or (error code, message).  An
    exception that is not a GatewayError (an HTTP 500) is reported as "crash"."""
    try:
        fn()
    except GatewayError as e:
        return e.code, e.message
    except Exception as e:  # any other exception is itself a finding
        return "crash", f"{type(e).__name__}: {e}"
    return "ok", ""
