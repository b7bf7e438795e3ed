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

The charge is not set beside the noise: each noise value (:class:`StatNoise`,
:class:`JointGaussian`, :class:`PartitionNoise`) has an ``event()`` built from
the parameters its sampler receives, and the charged (ε, δ) is the basic
composition of those events.

Integer statistics (counts, sums of integers, unit counts) get integer noise
(discrete Laplace, or rounded Gaussian) on grid 1; real-valued ones are put on a
power-of-two grid chosen from the noise scale (Mironov 2012).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
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
    ExponentialEvent,
    GaussianEvent,
    LaplaceEvent,
    PrivacyEvent,
)
from gateway.privacy.quantiles import quantile_sensitivity, rank_error95
from gateway.privacy.samplers import MAX_DISCRETE_SCALE
from gateway.sql.plan import Plan, StatSpec

NoiseKind = Literal["discrete_laplace", "laplace", "gaussian", "none"]


@dataclass(frozen=True)
class Grid:
    """How a statistic is put on the integer grid of its noise (Mironov 2012): the
    rewrite sums per-unit values as integers in units of ``step``."""

    step: float  # value units per integer unit; a power of two (1 for integer statistics)
    integral: bool  # per-unit contributions are integers already


@dataclass(frozen=True)
class StatNoise:
    """The noise of one statistic, as its sampler will receive it."""

    name: str
    kind: NoiseKind
    grid: Grid
    scale: float  # Laplace b or Gaussian σ, in grid units
    epsilon: float  # this statistic's share (Laplace); the joint ε for Gaussian
    ci95: float  # half-width in value units, from the scale alone
    sensitivity: float = 0.0  # in grid units: L1 (Laplace kinds) or L2 (Gaussian)

    @property
    def value_scale(self) -> float:
        return self.scale * self.grid.step

    def event(self) -> PrivacyEvent | None:
        """What releasing this statistic alone costs, from the noise it gets.

        Gaussian statistics are released jointly (one event for all of them, see
        :class:`JointGaussian`), so they have no event of their own."""
        if self.kind == "none" or self.kind == "gaussian":
            return None
        # The sampler gets ``scale``; Laplace(b) on sensitivity Δ is (Δ/b)-DP.
        if self.sensitivity / self.scale > self.epsilon * (1 + 1e-9):
            raise ValueError(f"noise of {self.name} is smaller than its ε claims")
        if self.kind == "discrete_laplace":
            return DiscreteLaplaceEvent(self.epsilon, int(self.sensitivity))
        return LaplaceEvent(self.epsilon)


@dataclass(frozen=True)
class JointGaussian:
    """Gaussian statistics released as one vector, each divided by its L2 sensitivity."""

    epsilon: float
    delta: float
    members: tuple[StatNoise, ...]
    multiplier: float  # σ/Δ2 of the joint vector: the joint σ over √k

    def event(self) -> GaussianEvent:
        # Each coordinate's σ/Δ2 is the joint σ; the vector of k coordinates has
        # L2 sensitivity √k.  GaussianEvent checks that the multiplier really gives
        # (ε, δ) (Balle & Wang 2018); no member may have less noise than it says.
        k = len(self.members)
        least = min(m.scale / m.sensitivity for m in self.members) / math.sqrt(k)
        if least < self.multiplier * (1 - 1e-9):
            raise ValueError("a Gaussian statistic has less noise than its event claims")
        return GaussianEvent(self.multiplier, self.epsilon, self.delta)


@dataclass(frozen=True)
class PartitionNoise:
    """Partition selection, with the (ε, δ) its sampler is given."""

    epsilon: float
    delta: float
    max_partitions: int

    def event(self) -> ApproxDpEvent:
        # select_partitions(ε, δ, L0) is (ε, δ)-DP for a unit in up to L0 groups.
        return ApproxDpEvent(self.epsilon, self.delta)


@dataclass(frozen=True)
class QuantileNoise:
    """One DP quantile: the exponential mechanism at ``epsilon`` over a histogram whose
    units weigh at most M values each (see :mod:`gateway.privacy.quantiles`)."""

    quantile: str  # the QuantileSpec it chooses from
    alpha: float
    epsilon: float
    sensitivity: float  # of the utilities, in values (rows)
    bins: int

    @property
    def rank_error95(self) -> float:
        return rank_error95(self.epsilon, self.sensitivity, self.bins)

    def event(self) -> ExponentialEvent:
        return ExponentialEvent(self.epsilon)


@dataclass(frozen=True)
class Calibration:
    """Noise for every statistic; the charge is derived from it, never set beside it."""

    mechanism: str
    stats: dict[str, StatNoise]
    partition: PartitionNoise | None
    gaussian: JointGaussian | None = None
    quantiles: tuple[QuantileNoise, ...] = ()

    @cached_property
    def events(self) -> tuple[PrivacyEvent, ...]:
        """One event per mechanism that runs: the release is their composition."""
        found: list[PrivacyEvent] = [e for s in self.stats.values()
                                     if (e := s.event()) is not None]
        found.extend(q.event() for q in self.quantiles)
        if self.gaussian is not None:
            found.append(self.gaussian.event())
        if self.partition is not None:
            found.append(self.partition.event())
        return tuple(found)

    @cached_property
    def epsilon(self) -> float:
        """ε charged: basic composition of the events (exact in decimal)."""
        return float(sum((Decimal(repr(e.epsilon)) for e in self.events), Decimal(0)))

    @cached_property
    def delta(self) -> float:
        return float(sum((Decimal(repr(e.delta)) for e in self.events), Decimal(0)))

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
            "q": [[q.quantile, repr(q.alpha), repr(q.epsilon), repr(q.sensitivity), q.bins]
                  for q in self.quantiles],
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


# Largest ε per partition given to partition selection (see _partition).
MAX_PARTITION_EPSILON = 50.0

# Largest per-unit contribution in grid units (a BIGINT in the engine, 2^63 - 1 at most).
MAX_GRID_UNITS = float(2**62)

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
        cal = _calibrate(plan, epsilon, delta, mechanism)
        cal.events  # noqa: B018 - built now, so a parameter no event accepts is a rejection
    except ValueError as e:  # a parameter the samplers cannot honour (extreme bounds or ε)
        raise QueryRejected(f"this query's noise cannot be calibrated ({e})",
                            hint="narrow the bounds of the aggregated values or use a more "
                            "moderate epsilon", rule="calibration") from None
    for s in plan.stats:
        # One unit's contribution, in grid units, must fit a 64-bit integer with room to
        # spare: the engine casts it to BIGINT, and an overflow would be an error that
        # depends on the data.
        if _l1(s, plan) / cal.stats[s.name].grid.step >= MAX_GRID_UNITS:
            raise QueryRejected(
                "this query's values are too wide for exact integer sums at this epsilon",
                hint="narrow the bounds of the aggregated values or use a smaller epsilon",
                rule="calibration")
    return cal


def _calibrate(plan: Plan, epsilon: float, delta: float, mechanism: str) -> Calibration:
    noisy = [s for s in plan.stats if _l1(s, plan) > 0]
    exact = [s for s in plan.stats if _l1(s, plan) == 0]
    ps = plan.partition_selection
    if ps and delta <= 0 and plan.too_many_groups is not None:
        rows, limit = plan.too_many_groups
        names = ", ".join(k.expr.sql(dialect="duckdb") for k in plan.keys)
        raise QueryRejected(
            f"the public values of the group keys ({names}) would release {rows:,} rows, "
            f"more than limits.max_public_groups ({limit:,}); so many groups need DP "
            "partition selection, which needs delta > 0",
            hint="pass delta (e.g. 1e-6) to have the groups chosen by partition selection, "
            "or group by fewer keys (or coarser ones, e.g. date_trunc('month', d))",
            rule="partition_selection")
    if ps and delta <= 0:
        raise QueryRejected(
            "grouping by a column without public values needs DP partition selection, "
            "which needs delta > 0",
            hint="pass delta (e.g. 1e-6), or group by a column with public values "
            "(see /v1/schema)", rule="partition_selection")
    stats: dict[str, StatNoise] = {s.name: StatNoise(s.name, "none", Grid(1.0, s.integral), 0.0,
                                                     0.0, 0.0) for s in exact}
    partition = None
    gaussian = None
    ranks = [(q, a) for q in plan.quantiles for a in q.alphas]
    shares = len(noisy) + len(ranks) + (1 if ps else 0)
    if shares == 0:
        return Calibration(mechanism, stats, None)
    # Every quantile rank is one exponential mechanism with an equal share of ε.
    quantiles = tuple(QuantileNoise(q.name, a, epsilon / shares,
                                    quantile_sensitivity(a, plan.max_rows), q.bins)
                      for q, a in ranks)
    if mechanism == "laplace":
        # ε split evenly; δ goes entirely to partition selection.
        eps_each = epsilon / shares
        for s in noisy:
            stats[s.name] = _laplace(s, plan, eps_each)
        if ps:
            partition = _partition(eps_each, delta, plan.max_groups)
    else:
        eps_ps = epsilon / shares if ps else 0.0
        delta_ps = delta / 2 if ps else 0.0
        if noisy:
            eps_g = epsilon - eps_ps - epsilon / shares * len(ranks)
            delta_g = delta - delta_ps
            members, sigma_joint = _gaussian(noisy, plan, eps_g, delta_g)
            stats.update({m.name: m for m in members})
            gaussian = JointGaussian(eps_g, delta_g, tuple(members),
                                     sigma_joint / math.sqrt(len(members)))
        if ps:
            partition = _partition(eps_ps, delta_ps, plan.max_groups)
    return Calibration(mechanism, stats, partition, gaussian, quantiles)


def _l1(s: StatSpec, plan: Plan) -> float:
    return s.sensitivity(plan.max_rows, plan.max_groups)[0]


def _is_integral(s: StatSpec, plan: Plan) -> bool:
    """Are per-unit contributions integers, so integer noise needs no grid?

    Unit counts always are.  Sums of integers are too unless a unit's per-group
    sums may be scaled down together (several groups per unit), which makes
    them fractional: truncating those would bias counts downwards, so they go on
    a fine grid like real values instead.
    """
    return s.kind in ("units", "distinct") or (s.kind == "sum" and s.integral and
                                               plan.max_groups == 1)


def _laplace(s: StatSpec, plan: Plan, eps: float) -> StatNoise:
    l1, _ = s.sensitivity(plan.max_rows, plan.max_groups)
    if _is_integral(s, plan) and math.ceil(l1 - 1e-9) / eps <= MAX_DISCRETE_SCALE:
        sens = math.ceil(l1 - 1e-9)
        scale = sens / eps
        ci = discrete_laplace_ci95(scale)
        return StatNoise(s.name, "discrete_laplace", Grid(1.0, True), scale, eps, ci, sens)
    # Real values, or integers whose noise is too wide for exact integer sampling:
    # Laplace rounded to a power-of-two grid chosen from the scale.
    g = choose_grid(l1 / eps, l1)
    sens_units = grid_sensitivity(l1, g, plan.max_groups, "l1") / g
    scale = sens_units / eps
    ci = rounded_ci95(laplace_ci95(scale * g), g, value_on_grid=False)
    return StatNoise(s.name, "laplace", Grid(g, False), scale, eps, ci, sens_units)


def _partition(epsilon: float, delta: float, max_groups: int) -> PartitionNoise:
    """Partition selection at ε, or at a per-partition ε of at most 50: beyond that every
    keep probability is already 1 after a unit or two, and e^ε overflows.  Running it
    at a smaller ε than the share allows is more private; the charge follows the ε
    actually used."""
    return PartitionNoise(min(epsilon, MAX_PARTITION_EPSILON * max_groups), delta, max_groups)


def _gaussian(stats: list[StatSpec], plan: Plan, eps: float, delta: float
              ) -> tuple[list[StatNoise], float]:
    k = len(stats)
    # Each statistic is divided by its L2 sensitivity, so the joint vector has L2
    # sensitivity sqrt(k) and one calibration covers all of them.
    sigma_joint = analytic_gaussian_sigma(eps, delta, math.sqrt(k))
    out = []
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
        out.append(StatNoise(s.name, "gaussian", Grid(g, integral), sigma, eps, ci, sens))
    return out, sigma_joint
