"""Pass 4: split the requested (ε, δ) over a plan's statistics and size the noise.

Everything is decided before execution from the plan (SQL + policy) and the
requested budget, so the charge can be reserved first and can never depend on
the data (DESIGN §2, Ledger).

* Laplace: ε is split evenly over the statistics with non-zero sensitivity and,
  when groups need DP partition selection, one more share for it; δ goes
  entirely to partition selection (a Laplace query without it is pure ε-DP and
  charges δ = 0).
* Gaussian: the statistics are released together as one vector whose parts are
  scaled by their L2 sensitivities, so a single analytic Gaussian (Balle & Wang
  2018) covers them — tighter than splitting ε and δ per statistic.  Partition
  selection, when needed, takes ε/(k+1) and half of δ.

Integer statistics (counts, sums of integers, unit counts) get integer noise
(discrete Laplace, or rounded Gaussian) on grid 1; real-valued ones are put on a
power-of-two grid chosen from the noise scale (Mironov 2012).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Literal

from gateway.errors import InvalidRequest, QueryRejected
from gateway.privacy.calibration import (
    analytic_gaussian_sigma,
    choose_grid,
    discrete_laplace_ci95,
    gaussian_ci95,
    grid_sensitivity,
    laplace_ci95,
    rounded_ci95,
)
from gateway.privacy.events import (
    ApproxDpEvent,
    DiscreteLaplaceEvent,
    GaussianEvent,
    LaplaceEvent,
    PrivacyEvent,
)
from gateway.privacy.samplers import MAX_DISCRETE_SCALE
from gateway.sql.plan import Plan, StatSpec
from gateway.sql.rewrite import Grid

NoiseKind = Literal["discrete_laplace", "laplace", "gaussian", "none"]


@dataclass(frozen=True)
class StatNoise:
    name: str
    kind: NoiseKind
    grid: Grid
    scale: float  # Laplace b or Gaussian σ, in grid units
    epsilon: float  # this statistic's share (Laplace); the joint ε for Gaussian
    ci95: float  # half-width in value units, from the scale alone

    @property
    def value_scale(self) -> float:
        return self.scale * self.grid.step


@dataclass(frozen=True)
class PartitionNoise:
    epsilon: float
    delta: float
    max_partitions: int


@dataclass(frozen=True)
class Calibration:
    epsilon: float  # charged (basic composition of the events)
    delta: float
    mechanism: str
    stats: dict[str, StatNoise]
    partition: PartitionNoise | None
    events: tuple[PrivacyEvent, ...]

    @property
    def grids(self) -> dict[str, Grid]:
        return {name: s.grid for name, s in self.stats.items()}

    def fingerprint(self) -> str:
        """Identifies the noise: same plan + same fingerprint = same release."""
        body = {
            "eps": repr(self.epsilon), "delta": repr(self.delta), "mech": self.mechanism,
            "stats": {n: [s.kind, s.grid.step, repr(s.scale)] for n, s in
                      sorted(self.stats.items())},
            "ps": None if self.partition is None else [repr(self.partition.epsilon),
                                                       repr(self.partition.delta),
                                                       self.partition.max_partitions],
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def check_budget_request(epsilon: float, delta: float, mechanism: str, *,
                         min_epsilon: float, max_epsilon: float | None) -> None:
    if not isinstance(epsilon, int | float) or isinstance(epsilon, bool) or \
            not math.isfinite(epsilon) or epsilon <= 0:
        raise InvalidRequest(f"epsilon must be a finite number > 0, got {epsilon!r}",
                             hint="e.g. epsilon=0.5")
    if epsilon < min_epsilon:
        raise InvalidRequest(f"epsilon {epsilon} is below the policy minimum {min_epsilon}",
                             hint=f"use epsilon >= {min_epsilon}")
    if max_epsilon is not None and epsilon > max_epsilon:
        raise InvalidRequest(f"epsilon {epsilon} is above the policy maximum {max_epsilon} "
                             "per query", hint=f"use epsilon <= {max_epsilon}")
    if not isinstance(delta, int | float) or isinstance(delta, bool) or \
            not math.isfinite(delta) or not 0 <= delta < 1:
        raise InvalidRequest(f"delta must be a number in [0, 1), got {delta!r}",
                             hint="e.g. delta=1e-6, or 0 for pure epsilon-DP")
    if mechanism not in ("laplace", "gaussian"):
        raise InvalidRequest(f"unknown mechanism {mechanism!r}",
                             hint="use 'laplace' or 'gaussian'")
    if mechanism == "gaussian" and delta <= 0:
        raise InvalidRequest("the gaussian mechanism needs delta > 0",
                             hint="pass delta=1e-6, or use mechanism='laplace'")


# Beyond this a sensitivity is not a bound anyone meant (e.g. SUM(x * 1e305)), and
# noise scales and grids would overflow.
MAX_SENSITIVITY = 1e100


def calibrate(plan: Plan, epsilon: float, delta: float, mechanism: str) -> Calibration:
    for s in plan.stats:
        l1, l2 = s.sensitivity(plan.max_rows, plan.max_groups)
        if not (math.isfinite(l1) and math.isfinite(l2)) or max(l1, l2) > MAX_SENSITIVITY:
            label = next((a.label for a in plan.aggs if s.name in a.stats), "an aggregate")
            raise QueryRejected(
                f"the bounds of {label} are so wide that its noise would be infinite",
                hint="clamp the value to the range you care about, e.g. "
                "LEAST(GREATEST(x, 0), 1000)", rule="unbounded")
    try:
        return _calibrate(plan, epsilon, delta, mechanism)
    except ValueError as e:  # a parameter the samplers cannot honour (extreme bounds or ε)
        raise QueryRejected(f"this query's noise cannot be calibrated ({e})",
                            hint="narrow the bounds of the aggregated values or use a more "
                            "moderate epsilon", rule="calibration") from None


def _calibrate(plan: Plan, epsilon: float, delta: float, mechanism: str) -> Calibration:
    noisy = [s for s in plan.stats if _l1(s, plan) > 0]
    exact = [s for s in plan.stats if _l1(s, plan) == 0]
    ps = plan.partition_selection
    if ps and delta <= 0:
        raise QueryRejected(
            "grouping by a column without public values needs DP partition selection, "
            "which needs delta > 0",
            hint="pass delta (e.g. 1e-6), or group by a column with public values "
            "(see /v1/schema)", rule="partition_selection")
    stats: dict[str, StatNoise] = {s.name: StatNoise(s.name, "none", Grid(1.0, s.integral), 0.0,
                                                     0.0, 0.0) for s in exact}
    events: list[PrivacyEvent] = []
    partition = None
    shares = len(noisy) + (1 if ps else 0)
    if shares == 0:
        return Calibration(0.0, 0.0, mechanism, stats, None, ())
    if mechanism == "laplace":
        eps_each = epsilon / shares
        for s in noisy:
            noise, event = _laplace(s, plan, eps_each)
            stats[s.name] = noise
            events.append(event)
        if ps:
            partition = PartitionNoise(eps_each, delta, plan.max_groups)
            events.append(ApproxDpEvent(eps_each, delta))
        charged_delta = delta if ps else 0.0
    else:
        eps_ps = epsilon / shares if ps else 0.0
        delta_ps = delta / 2 if ps else 0.0
        if noisy:
            eps_g, delta_g = epsilon - eps_ps, delta - delta_ps
            stats.update(_gaussian(noisy, plan, eps_g, delta_g, events))
        if ps:
            partition = PartitionNoise(eps_ps, delta_ps, plan.max_groups)
            events.append(ApproxDpEvent(eps_ps, delta_ps))
        charged_delta = delta
    return Calibration(epsilon, charged_delta, mechanism, stats, partition, tuple(events))


def _l1(s: StatSpec, plan: Plan) -> float:
    return s.sensitivity(plan.max_rows, plan.max_groups)[0]


def _is_integral(s: StatSpec, plan: Plan) -> bool:
    """Are per-unit contributions integers, so integer noise needs no grid?

    Unit counts always are.  Sums of integers are too unless a unit's per-group
    sums may be scaled down together (several groups per unit), which makes
    them fractional: truncating those would bias counts downwards, so they go on
    a fine grid like real values instead.
    """
    return s.kind == "units" or (s.kind == "sum" and s.integral and plan.max_groups == 1)


def _laplace(s: StatSpec, plan: Plan, eps: float) -> tuple[StatNoise, PrivacyEvent]:
    l1, _ = s.sensitivity(plan.max_rows, plan.max_groups)
    if _is_integral(s, plan) and math.ceil(l1 - 1e-9) / eps <= MAX_DISCRETE_SCALE:
        sens = math.ceil(l1 - 1e-9)
        scale = sens / eps
        ci = discrete_laplace_ci95(scale)
        return (StatNoise(s.name, "discrete_laplace", Grid(1.0, True), scale, eps, ci),
                DiscreteLaplaceEvent(eps, sens))
    # Real values, or integers whose noise is too wide for exact integer sampling:
    # Laplace rounded to a power-of-two grid chosen from the scale.
    g = choose_grid(l1 / eps, l1)
    sens_units = grid_sensitivity(l1, g, plan.max_groups, "l1") / g
    scale = sens_units / eps
    ci = rounded_ci95(laplace_ci95(scale * g), g, value_on_grid=False)
    return StatNoise(s.name, "laplace", Grid(g, False), scale, eps, ci), LaplaceEvent(eps)


def _gaussian(stats: list[StatSpec], plan: Plan, eps: float, delta: float,
              events: list[PrivacyEvent]) -> dict[str, StatNoise]:
    k = len(stats)
    # Each statistic is divided by its L2 sensitivity, so the joint vector has L2
    # sensitivity sqrt(k) and one calibration covers all of them.
    sigma_joint = analytic_gaussian_sigma(eps, delta, math.sqrt(k))
    events.append(GaussianEvent(sigma_joint / math.sqrt(k), eps, delta))
    out = {}
    for s in stats:
        l1, l2 = s.sensitivity(plan.max_rows, plan.max_groups)
        integral = _is_integral(s, plan) and sigma_joint * l2 <= MAX_DISCRETE_SCALE
        if integral:
            g, sens = 1.0, float(math.ceil(l2 - 1e-9)) if s.kind == "sum" else l2
        else:
            g = choose_grid(sigma_joint * l2, l1)
            sens = grid_sensitivity(l2, g, plan.max_groups, "l2") / g
        sigma = sigma_joint * sens
        ci = rounded_ci95(gaussian_ci95(sigma * g), g, value_on_grid=False)
        out[s.name] = StatNoise(s.name, "gaussian", Grid(g, integral), sigma, eps, ci)
    return out
