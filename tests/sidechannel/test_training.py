"""Training SQL on D and D′: the victim's hostile values reach every feature
expression (extremes, NaN, far dates and timestamps, text that fails casts), and the
analyst must observe the same outcome class and charge on both datasets."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError
from tests.sidechannel.conftest import Pair
from tests.sidechannel.data import VICTIM

FEATURES = [
    "i, f, d, b",
    "ts, cat, b",
    "LEAST(GREATEST(n, 0), 10) AS n10, TRY_CAST(s AS DOUBLE) > 1 AS sx, b",
    "CASE WHEN f > 1 THEN 'hi' ELSE 'lo' END AS band, k * 2 AS k2, b",
    "YEAR(d) AS y, f / 2 AS half, b",
]


def _outcome(gw: object, sql: str) -> tuple[str, float]:
    try:
        m = gw.train(sql, label="b", model="logistic", epsilon=1.0,  # type: ignore[attr-defined]
                     delta=1e-6, analyst="trainer", epochs=1, units=500)
    except GatewayError as e:
        return f"{e.code}: {e.message}", 0.0
    return m.status, m.epsilon_spent


@pytest.mark.parametrize("features", FEATURES)
def test_training_outcome_does_not_depend_on_the_victim(pair: Pair, features: str) -> None:
    sql = f"SELECT {features} FROM t WHERE uid = {VICTIM} OR uid < 40"
    assert _outcome(pair.d, sql) == _outcome(pair.d_prime, sql)


# Names as users write them (qualified, quoted, an unaliased subquery) and a constant
# function in a feature: still one outcome whatever the victim holds.
SOURCES = ["public.t", "sidechannel.public.t", '"t"', "(SELECT * FROM main.t)"]


@pytest.mark.parametrize("source", SOURCES)
def test_training_names_do_not_depend_on_the_victim(pair: Pair, source: str) -> None:
    sql = f"SELECT i, f * PI() AS fp, d, b FROM {source} WHERE uid = {VICTIM} OR uid < 40"
    outcome = _outcome(pair.d, sql)
    assert outcome == _outcome(pair.d_prime, sql)
    assert outcome[0] == "done", outcome
