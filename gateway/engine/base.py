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


# What a dialect must be able to express, by the node kinds that need it.  sqlglot
# renders some of them silently wrong for other dialects (TRY_CAST as plain CAST for
# PostgreSQL, TRY(...) dropped for Spark), which would lose the guarantee that no
# row makes the query fail: so a tree is checked before it is rendered.
NEEDS: dict[type[exp.Expr], str] = {
    exp.Try: "guard", exp.TryCast: "try_cast", exp.IsNan: "isnan",
    exp.Placeholder: "named_parameters",
}


class CannotExpress(Exception):
    """The engine's dialect cannot express a construct the plan relies on."""


def check_expressible(tree: exp.Expr, features: frozenset[str]) -> None:
    """Raise CannotExpress if ``tree`` uses a construct outside ``features``."""
    for node in tree.walk():
        need = NEEDS.get(type(node))
        if need is not None and need not in features:
            raise CannotExpress(need)
        if isinstance(node, exp.Select) and node.args.get("qualify") and \
                "qualify" not in features:
            raise CannotExpress("qualify")


@dataclass(frozen=True)
class ResultSet:
    """Column-oriented result: names, policy types and one sequence per column."""

    names: tuple[str, ...]
    types: tuple[str, ...]  # int, float, text, bool, date, timestamp, or unknown
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
    """Runs trees the planner built; knows how to say a few things in its dialect.

    Every dialect-specific construct the planner needs comes from here: the guard,
    the keyed hash, the NaN test, a data-free scratch evaluator for public values
    and constants, and the rendering of a tree, which refuses constructs outside
    ``features`` instead of letting them degrade silently.
    """

    dialect: str
    features: frozenset[str]

    def render(self, tree: exp.Expr, *, pretty: bool = False) -> str:
        """SQL text of ``tree`` in this dialect; QueryRejected if it cannot be expressed."""
        ...

    def scratch(self, sql: exp.Expr) -> list[tuple[Any, ...]] | None:
        """Evaluate a query that reads no table on a connection holding no data; None if
        it fails (key domains over public values, constants)."""
        ...

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

    def describe(self, tree: exp.Expr, sql: str | None = None) -> list[tuple[str, str]]:
        """Output (name, policy type) of ``tree``, bound against the empty copy of the
        schema (data-free, like :meth:`check`); QueryRejected if it does not bind."""
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
