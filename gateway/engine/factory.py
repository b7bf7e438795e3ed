"""Choose the executor the policy's `engine` names."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.engine.base import Executor, SourceTable
from gateway.errors import PolicyError
from gateway.policy import Policy


def open_executor(policy: Policy, tables: Sequence[SourceTable]) -> Executor:
    spec = policy.model.engine
    if spec.kind == "duckdb":
        from gateway.engine.duckdb import DuckDBExecutor

        database = str(policy.resolve_path(spec.database)) if spec.database else None
        return DuckDBExecutor(
            tables,
            base=policy.folder,
            database=database,
            memory_limit=spec.memory_limit,
            threads=spec.threads,
            policy_path=str(policy.path),
        )
    raise PolicyError(
        f"{policy.path}: engine.kind: {spec.kind!r} is not available in this build; "
        f"use kind: duckdb"
    )
