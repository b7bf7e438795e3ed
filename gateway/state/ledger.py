"""The persistent privacy ledger (SQLite): analysts, charges, answers, audit.

The one rule: a charge is committed before anything computed from data is
released, atomically with the budget check, so concurrent requests — threads
or processes — can never overspend.  ``BEGIN IMMEDIATE`` takes SQLite's write
lock for the whole check-then-insert; WAL with ``synchronous=FULL`` makes a
committed charge survive a crash.  A crash between charge and release loses
budget, never privacy.  There are no refunds once data was touched.

Admission is the privacy filter of :func:`gateway.privacy.accountant.fits`
(basic composition, or a Rényi filter when the policy reserves a δ share for
it), valid when each query's ε is chosen after seeing earlier answers.  The
ledger only persists what the filter needs, per scope (analyst, dataset): exact
decimal totals of ε and δ and the running sums of the events' Rényi bounds.
The PLD composition of the recorded events is reported beside it, labelled as
the figure that holds only for parameters fixed in advance.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.errors import BudgetExceeded, InvalidRequest, LedgerUnavailable, NotFound
from gateway.privacy.accountant import Accountant, FilterBudget, Sums, certified, fits
from gateway.privacy.events import PrivacyEvent, event_from_dict
from gateway.state.db import OWNER, StateDB, alive

PENDING_STALE_S = 600.0


def dec(x: float) -> Decimal:
    """Exact decimal of a float's shortest repr: ten charges of 0.1 sum to exactly 1.0."""
    return Decimal(repr(float(x)))


@dataclass(frozen=True)
class Analyst:
    name: str
    role: str
    epsilon: float
    delta: float
    key_hash: str | None
    scram: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Cost:
    epsilon: float
    delta: float
    events: tuple[PrivacyEvent, ...]


@dataclass(frozen=True)
class Spent:
    """A scope's budget as reported: what the filter certifies, and the PLD figure."""

    epsilon_total: float
    delta_total: float
    epsilon_spent: float
    delta_spent: float
    charges: int
    # PLD composition at δ_total, valid only for parameters fixed in advance: reported,
    # never used to admit (None until a good part of the budget is used).
    epsilon_nonadaptive: float | None = None

    @property
    def epsilon_remaining(self) -> float:
        return max(0.0, self.epsilon_total - self.epsilon_spent)

    @property
    def delta_remaining(self) -> float:
        return max(0.0, self.delta_total - self.delta_spent)

    def to_dict(self) -> dict[str, Any]:
        return {"epsilon_total": self.epsilon_total, "delta_total": self.delta_total,
                "epsilon_spent": self.epsilon_spent, "delta_spent": self.delta_spent,
                "epsilon_remaining": self.epsilon_remaining,
                "delta_remaining": self.delta_remaining, "charges": self.charges,
                "epsilon_pld_nonadaptive": self.epsilon_nonadaptive}


@dataclass(frozen=True)
class AuditLine:
    analyst: str | None
    action: str
    sql: str | None
    epsilon: float
    delta: float
    outcome: str
    detail: str | None = None
    query_id: str | None = None


@dataclass(frozen=True)
class Reservation:
    """Outcome of reserve(): charged, or an answer someone already paid for.

    A charged reservation is the ReadPermit the executor requires before it reads
    protected rows (:mod:`gateway.engine.base`)."""

    charged: bool
    cached_result: str | None = None
    query_id: str = ""
    charge_id: int | None = None

    @property
    def committed(self) -> bool:
        return self.charged and self.charge_id is not None


class _Scope:
    """In-memory accountant for one scope, caught up to charge id ``seen``."""

    def __init__(self) -> None:
        self.accountant = Accountant()
        self.seen = 0
        self.lock = threading.Lock()


class Ledger(StateDB):
    def __init__(self, path: Path, dataset: str, dataset_budget: tuple[float, float],
                 default_analyst_budget: tuple[float, float], renyi_share: float = 0.0
                 ) -> None:
        super().__init__(path)
        self.dataset = dataset
        self.dataset_budget = dataset_budget
        self.default_budget = default_analyst_budget
        self.renyi_share = renyi_share
        self._scopes: dict[str, _Scope] = {}
        self._scope_lock = threading.Lock()
        # Spent totals only change with new charges: memoised by the charge count.
        self._spent_memo: dict[tuple[str, int, tuple[float, float]], Spent] = {}
        if "filters" in self.created:
            with self._write() as con:
                for (scope,) in con.execute("SELECT scope FROM totals").fetchall():
                    self._rebuild_filter(con, scope)

    # -- analysts ----------------------------------------------------------------

    def add_analyst(self, name: str, key_hash: str | None, role: str, epsilon: float,
                    delta: float, scram: str | None) -> None:
        try:
            with self._write() as con:
                con.execute(
                    "INSERT INTO analysts (dataset, name, key_hash, role, epsilon, delta, scram,"
                    " created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (self.dataset, name, key_hash, role, repr(float(epsilon)),
                     repr(float(delta)), scram, time.time()))
        except sqlite3.IntegrityError:
            existing = self.analyst(name)
            if existing is None or existing.key_hash is not None:
                raise InvalidRequest(f"analyst {name!r} already exists",
                                     hint="choose another name") from None
            # Created implicitly by an in-process query (no key yet): give it one,
            # keeping what it has spent.
            with self._write() as con:
                con.execute("UPDATE analysts SET key_hash = ?, role = ?, epsilon = ?, delta = ?,"
                            " scram = ? WHERE dataset = ? AND name = ? AND key_hash IS NULL",
                            (key_hash, role, repr(float(epsilon)), repr(float(delta)), scram,
                             self.dataset, name))

    def ensure_analyst(self, name: str) -> Analyst:
        """In-process callers are trusted: an unknown analyst gets the default budget."""
        found = self.analyst(name)
        if found is not None:
            return found
        try:
            with self._write() as con:
                con.execute(
                    "INSERT OR IGNORE INTO analysts (dataset, name, key_hash, role, epsilon, "
                    "delta, scram, created) VALUES (?, ?, NULL, 'analyst', ?, ?, NULL, ?)",
                    (self.dataset, name, repr(self.default_budget[0]),
                     repr(self.default_budget[1]), time.time()))
        except sqlite3.Error as e:
            raise LedgerUnavailable(f"the ledger is unavailable ({type(e).__name__})") from None
        found = self.analyst(name)
        assert found is not None
        return found

    def analyst(self, name: str) -> Analyst | None:
        rows = self._read("SELECT name, role, epsilon, delta, key_hash, scram FROM analysts "
                          "WHERE dataset = ? AND name = ?", (self.dataset, name))
        return _analyst(rows[0]) if rows else None

    def analyst_by_key_hash(self, key_hash: str) -> Analyst | None:
        rows = self._read("SELECT name, role, epsilon, delta, key_hash, scram FROM analysts "
                          "WHERE dataset = ? AND key_hash = ?", (self.dataset, key_hash))
        return _analyst(rows[0]) if rows else None

    def analysts(self) -> list[Analyst]:
        rows = self._read("SELECT name, role, epsilon, delta, key_hash, scram FROM analysts "
                          "WHERE dataset = ? ORDER BY name", (self.dataset,))
        return [_analyst(r) for r in rows]

    # -- budget --------------------------------------------------------------------

    def _scope_names(self, analyst: str) -> tuple[str, str]:
        return f"analyst:{self.dataset}:{analyst}", f"dataset:{self.dataset}"

    def _catch_up(self, con: sqlite3.Connection, scope: str) -> _Scope:
        with self._scope_lock:
            state = self._scopes.setdefault(scope, _Scope())
        with state.lock:
            self._catch_up_locked(con, scope, state)
        return state

    def _catch_up_locked(self, con: sqlite3.Connection, scope: str, state: _Scope) -> None:
        # Charges repeat the same few events: parse each distinct list once.
        if scope.startswith("dataset:"):
            rows = con.execute("SELECT events, COUNT(*), MAX(id) FROM charges WHERE dataset = ? "
                               "AND id > ? GROUP BY events", (self.dataset, state.seen)).fetchall()
        else:
            analyst = scope.split(":", 2)[2]
            rows = con.execute("SELECT events, COUNT(*), MAX(id) FROM charges WHERE dataset = ? "
                               "AND analyst = ? AND id > ? GROUP BY events",
                               (self.dataset, analyst, state.seen)).fetchall()
        if rows:
            events = [event_from_dict(e) for text, count, _ in rows
                      for e in json.loads(text) for _ in range(count)]
            state.accountant.add(events)
            state.seen = max(r[2] for r in rows)

    def _totals(self, con: sqlite3.Connection, scope: str) -> tuple[Decimal, Decimal, int]:
        row = con.execute("SELECT epsilon, delta, n FROM totals WHERE scope = ?",
                          (scope,)).fetchone()
        if row is None:
            return Decimal(0), Decimal(0), 0
        return Decimal(row[0]), Decimal(row[1]), int(row[2])

    def _filter(self, con: sqlite3.Connection, scope: str, budget: tuple[float, float]
                ) -> tuple[Sums, FilterBudget]:
        """The scope's running sums, and its budget with the δ share fixed at its first
        charge (a filter's parameters may not change once answers have been seen)."""
        row = con.execute("SELECT spent, renyi_share FROM filters WHERE scope = ?",
                          (scope,)).fetchone()
        if row is None:
            return Sums(), FilterBudget(budget[0], budget[1], self.renyi_share)
        return Sums.from_json(json.loads(row[0])), FilterBudget(budget[0], budget[1], row[1])

    def _store_filter(self, con: sqlite3.Connection, scope: str, sums: Sums,
                      share: float) -> None:
        con.execute("INSERT OR REPLACE INTO filters (scope, spent, renyi_share) VALUES "
                    "(?, ?, ?)", (scope, json.dumps(sums.to_json()), share))

    def _rebuild_filter(self, con: sqlite3.Connection, scope: str) -> None:
        """Recompute a scope's sums from its charges (old state files, settled charges)."""
        if scope.startswith("dataset:"):
            rows = con.execute("SELECT epsilon, delta, events FROM charges WHERE dataset = ? "
                               "ORDER BY id", (self.dataset,)).fetchall()
        else:
            analyst = scope.split(":", 2)[2]
            rows = con.execute("SELECT epsilon, delta, events FROM charges WHERE dataset = ? "
                               "AND analyst = ? ORDER BY id", (self.dataset, analyst)).fetchall()
        found = con.execute("SELECT renyi_share FROM filters WHERE scope = ?",
                            (scope,)).fetchone()
        share = found[0] if found is not None else self.renyi_share
        sums = Sums()
        for eps, delta, text in rows:
            sums = sums.plus([event_from_dict(e) for e in json.loads(text)], float(eps),
                             float(delta))
        self._store_filter(con, scope, sums, share)

    def _fits(self, con: sqlite3.Connection, scope: str, budget: tuple[float, float],
              cost: Cost) -> bool:
        sums, filter_budget = self._filter(con, scope, budget)
        return fits(sums.plus(cost.events, cost.epsilon, cost.delta), filter_budget)

    def reserve(self, analyst: Analyst, query_id: str, kind: str, sql: str, cost: Cost,
                answer_key: str | None = None, wait_s: float = 120.0) -> Reservation:
        """Charge ``cost`` atomically, unless an identical answer was already paid for."""
        deadline = time.monotonic() + wait_s
        while True:
            outcome = self._try_reserve(analyst, query_id, kind, sql, cost, answer_key)
            if outcome is not None:
                return outcome
            if time.monotonic() > deadline:
                raise LedgerUnavailable("an identical query is still running",
                                        hint="retry in a moment; nothing was charged")
            time.sleep(0.05)

    def _try_reserve(self, analyst: Analyst, query_id: str, kind: str, sql: str, cost: Cost,
                     answer_key: str | None) -> Reservation | None:
        a_scope, d_scope = self._scope_names(analyst.name)
        with self._write() as con:
            if answer_key is not None:
                row = con.execute("SELECT status, result, created, owner FROM answers "
                                  "WHERE key = ?", (answer_key,)).fetchone()
                if row is not None:
                    status, result, created, owner = row
                    if status == "done":
                        return Reservation(False, result, query_id)
                    if time.time() - created < PENDING_STALE_S and alive(owner):
                        return None  # someone is computing it: wait, do not pay twice
                    # Its owner died after paying: the budget is lost, the answer is not
                    # released; compute (and pay for) it afresh.
                    con.execute("DELETE FROM answers WHERE key = ?", (answer_key,))
            self._check_affordable(con, analyst, cost)
            cur = con.execute(
                "INSERT INTO charges (dataset, analyst, query_id, kind, sql, epsilon, delta, "
                "events, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self.dataset, analyst.name, query_id, kind, sql, repr(float(cost.epsilon)),
                 repr(float(cost.delta)), json.dumps([e.to_dict() for e in cost.events]),
                 time.time()))
            charge_id = cur.lastrowid
            for scope, budget in ((a_scope, (analyst.epsilon, analyst.delta)),
                                  (d_scope, self.dataset_budget)):
                sums, filter_budget = self._filter(con, scope, budget)
                self._store_filter(con, scope, sums.plus(cost.events, cost.epsilon,
                                                         cost.delta),
                                   filter_budget.renyi_share)
                eps, delta, n = self._totals(con, scope)
                con.execute("INSERT OR REPLACE INTO totals (scope, epsilon, delta, n) VALUES "
                            "(?, ?, ?, ?)", (scope, str(eps + dec(cost.epsilon)),
                                             str(delta + dec(cost.delta)), n + 1))
            if answer_key is not None:
                con.execute("INSERT INTO answers (key, dataset, status, result, created, owner)"
                            " VALUES (?, ?, 'pending', NULL, ?, ?)",
                            (answer_key, self.dataset, time.time(), OWNER))
        return Reservation(True, None, query_id, charge_id)

    def _check_affordable(self, con: sqlite3.Connection, analyst: Analyst, cost: Cost) -> None:
        a_scope, d_scope = self._scope_names(analyst.name)
        if not self._fits(con, a_scope, (analyst.epsilon, analyst.delta), cost):
            raise self._exceeded(con, a_scope, (analyst.epsilon, analyst.delta), cost,
                                 f"analyst {analyst.name!r}")
        if not self._fits(con, d_scope, self.dataset_budget, cost):
            raise self._exceeded(con, d_scope, self.dataset_budget, cost,
                                 f"dataset {self.dataset!r}")

    def settle(self, reservation: Reservation, final: Cost) -> None:
        """Replace a committed charge by the exact cost of what was released, once it is
        known (a training run solves its noise from a DP count read under the charge).

        ``final`` may never exceed what was reserved in ε or δ (basic composition), and
        the scopes must still fit the filter with the exact events (their Rényi bounds
        need not be below the reserved events' at every order): settling admits the
        final mechanism, chosen from what ran under the reservation, before it runs.
        If it does not fit, BudgetExceeded is raised and the reserved charge stays.
        """
        if not reservation.committed:
            raise InvalidRequest("only a committed charge can be settled")
        with self._write() as con:
            row = con.execute("SELECT analyst, epsilon, delta FROM charges WHERE id = ?",
                              (reservation.charge_id,)).fetchone()
            if row is None:
                raise NotFound(f"no charge {reservation.charge_id}")
            analyst, old_eps, old_delta = row[0], Decimal(row[1]), Decimal(row[2])
            new_eps, new_delta = dec(final.epsilon), dec(final.delta)
            if new_eps > old_eps or new_delta > old_delta:
                raise InvalidRequest("a settled charge may not exceed its reservation")
            con.execute("UPDATE charges SET epsilon = ?, delta = ?, events = ? WHERE id = ?",
                        (repr(float(final.epsilon)), repr(float(final.delta)),
                         json.dumps([e.to_dict() for e in final.events]),
                         reservation.charge_id))
            who = con.execute("SELECT epsilon, delta FROM analysts WHERE dataset = ? AND "
                              "name = ?", (self.dataset, analyst)).fetchone()
            budgets = ((float(who[0]), float(who[1])), self.dataset_budget)
            for scope, budget in zip(self._scope_names(analyst), budgets, strict=True):
                eps, delta, _ = self._totals(con, scope)
                con.execute("UPDATE totals SET epsilon = ?, delta = ? WHERE scope = ?",
                            (str(eps - old_eps + new_eps), str(delta - old_delta + new_delta),
                             scope))
                self._rebuild_filter(con, scope)
                sums, filter_budget = self._filter(con, scope, budget)
                if not fits(sums, filter_budget):  # rolls the settlement back
                    raise BudgetExceeded(
                        "the privacy budget cannot afford this training run with the noise "
                        "its unit count calls for; the reserved charge stays",
                        hint="ask for a smaller epsilon or more budget")
        self._spent_memo.clear()
        with self._scope_lock:
            # In-memory PLD accountants (reporting only) saw the reserved events.
            for scope in self._scope_names(analyst):
                self._scopes.pop(scope, None)

    def _exceeded(self, con: sqlite3.Connection, scope: str, budget: tuple[float, float],
                  cost: Cost, who: str) -> BudgetExceeded:
        # What the filter certifies (the informational PLD figure would cost a
        # convolution, and the import of SciPy, on every refusal).
        sums, filter_budget = self._filter(con, scope, budget)
        eps, dlt = certified(sums, filter_budget)
        spent = Spent(budget[0], budget[1], eps, dlt, sums.count)
        return BudgetExceeded(
            f"the privacy budget of {who} cannot afford this query: it costs epsilon="
            f"{cost.epsilon:g}, delta={cost.delta:g}; remaining epsilon="
            f"{spent.epsilon_remaining:.6g}, delta={spent.delta_remaining:.3g}",
            hint="ask for a smaller epsilon, reuse an earlier answer (repeats are free), or "
            "ask the operator for more budget")

    def complete(self, answer_key: str, result: str, audit: AuditLine | None = None) -> None:
        """Store a released answer (and its audit line: one transaction, not two).

        Not fsynced: the charge already is.  If a power cut loses this row, the
        answer is computed and paid for again; privacy is never at stake."""
        with self._write(relaxed=True) as con:
            con.execute("UPDATE answers SET status = 'done', result = ? WHERE key = ?",
                        (result, answer_key))
            if audit is not None:
                self._insert_audit(con, audit)

    def abandon(self, answer_key: str) -> None:
        """The charge stays (data may have been touched); only the pending mark goes."""
        try:
            with self._write() as con:
                con.execute("DELETE FROM answers WHERE key = ? AND status = 'pending'",
                            (answer_key,))
        except LedgerUnavailable:
            pass

    def cached(self, answer_key: str) -> str | None:
        rows = self._read("SELECT result FROM answers WHERE key = ? AND status = 'done'",
                          (answer_key,))
        return rows[0][0] if rows else None

    def _spent(self, con: sqlite3.Connection, scope: str, budget: tuple[float, float]) -> Spent:
        eps, delta, n = self._totals(con, scope)
        memo_key = (scope, n, budget)
        memo = self._spent_memo.get(memo_key)
        if memo is not None:
            return memo
        spent = self._compute_spent(con, scope, budget, eps, delta, n)
        if len(self._spent_memo) > 10_000:
            self._spent_memo.clear()
        self._spent_memo[memo_key] = spent
        return spent

    def _compute_spent(self, con: sqlite3.Connection, scope: str, budget: tuple[float, float],
                       eps: Decimal, delta: Decimal, n: int) -> Spent:
        sums, filter_budget = self._filter(con, scope, budget)
        best = certified(sums, filter_budget)
        # The PLD figure costs a convolution per new charge and only informs; it is
        # computed once a good part of the budget is used.
        pld = None
        if budget[1] > 0 and n and best[0] >= 0.5 * budget[0]:
            state = self._catch_up(con, scope)
            value = state.accountant.pld_epsilon(budget[1])
            pld = value if math.isfinite(value) else None
        return Spent(budget[0], budget[1], best[0], best[1], n, pld)

    def spent(self, analyst: Analyst) -> tuple[Spent, Spent]:
        a_scope, d_scope = self._scope_names(analyst.name)
        con = self._con()
        return (self._spent(con, a_scope, (analyst.epsilon, analyst.delta)),
                self._spent(con, d_scope, self.dataset_budget))

    def charges(self, analyst: str | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT id, analyst, query_id, kind, epsilon, delta, created FROM charges "
               "WHERE dataset = ?")
        args: list[Any] = [self.dataset]
        if analyst is not None:
            sql += " AND analyst = ?"
            args.append(analyst)
        rows = self._read(sql + " ORDER BY id", args)
        return [{"id": r[0], "analyst": r[1], "query_id": r[2], "kind": r[3],
                 "epsilon": float(r[4]), "delta": float(r[5]), "created": r[6]} for r in rows]

    # -- audit ---------------------------------------------------------------------

    def audit(self, analyst: str | None, action: str, sql: str | None, epsilon: float,
              delta: float, outcome: str, detail: str | None = None,
              query_id: str | None = None) -> None:
        line = AuditLine(analyst, action, sql, epsilon, delta, outcome, detail, query_id)
        try:
            # Audit lines of requests that charged nothing need not wait for an fsync:
            # a power cut may lose the last few, never a charge (those are FULL).
            with self._write(relaxed=True) as con:
                self._insert_audit(con, line)
        except LedgerUnavailable:
            pass  # the charge, not the audit line, is what protects privacy

    def _insert_audit(self, con: sqlite3.Connection, a: AuditLine) -> None:
        con.execute(
            "INSERT INTO audit (ts, dataset, analyst, action, sql, epsilon, delta, outcome, "
            "detail, query_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), self.dataset, a.analyst, a.action, a.sql, repr(float(a.epsilon)),
             repr(float(a.delta)), a.outcome, a.detail, a.query_id))

    def audit_log(self, analyst: str | None = None, since: float | None = None,
                  until: float | None = None, limit: int = 100, offset: int = 0
                  ) -> list[dict[str, Any]]:
        sql = ("SELECT id, ts, analyst, action, sql, epsilon, delta, outcome, detail, query_id "
               "FROM audit WHERE dataset = ?")
        args: list[Any] = [self.dataset]
        for cond, value in (("analyst = ?", analyst), ("ts >= ?", since), ("ts <= ?", until)):
            if value is not None:
                sql += f" AND {cond}"
                args.append(value)
        sql += " ORDER BY id LIMIT ? OFFSET ?"
        args += [int(limit), int(offset)]
        return [{"id": r[0], "ts": r[1], "analyst": r[2], "action": r[3], "sql": r[4],
                 "epsilon": float(r[5]) if r[5] is not None else 0.0,
                 "delta": float(r[6]) if r[6] is not None else 0.0, "outcome": r[7],
                 "detail": r[8], "query_id": r[9]} for r in self._read(sql, args)]

    def require_analyst(self, name: str) -> Analyst:
        found = self.analyst(name)
        if found is None:
            raise NotFound(f"no analyst named {name!r}",
                           hint="create one with `gateway analyst add NAME`")
        return found


def _analyst(row: tuple[Any, ...]) -> Analyst:
    return Analyst(row[0], row[1], float(row[2]), float(row[3]), row[4], row[5])
