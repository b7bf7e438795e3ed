"""Finding: a chain of protected self-joins on the unit multiplies one user's rows by
M per join, so whether the query finishes within the time limit depends on one user.

Each protected relation is cut to max_rows_per_unit (M) rows per unit before it is
joined on the unit, which bounds *one* join to M² rows per unit; but nothing bounds
the number of joins, so k joins give M^(k+1) rows for a unit with M rows (and one
row for a unit with one row).  With ``WHERE a.uid = <victim> AND <predicate>`` the
query is instant on D (no rows) and runs out of time on D′: an exact yes/no oracle
about one user, paid with the minimum ε.  docs/privacy.md promises that one unit's
work is bounded and that no query times out on one side only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redteam.worlds import VICTIM, Pair, open_pair, outcome

M = 10
COLUMNS = {"uid": {"type": "int", "role": "privacy_unit"},
           "k": {"type": "int", "bounds": [0, 9]}}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    others = [(str(u), "1") for u in range(1, 31)]  # one row each
    victim = [(str(VICTIM), str(r % 10)) for r in range(M)]  # M rows
    p = open_pair(Path(tmp_path_factory.mktemp("join_chain")), COLUMNS, others, victim,
                  max_rows=M, max_groups=1, limits={"query_timeout_s": 1.0})
    yield p
    p.close()


def test_self_join_chain_does_not_time_out_on_the_victim_only(pair: Pair) -> None:
    joins = 8  # M ** 9 = 10^9 joined rows for the victim
    sql = ("SELECT COUNT(*) AS c FROM t a "
           + " ".join(f"JOIN t x{j} ON x{j}.uid = a.uid" for j in range(joins))
           + f" WHERE a.uid = {VICTIM} AND "
           + " AND ".join(f"COALESCE(x{j}.k, 0) >= 0" for j in range(joins)))
    seen = []
    for gw in (pair.d, pair.d_prime):
        start = time.monotonic()
        seen.append((*outcome(lambda gw=gw: gw.query(sql, analyst="x", epsilon=1e-3)),
                     round(time.monotonic() - start, 2)))
    (d_code, _, d_s), (dp_code, dp_msg, dp_s) = seen
    assert d_code == dp_code, (
        f"one user decides whether the query finishes: D {d_code} in {d_s}s, "
        f"D′ {dp_code} ({dp_msg}) in {dp_s}s")
