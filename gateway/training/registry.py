"""The model registry: trained models in the state database's ``models`` table.

A row holds only what may be released: the request (SQL, label, model type,
hyper-parameters, policy version), the public privacy parameters, the model
(weights and encoding) and, when asked for, a labelled DP evaluation.  Its
``status`` moves queued → running → done (or failed), with ``progress`` in
[0, 1] updated during training so HTTP clients can poll.

It shares the ledger's SQLite file and connections (``Ledger._write`` is the
IMMEDIATE-transaction helper) so one state file holds budgets and models.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from gateway.errors import LedgerUnavailable
from gateway.state.ledger import Ledger

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass(frozen=True)
class ModelRecord:
    id: str
    analyst: str
    status: str
    progress: float
    spec: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created: float
    updated: float


class Registry:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def create(self, model_id: str, analyst: str, spec: dict[str, Any]) -> None:
        now = time.time()
        with self.ledger.transaction() as con:
            con.execute(
                "INSERT INTO models (id, dataset, analyst, status, progress, spec, result, "
                "error, created, updated) VALUES (?, ?, ?, ?, 0, ?, NULL, NULL, ?, ?)",
                (model_id, self.ledger.dataset, analyst, QUEUED, json.dumps(spec), now, now))

    def progress(self, model_id: str, fraction: float) -> None:
        try:
            with self.ledger.transaction() as con:
                con.execute("UPDATE models SET status = ?, progress = ?, updated = ? "
                            "WHERE id = ? AND status IN (?, ?)",
                            (RUNNING, float(fraction), time.time(), model_id, QUEUED, RUNNING))
        except LedgerUnavailable:
            pass  # progress is a courtesy; the final state is written with retries below

    def finish(self, model_id: str, result: dict[str, Any]) -> None:
        with self.ledger.transaction() as con:
            con.execute("UPDATE models SET status = ?, progress = 1, result = ?, updated = ? "
                        "WHERE id = ?", (DONE, json.dumps(result), time.time(), model_id))

    def fail(self, model_id: str, error: str) -> None:
        try:
            with self.ledger.transaction() as con:
                con.execute("UPDATE models SET status = ?, error = ?, updated = ? WHERE id = ?",
                            (FAILED, error, time.time(), model_id))
        except LedgerUnavailable:
            pass

    def get(self, model_id: str) -> ModelRecord | None:
        rows = self._read("SELECT id, analyst, status, progress, spec, result, error, created, "
                          "updated FROM models WHERE dataset = ? AND id = ?",
                          (self.ledger.dataset, model_id))
        return _record(rows[0]) if rows else None

    def models(self, analyst: str | None) -> list[ModelRecord]:
        sql = ("SELECT id, analyst, status, progress, spec, result, error, created, updated "
               "FROM models WHERE dataset = ?")
        args: list[Any] = [self.ledger.dataset]
        if analyst is not None:
            sql += " AND analyst = ?"
            args.append(analyst)
        return [_record(r) for r in self._read(sql + " ORDER BY created, id", args)]

    def _read(self, sql: str, args: Any) -> list[tuple[Any, ...]]:
        try:
            return self.ledger.connection().execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise LedgerUnavailable(f"the state database is unavailable ({type(e).__name__})",
                                    hint="retry later") from None


def _record(row: tuple[Any, ...]) -> ModelRecord:
    return ModelRecord(row[0], row[1], row[2], float(row[3]), json.loads(row[4]),
                       json.loads(row[5]) if row[5] else None, row[6], float(row[7]),
                       float(row[8]))
