"""Run one query on D and D′ and say what an analyst could tell apart.

The observable outcome of a query is its class (answer, or error code), the
rejection text (planning sees no data, so it must match word for word), the
ε/δ charged, the result's column names and types, its notes (e.g. that groups
were chosen by partition selection), whether it finished within the time
limit, and — when every group key has a public domain released in full and
nothing noisy filters the rows — the exact set of released keys.  Only the noisy
numbers themselves may differ; everything else must be a function of the SQL
and the policy.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from gateway import Gateway
from gateway.errors import BackendError, GatewayError, QueryRejected

ANALYST = "sidechannel"
_REQUEST_ID = re.compile(r"\b[0-9a-f]{32}\b")  # a fresh id per request, not data
# A bound tuned privately is part of the (noisy) answer, like the values.
_TUNED = re.compile(r"tuned privately for this query: .*?, chosen from")
CRASH = "crash"  # an exception outside gateway.errors: always a failure
TIMEOUT = "timeout"


@dataclass(frozen=True)
class Outcome:
    kind: str  # "ok", a GatewayError code, TIMEOUT or CRASH
    detail: str = ""
    epsilon: float = 0.0
    delta: float = 0.0
    columns: tuple[tuple[str, str], ...] = ()
    keys: frozenset[tuple[Any, ...]] | None = None
    rows: int = 0
    first: tuple[Any, ...] | None = None  # first row, to show in reports only
    seconds: float = 0.0
    log: str = ""  # what the gateway logged for the operator (the engine's error), shown only
    compare_rows: bool = False  # the row count is fixed by public domains (no noisy filter)
    notes: tuple[str, ...] = ()  # the answer's notes (e.g. switched to partition selection)

    @property
    def accepted(self) -> bool:
        return self.kind == "ok"

    def show(self) -> str:
        if self.kind != "ok":
            log = f"\n      operator log: {_short(self.log, 300)}" if self.log else ""
            return f"{self.kind}: {self.detail}  [{self.seconds:.2f}s]{log}"
        cols = ", ".join(f"{n}:{t}" for n, t in self.columns)
        keys = "" if self.keys is None else f" keys={_short(sorted(self.keys, key=repr))}"
        return (f"ok eps={self.epsilon:g} delta={self.delta:g} cols=({cols}) rows={self.rows}"
                f" first={_short(self.first)}{keys}  [{self.seconds:.2f}s]")


def _short(v: Any, limit: int = 160) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "…"


class _OperatorLog(logging.Handler):
    """Keeps the first line of what the gateway logs (engine errors name their cause),
    so a report can say why a query failed; the analyst never sees it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage().splitlines()[0])


def run(gw: Gateway, sql: str, *, epsilon: float = 1.0, delta: float = 1e-6,
        mechanism: str = "laplace", n_keys: int = 0, keys_public: bool = False) -> Outcome:
    """The outcome of ``sql`` on ``gw``; never raises."""
    logger = logging.getLogger("gateway")
    capture, propagate = _OperatorLog(), logger.propagate
    logger.addHandler(capture)
    logger.propagate = False  # hundreds of expected engine errors would bury a failure
    start = time.perf_counter()
    try:
        return _run(gw, sql, epsilon, delta, mechanism, n_keys, keys_public, start)
    except QueryRejected as e:
        return Outcome(e.code, f"[{e.rule}] {e.message}", seconds=time.perf_counter() - start)
    except BackendError as e:
        kind = TIMEOUT if "time limit" in e.message else e.code
        return Outcome(kind, e.message, seconds=time.perf_counter() - start,
                       log=" | ".join(capture.lines))
    except GatewayError as e:
        return Outcome(e.code, e.message, seconds=time.perf_counter() - start,
                       log=" | ".join(capture.lines))
    except Exception as e:  # any other exception is itself a finding
        return Outcome(CRASH, f"{type(e).__name__}: {e}", seconds=time.perf_counter() - start)
    finally:
        logger.removeHandler(capture)
        logger.propagate = propagate


def _run(gw: Gateway, sql: str, epsilon: float, delta: float, mechanism: str, n_keys: int,
         keys_public: bool, start: float) -> Outcome:
    r = gw.query(sql, analyst=ANALYST, epsilon=epsilon, delta=delta, mechanism=mechanism)
    seconds = time.perf_counter() - start
    # Public keys whose domains multiply past limits.max_public_groups are chosen by
    # partition selection instead (the plan says so: a function of SQL and policy only).
    keys_public = keys_public and all(p.too_many_groups is None for p in _plans(gw, sql))
    keys = None
    if keys_public and n_keys:
        keys = frozenset(tuple(row[:n_keys]) for row in r.rows)
    return Outcome("ok", "", r.epsilon_spent, r.delta_spent,
                   tuple((c.name, c.type) for c in r.columns), keys, len(r.rows),
                   r.rows[0] if r.rows else None, seconds, compare_rows=keys_public,
                   notes=tuple(_TUNED.sub("tuned: <bounds>", n) for n in r.notes))


def _plans(gw: Gateway, sql: str) -> list[Any]:
    """The plan of ``sql``, or of each SELECT of a compound statement (UNION ALL, ...)."""
    compound = gw.compounds.plan(sql)
    return [b.plan for b in compound.branches] if compound is not None else [gw.plan(sql)]


def differences(a: Outcome, b: Outcome) -> list[str]:
    """What an analyst could use to tell D (``a``) from D′ (``b``)."""
    out: list[str] = []
    if CRASH in (a.kind, b.kind):
        out.append("non-GatewayError exception")
    if a.kind != b.kind:
        if TIMEOUT in (a.kind, b.kind):
            out.append("one-sided timeout")
        else:
            out.append(f"outcome class {a.kind} vs {b.kind}")
        return out
    if a.kind != "ok":
        same = _REQUEST_ID.sub("<id>", a.detail) == _REQUEST_ID.sub("<id>", b.detail)
        if not same and a.kind != CRASH:
            out.append(f"{a.kind} message")
        return out
    if (a.epsilon, a.delta) != (b.epsilon, b.delta):
        out.append("charge (epsilon/delta)")
    if [c[0] for c in a.columns] != [c[0] for c in b.columns]:
        out.append("column names")
    elif a.columns != b.columns and (a.rows == 0) == (b.rows == 0):
        # An empty result has untyped columns; with partition selection whether any
        # group is released is decided by noise, so only like is compared with like.
        out.append("column types")
    if a.notes != b.notes:
        out.append("notes")
    if a.keys != b.keys:
        out.append("released public keys")
    elif a.compare_rows and b.compare_rows and a.rows != b.rows:
        out.append("row count")
    return out


@dataclass(frozen=True)
class Mismatch:
    sql: str
    shape: str
    reasons: tuple[str, ...]
    d: Outcome
    d_prime: Outcome

    def show(self) -> str:
        return (f"[{', '.join(self.reasons)}]  ({self.shape})\n  SQL: {self.sql}\n"
                f"  D : {self.d.show()}\n  D′: {self.d_prime.show()}")


def report(mismatches: list[Mismatch], total: int, accepted: int, *, limit: int = 25) -> str:
    """A readable failure message: counts by reason, then the shortest examples of each."""
    by_reason: Counter[str] = Counter(r for m in mismatches for r in m.reasons)
    lines = [f"{len(mismatches)} of {total} queries let an analyst tell D from D′ "
             f"(accepted on D: {accepted}/{total} = {accepted / max(total, 1):.0%})",
             "by reason: " + ", ".join(f"{r} ×{n}" for r, n in by_reason.most_common()), ""]
    shown = 0
    classes: dict[tuple[str, ...], list[Mismatch]] = {}
    for m in mismatches:
        classes.setdefault(m.reasons, []).append(m)
    for reasons, group in sorted(classes.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"== {', '.join(reasons)}: {len(group)} queries; shortest:")
        for m in sorted(group, key=lambda m: len(m.sql))[:3]:
            lines.append(m.show())
            shown += 1
        if shown >= limit:
            break
    return "\n".join(lines)
