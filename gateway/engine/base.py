"""The executor seam: what the planner needs from an engine, and nothing more.

Reading protected rows needs a :class:`ReadPermit`: the proof, returned by the
ledger's ``reserve()``, that a charge was committed.  The executor refuses any
tree that reads a protected table without one, so "charge before read" does not
rest on the order of calls in the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlglot import exp


@dataclass(frozen=True)
class SourceTable:
    """A table the policy declares, as the executor must expose it.

    ``columns`` maps column name to the policy type; protected tables expose only
    these (undeclared columns of the source are dropped at load).  ``row_id``
    asks for a synthetic per-row unit column (row-level tables).
    """

    name: str
    source: str
    columns: dict[str, str] | None
    row_id: str | None = None


@dataclass(frozen=True)
class ResultSet:
    """Column-oriented result: names, engine type names and one sequence per column."""

    names: tuple[str, ...]
    types: tuple[str, ...]
    columns: tuple[Any, ...]  # one array-like (numpy array or list) per column

    @property
    def num_rows(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    def rows(self) -> list[tuple[Any, ...]]:
        return list(zip(*self.columns, strict=True)) if self.columns else []


class ReadPermit(Protocol):
    """A committed charge (the ledger's reservation): what reading protected rows needs."""

    @property
    def committed(self) -> bool: ...

    @property
    def query_id(self) -> str: ...


class Executor(Protocol):
    """Runs trees the planner built; knows how to say a few things in its dialect."""

    dialect: str

    def execute(
        self, tree: exp.Expr, *, permit: ReadPermit | None = None,
        params: Mapping[str, Any] | None = None, timeout_s: float | None = None,
        sql: str | None = None,
    ) -> ResultSet:
        """Run ``tree`` (already rendered as ``sql`` in this dialect, if given).

        Raises InternalError if ``tree`` reads a protected table and ``permit`` is
        not a committed charge."""
        ...

    def reads_protected(self, tree: exp.Expr) -> bool:
        """Does ``tree`` name a protected table anywhere?"""
        ...

    def unique_columns(self, table: str) -> frozenset[str]:
        """Columns of a *public* table whose non-NULL values are all distinct (keys)."""
        ...

    def table_columns(self, table: str) -> dict[str, str]:
        """Column name -> policy type of a loaded table (public tables, validation)."""
        ...

    def distinct_values(self, table: str, column: str, limit: int) -> list[Any] | None:
        """Distinct non-NULL values of a *public* table column (None if more than limit)."""
        ...

    def check(self, tree: exp.Expr, sql: str | None = None) -> None:
        """Bind and plan ``tree`` against an empty copy of the schema (so the outcome
        cannot depend on data); raise QueryRejected for what fails there."""
        ...

    def keyed_hash(self, args: list[exp.Expr], salt: exp.Expr) -> exp.Expr:
        """A keyed 64-bit hash of args, used to choose a unit's groups at random."""
        ...

    def guard(self, expr: exp.Expr) -> exp.Expr:
        """Wrap a row-level expression so that no input value can make it raise."""
        ...

    def is_nan(self, expr: exp.Expr) -> exp.Expr:
        """A predicate true when a float expression is NaN."""
        ...

    def close(self) -> None: ...
