"""Finding: queries that end in an exception outside gateway.errors (HTTP 500).

Neither depends on the data, so neither leaks, but both break the contract that every
failure is a GatewayError with a reason, and the first one keeps the charge:

* partition selection at a large ε: ``math.expm1(ε / L0)`` overflows in
  ``privacy/partition_selection._table`` *after* the charge was committed (perturb
  runs after the engine), so the analyst pays and gets a 500; ``explain`` 500s too.
  Calibration should refuse (or cap) what the sampler cannot honour;
* the Gaussian mechanism at a tiny ε and δ: the joint multiplier fails
  GaussianEvent's own check by a rounding hair and a bare ValueError escapes
  ``Calibration.events`` (before the charge).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import Gateway
from tests.redteam.worlds import open_world, outcome

COLUMNS = {"uid": {"type": "int", "role": "privacy_unit"},
           "s": {"type": "text"},
           "f": {"type": "float", "bounds": [-10.0, 10.0]}}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    rows = [(str(u), f"'s{u % 3}'", "1.5") for u in range(1, 31)]
    g = open_world(Path(tmp_path_factory.mktemp("crashes")), COLUMNS, rows)
    yield g
    g.close()


def test_partition_selection_at_large_epsilon_is_not_a_crash(gw: Gateway) -> None:
    sql = "SELECT s, COUNT(*) AS n FROM t GROUP BY s"
    before = gw.budget("x")["epsilon_spent"]
    got = outcome(lambda: gw.query(sql, analyst="x", epsilon=1e6, delta=1e-6))
    assert got[0] != "crash", f"query: {got}"
    if got[0] != "ok":
        assert gw.budget("x")["epsilon_spent"] == before, "charged for a failed query"


def test_explain_at_large_epsilon_is_not_a_crash(gw: Gateway) -> None:
    sql = "SELECT s, COUNT(*) AS n FROM t GROUP BY s"
    got = outcome(lambda: gw.explain(sql, epsilon=1e6, delta=1e-6))
    assert got[0] != "crash", f"explain: {got}"


def test_gaussian_at_tiny_epsilon_is_not_a_crash(gw: Gateway) -> None:
    got = outcome(lambda: gw.query("SELECT AVG(f) AS a FROM t", analyst="x",
                                   epsilon=0.00016970233476396593, delta=1e-15,
                                   mechanism="gaussian"))
    assert got[0] != "crash", f"query: {got}"
