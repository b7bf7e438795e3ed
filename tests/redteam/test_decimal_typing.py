"""Finding: comparisons between DECIMALs of different precision/scale raise on data.

The typer gives every DECIMAL the one kind ``decimal`` and treats a comparison of two
``decimal`` operands (or a ``decimal`` with an integer literal) as total, so no guard
is put around it.  DuckDB compares DECIMAL(38,0) with DECIMAL(38,37) by casting the
first operand to DECIMAL(38,37) row by row, which fails for any value >= 10.  The
query is charged, then fails with ``backend_error`` iff some row that reaches the
comparison holds such a value: a one-bit oracle on any predicate (WHERE uid = victim
AND age > 40 AND ...), bought for the minimum ε per probe.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redteam.worlds import VICTIM, Pair, open_pair, outcome

COLUMNS = {"uid": {"type": "int", "role": "privacy_unit"},
           "n": {"type": "int", "bounds": [0, 1000]},
           "f": {"type": "float", "bounds": [0.0, 10.0]}}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    # Everyone else has n = 1; the victim has one row with n = 100 (an ordinary value).
    others = [(str(u), "1", "1.0") for u in range(1, 31)]
    p = open_pair(Path(tmp_path_factory.mktemp("decimal")), COLUMNS, others,
                  [(str(VICTIM), "100", "1.0")])
    yield p
    p.close()


@pytest.mark.parametrize("cond", [
    "CAST(n AS DECIMAL(38,0)) > CAST(0.5 AS DECIMAL(38,37))",
    "TRY_CAST(n AS DECIMAL(38,0)) = TRY_CAST(f AS DECIMAL(38,37))",
    "CAST(n AS DECIMAL(38,0)) IN (CAST(0.5 AS DECIMAL(38,37)))",
    "CAST(n AS DECIMAL(38,0)) BETWEEN CAST(0.5 AS DECIMAL(38,37)) AND 2",
    "TRY_CAST(n AS DECIMAL(38,0)) IS NOT DISTINCT FROM TRY_CAST(f AS DECIMAL(38,37))",
    "CASE TRY_CAST(n AS DECIMAL(38,0)) WHEN TRY_CAST(f AS DECIMAL(38,37)) THEN TRUE "
    "ELSE FALSE END",
])
def test_decimal_comparison_does_not_fail_on_the_victim_only(pair: Pair, cond: str) -> None:
    sql = f"SELECT COUNT(*) AS c FROM t WHERE {cond}"
    on_d = outcome(lambda: pair.d.query(sql, analyst="x", epsilon=1.0))
    on_dp = outcome(lambda: pair.d_prime.query(sql, analyst="x", epsilon=1.0))
    assert on_d[0] == on_dp[0], (
        f"the outcome depends on one user's n (charged before it fails):\n  {sql}\n"
        f"  D : {on_d}\n  D′: {on_dp}")


def test_decimal_oracle_on_a_victim_predicate(pair: Pair) -> None:
    """The attack itself: with the victim filtered by uid, the error answers a yes/no
    question about that one user (here "is n >= 10?") exactly."""
    sql = (f"SELECT COUNT(*) AS c FROM t WHERE uid = {VICTIM} "
           "AND CAST(n AS DECIMAL(38,0)) > CAST(0.5 AS DECIMAL(38,37))")
    codes = {outcome(lambda gw=gw: gw.query(sql, analyst="x", epsilon=1e-3))[0]
             for gw in (pair.d, pair.d_prime)}
    assert len(codes) == 1, f"D and D′ answer differently: {codes}"
