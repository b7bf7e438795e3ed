"""Differential side-channel test: generated queries on D and D′ must look alike.

DESIGN §2 ("No data-dependent side channels"): the answer or the error and its
class, the ε/δ charged, the released public keys, the result's columns and
finishing within the time limit must not depend on one unit's data.  Each
generated query (shapes.py, grammar.py) is gated on the victim and run on a gateway over D
and one over D′ = D + victim (data.py); any observable difference is collected,
and the test fails with a report of all of them (compare.py).

Deterministic: the queries come from fixed seeds.  SIDECHANNEL_QUERIES raises
the number of queries for a deeper run (split over the same chunks).  The share
of queries the gateway accepts is printed and recorded (junit property
``acceptance_rate``); below MIN_ACCEPTED the test fails, as it would prove little.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.sidechannel.compare import Mismatch, differences, report, run
from tests.sidechannel.conftest import Pair
from tests.sidechannel.shapes import queries

QUERIES = int(os.environ.get("SIDECHANNEL_QUERIES", "400"))
CHUNKS = 4  # separate tests, so pytest-xdist can share them between workers
SEED = 20240611
MIN_ACCEPTED = 0.25  # below this the generator no longer exercises the gateway


@pytest.mark.slow  # about 40 s of queries in all (more when the engine times out)
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_generated_queries_look_alike_on_neighbouring_datasets(
        pair: Pair, chunk: int, record_property: Callable[[str, object], None]) -> None:
    count = QUERIES // CHUNKS + (1 if chunk < QUERIES % CHUNKS else 0)
    mismatches: list[Mismatch] = []
    accepted = 0
    for q in queries(SEED + chunk, count):
        on_d, on_d_prime = (run(gw, q.sql, mechanism=q.mechanism, delta=q.delta,
                                n_keys=q.n_keys, keys_public=q.keys_public)
                            for gw in (pair.d, pair.d_prime))
        accepted += on_d.accepted
        reasons = differences(on_d, on_d_prime)
        if reasons:
            mismatches.append(Mismatch(q.sql, q.shape, tuple(reasons), on_d, on_d_prime))
    rate = accepted / max(count, 1)
    record_property("acceptance_rate", round(rate, 3))
    print(f"chunk {chunk}: {count} queries, accepted on D {accepted} ({rate:.0%}), "
          f"{len(mismatches)} mismatches")
    if mismatches:
        pytest.fail(report(mismatches, count, accepted), pytrace=False)
    assert rate >= MIN_ACCEPTED, (
        f"only {rate:.0%} of generated queries were accepted: the generator no longer "
        f"exercises the gateway (update grammar.py)")
