"""The idempotency store on its own: claims, replays, reuse, takeover, release."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.errors import InvalidRequest
from gateway.state.idempotency import IdempotencyStore, KeyReused, Stored, check_key, fingerprint
from gateway.state.ledger import Ledger


@pytest.fixture
def store(tmp_path: Path) -> IdempotencyStore:
    led = Ledger(tmp_path / "s.db", "web", (1.0, 0.0), (1.0, 0.0))
    return IdempotencyStore(led, led.dataset, led.audit)


def test_claim_wait_then_replay(store: IdempotencyStore) -> None:
    d = fingerprint("query", {"sql": "SELECT 1"})
    assert store.claim("ann", "k", d).state == "new"
    assert store.claim("ann", "k", d).state == "pending"  # a duplicate waits
    assert store.claim("bob", "k", d).state == "new"  # keys are per analyst
    store.complete("ann", "k", d, Stored(200, {"query_id": "q"}))
    done = store.claim("ann", "k", d)
    assert done.state == "done" and done.stored == Stored(200, {"query_id": "q"})
    with pytest.raises(KeyReused):
        store.claim("ann", "k", fingerprint("query", {"sql": "SELECT 2"}))


def test_release_lets_the_retry_run(store: IdempotencyStore) -> None:
    assert store.claim("ann", "k", "d").state == "new"
    store.release("ann", "k")
    assert store.lookup("ann", "k", "d").state == "new"
    assert store.claim("ann", "k", "d").state == "new"


def test_stale_and_orphaned_claims_are_taken_over(store: IdempotencyStore,
                                                  tmp_path: Path) -> None:
    assert store.claim("ann", "k", "d").state == "new"
    store.stale_after_s = 0.0
    assert store.claim("ann", "k", "d").state == "new"  # too old: taken over
    store.stale_after_s = 600.0
    # A claim made by a process that no longer exists is taken over at once.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    con = store._con()
    con.execute("UPDATE idempotency SET response = ? WHERE key = 'k'",
                (json.dumps({"fingerprint": "d", "owner": f"{dead}:gone"}),))
    assert store.claim("ann", "k", "d").state == "new"
    assert store.claim("ann", "k", "d").state == "pending"  # now ours, alive


@pytest.mark.parametrize("key", ["", "x" * 256, "line\nbreak"])
def test_bad_keys(key: str) -> None:
    with pytest.raises(InvalidRequest):
        check_key(key)
