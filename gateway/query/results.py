"""What the gateway hands back: released results, explanations, budgets.

Also the codec that stores a release (the noisy statistics) as the answer to a
repeated query: the same query at the same ε returns exactly the same noisy
statistics, so averaging repeats gains an attacker nothing (DESIGN §2, Repeats);
the aggregates are recomputed from them for each request.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gateway.query.perturb import NoisyStats
from gateway.query.postprocess import Column


@dataclass(frozen=True)
class Accuracy:
    column: str
    mechanism: str
    noise_scale: float | None
    ci95: float | None
    # DP quantiles: by how many values (rows, weighted) the chosen rank may miss, at 95%
    # (their error has no data-independent width in value units).
    rank_error95: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.rank_error95 is None:  # the contract's four keys, a fifth for quantiles
            del d["rank_error95"]
        return d


@dataclass(frozen=True)
class QueryResult:
    query_id: str
    columns: list[Column]
    rows: list[tuple[Any, ...]]
    epsilon_spent: float
    delta_spent: float
    accuracy: list[Accuracy]
    cached: bool
    budget: dict[str, float] = field(default_factory=dict)

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame.from_records(self.rows, columns=[c.name for c in self.columns])

    def to_dict(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "columns": [{"name": c.name, "type": c.type} for c in self.columns],
            "rows": [[jsonable(v) for v in row] for row in self.rows],
            "epsilon_spent": self.epsilon_spent,
            "delta_spent": self.delta_spent,
            "budget": dict(self.budget),
            "accuracy": [a.to_dict() for a in self.accuracy],
            "cached": self.cached,
        }


@dataclass(frozen=True)
class Explanation:
    rewritten_sql: str
    aggregates: list[dict[str, Any]]
    partition_selection: dict[str, Any] | None
    epsilon_cost: float
    delta_cost: float
    accuracy: list[Accuracy]
    group_keys: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rewritten_sql": self.rewritten_sql,
            "aggregates": self.aggregates,
            "group_keys": self.group_keys,
            "partition_selection": self.partition_selection,
            "epsilon_cost": self.epsilon_cost,
            "delta_cost": self.delta_cost,
            "accuracy": [a.to_dict() for a in self.accuracy],
        }


def jsonable(v: Any) -> Any:
    if isinstance(v, list | tuple):  # APPROX_QUANTILES
        return [jsonable(x) for x in v]
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.hex()
    return v


# -- the answer cache codec ---------------------------------------------------------------

def _tag(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return {"$dt": v.isoformat()}
    if isinstance(v, dt.date):
        return {"$d": v.isoformat()}
    if isinstance(v, decimal.Decimal):
        return {"$dec": str(v)}
    if isinstance(v, np.generic):
        return v.item()
    return v


def _untag(v: Any) -> Any:
    if isinstance(v, dict):
        if "$dt" in v:
            return dt.datetime.fromisoformat(v["$dt"])
        if "$d" in v:
            return dt.date.fromisoformat(v["$d"])
        if "$dec" in v:
            return decimal.Decimal(v["$dec"])
    return v


def encode_release(release: NoisyStats) -> str:
    return json.dumps({
        "keys": [[_tag(v) for v in k] for k in release.keys],
        "stats": {n: [float(x) for x in a] for n, a in release.stats.items()},
    })


def decode_release(text: str) -> NoisyStats:
    d = json.loads(text)
    return NoisyStats(
        [tuple(_untag(v) for v in k) for k in d["keys"]],
        {n: np.asarray(a, dtype=np.float64) for n, a in d["stats"].items()},
    )
