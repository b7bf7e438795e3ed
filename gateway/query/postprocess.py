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
import sqlglot
from sqlglot import exp

from gateway.engine.duckdb import CANONICAL, policy_type
from gateway.errors import BackendError
from gateway.query.cells import (
    ROW_ID,
    Cell,
    cell_half_widths,
    output_cells,
    row_ids,
    thread_rows,
)
from gateway.query.perturb import NoisyTable
from gateway.sql.plan import AggSpec, Plan
from gateway.sql.postprocess_plan import NOISY_TABLE

INTEGER_AGGS = {"count", "count_units", "count_distinct"}


@dataclass(frozen=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True)
class Released:
    """A post-processed answer: rows, each cell's 95% half-width (None: none, see
    :mod:`gateway.query.cells`), and which columns come from noisy aggregates."""

    columns: list[Column]
    rows: list[tuple[Any, ...]]
    ci95: list[tuple[float | None, ...]]
    noisy: tuple[bool, ...]


class PostProcessor:
    def __init__(self) -> None:
        self._con = duckdb.connect(":memory:", config={
            "autoload_known_extensions": False, "autoinstall_known_extensions": False,
            "threads": 1, "memory_limit": "1GB"})
        self._con.execute("SET enable_external_access = false")
        self._con.execute("SET lock_configuration = true")
        self._lock = threading.Lock()

    def run(self, plan: Plan, table: NoisyTable) -> Released:
        """The post query over the noisy table, with each cell's 95% half-width."""
        cells = output_cells(plan)
        noisy = tuple(c.noisy for c in cells)
        direct = _direct(plan, table)
        if direct is not None:
            columns, rows = direct
            return Released(columns, rows, cell_half_widths(cells, table, range(len(rows))),
                            noisy)
        # Carry a hidden row id through the post query when some column has a half-width.
        threaded = thread_rows(plan.post) if any(c.agg for c in cells) else None
        frame = to_frame(plan, table, row_id=threaded is not None)
        sql = (threaded or plan.post).sql(dialect="duckdb")
        desc, rows = self._execute(sql, {NOISY_TABLE: frame},
                                   "check the arithmetic in SELECT/HAVING/ORDER BY")
        hidden = [i for i, d in enumerate(desc) if d[0] == ROW_ID] if threaded else []
        ids = row_ids([r[hidden[0]] for r in rows]) if hidden else [None] * len(rows)
        if hidden:
            keep = [i for i in range(len(desc)) if i not in hidden]
            desc = [desc[i] for i in keep]
            rows = [tuple(r[i] for i in keep) for r in rows]
        columns = [Column(d[0], policy_type(str(d[1]))) for d in desc]
        if len(cells) != len(columns):  # cannot happen; never guess which cell is which
            cells = [Cell(noisy=False)] * len(columns)
            noisy = tuple(c.noisy for c in cells)
        return Released(columns, [tuple(_clean(v) for v in row) for row in rows],
                        cell_half_widths(cells, table, ids), noisy)

    def _execute(self, sql: str, frames: dict[str, pd.DataFrame], hint: str
                 ) -> tuple[list[Any], list[tuple[Any, ...]]]:
        """Run ``sql`` over ``frames`` alone on a cursor of the scratch connection; a
        failure is a BackendError that names no value (the frames hold noisy ones)."""
        with self._lock:
            cur = self._con.cursor()
        try:
            for name, frame in frames.items():
                cur.register(name, frame)
            res = cur.execute(sql)
            return list(res.description or []), res.fetchall()
        except duckdb.Error as e:
            raise BackendError("post-processing of the noisy result failed",
                               hint=f"{hint} ({type(e).__name__})") from None
        finally:
            cur.close()

    def run_public(self, rows: list[tuple[Any, ...]], names: list[str], types: list[str]
                   ) -> tuple[list[Column], list[tuple[Any, ...]]]:
        return ([Column(n, t) for n, t in zip(names, types, strict=True)],
                [tuple(_clean(_plain(v)) for v in row) for row in rows])

    def describe(self, plan: Plan) -> list[Column]:
        """The columns :meth:`run` gives ``plan``, from types alone: the post query bound
        over an empty noisy table typed from the plan (data-free)."""
        cte = exp.CTE(this=sqlglot.parse_one(
            "SELECT " + ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in
                                  noisy_schema(plan).items()) + " LIMIT 0", dialect="duckdb"),
            alias=exp.TableAlias(this=exp.to_identifier(NOISY_TABLE)))
        post = plan.post.copy()
        ctes = post.args["with_"].expressions if post.args.get("with_") else []
        post.set("with_", exp.With(expressions=[cte, *ctes]))
        return self.run_sql(post.sql(dialect="duckdb"), {})[0]

    def run_sql(self, sql: str, frames: dict[str, pd.DataFrame]
                ) -> tuple[list[Column], list[tuple[Any, ...]]]:
        """``sql`` over ``frames`` (registered under their names) and nothing else: the
        combination of noisy results (:mod:`gateway.query.compound`)."""
        desc, rows = self._execute(sql, frames, "check the ORDER BY / LIMIT over the noisy "
                                   "results")
        return ([Column(d[0], policy_type(str(d[1]))) for d in desc],
                [tuple(_clean(v) for v in row) for row in rows])

    def close(self) -> None:
        self._con.close()


def noisy_schema(plan: Plan) -> dict[str, str]:
    """Column -> DuckDB type of the noisy table :func:`to_frame` builds for ``plan``."""
    out = {k.name: CANONICAL.get(k.type, "VARCHAR") for k in plan.keys}
    for agg in plan.aggs:
        if agg.quantile is not None:
            q = next(q for q in plan.quantiles if q.name == agg.quantile)
            one = "DATE" if q.kind == "date" else ("BIGINT" if q.integral else "DOUBLE")
            out[agg.name] = one + "[]" if agg.func == "quantiles" else one
        elif _agg_is_integer(plan, agg.name):
            out[agg.name] = "BIGINT"
        else:
            out[agg.name] = "DOUBLE"
    return out


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


# Nullable column types for keys with NULL as a public value (an int key with a NULL
# would otherwise become a float column).
_NULLABLE = {"int": "Int64", "float": "Float64", "bool": "boolean", "text": "string"}


def to_frame(plan: Plan, table: NoisyTable, *, row_id: bool = False) -> pd.DataFrame:
    data: dict[str, Any] = {}
    nullable: set[str] = set()
    for j, key in enumerate(plan.keys):
        values = [g[j] for g in table.keys]
        if key.type in _NULLABLE and any(v is None for v in values):
            data[key.name] = pd.Series(values, dtype=_NULLABLE[key.type])
            nullable.add(key.name)
        else:
            data[key.name] = pd.Series(values, dtype=object)
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
    if row_id:
        data[ROW_ID] = np.arange(len(table.keys), dtype=np.int64)
    frame = pd.DataFrame(data, index=range(len(table.keys)))
    for key in plan.keys:
        if key.name not in nullable:
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
