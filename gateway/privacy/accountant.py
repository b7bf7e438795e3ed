"""Composition of privacy events: the admission filter, and the PLD report.

**Admission** (:func:`fits`) must be valid when analysts choose each query, and
its ε, after seeing every earlier answer.  Composition theorems for parameters
fixed in advance (advanced composition, the PLD total) are not theorems in that
setting (Rogers, Roth, Ullman & Vadhan, "Privacy odometers and filters",
NeurIPS 2016), so admission is a *privacy filter*:

* **basic composition**: Σε ≤ ε_B and Σδ ≤ δ_B — valid under full adaptivity
  (Rogers et al. 2016);
* optionally, a **Rényi filter** over a fixed set of orders Λ, when the policy
  reserves a share δ_R of the δ budget for it (``budget.renyi_share``).  For each
  order α the process exp((α−1)(L_n − Σ_{i≤n} ρ_i(α))), L_n the privacy loss
  and ρ_i the i-th event's Rényi bound chosen before it runs, is a nonnegative
  supermartingale (the argument of Feldman & Zrnic, NeurIPS 2021).  Ville's
  inequality and a union bound over Λ give, with probability ≥ 1 − δ_R,
  *simultaneously for all n*: L_n < Σ_i ρ_i(α) + log(|Λ|/δ_R)/(α−1) for every α.
  So stopping as soon as no α keeps that bound within ε_B is valid, and so is
  taking it *or* basic composition (for pure events basic bounds L_n surely).
  Events known only by (ε, δ) (partition selection) enter with the Rényi bound
  of an ε-DP mechanism and their δ composed apart: every event's nominal δ is
  capped *in both branches* at Σδ ≤ δ_B − δ_R, which is what makes the union of
  the two branches valid (the δ share is fixed before any query, never chosen
  after an answer).  The result is (ε_B, δ_B)-DP.

**Reporting**: the PLD accountant (Meiser & Mohammadi, CCS 2018; Koskela et
al., AISTATS 2020; Doroshenko et al., "Connect the dots", PoPETs 2022, via
``dp_accounting``) composes the recorded events tightly *as if* their parameters
had been fixed in advance.  It is reported, labelled non-adaptive, and never
used to admit a query.

Speed of the PLD report: identical events are grouped and composed with
``self_compose`` (an FFT power) and the composition of all recorded events is
cached, so adding a query costs one ``compose`` plus one ε(δ) lookup.  The
filter itself is O(|Λ|) from running sums the ledger keeps.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

from gateway.privacy.events import ORDERS, PrivacyEvent

__all__ = ["DEFAULT_DISCRETIZATION", "Accountant", "FilterBudget", "Sums", "certified",
           "epsilon_for_delta", "fits", "renyi_epsilon"]

# 1e-3 costs < 0.01 in ε for hundreds of ε≈0.1 releases (9.5264 vs 9.5263 at
# 1e-4 for the 330 × 0.1 example) and keeps a 10,000-event check at a few ms;
# 1e-2 is ~3x faster but much looser for events with ε ≲ 0.01.
DEFAULT_DISCRETIZATION = 1e-3

# A PLD's support grows with ε/interval; beyond this per-event ε the PLD costs
# memory and time without improving on basic composition in any useful way, so
# an accountant holding such an event answers with basic composition only.
PLD_MAX_EVENT_EPSILON = 30.0

EventsArg = PrivacyEvent | Iterable[PrivacyEvent]
_Key = tuple[tuple[PrivacyEvent, int], ...]


def _dec(x: float) -> Decimal:
    """Decimal of a float's shortest repr, so 0.1 adds up as 0.1, not 0.1000000000000000055."""
    return Decimal(repr(float(x)))


def _as_tuple(events: EventsArg) -> tuple[PrivacyEvent, ...]:
    items = (events,) if isinstance(events, PrivacyEvent) else tuple(events)
    for e in items:
        if not isinstance(e, PrivacyEvent):
            raise ValueError(f"not a privacy event: {e!r}")
    return items


# --------------------------------------------------------------------------- filter


@dataclass(frozen=True)
class FilterBudget:
    """A scope's budget and the share of its δ reserved for the Rényi branch (fixed
    before the scope's first charge)."""

    epsilon: float
    delta: float
    renyi_share: float = 0.0

    @property
    def renyi_delta(self) -> float:
        return self.delta * self.renyi_share

    @property
    def event_delta(self) -> Decimal:
        """What the events' nominal δ may sum to."""
        return _dec(self.delta) - _dec(self.renyi_delta)


@dataclass(frozen=True)
class Sums:
    """Running sums of a scope's events, all the filter needs (the ledger persists them)."""

    epsilon: Decimal = Decimal(0)  # Σ nominal ε
    delta: Decimal = Decimal(0)  # Σ nominal δ
    rdp: tuple[float, ...] = tuple(0.0 for _ in ORDERS)  # Σ Rényi bounds at ORDERS
    count: int = 0

    def plus(self, events: EventsArg, epsilon: float | None = None,
             delta: float | None = None) -> Sums:
        """Add events (a charge's nominal (ε, δ) may be given: it is what was charged)."""
        new = _as_tuple(events)
        eps = _dec(epsilon) if epsilon is not None else sum((_dec(e.epsilon) for e in new),
                                                            Decimal(0))
        dlt = _dec(delta) if delta is not None else sum((_dec(e.delta) for e in new),
                                                        Decimal(0))
        rdp = list(self.rdp)
        for e in new:
            rdp = [a + b for a, b in zip(rdp, e.rdp(), strict=True)]
        return Sums(self.epsilon + eps, self.delta + dlt, tuple(rdp), self.count + 1)

    def to_json(self) -> list[Any]:
        return [str(self.epsilon), str(self.delta), list(self.rdp), self.count]

    @classmethod
    def from_json(cls, data: list[Any]) -> Sums:
        return cls(Decimal(data[0]), Decimal(data[1]), tuple(float(x) for x in data[2]),
                   int(data[3]))


def renyi_epsilon(rdp: tuple[float, ...], renyi_delta: float) -> float:
    """ε that the Rényi branch certifies for these sums (inf without a δ share)."""
    if renyi_delta <= 0:
        return math.inf
    slack = math.log(len(ORDERS) / renyi_delta)
    return min(r + slack / (a - 1.0) for r, a in zip(rdp, ORDERS, strict=True))


def fits(spent: Sums, budget: FilterBudget) -> bool:
    """May a scope that has spent ``spent`` (new events included) stop here within
    budget?  The one admission rule of the gateway (see the module docstring)."""
    if spent.delta > budget.event_delta:
        return False
    if spent.epsilon <= _dec(budget.epsilon):
        return True
    return renyi_epsilon(spent.rdp, budget.renyi_delta) <= budget.epsilon


def certified(spent: Sums, budget: FilterBudget) -> tuple[float, float]:
    """The tightest (ε, δ) the filter certifies for ``spent``: basic, or the Rényi
    branch's ε at δ = Σδ + δ_R when that is smaller."""
    basic = (float(spent.epsilon), float(spent.delta))
    renyi = renyi_epsilon(spent.rdp, budget.renyi_delta)
    if renyi < basic[0]:
        return renyi, float(spent.delta) + budget.renyi_delta
    return basic


# --------------------------------------------------------------------------- ε(δ)


def _pmf_epsilon(
    lower: int, step: float, probs: np.ndarray, inf_mass: float, delta: float
) -> float:
    """Smallest ε ≥ 0 with hockey-stick divergence ≤ δ, for one discretised PLD pmf.

    δ(ε) = inf_mass + Σ_{l > ε} p_l (1 − e^{ε−l}) (Meiser & Mohammadi 2018).
    Between consecutive losses l_{k−1} < ε ≤ l_k it equals U_k − e^ε L_k with
    suffix sums U_k = inf_mass + Σ_{j≥k} p_j and L_k = Σ_{j≥k} p_j e^{−l_j}, so
    one vectorised pass finds the interval and solves for ε in closed form.
    """
    if inf_mass > delta:
        return math.inf
    losses = (lower + np.arange(len(probs))) * step
    start = int(np.searchsorted(losses, 0.0, side="right"))
    loss = losses[start:]
    p = probs[start:]
    if loss.size == 0:
        return 0.0
    upper = inf_mass + np.cumsum(p[::-1])[::-1]
    lower_mass = np.cumsum((p * np.exp(-loss))[::-1])[::-1]
    if upper[0] - lower_mass[0] <= delta:
        return 0.0
    # δ at each loss point: D_k = U_{k+1} − e^{l_k} L_{k+1}.
    u_next = np.append(upper[1:], inf_mass)
    l_next = np.append(lower_mass[1:], 0.0)
    d = u_next - np.exp(loss) * l_next
    k = int(np.argmax(d <= delta))  # the last entry equals inf_mass <= delta
    num, den = float(upper[k] - delta), float(lower_mass[k])
    if not (num > 0.0 and den > 0.0):  # underflow: fall back to the interval's upper end
        return float(loss[k])
    eps = math.log(num / den)
    left = loss[k - 1] if k > 0 else 0.0
    return float(min(max(eps, left), loss[k]))


def epsilon_for_delta(pld: pld_lib.PrivacyLossDistribution, delta: float) -> float:
    """``pld.get_epsilon_for_delta(delta)``, vectorised.

    dp_accounting walks the pmf in a Python loop (tens of ms for a large
    composed PLD).  This reads the dense pmf and does the same computation in
    numpy; if the library's internals ever change it falls back to the public
    method (a test pins the two to agree).
    """
    try:
        pmfs = [pld._pmf_remove] if pld._symmetric else [pld._pmf_remove, pld._pmf_add]
        parts = []
        for pmf in pmfs:
            dense = pmf.to_dense_pmf()
            parts.append(
                (dense._lower_loss, dense._discretization, dense._probs, dense._infinity_mass)
            )
    except AttributeError:  # pragma: no cover - depends on the dp_accounting version
        return float(pld.get_epsilon_for_delta(delta))
    top = max((lo + len(pr) - 1) * st for lo, st, pr, _ in parts)
    if top > 700.0:  # e^{-l} would underflow; rare enough for the slow path
        return float(pld.get_epsilon_for_delta(delta))
    return max(_pmf_epsilon(lo, st, np.asarray(pr), im, delta) for lo, st, pr, im in parts)


# --------------------------------------------------------------------------- accountant


class Accountant:
    """A multiset of privacy events with cached PLD composition: the *non-adaptive*
    figure the ledger reports beside what the filter certifies.

    Not a ledger: it does not persist anything; the ledger rebuilds one from its
    events and adds new ones as they are committed.  Methods are guarded by a
    lock, so one instance can be shared.
    """

    def __init__(
        self,
        events: EventsArg = (),
        *,
        value_discretization_interval: float = DEFAULT_DISCRETIZATION,
    ) -> None:
        vdi = float(value_discretization_interval)
        if not (math.isfinite(vdi) and vdi > 0.0):
            raise ValueError(f"value_discretization_interval must be > 0, got {vdi!r}")
        self._vdi = vdi
        self._lock = threading.RLock()
        self._counts: Counter[PrivacyEvent] = Counter()
        self._basic_eps = Decimal(0)
        self._basic_delta = Decimal(0)
        self._composed: pld_lib.PrivacyLossDistribution | None = None
        self._pld_off = False  # set once an event too large for a PLD is recorded
        # Last PLD computed by check(): (grouped new events, composition with them).
        self._pending: tuple[_Key, pld_lib.PrivacyLossDistribution | None] | None = None
        self.add(events)

    # -- recording --------------------------------------------------------

    @property
    def value_discretization_interval(self) -> float:
        return self._vdi

    def __len__(self) -> int:
        return sum(self._counts.values())

    @property
    def counts(self) -> dict[PrivacyEvent, int]:
        """Distinct events and how many times each was recorded (a copy)."""
        with self._lock:
            return dict(self._counts)

    def add(self, events: EventsArg) -> None:
        """Record released events."""
        new = _as_tuple(events)
        if not new:
            return
        key = self._group(new)
        with self._lock:
            if _too_large(key):
                self._pld_off = True
            if self._pld_off:
                composed = None
            elif self._pending is not None and self._pending[0] == key:
                composed = self._pending[1]
            else:
                composed = self._compose_with(key)
            self._pending = None
            self._composed = composed
            for event, count in key:
                self._counts[event] += count
                self._basic_eps += _dec(event.epsilon) * count
                self._basic_delta += _dec(event.delta) * count

    def basic(self) -> tuple[Decimal, Decimal]:
        """Exact basic-composition totals (Σε, Σδ) of the recorded events."""
        with self._lock:
            return self._basic_eps, self._basic_delta

    # -- PLD --------------------------------------------------------------

    @staticmethod
    def _group(events: tuple[PrivacyEvent, ...]) -> _Key:
        counts = Counter(events)
        return tuple(sorted(counts.items(), key=lambda kv: repr(kv[0])))

    def _group_pld(self, key: _Key) -> pld_lib.PrivacyLossDistribution | None:
        total = None
        for event, count in key:
            pld = event.to_pld(self._vdi)
            if count > 1:
                pld = pld.self_compose(count)
            total = pld if total is None else total.compose(pld)
        return total

    def _compose_with(self, key: _Key) -> pld_lib.PrivacyLossDistribution | None:
        new = self._group_pld(key)
        if new is None:
            return self._composed
        if self._composed is None:
            return new
        return self._composed.compose(new)

    def pld_epsilon(self, delta: float, new_events: EventsArg = ()) -> float:
        """ε of the PLD composition of recorded (+ new) events at ``delta``.

        ``inf`` when ``delta`` is below the events' total point mass at infinity
        (e.g. their summed δ, or at δ = 0 the ~1e-15 of truncated tails that
        the pessimistic PLD moves there).  May exceed the basic total slightly
        because of pessimistic discretisation; use :meth:`spent` or
        :meth:`check` for the tightest figure.
        """
        d = float(delta)
        if not 0.0 <= d < 1.0:
            raise ValueError(f"delta must be in [0, 1), got {delta!r}")
        key = self._group(_as_tuple(new_events))
        with self._lock:
            if self._pld_off or _too_large(key):
                return math.inf
            pld = self._compose_with(key) if key else self._composed
            if key:
                self._pending = (key, pld)
        if pld is None:
            return 0.0
        return epsilon_for_delta(pld, d)


def _too_large(key: _Key) -> bool:
    return any(event.epsilon > PLD_MAX_EVENT_EPSILON for event, _ in key)
