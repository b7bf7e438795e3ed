"""A real PgWireServer on a free port, over a small deterministic dataset.

The server runs in a background thread with its own event loop, exactly as
``gateway serve`` runs it beside uvicorn.  The test dataset mirrors what the BI
catalog corpus (fixtures/catalog_queries.json) expects: a private
``visits`` table with ``city`` and ``amount`` and a public ``clubs`` table.
It has 1237 rows and 401 users, two numbers no catalog answer may ever show.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import Gateway
from gateway.pgwire import PgWireServer

ROWS, USERS = 1237, 401
CITIES = ["Paris", "Lyon", "Nice", "Lille"]
CORPUS = Path(__file__).resolve().parent / "fixtures" / "catalog_queries.json"

POLICY = """\
dataset: bi
tables:
  visits:
    source: visits.csv
    privacy_unit: user_id
    max_rows_per_unit: 5
    max_groups_per_unit: 2
    columns:
      visit_id:   {type: int, role: identifier}
      user_id:    {type: int, role: privacy_unit}
      city:       {type: text, public_values: [Paris, Lyon, Nice, Lille]}
      device:     {type: text, public_values: [desktop, mobile, tablet]}
      amount:     {type: float, bounds: [0, 100]}
      age:        {type: int, bounds: [18, 90]}
      visit_date: {type: date, bounds: ["2024-01-01", "2024-12-31"]}
      converted:  {type: bool}
  clubs:
    source: clubs.csv
    public: true
budget:
  dataset: {epsilon: 1000.0, delta: 1.0e-3}
  per_analyst: {epsilon: 50.0, delta: 1.0e-5}
defaults: {epsilon: 0.5, delta: 0.0, mechanism: laplace}
"""


def write_dataset(folder: Path) -> Path:
    """visits.csv, clubs.csv and policy.yaml in ``folder``; returns the policy path."""
    rng = random.Random(5)
    lines = ["visit_id,user_id,city,device,amount,age,visit_date,converted"]
    for i in range(1, ROWS + 1):
        user = (i * 7919) % USERS + 1
        lines.append(",".join([
            str(i), str(user), CITIES[user % 4], rng.choice(["desktop", "mobile", "tablet"]),
            f"{rng.uniform(0, 120):.2f}", str(18 + user % 60),
            f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}", "true" if rng.random() < 0.3 else "false",
        ]))
    (folder / "visits.csv").write_text("\n".join(lines) + "\n")
    (folder / "clubs.csv").write_text("club,city\nPSG,Paris\nOL,Lyon\nOGCN,Nice\nLOSC,Lille\n")
    policy = folder / "policy.yaml"
    policy.write_text(POLICY)
    return policy


class ServerThread:
    """A Gateway and a PgWireServer on 127.0.0.1:<free port>, in a thread of its own."""

    _names = itertools.count(1)

    def __init__(self, policy: Path, state: Path, **options: Any) -> None:
        self.gateway = Gateway.open(policy, state)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = PgWireServer(self.gateway, "127.0.0.1", 0, **options)
        self.call(self.server.start())
        self.port = self.server.port

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def analyst(self, epsilon: float = 20.0, delta: float = 1e-5) -> tuple[str, str]:
        name = f"analyst{next(self._names)}_{id(self) % 1000}"
        return name, self.gateway.add_analyst(name, epsilon=epsilon, delta=delta)

    def dsn(self, user: str, key: str, **extra: str) -> str:
        parts = {"host": "127.0.0.1", "port": str(self.port), "user": user, "password": key,
                 "dbname": "bi", "connect_timeout": "10", **extra}
        return " ".join(f"{k}={_quote(v)}" for k, v in parts.items())

    def url(self, user: str, key: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{user}:{urllib.parse.quote(key)}@127.0.0.1:{self.port}/bi"

    def spent(self, user: str) -> float:
        return float(self.gateway.budget(user)["epsilon_spent"])

    def close(self) -> None:
        try:
            self.call(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.gateway.close()


def _quote(v: str) -> str:
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


@pytest.fixture(scope="session")
def policy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("bi"))


@pytest.fixture(scope="session")
def pg(policy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    srv = ServerThread(policy_path, tmp_path_factory.mktemp("state") / "state.db")
    yield srv
    srv.close()


@pytest.fixture()
def account(pg: ServerThread) -> tuple[str, str]:
    """A fresh analyst (name, key) with its own budget."""
    return pg.analyst()


@pytest.fixture()
def dsn(pg: ServerThread, account: tuple[str, str]) -> str:
    return pg.dsn(*account)


def run_client(code: str, *args: str, timeout: float = 60) -> Any:
    """Run a psycopg snippet in a process of its own; returns the JSON it prints.

    libpq calls that block in C (PQcancel, PQdescribePrepared) keep the GIL in
    psycopg, which would freeze the server thread of this process."""
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def corpus() -> dict[str, list[str]]:
    return json.loads(CORPUS.read_text())
