"""Advanced composition from running sums: an O(1) middle tier for the ledger.

Between basic composition (exact, often loose) and the PLD accountant (tight, but
a convolution and SciPy's import away), the heterogeneous advanced composition
theorem needs only three running sums over released mechanisms (ε_i, δ_i):

    ε_total = Σ ε_i·tanh(ε_i / 2) + sqrt(2·ln(1/δ')·Σ ε_i²),
    δ_total = δ' + Σ δ_i,

for any δ' > 0 (Kairouz, Oh & Viswanath, "The composition theorem for
differential privacy", ICML 2015, Theorem 3.5; (e^ε − 1)/(e^ε + 1) = tanh(ε/2)).
It holds for mechanisms given only by their (ε, δ) guarantees, so it needs no
event details, and it is never used to report, only to admit a query sooner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Moments:
    """Σε², Σε·tanh(ε/2) and Σδ of a set of (ε, δ)-DP releases."""

    sq: float = 0.0
    th: float = 0.0
    delta: float = 0.0

    def plus(self, epsilon: float, delta: float) -> Moments:
        return Moments(self.sq + epsilon * epsilon, self.th + epsilon * math.tanh(epsilon / 2),
                       self.delta + delta)

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.sq + other.sq, self.th + other.th, self.delta + other.delta)


def advanced_epsilon(m: Moments, delta_budget: float) -> float:
    """ε of the composition at total δ = delta_budget (inf if Σδ_i leaves no room)."""
    room = delta_budget - m.delta
    if room <= 0 or not math.isfinite(m.sq):
        return math.inf
    # Rounding of the running sums is far below this margin (relative 1e-12).
    return (m.th + math.sqrt(2.0 * math.log(1.0 / room) * m.sq)) * (1 + 1e-12)
