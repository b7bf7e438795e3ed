"""Executors: run a rewritten sqlglot tree on an engine and return columns.

The planner only ever hands an executor SQL regenerated from a tree it built
itself; executors never see analyst text.
"""

from gateway.engine.base import Executor, ResultSet, SourceTable
from gateway.engine.factory import open_executor

__all__ = ["Executor", "ResultSet", "SourceTable", "open_executor"]
