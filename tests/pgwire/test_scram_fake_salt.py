"""Unknown analyst names cannot be told from real ones by their SCRAM salt across a
restart or between replicas: the salt of the fake verifier comes from a secret kept in
the state database, not made fresh per process."""

from __future__ import annotations

from pathlib import Path

from gateway import Gateway
from gateway.pgwire import PgWireServer
from gateway.pgwire.auth import fake_verifier
from tests.support import web_policy


def _salt(policy: Path, state: Path, user: str) -> bytes:
    with Gateway.open(policy, state=state) as gw:
        return fake_verifier(PgWireServer(gw).secret, user).salt


def test_fake_salts_survive_a_restart_and_are_shared_by_replicas(tmp_path: Path) -> None:
    policy = web_policy(tmp_path)
    state = tmp_path / "state.db"
    first = _salt(policy, state, "nobody")
    assert _salt(policy, state, "nobody") == first  # restarted: the same salt
    with Gateway.open(policy, state=state) as a, Gateway.open(policy, state=state) as b:
        assert PgWireServer(a).secret == PgWireServer(b).secret  # two replicas, one state
    assert _salt(policy, state, "somebody") != first  # per name
    assert _salt(policy, tmp_path / "other.db", "nobody") != first  # per deployment
