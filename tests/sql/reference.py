"""An independent recomputation of the bounded statistics, for golden tests.

Written from the semantics in DESIGN §2 and gateway/sql/plan.py (StatSpec), in
pandas, without any of the gateway's SQL: per unit and group, sums of clamped
values; a unit's per-group sums scaled together so it adds at most what
``max_rows`` clamped rows could; AVG/VAR from row-scaled moments centred at
the midpoint of the bounds.  Group selection is not reproduced, so cases must
keep every unit within max_groups_per_unit groups.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd


def _clamped(v: pd.Series, lo: float, hi: float) -> pd.Series:
    v = pd.to_numeric(v, errors="coerce").astype(float)
    v = v.where(~np.isnan(v))
    return v.clip(lo, hi)


def bounded_answers(rows: pd.DataFrame, domains: list[list[Any]], aggs: dict[str, list[Any]],
                    max_rows: int) -> dict[tuple[Any, ...], dict[str, float]]:
    rows = rows[rows["u"].notna()].copy()
    key_cols = [f"k{i}" for i in range(len(domains))]
    for col, domain in zip(key_cols, domains, strict=True):
        rows = rows[rows[col].isin(domain)]
    if not key_cols:
        rows["k"] = 0
        key_cols = ["k"]
        groups: list[tuple[Any, ...]] = [(0,)]
    else:
        groups = list(itertools.product(*domains))
    by = ["u", *key_cols]
    out: dict[tuple[Any, ...], dict[str, float]] = {g: {} for g in groups}
    for name, spec in aggs.items():
        func, col = spec[0], spec[1]
        lo, hi = (float(spec[2]), float(spec[3])) if len(spec) > 2 else (0.0, 1.0)
        if func in ("count", "sum"):
            v = rows[col].astype(float) if func == "count" else _clamped(rows[col], lo, hi)
            frame = rows[by].assign(v=v.fillna(0.0))
            per = frame.groupby(by, dropna=False)["v"].sum().reset_index()
            cap = max_rows * (1.0 if func == "count" else max(abs(lo), abs(hi)))
            per["a"] = per["v"].abs()
            total = per.groupby("u")["a"].transform("sum")
            per["c"] = np.where(total <= cap, per["v"], per["v"] * cap / total.where(total > 0, 1))
            sums = per.groupby(key_cols)["c"].sum()
            for g in groups:
                out[g][name] = float(sums.get(g if len(g) > 1 else g[0], 0.0))
        elif func == "units":
            frame = rows[by].assign(v=rows[col].notna().astype(float))
            per = frame.groupby(by, dropna=False)["v"].max().reset_index()
            sums = per.groupby(key_cols)["v"].sum()
            for g in groups:
                out[g][name] = float(sums.get(g if len(g) > 1 else g[0], 0.0))
        else:
            mid, half = (lo + hi) / 2, (hi - lo) / 2
            v = _clamped(rows[col], lo, hi)
            frame = rows[by].assign(n=v.notna().astype(float), s1=(v - mid).fillna(0.0),
                                    s2=((v - mid) ** 2).fillna(0.0))
            per = frame.groupby(by, dropna=False)[["n", "s1", "s2"]].sum().reset_index()
            total = per.groupby("u")["n"].transform("sum")
            f = np.where(total <= max_rows, 1.0, max_rows / total.where(total > 0, 1))
            for c in ("n", "s1", "s2"):
                per[c] = per[c] * f
            sums = per.groupby(key_cols)[["n", "s1", "s2"]].sum()
            for g in groups:
                key = g if len(g) > 1 else g[0]
                n, s1, s2 = (sums.loc[key].tolist() if key in sums.index else [0.0, 0.0, 0.0])
                nn = max(n, 1.0)
                mean_c = min(max(s1 / nn, -half), half)
                var = min(max(s2 / nn - mean_c**2, 0.0), half * half)
                if func in ("var_samp", "stddev_samp") and nn > 1:
                    var = var * nn / (nn - 1)
                value = {"avg": mid + mean_c, "var_pop": var, "var_samp": var,
                         "stddev_pop": math.sqrt(var), "stddev_samp": math.sqrt(var)}[func]
                out[g][name] = value
    return out
