"""Synthetic data with known signals, written as parquet with a policy beside it.

One session-scoped data set (~20k units, 1-5 rows each) serves every training
test; each test gets its own Gateway and state database.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from gateway import Gateway
from gateway.privacy.random import SeededRandom

UNITS = 20_000
DEVICES = ("a", "b", "c")
DEVICE_EFFECT = {"a": 0.4, "b": -0.2, "c": -0.6}

POLICY = """
dataset: synth
tables:
  events:
    source: events.parquet
    privacy_unit: user_id
    max_rows_per_unit: 5
    max_groups_per_unit: 2
    columns:
      event_id: {type: int, role: identifier}
      user_id:  {type: int, role: privacy_unit}
      x1:       {type: float, bounds: [-3, 3]}
      x2:       {type: float, bounds: [-3, 3]}
      age:      {type: int, bounds: [18, 90]}
      device:   {type: text, public_values: [a, b, c]}
      flag:     {type: bool}
      score:    {type: float}
      note:     {type: text}
      y:        {type: bool}
      target:   {type: float, bounds: [-10, 10]}
      cls:      {type: text, public_values: [a, b, c]}
      checker:  {type: bool}
  profiles:
    source: events.parquet
    privacy_unit: user_id
    max_rows_per_unit: 5
    columns:
      user_id:  {type: int, role: privacy_unit}
      age:      {type: int, bounds: [18, 90]}
  flat:
    source: events.parquet
    columns:
      x1:       {type: float, bounds: [-3, 3]}
      y:        {type: bool}
  devices:
    source: devices.csv
    public: true
budget:
  dataset: {epsilon: 1000.0, delta: 1.0e-2}
  per_analyst: {epsilon: 100.0, delta: 1.0e-3}
"""


@dataclass(frozen=True)
class Synth:
    policy: Path
    train: pd.DataFrame  # the private rows (for non-private baselines in tests only)
    test: pd.DataFrame  # fresh rows from the same distribution


def _frame(rs: np.random.Generator, units: int, first_event: int) -> pd.DataFrame:
    per = rs.integers(1, 6, units)
    user = np.repeat(np.arange(1, units + 1), per)
    n = user.shape[0]
    x1, x2 = rs.normal(size=n), rs.normal(size=n)
    age = np.repeat(rs.integers(18, 91, units), per)
    device = np.array(DEVICES)[rs.integers(0, 3, n)]
    flag = rs.random(n) < 0.4
    logit = (1.5 * x1 - 1.0 * x2 + 0.02 * (age - 50) + np.vectorize(DEVICE_EFFECT.get)(device)
             + 0.5 * flag)
    y = rs.random(n) < 1.0 / (1.0 + np.exp(-logit))
    target = 2.0 * x1 - x2 + 0.03 * (age - 50) + rs.normal(scale=0.5, size=n)
    scores = np.stack([x1, x2, -(x1 + x2) / np.sqrt(2)], axis=1)
    cls = np.array(DEVICES)[np.argmax(scores, axis=1)]
    return pd.DataFrame({
        "event_id": np.arange(first_event, first_event + n), "user_id": user, "x1": x1,
        "x2": x2, "age": age, "device": device, "flag": flag, "score": rs.normal(size=n) * 100,
        "note": np.array(["n1", "n2"])[rs.integers(0, 2, n)], "y": y,
        "target": np.clip(target, -10, 10), "cls": cls, "checker": (x1 > 0) != (x2 > 0)})


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    folder = tmp_path_factory.mktemp("synth")
    rs = np.random.default_rng(20240601)
    train = _frame(rs, UNITS, 1)
    test = _frame(rs, 5_000, 10**7)
    con = duckdb.connect()
    con.register("train_df", train)
    con.execute(f"COPY train_df TO '{folder / 'events.parquet'}' (FORMAT parquet)")
    con.close()
    (folder / "devices.csv").write_text("device,family\na,phone\nb,phone\nc,desktop\n")
    (folder / "policy.yaml").write_text(POLICY)
    return Synth(folder / "policy.yaml", train, test)


@pytest.fixture
def gw(synth: Synth, tmp_path: Path) -> Iterator[Gateway]:
    g = Gateway.open(synth.policy, state=tmp_path / "state.db", rng=SeededRandom(7))
    yield g
    g.close()


def rows(df: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    return [dict(zip(columns, r, strict=True)) for r in df[columns].itertuples(index=False)]


@pytest.fixture(scope="module")
def shared_gw(synth: Synth, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One Gateway for a module's read-only tests (opening one loads the data)."""
    g = Gateway.open(synth.policy, state=tmp_path_factory.mktemp("state") / "state.db",
                     rng=SeededRandom(11))
    yield g
    g.close()
