"""Spies on the partition-selection samplers, and the (ε, δ) their parameters account for.

Used by the charge-invariant tests (test_cost_invariant.py, test_compound.py,
test_partition_strategies.py): each sampler call is recorded with the parameters it
received, and :func:`selection_cost` turns one call into the (ε, δ) it costs, from
those parameters, the plan and the noise the thresholded statistic's own sampler was
given.  The noise tails are computed here independently of
gateway/privacy/thresholding.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from gateway.privacy import calibration
from gateway.query import perturb


def install(monkeypatch: pytest.MonkeyPatch, calls: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Record every partition-selection sampler call in ``calls``."""
    real_ps = perturb.select_partitions
    real_thr = perturb.select_above_threshold
    real_gauss = perturb.gaussian_threshold_select

    def partitions(units: Any, eps: float, delta: float, l0: int, rng: Any) -> Any:
        calls.append(("truncated_geometric", (eps, delta, l0)))
        return real_ps(units, eps, delta, l0, rng)

    def above(noisy: Any, threshold: int) -> Any:
        calls.append(("threshold", (threshold,)))
        return real_thr(noisy, threshold)

    def gaussian(units: Any, sigma: float, threshold: int, rng: Any) -> Any:
        calls.append(("gaussian_threshold", (sigma, threshold)))
        return real_gauss(units, sigma, threshold, rng)

    monkeypatch.setattr(perturb, "select_partitions", partitions)
    monkeypatch.setattr(perturb, "select_above_threshold", above)
    monkeypatch.setattr(perturb, "gaussian_threshold_select", gaussian)


def tail(kind: str, scale: float, k: int) -> float:
    """P(X ≥ k), k ≥ 1, for the integer noise the samplers add (grid units)."""
    assert k >= 1
    if kind == "discrete_laplace":
        a = math.exp(-1.0 / scale)
        return a ** k / (1.0 + a)
    if kind in ("laplace", "rounded_laplace"):
        return 0.5 * math.exp(-(k - 0.5) / scale)
    assert kind in ("gaussian", "rounded_gaussian")
    return 0.5 * math.erfc((k - 0.5) / scale / math.sqrt(2.0))


def selection_cost(call: tuple[str, tuple[Any, ...]], plan: Any, cal: Any,
                   scales: dict[str, tuple[str, float]]) -> tuple[float, float]:
    """(ε, δ) one selection call adds to the charge.  ``scales`` maps each noisy
    statistic to the (sampler, scale) its noise sampler received."""
    strategy, args = call
    l0 = plan.max_groups
    if strategy == "truncated_geometric":
        eps, delta, got_l0 = args
        assert got_l0 == l0
        return eps, delta
    part = cal.partition
    assert part is not None and part.strategy == strategy
    if strategy == "threshold":
        (tau,) = args
        stat = next(s for s in plan.stats if s.name == part.statistic)
        kind, scale = scales[stat.name]
        step = cal.stats[stat.name].grid.step
        # One unit's largest addition to one group's count, from the plan.
        c = math.ceil((1.0 if stat.kind == "units" else float(plan.max_rows)) / step)
        d_thr = part.delta_threshold
        assert tau > c
        assert l0 * tail(kind, scale, tau - c) <= d_thr * (1 + 1e-9)  # τ is high enough
        if tau - 1 > c:  # and the smallest such: δ_thr is what τ costs
            assert l0 * tail(kind, scale, tau - 1 - c) > d_thr * (1 - 1e-6)
        return 0.0, d_thr
    assert strategy == "gaussian_threshold"
    sigma, tau = args
    eps, d1, d2 = part.epsilon, part.delta_noise, part.delta_threshold
    # Unit counts move by 1 in at most L0 groups: L2 sensitivity √L0.
    assert calibration.gaussian_delta(sigma / math.sqrt(l0), eps, 1.0) <= d1 * (1 + 1e-9)
    assert l0 * tail("gaussian", sigma, tau - 1) <= d2 * (1 + 1e-9)
    return eps, d1 + d2
