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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from gateway.errors import InvalidRequest
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
    # Per row, aligned with columns: the cell's 95% half-width, None for keys and for
    # values without one (gateway/query/cells.py says which).
    ci95: list[tuple[float | None, ...]] = field(default_factory=list)
    # Per column: computed from noisy aggregates (gets a <col>_ci95 column in reports).
    noisy: tuple[bool, ...] = ()
    notes: list[str] = field(default_factory=list)  # how the answer was made, in words
    # Accuracy-first requests (ci95=): the target the chosen ε meets (query/accuracy_first.py).
    target_ci95: float | None = None

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame.from_records(self.rows, columns=[c.name for c in self.columns])

    def reported(self, report: str | None) -> QueryResult:
        """The result as SQL clients ask for it: ``report='ci95'`` adds a float column
        ``<col>_ci95`` after each column computed from noisy aggregates, holding that
        cell's 95% half-width ('none' or None: unchanged)."""
        check_report(report)
        if report in (None, "none") or not any(self.noisy):
            return self

        def spread(values: tuple[Any, ...], ci: tuple[float | None, ...]) -> tuple[Any, ...]:
            return tuple(v for j, x in enumerate(values)
                         for v in ((x, ci[j]) if self.noisy[j] else (x,)))

        nones = tuple(None for _ in self.columns)
        cis = self.ci95 if len(self.ci95) == len(self.rows) else [nones] * len(self.rows)
        return replace(
            self, columns=ci95_columns(self.columns, self.noisy),
            rows=[spread(row, ci) for row, ci in zip(self.rows, cis, strict=True)],
            ci95=[spread(ci, nones) for ci in cis],
            noisy=tuple(f for n in self.noisy for f in ((n, False) if n else (n,))))

    def to_dict(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "columns": [{"name": c.name, "type": c.type} for c in self.columns],
            "rows": [[jsonable(v) for v in row] for row in self.rows],
            "ci95": [list(ci) for ci in self.ci95],
            "epsilon_spent": self.epsilon_spent,
            "delta_spent": self.delta_spent,
            "budget": dict(self.budget),
            "accuracy": [a.to_dict() for a in self.accuracy],
            "cached": self.cached,
            "notes": list(self.notes),
            **({} if self.target_ci95 is None else {"target_ci95": self.target_ci95}),
        }


REPORTS = ("none", "ci95")


def check_report(report: str | None) -> None:
    if report is not None and report not in REPORTS:
        raise InvalidRequest(f"unknown report {report!r}", hint="use 'ci95' or 'none'")


def ci95_columns(columns: list[Column], noisy: tuple[bool, ...]) -> list[Column]:
    """``columns`` with ``<col>_ci95`` (float) after each noisy one."""
    out: list[Column] = []
    for c, n in zip(columns, noisy, strict=True):
        out.append(c)
        if n:
            out.append(Column(f"{c.name}_ci95", "float"))
    return out


@dataclass(frozen=True)
class Explanation:
    rewritten_sql: str
    aggregates: list[dict[str, Any]]
    partition_selection: dict[str, Any] | None
    epsilon_cost: float
    delta_cost: float
    accuracy: list[Accuracy]
    group_keys: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # A statement of several SELECTs (UNION ALL, ...): each one's plan, share and cost
    # (gateway/query/compound.py); empty for one SELECT.
    branches: list[dict[str, Any]] = field(default_factory=list)
    # A bound tuned at run time (`auto` in the policy): how it will be chosen.
    tuning: dict[str, Any] | None = None
    target_ci95: float | None = None  # accuracy-first: the target the costed ε meets

    def to_dict(self) -> dict[str, Any]:
        out = {
            "rewritten_sql": self.rewritten_sql,
            "aggregates": self.aggregates,
            "group_keys": self.group_keys,
            "partition_selection": self.partition_selection,
            "epsilon_cost": self.epsilon_cost,
            "delta_cost": self.delta_cost,
            "accuracy": [a.to_dict() for a in self.accuracy],
            "notes": list(self.notes),
        }
        if self.branches:
            out["branches"] = self.branches
        if self.tuning is not None:
            out["tuning"] = self.tuning
        if self.target_ci95 is not None:
            out["target_ci95"] = self.target_ci95
        return out


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
        **({"tuned": release.tuned} if release.tuned else {}),
    })


def decode_release(text: str) -> NoisyStats:
    d = json.loads(text)
    return NoisyStats(
        [tuple(_untag(v) for v in k) for k in d["keys"]],
        {n: np.asarray(a, dtype=np.float64) for n, a in d["stats"].items()},
        {k: int(v) for k, v in d.get("tuned", {}).items()},
    )
