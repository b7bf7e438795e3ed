"""Accuracy-first queries: the smallest ε whose predicted 95% half-width meets a target.

An analyst may ask for ``ci95=50`` instead of an ε: every released noisy value should be
within ±50 of the bounded truth with probability 0.95.  The gateway then answers at the
smallest ε (on a fixed grid) whose *predicted* half-width meets the target for every
output column, and charges that ε as if the analyst had asked for it.

The prediction is the accuracy model ``explain`` reports, computed from the plan, the
policy and the requested δ/mechanism only (never from data, and without running the
engine):

* a column that is one aggregate, or ``c·a + b`` of one (``n * 2``, ``ROUND(s, 1)``),
  has half-width ``|c|·h + rounding`` (:mod:`gateway.query.cells`, the same rule the
  answer's per-value ``ci95`` follows), where ``h`` is the noise's 95% half-width
  (:attr:`StatNoise.ci95`) for COUNT / SUM;
* AVG / VAR / STDDEV: the half-width explain reports, the widest it can be (half the
  bounds' width for AVG).  Their real half-width depends on each group's noisy count,
  known only after the run, so before it no ε promises less than that cap: a smaller
  target is refused, naming the cap;
* quantiles (MEDIAN, PERCENTILE_*, MIN/MAX, ...) err in ranks, not in value units
  (``rank_error95``): accuracy-first refuses them (give ε instead);
* a column computed from several aggregates (``SUM(x) / COUNT(*)``) has no half-width:
  refused too.

Group keys and constants have no noise and are ignored; aggregates used only in HAVING
or ORDER BY are not released values and do not constrain ε.

The search: the predicted half-width shrinks as ε grows, so bisection on log ε between
``limits.min_epsilon_per_query`` and the largest ε one query may spend
(``limits.max_epsilon_per_query``, or the dataset's whole budget) to a relative
tolerance of 1e-3, then the smallest ε with three significant digits (0.0523, 1.27, ...)
that meets the target.  The grid makes the choice a fixed function of (SQL, policy,
target, δ, mechanism): a repeated request asks for the same ε and is answered from the
cache, free.  The analyst's remaining budget does not move the choice; when it cannot
pay, the request is refused naming the best half-width it could buy.

A statement of several SELECTs (``UNION ALL`` & co, :mod:`gateway.query.compound`) is
predicted per SELECT at its share of ε and δ (split as the compound path splits them),
each output column taking its worst SELECT.
"""

from __future__ import annotations

import math
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING

from gateway.errors import BudgetExceeded, GatewayError, InvalidRequest, QueryRejected
from gateway.query.cells import output_cells
from gateway.query.compound import share
from gateway.query.noise import Calibration
from gateway.query.prepared import LRU
from gateway.query.results import Explanation, QueryResult
from gateway.sql.plan import AggSpec, Plan

if TYPE_CHECKING:
    from gateway.query.compound import CompoundPlan
    from gateway.service import Gateway
    from gateway.state.ledger import Analyst

RULE = "accuracy_target"
DIGITS = 3  # the ε grid: numbers with three significant digits
TOLERANCE = 1e-3  # relative width of the bisection's last bracket
_MAX_BISECTIONS = 200
_MAX_WALK = 64  # grid steps walked after the bisection (a couple in practice)
_RATIO_FUNCS = ("avg", "var_pop", "var_samp", "stddev_pop", "stddev_samp")


# -- the request ------------------------------------------------------------------------------

def target(ci95: float | None, accuracy: float | None = None,
           epsilon: float | None = None) -> float:
    """The requested half-width (``ci95=``, or its alias ``accuracy=``), checked."""
    if ci95 is not None and accuracy is not None and ci95 != accuracy:
        raise InvalidRequest("ci95 and accuracy name the same target; give one of them",
                             hint="e.g. ci95=50")
    value = ci95 if ci95 is not None else accuracy
    if epsilon is not None:
        raise InvalidRequest(
            "give either epsilon or a target accuracy (ci95), not both",
            hint="ci95 asks the gateway for the smallest epsilon that meets it; leave "
            "epsilon out (or leave ci95 out to spend the epsilon you chose)")
    if not isinstance(value, int | float) or isinstance(value, bool) or \
            not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"ci95 must be a finite number > 0, got {value!r}",
                             hint="the target 95% half-width in the columns' units, "
                             "e.g. ci95=50")
    return float(value)


# -- the ε grid --------------------------------------------------------------------------------

def _grid_up(x: float) -> tuple[int, int]:
    """The smallest grid value >= x, as (mantissa in [100, 999], exponent)."""
    d = Decimal(repr(float(x)))
    e = d.adjusted() - (DIGITS - 1)
    m = int(d.scaleb(-e).to_integral_value(rounding=ROUND_CEILING))
    if m >= 10**DIGITS:
        m, e = 10 ** (DIGITS - 1), e + 1
    return m, e


def _value(g: tuple[int, int]) -> float:
    return float(f"{g[0]}e{g[1]}")


def _prev(g: tuple[int, int]) -> tuple[int, int]:
    m, e = g
    return (m - 1, e) if m > 10 ** (DIGITS - 1) else (10**DIGITS - 1, e - 1)


def _next(g: tuple[int, int]) -> tuple[int, int]:
    m, e = g
    return (m + 1, e) if m < 10**DIGITS - 1 else (10 ** (DIGITS - 1), e + 1)


def grid_step_below(epsilon: float) -> float:
    """The grid value just below ``epsilon`` (which is on the grid): for tests and docs."""
    return _value(_prev(_grid_up(epsilon)))


# -- the accuracy model ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Column:
    """One output column whose values carry noise: ``factor·h(agg) + rounding``."""

    index: int  # output position
    agg: AggSpec
    factor: float
    rounding: float


class _Select:
    """One SELECT's noisy output columns and their predicted half-widths at an ε."""

    def __init__(self, plan: Plan, names: list[str], delta: float, mechanism: str,
                 calibrate: Calibrate) -> None:
        self.plan, self.delta, self.mechanism = plan, delta, mechanism
        self.calibrate = calibrate
        self.columns: list[_Column] = []
        if plan.public_query is not None:
            return
        aggs = {a.name: a for a in plan.aggs}
        for j, cell in enumerate(output_cells(plan)):
            if not cell.noisy:
                continue
            name = names[j] if j < len(names) else f"column {j + 1}"
            agg = aggs.get(cell.agg) if cell.agg is not None else None
            if agg is None:
                raise QueryRejected(
                    f"column {name!r} is computed from noisy aggregates in a way that has "
                    "no 95% half-width (e.g. a ratio of two aggregates), so a ci95 target "
                    "cannot be promised for it",
                    hint="give epsilon instead, or release the aggregates themselves "
                    "(AVG(x) rather than SUM(x) / COUNT(*))", rule=RULE)
            if agg.quantile is not None:
                raise QueryRejected(
                    f"column {name!r} ({agg.label or agg.func}) is a DP quantile: its error "
                    "is a rank error (rank_error95), not a half-width in the column's units, "
                    "so a ci95 target does not apply to it",
                    hint="give epsilon instead; explain shows rank_error95 at that epsilon",
                    rule=RULE)
            self.columns.append(_Column(j, agg, cell.factor, cell.rounding))

    def half_widths(self, epsilon: float) -> dict[int, float]:
        """Output position -> predicted 95% half-width at ε (and this SELECT's δ)."""
        if not self.columns:
            return {}
        cal = self.calibrate(self.plan, epsilon, self.delta, self.mechanism)
        out = {}
        for c in self.columns:
            if c.agg.func in _RATIO_FUNCS:
                h = _widest_ratio(c.agg)  # what explain reports before the run
            else:
                h = cal.stats[c.agg.stats[0]].ci95
            out[c.index] = c.factor * h + c.rounding
        return out


def _widest_ratio(agg: AggSpec) -> float:
    from gateway.service import _widest_ratio_ci95  # explain's own figure (no copy)

    return _widest_ratio_ci95(agg)


@dataclass(frozen=True)
class _Prediction:
    worst: float  # the largest predicted half-width over the noisy columns
    column: str | None  # the column that has it (the binding one)
    by_column: tuple[tuple[str, float], ...]
    ratio_bound: bool  # the worst is an AVG/VAR/STDDEV cap (no ε shrinks it)


class _Model:
    """A statement's noisy columns: one SELECT, or the SELECTs of a compound one."""

    def __init__(self, names: list[str], parts: list[tuple[_Select, int]]) -> None:
        self.names = names
        self.parts = parts  # (SELECT, k: it gets ε / k, as compound.share splits it)

    @property
    def noisy(self) -> bool:
        return any(s.columns for s, _ in self.parts)

    def predict(self, epsilon: float) -> _Prediction:
        worst: dict[int, tuple[float, bool]] = {}
        for select, k in self.parts:
            if not select.columns:
                continue
            ratio = {c.index for c in select.columns if c.agg.func in _RATIO_FUNCS}
            for j, h in select.half_widths(share(epsilon, k)).items():
                if j not in worst or h > worst[j][0]:
                    worst[j] = (h, j in ratio)
        if not worst:
            return _Prediction(0.0, None, (), False)
        j = max(sorted(worst), key=lambda i: worst[i][0])
        by = tuple((self._name(i), worst[i][0]) for i in sorted(worst))
        return _Prediction(worst[j][0], self._name(j), by, worst[j][1])

    def _name(self, j: int) -> str:
        return self.names[j] if j < len(self.names) else f"column {j + 1}"


Calibrate = Callable[[Plan, float, float, str], Calibration]


def _calibration(gw: Gateway) -> Calibrate:
    """How the Gateway calibrates a plan (with its share of ε for tuning an `auto` bound,
    whose accuracy is predicted at the bound's ceiling, as explain shows it)."""
    return gw.calibration


def _model(gw: Gateway, sql: str, dialect: str, delta: float, mechanism: str) -> _Model:
    cal = _calibration(gw)
    compound = gw.compounds.plan(sql, dialect)
    if compound is not None:
        return _compound_model(compound, delta, mechanism, cal)
    plan = gw.plan(sql, dialect=dialect)
    names: list[str] = []
    if plan.public_query is None:
        try:
            names = [c.name for c in gw.post.describe(plan)]
        except GatewayError:
            names = []
    return _Model(names, [(_Select(plan, names, delta, mechanism, cal), 1)])


def _compound_model(cplan: CompoundPlan, delta: float, mechanism: str, cal: Calibrate
                    ) -> _Model:
    """Each SELECT at its share: ε split equally over the distinct SELECTs that release
    noise, δ over those among them that spend it (gateway/query/compound.py)."""
    if cplan.outer is not None:
        # The columns answered are the outer query's, computed from the set operation's
        # rows (scaled, summed, ...): their half-widths are not modelled here.
        raise QueryRejected(
            "accuracy-first (ci95) cannot predict the columns of a query around a UNION, "
            "INTERSECT or EXCEPT", hint="pass epsilon instead, or ask the set operation "
            "itself with ci95 and transform its answer yourself", rule="accuracy_target")
    k = len(cplan.fresh)
    # δ does not depend on ε: each SELECT's δ is its share of the request's (the ε given
    # here is a placeholder; predict() splits each trial ε by k as compound.share does).
    deltas = [d for _, d in cplan.shares(1.0, delta, mechanism)]
    names = [c.name for c in cplan.columns]
    parts: list[tuple[_Select, int]] = []
    for i, (b, d) in enumerate(zip(cplan.branches, deltas, strict=True)):
        if not b.noisy:
            continue
        try:
            select = _Select(b.plan, [c.name for c in b.columns], d, mechanism, cal)
        except QueryRejected as e:
            raise b.piece.rejection(e, i, cplan.kind) from None
        parts.append((select, k))
    return _Model(names, parts)


# -- the search --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Choice:
    """The ε chosen for a target, and why."""

    target: float
    epsilon: float
    prediction: _Prediction

    def note(self) -> str:
        p = self.prediction
        if p.column is None:
            return (f"accuracy-first (ci95 <= {self.target:g}): no released column carries "
                    f"noise, so nothing constrains epsilon; answered at epsilon="
                    f"{self.epsilon:g}, the policy's smallest")
        others = len(p.by_column) - 1
        rest = f"; the other {others} noisy column(s) are within it" if others else ""
        return (f"accuracy-first (ci95 <= {self.target:g}): epsilon={self.epsilon:g} is the "
                f"smallest epsilon with 3 significant digits whose predicted 95% half-width "
                f"meets the target in every noisy column; binding column {p.column!r} "
                f"(predicted ±{p.worst:.4g}){rest}")


class _Search:
    def __init__(self, gw: Gateway, model: _Model, goal: float) -> None:
        limits = gw.policy.model.limits
        self.model, self.goal = model, goal
        self.lo = float(limits.min_epsilon_per_query)
        if limits.max_epsilon_per_query is not None:
            self.cap = float(limits.max_epsilon_per_query)
            self.cap_reason = "the policy's max_epsilon_per_query"
        else:
            self.cap = float(gw.policy.model.budget.dataset.epsilon)
            self.cap_reason = "the dataset's whole budget"
        self.cap = max(self.cap, self.lo)
        self._memo: dict[float, _Prediction | None] = {}

    def predict(self, epsilon: float) -> _Prediction | None:
        """The prediction at ε, or None where ε cannot be calibrated (extreme ε)."""
        if epsilon not in self._memo:
            try:
                self._memo[epsilon] = self.model.predict(epsilon)
            except QueryRejected as e:
                if e.rule != "calibration":
                    raise  # a refusal of the plan itself, whatever ε
                self._memo[epsilon] = None
        return self._memo[epsilon]

    def meets(self, epsilon: float, goal: float | None = None) -> bool:
        p = self.predict(epsilon)
        return p is not None and p.worst <= (self.goal if goal is None else goal)

    def top(self) -> float:
        """The largest ε up to the cap that can be calibrated (the lowest one's refusal
        is the plan's: raised as it is)."""
        hi = self.cap
        while hi > self.lo and self.predict(hi) is None:
            hi = max(self.lo, hi / 10)
        if self.predict(hi) is None:
            self.model.predict(hi)  # raises the calibration's own reason
        return hi

    def smallest(self, goal: float, lo: float, hi: float) -> float | None:
        """The smallest grid ε in [lo, hi] that meets ``goal`` (hi itself when the grid
        value above the crossing is past hi), or None if hi does not meet it."""
        if self.meets(lo, goal):
            g = _grid_up(lo)
            return _value(g) if _value(g) <= hi else lo
        if not self.meets(hi, goal):
            return None
        a, b = lo, hi  # a fails, b meets
        for _ in range(_MAX_BISECTIONS):
            if b / a <= 1 + TOLERANCE:
                break
            mid = math.sqrt(a * b)
            if self.meets(mid, goal):
                b = mid
            else:
                a = mid
        g = _grid_up(a)
        for _ in range(_MAX_WALK):  # up to the first grid value that meets it
            if _value(g) > hi:
                return hi
            if self.meets(_value(g), goal):
                break
            g = _next(g)
        else:
            g = _grid_up(b)
        for _ in range(_MAX_WALK):  # and the one below must not (non-monotone ripples)
            below = _prev(g)
            if _value(below) < lo or not self.meets(_value(below), goal):
                break
            g = below
        return _value(g)

    def choose(self) -> Choice:
        if not self.model.noisy:
            least = _value(_grid_up(self.lo))
            return Choice(self.goal, least if least <= self.cap else self.lo,
                          _Prediction(0.0, None, (), False))
        hi = self.top()
        eps = self.smallest(self.goal, self.lo, hi)
        if eps is None:
            raise self.unreachable(hi)
        p = self.predict(eps)
        assert p is not None
        return Choice(self.goal, eps, p)

    def best(self, hi: float) -> tuple[_Prediction, float]:
        """The best prediction up to ``hi`` and the smallest grid ε that reaches it."""
        p = self.predict(hi)
        assert p is not None
        eps = self.smallest(p.worst, self.lo, hi)
        return p, hi if eps is None else eps

    def unreachable(self, hi: float) -> QueryRejected:
        p, eps = self.best(hi)
        best = _round_up(p.worst)
        if p.ratio_bound:
            return QueryRejected(
                f"column {p.column!r} cannot be promised ±{self.goal:g} before the query "
                "runs: the half-width of an AVG/VAR/STDDEV depends on each group's noisy "
                f"count, known only after the run, so the gateway can promise only ±{best} "
                "(the widest it can be: half the bounds' width for AVG), whatever epsilon",
                hint=f"ask for ci95 >= {best} (it needs epsilon={eps:g}), or give epsilon "
                "instead (explain shows the accuracy at that epsilon)", rule=RULE)
        beyond = self._beyond(hi)
        need = (f"; the target would need epsilon={beyond:g}" if beyond is not None
                else "; no epsilon reaches the target")
        return QueryRejected(
            f"no epsilon up to {hi:g} ({self.cap_reason}) gives every noisy column a 95% "
            f"half-width within ±{self.goal:g}: the best is ±{best}, for column {p.column!r}",
            hint=f"ask for ci95 >= {best} (it needs epsilon={eps:g}){need}, or give epsilon "
            "instead", rule=RULE)

    def _beyond(self, hi: float) -> float | None:
        """The ε the target would need past ``hi`` (up to 10^6 times it), if any."""
        for k in range(1, 7):
            top = hi * 10**k
            if self.predict(top) is None:
                return None
            if self.meets(top):
                return self.smallest(self.goal, hi, top)
        return None


def _round_up(x: float) -> str:
    """``x`` rounded up to 4 significant digits, as text (a target that is met)."""
    g = Decimal(repr(float(x)))
    e = g.adjusted() - 3
    return f"{float(g.scaleb(-e).to_integral_value(rounding=ROUND_CEILING).scaleb(e)):g}"


# -- per-Gateway memory of the choices ---------------------------------------------------------

_KEY = tuple[str, str, float, float, str]
_choices: weakref.WeakKeyDictionary[Gateway, LRU[_KEY, Choice]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _memory(gw: Gateway) -> LRU[_KEY, Choice]:
    with _lock:
        found = _choices.get(gw)
        if found is None:
            found = _choices[gw] = LRU(1024)
        return found


def choose(gw: Gateway, sql: str, goal: float, delta: float | None, mechanism: str | None,
           *, dialect: str = "duckdb") -> Choice:
    """The smallest grid ε whose predicted half-width meets ``goal`` in every noisy
    column, from the plan and the policy only (no engine run, no data)."""
    limits = gw.policy.model.limits
    _, dlt, mech = gw._request(limits.min_epsilon_per_query, delta, mechanism)
    key = (dialect, sql, goal, dlt, mech)
    memory = _memory(gw)
    found = memory.get(key)
    if found is not None:
        return found
    search = _Search(gw, _model(gw, sql, dialect, dlt, mech), goal)
    return memory.put(key, search.choose())


# -- the entry points (Gateway.query_as / Gateway.explain call these) --------------------------

def query(gw: Gateway, who: Analyst, sql: str, ci95: float | None, accuracy: float | None,
          epsilon: float | None, delta: float | None, mechanism: str | None, *,
          dialect: str = "duckdb") -> QueryResult:
    """Answer ``sql`` at the smallest ε meeting the target; charged like any query."""
    try:
        goal = target(ci95, accuracy, epsilon)
        choice = choose(gw, sql, goal, delta, mechanism, dialect=dialect)
    except GatewayError as e:
        gw.ledger.audit(who.name, "query", sql, 0.0, 0.0, e.code, e.message, uuid.uuid4().hex)
        raise
    try:
        result = gw.query_as(who, sql, choice.epsilon, delta, mechanism, dialect=dialect)
    except BudgetExceeded as e:
        refusal = _unaffordable(gw, who, sql, choice, delta, mechanism, dialect)
        if refusal is None:
            raise
        raise refusal from e
    return replace(result, target_ci95=choice.target, notes=[*result.notes, choice.note()])


def explain(gw: Gateway, sql: str, ci95: float | None, accuracy: float | None,
            epsilon: float | None, delta: float | None, mechanism: str | None, *,
            dialect: str = "duckdb") -> Explanation:
    """:meth:`Gateway.explain` at the ε a query with this target would be charged."""
    choice = choose(gw, sql, target(ci95, accuracy, epsilon), delta, mechanism,
                    dialect=dialect)
    ex = gw.explain(sql, choice.epsilon, delta, mechanism, dialect=dialect)
    return replace(ex, target_ci95=choice.target, notes=[*ex.notes, choice.note()])


def _unaffordable(gw: Gateway, who: Analyst, sql: str, choice: Choice, delta: float | None,
                  mechanism: str | None, dialect: str) -> QueryRejected | None:
    """The refusal when the chosen ε is more than the budget left (None: it is δ that
    does not fit, or the filter's own reason: the ledger's error stands)."""
    mine, dataset = gw.ledger.spent(who)
    left, scope = min((mine.epsilon_remaining, f"analyst {who.name!r}"),
                      (dataset.epsilon_remaining, f"dataset {gw.policy.dataset!r}"))
    if choice.epsilon <= left:
        return None
    limits = gw.policy.model.limits
    _, dlt, mech = gw._request(limits.min_epsilon_per_query, delta, mechanism)
    search = _Search(gw, _model(gw, sql, dialect, dlt, mech), choice.target)
    offer = ""
    if left >= search.lo:
        top = min(left, search.cap)
        g = _grid_up(top)
        top = _value(g) if _value(g) <= top else _value(_prev(g))
        if top >= search.lo and search.predict(top) is not None:
            p, eps = search.best(top)
            offer = (f"; what is left buys at best ±{_round_up(p.worst)} for column "
                     f"{p.column!r} (ci95={_round_up(p.worst)} costs epsilon={eps:g})")
    # (the ledger's refusal is in the audit log already, as for any query)
    message = (f"the target ci95 ±{choice.target:g} needs epsilon={choice.epsilon:g}, more "
               f"than the remaining budget of the {scope} (epsilon={left:.6g}){offer}")
    return QueryRejected(message, hint="ask for a wider target, reuse an earlier answer "
                         "(repeats are free), or ask the operator for more budget", rule=RULE)
