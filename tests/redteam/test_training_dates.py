"""Finding: training on a date feature fails after the charge iff a selected row holds a
date that numpy's datetime64[us] cannot represent.

A training query may select a bounded DATE column as a feature (it is scaled by its
policy bounds).  The engine query returns the raw column, and ``fetchnumpy`` converts
it to datetime64[us]: DATE 'infinity', '-infinity' (a common "open-ended" sentinel)
and years beyond 294247 raise a ConversionException inside the executor, after the
charge was committed.  The run then fails with ``backend_error`` on D′ only, so
``SELECT d, label FROM t WHERE uid = <victim> AND <predicate>`` is an exact yes/no
oracle about one user, bought for the training ε.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redteam.worlds import VICTIM, Pair, open_pair, outcome

COLUMNS = {"uid": {"type": "int", "role": "privacy_unit"},
           "d": {"type": "date", "bounds": ["2024-01-01", "2024-12-31"]},
           "b": {"type": "bool"}}
TRAIN = {"label": "b", "model": "logistic", "epsilon": 1.0, "delta": 1e-6,
         "epochs": 1, "units": 100}


@pytest.fixture(scope="module", params=["infinity", "5881580-07-10"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Pair]:
    others = [(str(u), f"DATE '2024-01-01' + {u}", "true" if u % 2 else "false")
              for u in range(1, 41)]
    victim = [(str(VICTIM), f"CAST('{request.param}' AS DATE)", "true")]
    p = open_pair(Path(tmp_path_factory.mktemp("train_dates")), COLUMNS, others, victim)
    yield p
    p.close()


def test_training_on_a_date_feature_does_not_fail_on_the_victim_only(pair: Pair) -> None:
    sql = "SELECT d, b FROM t"
    on_d = outcome(lambda: pair.d.train(sql, analyst="x", **TRAIN))
    on_dp = outcome(lambda: pair.d_prime.train(sql, analyst="x", **TRAIN))
    assert on_d[0] == on_dp[0], (
        "training fails after the charge only when the victim is present:\n"
        f"  D : {on_d}\n  D′: {on_dp}")


def test_training_date_oracle_on_one_user(pair: Pair) -> None:
    sql = f"SELECT d, b FROM t WHERE uid = {VICTIM} OR uid < 10"
    codes = {outcome(lambda gw=gw: gw.train(sql, analyst="x", **TRAIN))[0]
             for gw in (pair.d, pair.d_prime)}
    assert len(codes) == 1, f"D and D′ answer differently: {codes}"
