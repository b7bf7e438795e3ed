"""The state database (SQLite): one file for the ledger, answers, audit, keys and models.

Connections are per thread.  Two kinds: ``FULL`` synchronous for charges, which
must survive a crash before anything is released, and ``NORMAL`` ("relaxed")
for writes whose loss after a power cut costs nothing but a recomputation
(answers, audit lines, idempotency claims).  Every write is one
``BEGIN IMMEDIATE`` transaction, and any SQLite failure becomes
LedgerUnavailable: the gateway fails closed.
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from gateway.errors import LedgerUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS analysts (
  dataset TEXT NOT NULL, name TEXT NOT NULL, key_hash TEXT UNIQUE, role TEXT NOT NULL,
  epsilon TEXT NOT NULL, delta TEXT NOT NULL, scram TEXT, created REAL NOT NULL,
  PRIMARY KEY (dataset, name));
CREATE TABLE IF NOT EXISTS charges (
  id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL, analyst TEXT NOT NULL,
  query_id TEXT NOT NULL, kind TEXT NOT NULL, sql TEXT, epsilon TEXT NOT NULL,
  delta TEXT NOT NULL, events TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS charges_scope ON charges (dataset, analyst, id);
CREATE TABLE IF NOT EXISTS totals (
  scope TEXT PRIMARY KEY, epsilon TEXT NOT NULL, delta TEXT NOT NULL, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS filters (
  scope TEXT PRIMARY KEY, spent TEXT NOT NULL, renyi_share REAL NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
  key TEXT PRIMARY KEY, dataset TEXT NOT NULL, status TEXT NOT NULL, result TEXT,
  created REAL NOT NULL, owner TEXT);
CREATE TABLE IF NOT EXISTS idempotency (
  analyst TEXT NOT NULL, key TEXT NOT NULL, dataset TEXT NOT NULL, status TEXT NOT NULL,
  response TEXT, created REAL NOT NULL, PRIMARY KEY (dataset, analyst, key));
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, dataset TEXT NOT NULL,
  analyst TEXT, action TEXT NOT NULL, sql TEXT, epsilon TEXT, delta TEXT,
  outcome TEXT NOT NULL, detail TEXT, query_id TEXT);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (dataset, ts);
CREATE TABLE IF NOT EXISTS secrets (
  name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS models (
  id TEXT PRIMARY KEY, dataset TEXT NOT NULL, analyst TEXT NOT NULL, status TEXT NOT NULL,
  progress REAL NOT NULL, spec TEXT NOT NULL, result TEXT, error TEXT, created REAL NOT NULL,
  updated REAL NOT NULL);
"""


class StateDB:
    """Connections and transactions on the state file, and its schema."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = self._con()
            before = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
            con.executescript(SCHEMA)
            after = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
            # Tables a state file from an older version lacked (their contents may
            # need rebuilding from the charges).
            self.created = after - before if before else set()
            columns = {r[1] for r in con.execute("PRAGMA table_info(answers)")}
            if "owner" not in columns:  # state files from before owners were recorded
                con.execute("ALTER TABLE answers ADD COLUMN owner TEXT")
        except (sqlite3.Error, OSError) as e:
            raise LedgerUnavailable(f"cannot open the ledger at {self.path} ({e})") from None

    # -- connections ------------------------------------------------------------

    def _con(self, relaxed: bool = False) -> sqlite3.Connection:
        attr = "relaxed" if relaxed else "con"
        con = getattr(self._local, attr, None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                  check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(f"PRAGMA synchronous={'NORMAL' if relaxed else 'FULL'}")
            con.execute("PRAGMA busy_timeout=30000")
            setattr(self._local, attr, con)
        return con

    @contextmanager
    def _write(self, relaxed: bool = False) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: the ledger's write lock for check-then-write."""
        con = self._con(relaxed)
        try:
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise LedgerUnavailable(f"the ledger is unavailable ({type(e).__name__})",
                                    hint="retry later; nothing was charged") from None
        try:
            yield con
        except sqlite3.IntegrityError:
            con.execute("ROLLBACK")
            raise  # a constraint the caller knows how to report
        except sqlite3.Error as e:
            con.execute("ROLLBACK")
            raise LedgerUnavailable(f"the ledger is unavailable ({type(e).__name__})",
                                    hint="retry later; nothing was charged") from None
        except BaseException:
            con.execute("ROLLBACK")
            raise
        try:
            con.execute("COMMIT")
        except sqlite3.Error as e:
            con.execute("ROLLBACK")
            raise LedgerUnavailable(f"the ledger could not commit ({type(e).__name__})",
                                    hint="retry later; nothing was charged") from None

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._con().execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise LedgerUnavailable(f"the ledger is unavailable ({type(e).__name__})") from None

    def close(self) -> None:
        for attr in ("con", "relaxed"):
            con = getattr(self._local, attr, None)
            if con is not None:
                con.close()
                setattr(self._local, attr, None)

    # Public access for modules keeping their own tables in the state database
    # (idempotency keys, the model registry): same file, same transactions.
    def transaction(self, relaxed: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        return self._write(relaxed)

    def connection(self, relaxed: bool = False) -> sqlite3.Connection:
        return self._con(relaxed)

    def shared_secret(self, name: str) -> bytes:
        """32 random bytes made once per state file and kept in it, so every process and
        replica on this state uses the same (e.g. the salt of fake SCRAM verifiers for
        unknown names: fresh per process, it would tell real names from fake ones
        across a restart)."""
        with self._write() as con:
            con.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)",
                        (name, secrets.token_bytes(32)))
            row = con.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
        return bytes(row[0])


OWNER = f"{socket.gethostname()}:{os.getpid()}"


def alive(owner: str | None) -> bool:
    """Is the process that marked an answer pending still running?  Only decidable
    on the same host; elsewhere it is assumed alive until the entry goes stale."""
    if not owner or ":" not in owner:
        return True
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
