"""Pass 8: run the analyst's SELECT list, HAVING, ORDER BY and LIMIT on the
noisy table, in a scratch DuckDB that holds nothing but that table.

Post-processing of a DP release is free (DESIGN §2), and running it here rather
than in the engine is what makes sure HAVING and ORDER BY can only ever see
noisy values.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from sqlglot import exp

from gateway.engine.duckdb import policy_type
from gateway.errors import BackendError
from gateway.query.perturb import NoisyTable
from gateway.sql.plan import AggSpec, Plan
from gateway.sql.postprocess_plan import NOISY_TABLE

INTEGER_AGGS = {"count", "count_units", "count_distinct"}


@dataclass(frozen=True)
class Column:
    name: str
    type: str


class PostProcessor:
    def __init__(self) -> None:
        self._con = duckdb.connect(":memory:", config={
            "autoload_known_extensions": False, "autoinstall_known_extensions": False,
            "threads": 1, "memory_limit": "1GB"})
        self._con.execute("SET enable_external_access = false")
        self._con.execute("SET lock_configuration = true")
        self._lock = threading.Lock()

    def run(self, plan: Plan, table: NoisyTable) -> tuple[list[Column], list[tuple[Any, ...]]]:
        direct = _direct(plan, table)
        if direct is not None:
            return direct
        frame = to_frame(plan, table)
        sql = plan.post.sql(dialect="duckdb")
        with self._lock:
            cur = self._con.cursor()
        try:
            cur.register(NOISY_TABLE, frame)
            res = cur.execute(sql)
            desc = res.description or []
            rows = res.fetchall()
        except duckdb.Error as e:
            raise BackendError(
                "post-processing of the noisy result failed",
                hint=f"check the arithmetic in SELECT/HAVING/ORDER BY ({type(e).__name__})",
            ) from None
        finally:
            cur.close()
        columns = [Column(d[0], policy_type(str(d[1]))) for d in desc]
        return columns, [tuple(_clean(v) for v in row) for row in rows]

    def run_public(self, rows: list[tuple[Any, ...]], names: list[str], types: list[str]
                   ) -> tuple[list[Column], list[tuple[Any, ...]]]:
        return ([Column(n, t) for n, t in zip(names, types, strict=True)],
                [tuple(_clean(_plain(v)) for v in row) for row in rows])

    def close(self) -> None:
        self._con.close()


def _agg_is_integer(plan: Plan, name: str) -> bool:
    agg = next(a for a in plan.aggs if a.name == name)
    return agg.func in INTEGER_AGGS or (agg.func == "sum" and agg.integral)


def quantile_type(plan: Plan, agg: AggSpec) -> str | None:
    """Policy type of a quantile aggregate's values (None: not a single-valued quantile)."""
    if agg.quantile is None or agg.func == "quantiles":
        return None
    q = next(q for q in plan.quantiles if q.name == agg.quantile)
    return "date" if q.kind == "date" else ("int" if q.integral else "float")


def _direct(plan: Plan, table: NoisyTable) -> tuple[list[Column], list[tuple[Any, ...]]] | None:
    """The common post-processing query only renames columns: answer it without
    a round trip through DuckDB."""
    post = plan.post
    if plan.wrapped or any(post.args.get(a) for a in ("where", "order", "limit", "offset",
                                                       "distinct", "group", "having")):
        return None
    keys = {k.name: k for k in plan.keys}
    cols, columns = [], []
    for item in post.expressions:
        if not isinstance(item, exp.Alias) or not isinstance(item.this, exp.Column):
            return None
        ref = item.this.name
        if ref in keys:
            j = list(keys).index(ref)
            cols.append([g[j] for g in table.keys])
            kind = keys[ref].type
        elif ref in table.values:
            agg = next(a for a in plan.aggs if a.name == ref)
            if agg.quantile is not None:
                kind = quantile_type(plan, agg) or "list"
                if kind == "list":
                    return None
                cols.append([int(v) if kind == "int" else v if kind == "date" else
                             _clean(float(v)) for v in table.values[ref]])
            elif _agg_is_integer(plan, ref):
                cols.append([int(v) for v in table.values[ref]])
                kind = "int"
            else:
                cols.append([_clean(float(v)) for v in table.values[ref]])
                kind = "float"
        else:
            return None
        if kind not in ("int", "float", "text", "bool", "date", "timestamp"):
            return None
        columns.append(Column(item.alias, kind))
    rows = list(zip(*cols, strict=True)) if cols else []
    return columns, rows


def to_frame(plan: Plan, table: NoisyTable) -> pd.DataFrame:
    data: dict[str, Any] = {}
    for j, key in enumerate(plan.keys):
        data[key.name] = pd.Series([g[j] for g in table.keys], dtype=object)
    for agg in plan.aggs:
        v = table.values[agg.name]
        if agg.quantile is not None:
            kind = quantile_type(plan, agg)
            data[agg.name] = (pd.Series(list(v), dtype=object) if kind in (None, "date")
                              else v.astype(np.int64 if kind == "int" else np.float64))
        elif agg.func in INTEGER_AGGS or (agg.func == "sum" and agg.integral):
            data[agg.name] = v.astype(np.int64)
        else:
            data[agg.name] = v.astype(np.float64)
    frame = pd.DataFrame(data, index=range(len(table.keys)))
    for key in plan.keys:
        frame[key.name] = frame[key.name].infer_objects()
    return frame


def _plain(v: Any) -> Any:
    """Engine (numpy) values as plain Python: masked -> None, numpy scalars -> items."""
    if v is np.ma.masked:
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def select_targets(post: exp.Select) -> list[str | None]:
    """For each output column, the aggregate column it is exactly (or None)."""
    out: list[str | None] = []
    for item in post.expressions:
        inner = item.this if isinstance(item, exp.Alias) else item
        inner = inner.unnest()
        while isinstance(inner, exp.Cast | exp.TryCast | exp.Round):
            inner = inner.this.unnest()
        if isinstance(inner, exp.Column) and inner.name.startswith("__dp_a"):
            out.append(inner.name)
        else:
            out.append(None)
    return out
