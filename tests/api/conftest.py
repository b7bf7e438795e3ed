"""Fixtures: one `gateway serve` process per test module, on its own state."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.api.live import LiveServer, add_analysts, write_policy


@dataclass
class Live:
    server: LiveServer
    keys: dict[str, str]
    policy: Path
    state: Path

    @property
    def url(self) -> str:
        return self.server.url


ANALYSTS = {
    "admin": {"epsilon": 50.0, "admin": True},
    "alice": {"epsilon": 20.0},
    "bob": {"epsilon": 20.0},
    "poor": {"epsilon": 0.05},
    "trainer": {"epsilon": 20.0, "delta": 1e-5},
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("live")
    policy = write_policy(folder, dataset=(100.0, 1e-5))
    state = folder / "state.db"
    keys = add_analysts(policy, state, ANALYSTS)
    server = LiveServer(policy, state).start()
    try:
        yield Live(server, keys, policy, state)
    finally:
        server.stop()
