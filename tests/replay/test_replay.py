"""Replay of peers' queries (tests/replay/corpus.yaml) against the sample policy.

Every entry is a query shape documented by SmartNoise SQL, ZetaSQL/BigQuery, Google's DP
examples, Tumult Analytics, OpenDP or PipelineDP, translated to ``policies/web.yaml``. An
``answered`` entry must return rows of finite numbers; a ``refused`` one must raise
``QueryRejected`` with the expected rule and a hint. Entries with ``known_gap`` are expected
answers the gateway cannot give yet for a reason outside the corpus's issue: they xfail.
``bench/bench_replay.py`` prints the answered fraction per peer.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterator
from typing import Any

import pytest

from gateway import Gateway
from gateway.errors import QueryRejected
from tests.replay.corpus import PEERS, Entry, load
from tests.support import web_policy

ENTRIES = load()


def _params() -> list[Any]:
    out = []
    for entry in ENTRIES:
        marks = [pytest.mark.xfail(reason=entry.known_gap, strict=False)] if entry.known_gap else []
        out.append(pytest.param(entry, id=entry.id, marks=marks))
    return out


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """policies/web.yaml on the sample data, a fresh state, budgets that never run out."""
    folder = tmp_path_factory.mktemp("replay")
    policy = web_policy(folder, dataset_budget=(1e9, 0.9), analyst_budget=(1e9, 0.9))
    with Gateway.open(policy, state=folder / "state.db") as g:
        yield g


def _numbers(value: Any) -> Iterator[float]:
    """The numbers in one released value (APPROX_QUANTILES / QUANTILE_CONT lists too)."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, numbers.Real):
        yield float(value)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _numbers(v)


# -- the corpus itself ---------------------------------------------------------------------

def test_corpus_is_large_unique_and_explained() -> None:
    assert len(ENTRIES) >= 150, len(ENTRIES)
    ids = [e.id for e in ENTRIES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    for e in ENTRIES:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", e.id), e.id
        assert e.peer in PEERS, f"{e.id}: source must start with one of {PEERS}: {e.source!r}"
        assert e.source.split(":", 1)[1].strip(), f"{e.id}: source names no document"
        assert e.epsilon > 0 and 0 <= e.delta < 1, e.id
        if e.refused is not None:
            assert re.fullmatch(r"[a-z_]+", e.refused), f"{e.id}: rule {e.refused!r}"
            assert e.why and len(e.why.strip()) >= 10, f"{e.id}: a refusal needs a why"
            assert not e.known_gap, f"{e.id}: known_gap is for answered entries"
    assert {e.peer for e in ENTRIES} == set(PEERS), "every peer contributes queries"
    assert sum(e.refused is None for e in ENTRIES) > len(ENTRIES) / 2


# -- replay ------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", _params())
def test_replay(gw: Gateway, entry: Entry) -> None:
    kwargs: dict[str, Any] = {"epsilon": entry.epsilon, "delta": entry.delta}
    if entry.mechanism:
        kwargs["mechanism"] = entry.mechanism
    if entry.refused is not None:
        with pytest.raises(QueryRejected) as err:
            gw.query(entry.sql, analyst="replay", **kwargs)
        assert err.value.rule == entry.refused, \
            f"refused by rule {err.value.rule!r} ({err.value.message}), expected {entry.refused!r}"
        assert err.value.hint and err.value.hint.strip(), f"no hint: {err.value.message}"
        return
    try:
        r = gw.query(entry.sql, analyst="replay", **kwargs)
    except QueryRejected as e:
        pytest.fail(f"refused ({e.rule}): {e.message}. {e.hint or ''}")
    assert r.rows, "no rows released"
    assert r.columns
    for row in r.rows:
        assert len(row) == len(r.columns)
        for v in row:
            assert all(math.isfinite(x) for x in _numbers(v)), row

