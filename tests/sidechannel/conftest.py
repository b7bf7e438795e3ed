"""Session fixtures: the neighbouring datasets D and D′ and one Gateway on each.

Built once per worker (pytest-xdist runs the suite in two): writing the parquet
files and loading them into DuckDB takes about a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from gateway import Gateway
from tests.sidechannel.data import write_world


@dataclass(frozen=True)
class Pair:
    """The gateway over D (no victim) and over D′ (D plus the victim)."""

    d: Gateway
    d_prime: Gateway


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("sidechannel")
    gws = []
    for name, victim in (("d", False), ("d_prime", True)):
        policy = write_world(root / name, victim=victim)
        gws.append(Gateway.open(policy, state=root / name / "state.db"))
    try:
        yield Pair(*gws)
    finally:
        for gw in gws:
            gw.close()
