"""Public domains of GROUP BY keys.

A key whose possible values follow from public metadata alone is released for
every value of its domain, empty groups included (a noisy zero), with no
partition selection and no δ.  A column's domain is public when the policy
lists its values (``public_values``, ``public_values_from`` a public table), when
it is a boolean, or when it is an int or date column whose bounds span few
values; a column of a public table has the public table's values.  A key
*expression* over such columns has the domain obtained by evaluating the
expression on every combination of its columns' values, done here on a scratch
in-memory DuckDB that holds nothing but those public values.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from collections.abc import Callable
from typing import Any

from sqlglot import exp

from gateway.sql.scope import ColInfo, Scope

CANONICAL = {"int": "BIGINT", "float": "DOUBLE", "text": "VARCHAR", "bool": "BOOLEAN",
             "date": "DATE", "timestamp": "TIMESTAMP"}

DistinctValues = Callable[[str, str, int], list[Any] | None]
Scratch = Callable[[exp.Expr], list[tuple[Any, ...]] | None]


class DomainFinder:
    """Computes key domains; one per Gateway, thread-safe, caching public values."""

    def __init__(self, distinct_values: DistinctValues, scratch: Scratch, limit: int) -> None:
        self._distinct = distinct_values
        self._scratch = scratch
        self.limit = limit
        self._cache: dict[tuple[str, str], list[Any] | None] = {}
        self._domains: dict[tuple[str, tuple[ColInfo, ...]], list[Any] | None] = {}
        self._constants: dict[str, bool] = {}
        self._lock = threading.Lock()

    def column_domain(self, info: ColInfo) -> list[Any] | None:
        if info.sensitive:
            return None
        if info.public_values is not None:
            return list(info.public_values)
        if info.values_from is not None:
            key = info.values_from
            with self._lock:
                if key not in self._cache:
                    self._cache[key] = self._distinct(key[0], key[1], self.limit)
                return self._cache[key]
        if info.type == "bool":
            return [False, True]
        if info.raw_bounds is not None and info.type == "int":
            lo, hi = info.raw_bounds
            return list(range(int(lo), int(hi) + 1)) if hi - lo + 1 <= self.limit else None
        if info.raw_bounds is not None and info.type == "date":
            lo, hi = info.raw_bounds
            days = (hi - lo).days + 1
            if days > self.limit:
                return None
            return [lo + dt.timedelta(days=i) for i in range(days)]
        return None

    def key_domain(self, key: exp.Expr, scope: Scope, sql: str) -> list[Any] | None:
        """Distinct values ``key`` can take, or None if not enumerable.

        NULL is a value (a group of its own) only where the policy says so: a column
        whose ``public_values`` list ``null``, and an expression over such a column
        when it is NULL for some combination of its columns' values."""
        bare = key.unnest()
        columns: dict[tuple[str, str], tuple[exp.Column, ColInfo]] = {}
        for col in bare.find_all(exp.Column):
            rel, info = scope.resolve(col, sql)
            columns.setdefault((rel.alias, info.name.lower()), (col, info))
        if isinstance(bare, exp.Column):
            (_, info), = columns.values()
            return self.column_domain(info)
        domains = []
        for _, info in columns.values():
            d = self.column_domain(info)
            if d is None:
                return None
            domains.append(d)
        size = 1
        for d in domains:
            size *= max(1, len(d))
        if size > self.limit:
            return None
        infos = tuple(info for _, info in columns.values())
        memo_key = (self._swapped(bare, scope, sql, infos).sql(dialect="duckdb"), infos)
        with self._lock:
            if memo_key in self._domains:
                return self._domains[memo_key]
        found = self._evaluate(bare, scope, sql, list(columns.values()), domains)
        with self._lock:
            self._domains[memo_key] = found
        return found

    @staticmethod
    def _swapped(key: exp.Expr, scope: Scope, sql: str, infos: tuple[ColInfo, ...]
                 ) -> exp.Expr:
        """``key`` with its columns renamed c0, c1, ... in order of first appearance."""
        names = {id(info): f"c{i}" for i, info in enumerate(infos)}

        def swap(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Column):
                _, info = scope.resolve(node, sql)
                return exp.column(names[id(info)])
            return node

        return key.copy().transform(swap)

    def _evaluate(self, key: exp.Expr, scope: Scope, sql: str,
                  columns: list[tuple[exp.Column, ColInfo]], domains: list[list[Any]]
                  ) -> list[Any] | None:
        expr = exp.Try(this=self._swapped(key, scope, sql, tuple(i for _, i in columns)))
        if columns:
            rows = list(itertools.product(*domains))
            values = exp.Values(
                expressions=[exp.Tuple(expressions=[typed_literal(v, info.type) for v, (_, info)
                                                    in zip(row, columns, strict=True)])
                             for row in rows],
                alias=exp.TableAlias(this=exp.to_identifier("t"),
                                     columns=[exp.to_identifier(f"c{i}")
                                              for i in range(len(columns))]))
            query = exp.select(expr.as_("k")).distinct().from_(values)
        else:
            query = exp.select(expr.as_("k"))
        wrapped = exp.select("k").from_(query.subquery("d"))
        if not any(None in d for d in domains):
            wrapped = wrapped.where("k IS NOT NULL")
        wrapped = wrapped.order_by("k")
        found = self._scratch(wrapped)
        if found is None:
            return None
        out = [r[0] for r in found]
        return out if len(out) <= self.limit else None

    def constant_ok(self, expr: exp.Expr) -> bool:
        """Does a constant expression (no columns) evaluate without error?  Checked
        at planning, so a bad literal is a rejection, not a charged engine error."""
        query = exp.select(expr.copy())
        text = query.sql(dialect="duckdb")
        with self._lock:
            known = self._constants.get(text)
        if known is None:
            known = self._scratch(query) is not None
            with self._lock:
                if len(self._constants) > 10_000:
                    self._constants.clear()
                self._constants[text] = known
        return known



def typed_literal(value: Any, kind: str) -> exp.Expr:
    """A public value as a constant of the policy type ``kind`` (a plain literal, or a
    CAST of a string literal: a constant the engine converts once, at bind time)."""
    if value is None:  # typed, so a column of NULLs still has the column's type
        return exp.Cast(this=exp.Null(), to=exp.DataType.build(CANONICAL[kind])) \
            if kind in CANONICAL else exp.Null()
    if isinstance(value, dt.datetime | dt.date):
        lit: exp.Expr = exp.Literal.string(value.isoformat(sep=" ") if isinstance(
            value, dt.datetime) else value.isoformat())
    else:
        lit = exp.convert(value)
    if kind in ("float", "date", "timestamp"):
        return exp.Cast(this=lit, to=exp.DataType.build(CANONICAL[kind]))
    return lit
