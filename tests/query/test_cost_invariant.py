"""The charge is the composition of what the samplers were given (never set beside).

Every golden query and a few with partition selection run under both mechanisms
with the samplers spied on.  From the parameters each sampler received (a scale
per statistic, (ε, δ) for partition selection) and the sensitivities derived
independently from the plan, the test recomposes the privacy cost, and it must
equal the (ε, δ) the ledger was charged.  Running partition selection at the full
δ while its event says δ/2, or a noise scale that does not match its ε, fails
here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import Gateway
from gateway.privacy import calibration
from gateway.query import perturb
from tests.query import selection_spy

HERE = Path(__file__).resolve().parents[1] / "sql" / "golden"
CASES = [c["sql"] for c in yaml.safe_load((HERE / "cases.yaml").read_text())]
PARTITIONS = [
    "SELECT duration_s, COUNT(*) FROM visits GROUP BY duration_s",
    "SELECT duration_s, COUNT(DISTINCT user_id) FROM visits GROUP BY duration_s",
    "SELECT spend, AVG(age) AS a, COUNT(*) AS n FROM visits GROUP BY spend",
    "SELECT duration_s, device, SUM(spend) FROM visits GROUP BY duration_s, device",
    "SELECT DISTINCT spend FROM visits",
]
QUANTILES = [
    "SELECT MEDIAN(spend) FROM visits",
    "SELECT country, MIN(age), MAX(age), COUNT(*) FROM visits GROUP BY country",
    "SELECT device, APPROX_QUANTILES(spend, 4), AVG(spend) FROM visits GROUP BY device",
    "SELECT duration_s, PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY age) FROM visits "
    "GROUP BY duration_s",
    "SELECT device, COUNT(DISTINCT country), COUNT(DISTINCT visit_date) FROM visits "
    "GROUP BY device",
]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    g = Gateway.open(HERE / "policy.yaml", state=tmp_path_factory.mktemp("inv") / "s.db")
    yield g
    g.close()


class Spy:
    def __init__(self) -> None:
        self.scales: list[tuple[str, float]] = []
        # (strategy, parameters) per partition-selection sampler call (selection_spy.py)
        self.partitions: list[tuple[str, tuple[Any, ...]]] = []
        self.quantiles: list[tuple[float, float, float]] = []  # (rank, ε, sensitivity)


@pytest.fixture()
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    found = Spy()
    for name in ("discrete_laplace", "rounded_laplace", "rounded_gaussian"):
        real = getattr(perturb, name)

        def wrapped(scale: float, *args: Any, _real: Any = real, _name: str = name) -> Any:
            found.scales.append((_name, float(scale)))
            return _real(scale, *args)

        monkeypatch.setattr(perturb, name, wrapped)
    selection_spy.install(monkeypatch, found.partitions)
    real_q = perturb.select_quantile_bins

    def quantiles(weights: Any, alpha: float, eps: float, sens: float, rng: Any) -> Any:
        found.quantiles.append((alpha, eps, sens))
        return real_q(weights, alpha, eps, sens, rng)

    monkeypatch.setattr(perturb, "select_quantile_bins", quantiles)
    return found


def _sensitivity(stat: Any, plan: Any, kind: str, step: float) -> float:
    """Sensitivity in grid units, derived from the plan (not from the calibration)."""
    l1, l2 = stat.sensitivity(plan.max_rows, plan.max_groups)
    if kind == "discrete_laplace":
        return math.ceil(l1 - 1e-9)
    if kind == "rounded_laplace":
        return calibration.grid_sensitivity(l1, step, plan.max_groups, "l1") / step
    integral = stat.kind in ("units", "distinct") or (stat.kind == "sum" and
                                                      plan.max_groups == 1)
    if step == 1.0 and integral:
        return math.ceil(l2 - 1e-9) if stat.kind == "sum" else l2
    return calibration.grid_sensitivity(l2, step, plan.max_groups, "l2") / step


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
@pytest.mark.parametrize("sql", CASES + PARTITIONS + QUANTILES)
def test_charge_is_the_composition_of_the_samplers_parameters(gw: Gateway, spy: Spy, sql: str,
                                                                mechanism: str) -> None:
    epsilon, delta = 0.9, 1e-6
    prep = gw.prepare(sql, epsilon, delta, mechanism)
    assert prep.cal is not None
    result = gw.query(sql, analyst=f"inv-{mechanism}", epsilon=epsilon, delta=delta,
                      mechanism=mechanism)
    if result.cached:
        pytest.skip("answered from the cache: no sampler ran")  # pragma: no cover
    plan = prep.plan
    noisy = [s for s in plan.stats if s.sensitivity(plan.max_rows, plan.max_groups)[0] > 0]
    # Samplers run once per statistic, in plan order (for zero groups, too).
    assert len(spy.scales) == len(noisy)
    eps_total, delta_total = 0.0, 0.0
    if mechanism == "laplace":
        for stat, (kind, scale) in zip(noisy, spy.scales, strict=True):
            step = prep.cal.stats[stat.name].grid.step
            eps_total += _sensitivity(stat, plan, kind, step) / scale
    elif spy.scales:
        ratios = [scale / _sensitivity(stat, plan, kind, prep.cal.stats[stat.name].grid.step)
                  for stat, (kind, scale) in zip(noisy, spy.scales, strict=True)]
        multiplier = min(ratios) / math.sqrt(len(noisy))
        assert prep.cal.gaussian is not None
        eps_g, delta_g = prep.cal.gaussian.epsilon, prep.cal.gaussian.delta
        # The noise really gives (ε_g, δ_g) (Balle & Wang 2018).
        assert calibration.gaussian_delta(multiplier, eps_g, 1.0) <= delta_g * (1 + 1e-9)
        eps_total += eps_g
        delta_total += delta_g
    # One exponential mechanism per quantile rank; its utilities' sensitivity is
    # max(α, 1 - α) times the M values a unit may contribute.
    assert len(spy.quantiles) == sum(len(q.alphas) for q in plan.quantiles)
    for alpha, eps_q, sens in spy.quantiles:
        assert sens == pytest.approx(max(alpha, 1 - alpha) * plan.max_rows)
        eps_total += eps_q
    # Partition selection: its own sampler's (ε, δ), or a threshold on a released count
    # whose δ follows from τ and the noise that count's sampler got (selection_spy.py).
    assert len(spy.partitions) == (1 if plan.partition_selection else 0)
    for call in spy.partitions:
        eps_ps, delta_ps = selection_spy.selection_cost(
            call, plan, prep.cal, {s.name: sc for s, sc in zip(noisy, spy.scales, strict=True)})
        eps_total += eps_ps
        delta_total += delta_ps
    assert result.epsilon_spent == pytest.approx(eps_total, rel=1e-9)
    assert result.delta_spent == pytest.approx(delta_total, rel=1e-9, abs=1e-18)
    assert result.epsilon_spent <= epsilon * (1 + 1e-12)
    assert result.delta_spent <= delta * (1 + 1e-12)
