"""SmartNoise SQL (``snsql``) for bench/compare.py: metadata from a gateway policy, and a
reader over the same DuckDB data, charged the same total ε per query as the gateway.

Only imported when ``snsql`` is installed (``pip install -e .[compare]``).

How SmartNoise spends ε (snsql 1.0.10, read from its source: ``sql/private_reader.py``,
``_ast/ast.py``, ``sql/odometer.py``, ``sql/_mechanisms/laplace.py``):

* ``Privacy(epsilon=e)`` is the ε of **each** noisy column of the rewritten subquery
  (one mechanism per column), not of the query. AVG is a noisy SUM and a noisy COUNT;
  with ``censor_dims`` (the default) every query also gets a hidden
  ``COUNT(DISTINCT <private_id>)`` "keycount" column, noised and thresholded to drop
  rare groups. The odometer then composes the mechanisms: a query with k of them costs
  k·e (basic composition is the smallest of its bounds for small k).
* So for an equal total ε per query we count the mechanisms SmartNoise will run for the
  query (``_get_mechanism_costs``) and give each ε/k.
* δ: only the keycount threshold uses ``Privacy.delta`` (τ = m·(1 − ln(2δ/m)/e) with
  m = ``max_ids``). The odometer adds a slack of δ/2 to what it reports (its
  ``tol``), so a thresholded query at δ = 1e-6 is *reported* as δ ≈ 1.5e-6.
* ``max_ids`` (rows per user, reservoir-sampled by ``ROW_NUMBER() OVER (PARTITION BY
  user ORDER BY RANDOM())``) is the only contribution bound: a user may reach up to
  ``max_ids`` groups, so noise scales *and the threshold* use ``max_ids`` as the L1 and
  L0 bound. Counts get sensitivity 1 × max_ids, sums max(|lower|, |upper|) × max_ids,
  ``COUNT(DISTINCT user)`` too is noised with scale max_ids/e even without GROUP BY.
* ``use_dpsu`` (off by default) would run DP set union with a hard-coded ε = 1 that the
  odometer does not charge; it stays off here.

SmartNoise has no DuckDB reader; its PostgreSQL reader is a thin pipe over any DB-API
connection, so it runs here over a DuckDB connection holding the same rows as the
gateway's engine. DuckDB refuses a volatile ``ORDER BY RANDOM()`` inside a window, so
the one place SmartNoise writes it (the per-user reservoir sample) is rewritten to draw
``random()`` one level down and order by that column: the same uniformly random choice
of at most ``max_ids`` rows per user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import snsql
from snsql import Privacy

__all__ = ["SmartNoise", "metadata_from_policy", "version"]

_TYPES = {"int": "int", "float": "float", "text": "string", "bool": "boolean",
          "date": "datetime", "timestamp": "datetime"}

_RESERVOIR = re.compile(
    r"ORDER BY RANDOM \( \) \) AS row_num FROM \( (?P<inner>.*) \) AS "
    r"(?P<alias>clamped|not_clamped) \)", re.S)


def version() -> str:
    from importlib.metadata import version as v

    return v("smartnoise-sql")


def duckdb_sql(sql: str) -> str:
    """SmartNoise's SQL with the reservoir sample's ``ORDER BY RANDOM()`` made acceptable to
    DuckDB (a ``random()`` column drawn in the subquery, ordered by)."""
    if "RANDOM" not in sql:
        return sql
    out, n = _RESERVOIR.subn(
        lambda m: (f"ORDER BY __sn_rand ) AS row_num FROM ( SELECT *, random() AS __sn_rand "
                   f"FROM ( {m['inner']} ) AS {m['alias']}_ ) AS {m['alias']} )"), sql)
    if n != 1:
        raise ValueError(f"unexpected SmartNoise SQL shape (reservoir sample): {sql[:300]}")
    return out


class _Cursor:
    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self._cur = cur

    def execute(self, sql: str) -> _Cursor:
        self._cur.execute(duckdb_sql(sql))
        return self

    @property
    def description(self) -> Any:
        return self._cur.description

    def __iter__(self) -> Any:
        return iter(self._cur.fetchall())


class _Connection:
    """The DB-API surface SmartNoise's PostgreSQL reader uses, over DuckDB."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con

    def cursor(self) -> _Cursor:
        return _Cursor(self._con.cursor())

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass


def metadata_from_policy(policy: dict[str, Any], *, censor_dims: bool) -> dict[str, Any]:
    """SmartNoise metadata for the policy's protected tables: ``max_ids`` = the table's
    ``max_rows_per_unit`` (for ``{auto: true, max: N}``, N: SmartNoise has no tuning), the
    unit as ``private_id``, numeric bounds as lower/upper (rows clamped to them)."""
    tables: dict[str, Any] = {}
    for name, t in policy["tables"].items():
        if t.get("public") or not t.get("privacy_unit"):
            continue
        m = t.get("max_rows_per_unit", 1)
        max_ids = int(m["max"]) if isinstance(m, dict) else int(m)
        spec: dict[str, Any] = {
            "max_ids": max_ids, "sample_max_ids": True, "row_privacy": False,
            "censor_dims": censor_dims, "clamp_counts": True, "clamp_columns": True,
            "use_dpsu": False,
        }
        for cname, c in t["columns"].items():
            kind = _TYPES.get(c["type"])
            if kind is None:
                continue
            col: dict[str, Any] = {"name": cname, "type": kind}
            if cname == t["privacy_unit"]:
                col["private_id"] = True
            elif kind in ("int", "float") and c.get("bounds"):
                lo, hi = c["bounds"]
                col["lower"], col["upper"] = (int(lo), int(hi)) if kind == "int" else \
                    (float(lo), float(hi))
            spec[cname] = col
        tables[name] = spec
    return {"": {"public": tables}}


@dataclass(frozen=True)
class Accounting:
    mechanisms: tuple[str, ...]  # the noisy columns of SmartNoise's subquery
    thresholded: bool  # rare groups censored by the keycount (uses δ)

    @property
    def k(self) -> int:
        return len(self.mechanisms)


class SmartNoise:
    """Two private readers over one DuckDB connection: with ``censor_dims`` for GROUP BY
    queries (SmartNoise's only safe choice when group keys come from the data) and without
    it for queries with no GROUP BY (one output row: nothing to censor, no keycount to pay
    for)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, policy: dict[str, Any]) -> None:
        conn = _Connection(con)
        self._readers = {
            censor: snsql.from_connection(
                conn, engine="postgres", privacy=Privacy(epsilon=1.0, delta=1e-6),
                metadata=metadata_from_policy(policy, censor_dims=censor))
            for censor in (True, False)
        }

    def _reader(self, grouped: bool) -> Any:
        return self._readers[grouped]

    def accounting(self, sql: str, grouped: bool) -> Accounting:
        r = self._reader(grouped)
        r.privacy = Privacy(epsilon=1.0, delta=1e-6)
        subquery, _ = r._rewrite(sql)
        names = [s.name for s in subquery._select_symbols]
        mechs = r._get_mechanisms(subquery)
        noisy = tuple(n for n, m in zip(names, mechs, strict=True) if m is not None)
        return Accounting(noisy, grouped and "keycount" in noisy)

    def privacy(self, epsilon: float, delta: float, acc: Accounting) -> Privacy:
        """Each of the query's k mechanisms gets ε/k: the query's total is ε."""
        return Privacy(epsilon=epsilon / acc.k, delta=delta if acc.thresholded else 0.0)

    def reported_cost(self, sql: str, grouped: bool, privacy: Privacy) -> tuple[float, float]:
        """What SmartNoise's odometer says the query costs (no data read)."""
        r = self._reader(grouped)
        r.privacy = privacy
        with np.errstate(over="ignore", invalid="ignore"):  # its advanced bound at huge ε
            eps, dlt = r.get_privacy_cost(sql)
        return float(eps), float(dlt)

    def query(self, sql: str, grouped: bool, privacy: Privacy) -> list[tuple[Any, ...]]:
        r = self._reader(grouped)
        r.privacy = privacy
        r.odometer.reset()
        out = r.execute(sql)
        return [tuple(row) for row in out[1:]]
