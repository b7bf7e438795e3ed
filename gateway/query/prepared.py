"""Everything decided about a query before it touches data, remembered.

Planning, calibration and the rewrite are functions of (SQL, dialect, ε, δ,
mechanism) and the policy alone, so a repeated request — the common case for
dashboards, and the whole point of the answer cache — skips them.  Answers and
post-processed rows are remembered too, keyed by what they are computed from.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlglot import exp

from gateway.query.noise import Calibration
from gateway.sql.plan import Plan

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> V:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value

    def get_or(self, key: K, make: Callable[[], V]) -> V:
        found = self.get(key)
        return found if found is not None else self.put(key, make())


@dataclass(frozen=True)
class Prepared:
    """A planned, calibrated and rewritten query, ready to charge and run."""

    key: tuple[str, str, float, float, str]  # (dialect, sql, ε, δ, mechanism)
    plan: Plan
    cal: Calibration | None  # None for queries over public tables only
    tree: exp.Expr | None
    sql: str  # the engine SQL (rewritten, or the public query)
    answer_key: str | None
    salted: bool  # the engine SQL takes the keyed hash's secret salt ($salt)

    @property
    def from_domains(self) -> bool:
        """Nothing noisy is released (no charge): answered from public domains alone,
        without reading a protected row (DESIGN §2, side channels)."""
        return self.cal is not None and not self.cal.events


def answer_key(policy_version: str, rewritten: str, cal: Calibration) -> str:
    """Same policy, same bounded query, same noise: the same release."""
    text = "\x00".join([policy_version, rewritten, cal.fingerprint()])
    return hashlib.sha256(text.encode()).hexdigest()
