"""Pass 4: split the requested (ε, δ) over a plan's statistics and size the noise.

Everything is decided before execution from the plan (SQL + policy) and the
requested budget, so the charge can be reserved first and can never depend on
the data (DESIGN §2, Ledger).

* Laplace: ε is split evenly over the statistics with non-zero sensitivity and,
  when groups need DP partition selection by a mechanism of its own, one more
  share for it; δ goes entirely to partition selection (a Laplace query without
  it is pure ε-DP and charges δ = 0).
* Gaussian: the statistics are released together as one vector whose parts are
  scaled by their L2 sensitivities, so a single analytic Gaussian (Balle & Wang
  2018) covers them — tighter than splitting ε and δ per statistic.  Partition
  selection, when needed, takes half of δ (all of it when no statistic is noisy)
  and, if it runs a mechanism of its own, ε/(k+1).

Partition selection has three strategies, chosen per query from the plan and the
budget only (:func:`_calibrate`): the truncated geometric mechanism, thresholding a
count the query releases anyway (no share of ε), and Gaussian thresholding of a
separate unit count (√L0 instead of L0).  Each is calibrated in full and the one
whose groups need the fewest units to be kept half the time wins.

The charge is not set beside the noise: each noise value (:class:`StatNoise`,
:class:`JointGaussian`, :class:`PartitionNoise`) has an ``event()`` (``events()``)
built from the parameters its sampler receives, and the charged (ε, δ) is the
basic composition of those events.

Integer statistics (counts, sums of integers, unit counts) get integer noise
(discrete Laplace, or rounded Gaussian) on grid 1; real-valued ones are put on a
power-of-two grid chosen from the noise scale (Mironov 2012).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import cached_property
from typing import Any, Literal

from sqlglot import exp

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
from gateway.privacy.partition_selection import min_units, threshold_summary
from gateway.privacy.quantiles import quantile_sensitivity, rank_error95
from gateway.privacy.samplers import MAX_DISCRETE_SCALE
from gateway.privacy.thresholding import (
    NOISE_KINDS,
    gaussian_threshold,
    threshold_delta,
    threshold_for,
    units_for_half,
)
from gateway.sql.plan import AggSpec, Plan, StatSpec

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


# Partition-selection strategies, in the order that breaks ties (fewer shares of ε
# first; then the original mechanism).  See _calibrate and docs/privacy.md.
THRESHOLD = "threshold"
TRUNCATED_GEOMETRIC = "truncated_geometric"
GAUSSIAN_THRESHOLD = "gaussian_threshold"
STRATEGIES = (THRESHOLD, TRUNCATED_GEOMETRIC, GAUSSIAN_THRESHOLD)

_MECHANISMS = {
    TRUNCATED_GEOMETRIC: "truncated_geometric (Desfontaines et al. 2022)",
    THRESHOLD: "threshold on the released noisy count (Wilson et al. 2020)",
    GAUSSIAN_THRESHOLD: "gaussian_threshold (Gopi et al. 2020; Google's Gaussian "
                        "thresholding)",
}


@dataclass(frozen=True)
class SelectionOption:
    """One partition-selection strategy as considered for a query (for explain)."""

    strategy: str
    units_for_half: int | None  # None: not applicable to this query
    threshold: int | None = None
    epsilon: float = 0.0  # the selection's own share of ε (0: none)
    delta: float = 0.0
    epsilon_per_statistic: float | None = None  # what each other statistic gets
    statistic: str | None = None  # the aggregate thresholded, as written
    note: str = ""  # why not applicable, or what n50 assumes

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"strategy": self.strategy, "applicable":
                               self.units_for_half is not None,
                               "units_for_half": self.units_for_half}
        if self.units_for_half is not None:
            out.update({"threshold": self.threshold, "epsilon": self.epsilon,
                        "delta": self.delta,
                        "epsilon_per_statistic": self.epsilon_per_statistic})
        if self.statistic is not None:
            out["statistic"] = self.statistic
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class PartitionNoise:
    """Partition selection, with the parameters its sampler is given.

    * ``truncated_geometric``: ``select_partitions(units, epsilon, delta, L0)``, an
      (ε, δ)-DP mechanism of its own (a separate share of ε).
    * ``threshold``: keep a group iff the released noisy ``statistic`` (grid units) is
      ≥ ``threshold``.  ``epsilon`` is that statistic's ε, which its own event already
      charges; the threshold adds (0, ``delta_threshold``).
    * ``gaussian_threshold``: ``gaussian_threshold_select(units, sigma, threshold)``:
      a separate noisy unit count, (``epsilon``, ``delta_noise``) for its Gaussian noise
      plus (0, ``delta_threshold``) for the threshold; ``delta`` is their sum.
    """

    epsilon: float
    delta: float  # every δ the selection adds to the charge
    max_partitions: int
    strategy: str = TRUNCATED_GEOMETRIC
    threshold: int = 0  # τ, in the grid units of the count compared with it
    statistic: str | None = None  # threshold: the StatSpec whose noisy value is compared
    contribution: int = 1  # c_max: one unit's largest addition to one group's count
    per_unit: float = 1.0  # n50's assumption: what one unit adds to the count (grid units)
    sigma: float = 0.0  # gaussian_threshold: σ of the noisy unit count
    delta_noise: float = 0.0  # gaussian_threshold: δ_1 of its Gaussian noise
    delta_threshold: float = 0.0  # threshold strategies: the union bound's δ
    units_for_half: int = 0  # n50: units a group needs to be kept with probability ½
    label: str = ""  # threshold: the aggregate thresholded, as written
    alternatives: tuple[SelectionOption, ...] = ()
    why: str = ""

    def events(self, stats: dict[str, StatNoise] | None = None) -> tuple[PrivacyEvent, ...]:
        """What the selection adds to the charge, from its sampler's parameters (and, for
        ``threshold``, from the noise the thresholded statistic's sampler gets)."""
        l0 = self.max_partitions
        if self.strategy == TRUNCATED_GEOMETRIC:
            # select_partitions(ε, δ, L0) is (ε, δ)-DP for a unit in up to L0 groups.
            return (ApproxDpEvent(self.epsilon, self.delta),)
        if self.strategy == THRESHOLD:
            assert stats is not None and self.statistic is not None
            noise = stats[self.statistic]
            if noise.kind not in NOISE_KINDS:
                raise ValueError(f"{self.statistic} has no noise to threshold")
            real = threshold_delta(noise.kind, noise.scale, self.contribution, l0,
                                   self.threshold)
            if real > self.delta_threshold * (1 + 1e-9):
                raise ValueError("the threshold is lower than its delta claims")
            return (ApproxDpEvent(0.0, self.delta_threshold),)
        if self.strategy == GAUSSIAN_THRESHOLD:
            real = threshold_delta("gaussian", self.sigma, 1, l0, self.threshold)
            if real > self.delta_threshold * (1 + 1e-9):
                raise ValueError("the threshold is lower than its delta claims")
            # The noisy unit counts have L2 sensitivity √L0: σ/√L0 per unit of it.
            return (GaussianEvent(self.sigma / math.sqrt(l0), self.epsilon, self.delta_noise),
                    ApproxDpEvent(0.0, self.delta_threshold))
        raise ValueError(f"unknown partition selection strategy {self.strategy!r}")

    def explain(self) -> dict[str, Any]:
        """The ``partition_selection`` entry of explain: which strategy, why, and the
        alternatives' n50 (all from the plan and the requested budget)."""
        out: dict[str, Any] = {
            "strategy": self.strategy, "mechanism": _MECHANISMS[self.strategy],
            "units_for_half": self.units_for_half,
            "threshold": None if self.strategy == TRUNCATED_GEOMETRIC else self.threshold,
            "epsilon": 0.0 if self.strategy == THRESHOLD else self.epsilon,
            "delta": self.delta, "max_partitions": self.max_partitions, "why": self.why,
            "alternatives": [a.to_dict() for a in self.alternatives],
        }
        if self.strategy == TRUNCATED_GEOMETRIC:
            out.update(threshold_summary(self.epsilon, self.delta, self.max_partitions))
        elif self.strategy == THRESHOLD:
            out.update({"statistic": self.label, "statistic_epsilon": self.epsilon,
                        "delta_threshold": self.delta_threshold,
                        "max_contribution": self.contribution})
        else:
            out.update({"sigma": self.sigma, "delta_noise": self.delta_noise,
                        "delta_threshold": self.delta_threshold})
        return out


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
            found.extend(self.partition.events(self.stats))
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
            "ps": None if self.partition is None else [
                repr(self.partition.epsilon), repr(self.partition.delta),
                self.partition.max_partitions, self.partition.strategy,
                self.partition.threshold, self.partition.statistic,
                self.partition.contribution, repr(self.partition.sigma),
                repr(self.partition.delta_noise), repr(self.partition.delta_threshold)],
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


def calibrate(plan: Plan, epsilon: float, delta: float, mechanism: str, *,
              selection: str | None = None) -> Calibration:
    """Noise for every statistic of ``plan`` at (ε, δ).  ``selection`` forces one
    partition-selection strategy (tests, benchmarks); by default the one that keeps a
    group with the fewest units is chosen (see :func:`_calibrate`)."""
    for s in plan.stats:
        l1, l2 = s.sensitivity(plan.max_rows, plan.max_groups)
        if not (math.isfinite(l1) and math.isfinite(l2)) or max(l1, l2) > MAX_SENSITIVITY:
            label = next((a.label for a in plan.aggs if s.name in a.stats), "an aggregate")
            raise QueryRejected(
                f"the bounds of {label} are so wide that its noise would be infinite",
                hint="clamp the value to the range you care about, e.g. "
                "LEAST(GREATEST(x, 0), 1000)", rule="unbounded")
    try:
        cal = _calibrate(plan, epsilon, delta, mechanism, selection)
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


def _calibrate(plan: Plan, epsilon: float, delta: float, mechanism: str,
               selection: str | None = None) -> Calibration:
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
    if not ps:
        return _calibrate_with(plan, epsilon, delta, mechanism, stats, noisy, None)
    if selection is not None and selection not in STRATEGIES:
        raise ValueError(f"unknown partition selection strategy {selection!r}")
    # Partition selection: every strategy that applies is calibrated in full and the
    # one that keeps a group with the fewest units wins (data-free: plan + budget).
    options: list[tuple[Calibration, int, int]] = []  # (calibration, shares, order)
    notes: list[SelectionOption] = []
    for order, (strategy, spec) in enumerate(_strategies(plan)):
        if selection is not None and strategy != selection:
            continue
        if strategy == THRESHOLD and spec is None:
            notes.append(SelectionOption(THRESHOLD, None, note=(
                "the query releases no count per group to threshold (COUNT(*), COUNT(col), "
                "COUNT(DISTINCT <unit>), or the count behind AVG/VAR/STDDEV)")))
            continue
        try:
            cal = _calibrate_with(plan, epsilon, delta, mechanism, dict(stats), noisy,
                                  (strategy, spec))
            cal.events  # noqa: B018 - every parameter accepted by its event
        except ValueError as e:
            notes.append(SelectionOption(strategy, None, note=f"cannot be calibrated ({e})"))
            continue
        options.append((cal, _shares(plan, noisy, strategy), order))
    if not options:
        reasons = "; ".join(f"{o.strategy}: {o.note}" for o in notes)
        raise ValueError(f"no partition selection strategy fits this query ({reasons})")

    def n50(item: tuple[Calibration, int, int]) -> int:
        assert item[0].partition is not None
        return item[0].partition.units_for_half

    # A strategy with a mechanism of its own takes a share of ε from every statistic
    # (their noise grows by shares/fewest): its n50 is weighed by the same factor, so a
    # threshold on a released count wins unless the selection keeps groups with clearly
    # fewer units.
    fewest = min(item[1] for item in options) or 1
    best = min(options, key=lambda item: (n50(item) * max(item[1], 1) / fewest, item[1],
                                          item[2]))
    considered = [_option(cal, plan) for cal, _, _ in options]
    chosen = best[0].partition
    assert chosen is not None
    return replace(best[0], partition=replace(
        chosen, alternatives=tuple(considered + notes),
        why=_why(chosen, considered, plan)))


def _shares(plan: Plan, noisy: list[StatSpec], strategy: str | None) -> int:
    """Equal shares of ε: one per noisy statistic and quantile rank, and one for a
    partition selection that runs a mechanism of its own."""
    ranks = sum(len(q.alphas) for q in plan.quantiles)
    return len(noisy) + ranks + (1 if strategy in (TRUNCATED_GEOMETRIC,
                                                   GAUSSIAN_THRESHOLD) else 0)


def _calibrate_with(plan: Plan, epsilon: float, delta: float, mechanism: str,
                    stats: dict[str, StatNoise], noisy: list[StatSpec],
                    selection: tuple[str, StatSpec | None] | None) -> Calibration:
    """The calibration with one partition-selection strategy (None: no selection).

    * Laplace: ε split evenly over the noisy statistics, the quantile ranks and a
      selection mechanism of its own (truncated geometric, Gaussian thresholding); δ
      goes entirely to the selection.
    * Gaussian: the same shares, the noisy statistics' joint analytic Gaussian takes
      what is left of ε; δ is split in half between them and the selection (all of
      δ to the selection when no statistic is noisy).
    Thresholding a released count takes no share of ε: its δ is δ (Laplace) or δ/2
    (Gaussian), for the threshold alone."""
    strategy = None if selection is None else selection[0]
    partition = None
    gaussian = None
    ranks = [(q, a) for q in plan.quantiles for a in q.alphas]
    shares = _shares(plan, noisy, strategy)
    if shares == 0:
        return Calibration(mechanism, stats, None)
    # Every quantile rank is one exponential mechanism with an equal share of ε.
    quantiles = tuple(QuantileNoise(q.name, a, epsilon / shares,
                                    quantile_sensitivity(a, plan.max_rows), q.bins)
                      for q, a in ranks)
    separate = strategy in (TRUNCATED_GEOMETRIC, GAUSSIAN_THRESHOLD)
    if mechanism == "laplace":
        eps_ps, delta_ps = epsilon / shares, delta
        for s in noisy:
            stats[s.name] = _laplace(s, plan, epsilon / shares)
    else:
        eps_ps = epsilon / shares if separate else 0.0
        # δ: half for the statistics' Gaussian noise, half for the selection (all of it
        # when no statistic is Gaussian).
        delta_ps = 0.0 if selection is None else (delta / 2 if noisy else delta)
        if noisy:
            eps_g = epsilon - eps_ps - epsilon / shares * len(ranks)
            delta_g = delta - delta_ps
            members, sigma_joint = _gaussian(noisy, plan, eps_g, delta_g)
            stats.update({m.name: m for m in members})
            gaussian = JointGaussian(eps_g, delta_g, tuple(members),
                                     sigma_joint / math.sqrt(len(members)))
    if selection is not None:
        strategy, spec = selection
        if strategy == TRUNCATED_GEOMETRIC:
            partition = _partition(eps_ps, delta_ps, plan.max_groups)
        elif strategy == GAUSSIAN_THRESHOLD:
            partition = _gaussian_threshold(eps_ps, delta_ps, plan.max_groups)
        else:
            assert spec is not None
            partition = _threshold(spec, stats[spec.name], plan, delta_ps)
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
    eps = min(epsilon, MAX_PARTITION_EPSILON * max_groups)
    return PartitionNoise(eps, delta, max_groups, TRUNCATED_GEOMETRIC,
                          units_for_half=min_units(eps, delta, max_groups))


def _gaussian_threshold(epsilon: float, delta: float, max_groups: int) -> PartitionNoise:
    """Gaussian thresholding at (ε, δ): δ split between the noise and the threshold as
    :func:`gaussian_threshold` finds best (capped at the same ε as _partition)."""
    g = gaussian_threshold(min(epsilon, MAX_PARTITION_EPSILON * max_groups), delta,
                           max_groups)
    return PartitionNoise(g.epsilon, g.delta_noise + g.delta_threshold, max_groups,
                          GAUSSIAN_THRESHOLD, threshold=g.threshold, sigma=g.sigma,
                          delta_noise=g.delta_noise, delta_threshold=g.delta_threshold,
                          units_for_half=g.units_for_half)


def _thresholdable(plan: Plan) -> list[tuple[StatSpec, AggSpec]]:
    """The counts per group a query releases, which partition selection may threshold:
    COUNT(DISTINCT <unit>) (a unit adds at most 1 to a group), then counts of rows —
    COUNT(*) first, then COUNT(col), then the count behind AVG/VAR/STDDEV (a unit adds
    at most M rows to a group, never less than 0)."""
    specs = {s.name: s for s in plan.stats}
    units: list[tuple[StatSpec, AggSpec]] = []
    star: list[tuple[StatSpec, AggSpec]] = []
    rows: list[tuple[StatSpec, AggSpec]] = []
    moments: list[tuple[StatSpec, AggSpec]] = []
    for agg in plan.aggs:
        if agg.quantile is not None or not agg.stats:
            continue
        s = specs.get(agg.stats[0])
        if s is None:
            continue
        if agg.func == "count_units" and s.kind == "units":
            units.append((s, agg))
        elif agg.func == "count" and s.kind == "sum" and s.lo >= 0 and s.hi <= 1:
            is_star = isinstance(s.value, exp.Literal) and s.value.this == "1"
            (star if is_star else rows).append((s, agg))
        elif agg.func in _MOMENT_FUNCS and s.kind == "ratio" and s.power == 0:
            moments.append((s, agg))
    out: list[tuple[StatSpec, AggSpec]] = []
    for s, agg in units + star + rows + moments:
        if all(s.name != o.name for o, _ in out):
            out.append((s, agg))
    return out


_MOMENT_FUNCS = ("avg", "var_pop", "var_samp", "stddev_pop", "stddev_samp")


def _strategies(plan: Plan) -> list[tuple[str, StatSpec | None]]:
    """Every strategy to consider, in the order that breaks ties: thresholding each
    released count (one of each kind: units, then rows), the truncated geometric, and
    Gaussian thresholding."""
    found = _thresholdable(plan)
    kinds: dict[str, StatSpec] = {}
    for s, _ in found:
        kinds.setdefault("units" if s.kind == "units" else "rows", s)
    out: list[tuple[str, StatSpec | None]] = [(THRESHOLD, s) for s in kinds.values()]
    if not out:
        out.append((THRESHOLD, None))
    return [*out, (TRUNCATED_GEOMETRIC, None), (GAUSSIAN_THRESHOLD, None)]


def _threshold(spec: StatSpec, noise: StatNoise, plan: Plan, delta: float) -> PartitionNoise:
    """Threshold the released noisy ``spec``: τ is the smallest integer (grid units)
    with L0 · P(c_max + X ≥ τ) ≤ δ for the noise X its sampler adds, c_max one unit's
    largest contribution to one group (1 unit, or M rows), in grid units."""
    if noise.kind not in NOISE_KINDS:
        raise ValueError(f"{spec.name} has no noise to threshold")
    l0, m = plan.max_groups, plan.max_rows
    g = noise.grid.step
    units = spec.kind == "units"
    c = max(1, math.ceil((1.0 if units else float(m)) / g))
    tau = threshold_for(noise.kind, noise.scale, c, l0, delta)
    # n50 assumes each unit adds 1 to each of its groups' unit counts, or half of its
    # bound to a row count: M rows spread evenly over its L0 groups, halved (units seldom
    # have all the rows the bound allows, and a row threshold is far worse than the
    # alternatives when they have fewer: 72 units instead of 26 at M = 5 with one row
    # each, bench/bench_partition.py).
    per_unit = (1.0 if units else max(1.0, m / min(l0, m) / 2.0)) / g
    agg = next((a for a in plan.aggs if a.stats and a.stats[0] == spec.name), None)
    label = spec.name if agg is None else agg.label
    if spec.kind == "ratio":
        label = f"count of rows behind {label}"
    # ``epsilon`` is the thresholded statistic's (its own event charges it), capped as
    # _partition caps it: only shown, and given to the keep-curve summary of explain.
    return PartitionNoise(min(noise.epsilon, MAX_PARTITION_EPSILON * l0), delta, l0,
                          THRESHOLD, threshold=tau,
                          statistic=spec.name, contribution=c, per_unit=per_unit,
                          delta_threshold=delta, units_for_half=units_for_half(tau, per_unit),
                          label=label)


def _epsilon_per_statistic(cal: Calibration) -> float | None:
    if cal.gaussian is not None:
        return cal.gaussian.epsilon
    eps = [s.epsilon for s in cal.stats.values() if s.kind != "none"]
    eps += [q.epsilon for q in cal.quantiles]
    return eps[0] if eps else None


def _option(cal: Calibration, plan: Plan) -> SelectionOption:
    p = cal.partition
    assert p is not None
    note = ""
    if p.strategy == THRESHOLD and p.statistic is not None and \
            next(s for s in plan.stats if s.name == p.statistic).kind != "units":
        rows = max(1.0, plan.max_rows / min(plan.max_groups, plan.max_rows) / 2.0)
        note = (f"n50 assumes each unit contributes {rows:g} rows to the group (half of "
                f"max_rows_per_unit={plan.max_rows} spread over its "
                f"max_groups_per_unit={plan.max_groups} groups); units with fewer rows "
                "need proportionally more units")
    return SelectionOption(p.strategy, p.units_for_half,
                           None if p.strategy == TRUNCATED_GEOMETRIC else p.threshold,
                           0.0 if p.strategy == THRESHOLD else p.epsilon, p.delta,
                           _epsilon_per_statistic(cal), p.label or None, note)


def _why(chosen: PartitionNoise, considered: list[SelectionOption], plan: Plan) -> str:
    others = [f"{o.strategy}{f' on {o.statistic}' if o.statistic else ''} "
              f"{o.units_for_half}" for o in considered
              if (o.strategy, o.statistic) != (chosen.strategy, chosen.label or None)]
    what = {THRESHOLD: f"thresholding the released {chosen.label} (no separate share of "
                       "epsilon)",
            TRUNCATED_GEOMETRIC: "the truncated geometric mechanism (a separate share of "
                                 "epsilon)",
            GAUSSIAN_THRESHOLD: "Gaussian thresholding of a separate noisy unit count "
                                "(a separate share of epsilon)"}[chosen.strategy]
    text = (f"{what} keeps a group with {chosen.units_for_half} units half of the time "
            f"(max_groups_per_unit={plan.max_groups})")
    if chosen.strategy == THRESHOLD:
        text += ("; strategies that take a share of epsilon from every statistic are "
                 "weighed by the noise that adds")
    if others:
        text += "; units needed by the alternatives: " + ", ".join(others)
    if chosen.strategy == THRESHOLD and considered:
        note = next((o.note for o in considered if o.strategy == THRESHOLD and
                     o.statistic == chosen.label and o.note), "")
        if note:
            text += f"; {note}"
    return text


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
