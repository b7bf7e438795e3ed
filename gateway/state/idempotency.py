"""Idempotency keys: a retried request gets the stored answer, never a second charge.

Clients retry: a timeout, a dropped connection or a 503 leaves them unsure
whether the gateway ran their query (and charged for it).  With an
``Idempotency-Key`` (draft-ietf-httpapi-idempotency-key-header) the first
request *claims* the key for its analyst in the state database's ``idempotency`` table,
inside an IMMEDIATE write transaction, and stores its answer there when it is
done.  A later request with the same key:

* finds the answer → gets it back, byte for byte, free (and it is audited);
* finds the claim still pending → waits for it (never runs a second time);
* finds the key used for a *different* request → is refused (422).

Answers that say something final about the request (2xx, 4xx) are stored;
transient failures (5xx) release the claim so that the retry runs again.  A
claim names the process that made it; one left pending by a process that is
gone (a crashed server: the ledger is a local SQLite file, so every claimant
ran on this host) is taken over at once, any other after ``stale_after_s``.
Keys are per analyst: another analyst's key never matches.

The table lives in the state database (beside the ledger's), written in the same kind of
``BEGIN IMMEDIATE`` transaction as a charge, but on connections of its own with
``synchronous=NORMAL``: a claim survives a crashed *process* (what retries are
for) without an fsync per request.  Power loss may forget a stored answer;
then the retry runs again and the core's answer cache serves the identical
query for free, so even that costs no second charge for a query.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

from gateway.errors import InvalidRequest, LedgerUnavailable
from gateway.state.db import StateDB

MAX_KEY_LENGTH = 255
PENDING = "pending"
DONE = "done"


@dataclass(frozen=True)
class Stored:
    """An answer as it went out: HTTP status and JSON body."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Claim:
    """What a request found under its key.

    ``new``: this request owns the key and must run; ``done``: here is the stored
    answer; ``pending``: an identical request is running, wait for it.
    """

    state: Literal["new", "done", "pending"]
    stored: Stored | None = None


class KeyReused(Exception):
    """The key was first used for a request with other content."""


def check_key(key: str) -> str:
    """Keys are opaque, but bounded and printable (they end up in logs and the ledger)."""
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest(
            "the Idempotency-Key header must be 1 to 255 printable characters",
            hint="send a fresh random value, e.g. a UUID, for each logical request")
    return key


def fingerprint(*parts: Any) -> str:
    """A digest of what the request asks: the same key must mean the same request."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


Audit = Callable[[str, str, None, float, float, str, str, str | None], None]


class IdempotencyStore:
    """Claims and stored answers in the state database's ``idempotency`` table; replays
    are recorded through ``audit`` (the ledger's audit log)."""

    def __init__(self, db: StateDB, dataset: str, audit: Audit, *, ttl_s: float = 86_400.0,
                 stale_after_s: float = 600.0) -> None:
        self.db = db
        self.dataset = dataset
        self.audit = audit
        self.ttl_s = ttl_s
        self.stale_after_s = stale_after_s
        self.owner = f"{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._purged = 0.0
        self._purge_lock = threading.Lock()

    def _con(self) -> sqlite3.Connection:
        # Claims need no fsync: a lost claim after a power cut means a retry runs
        # again, and the ledger's own charge (fsynced) stops a second charge.
        return self.db.connection(relaxed=True)

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self.db.transaction(relaxed=True)

    # -- claiming ------------------------------------------------------------------

    def claim(self, analyst: str, key: str, digest: str) -> Claim:
        """Own ``key`` (state ``new``) or learn what holds it; atomic across processes."""
        self._maybe_purge()
        now = time.time()
        with self._write() as con:
            row = con.execute(
                "SELECT status, response, created FROM idempotency "
                "WHERE dataset = ? AND analyst = ? AND key = ?",
                (self.dataset, analyst, key)).fetchone()
            if row is not None:
                found = self._decode(row, digest)
                if found.state != PENDING or not (now - row[2] >= self.stale_after_s
                                                  or _gone(row[1], self.owner)):
                    return found
                # The claimant died (server crash): take the key over.
            con.execute(
                "INSERT OR REPLACE INTO idempotency (analyst, key, dataset, status, "
                "response, created) VALUES (?, ?, ?, ?, ?, ?)",
                (analyst, key, self.dataset, PENDING,
                 json.dumps({"fingerprint": digest, "owner": self.owner}), now))
        return Claim("new")

    def lookup(self, analyst: str, key: str, digest: str) -> Claim:
        """Read-only view of a key (to wait on a pending claim); ``new`` if it vanished."""
        try:
            row = self._con().execute(
                "SELECT status, response, created FROM idempotency "
                "WHERE dataset = ? AND analyst = ? AND key = ?",
                (self.dataset, analyst, key)).fetchone()
        except sqlite3.Error as e:
            raise LedgerUnavailable(f"the ledger is unavailable ({type(e).__name__})") from None
        return Claim("new") if row is None else self._decode(row, digest)

    def _decode(self, row: tuple[Any, ...], digest: str) -> Claim:
        status, response, _ = row
        data = json.loads(response or "{}")
        if data.get("fingerprint") != digest:
            raise KeyReused()
        if status == DONE:
            return Claim("done", Stored(int(data["status"]), data["body"]))
        return Claim("pending")

    # -- finishing ------------------------------------------------------------------

    def complete(self, analyst: str, key: str, digest: str, stored: Stored) -> None:
        payload = json.dumps({"fingerprint": digest, "status": stored.status,
                              "body": stored.body})
        with self._write() as con:
            con.execute("UPDATE idempotency SET status = ?, response = ? "
                        "WHERE dataset = ? AND analyst = ? AND key = ?",
                        (DONE, payload, self.dataset, analyst, key))

    def release(self, analyst: str, key: str) -> None:
        """Forget a pending claim (a transient failure): the retry will run again."""
        try:
            with self._write() as con:
                con.execute("DELETE FROM idempotency WHERE dataset = ? AND analyst = ? AND "
                            "key = ? AND status = ?", (self.dataset, analyst, key, PENDING))
        except LedgerUnavailable:
            pass  # it goes stale and is taken over later

    def record_replay(self, analyst: str, action: str, stored: Stored) -> None:
        """A replay releases nothing new, but the audit log still shows the request."""
        query_id = stored.body.get("query_id") or stored.body.get("model_id")
        outcome = "replayed" if stored.status < 400 else f"replayed:{stored.body.get('type')}"
        self.audit(analyst, action, None, 0.0, 0.0, outcome,
                          "answer returned from an Idempotency-Key", query_id)

    def _maybe_purge(self) -> None:
        now = time.time()
        if now - self._purged < 60.0 or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._purged = now
            with self._write() as con:
                con.execute("DELETE FROM idempotency WHERE dataset = ? AND status = ? AND "
                            "created < ?", (self.dataset, DONE, now - self.ttl_s))
        except LedgerUnavailable:
            pass
        finally:
            self._purge_lock.release()


def _gone(response: str | None, me: str) -> bool:
    """Was the pending claim made by a process that no longer exists?"""
    owner = str(json.loads(response or "{}").get("owner", ""))
    pid_text, _, _ = owner.partition(":")
    if owner == me or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False
