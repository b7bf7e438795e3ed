"""Thresholds for partition selection (gateway/privacy/thresholding.py).

Unit tests of τ (the exact tails of the samplers' noise, the smallest τ, n50, the
Gaussian thresholding parameters) and statistical neighbouring tests of both
mechanisms in the style of test_neighbouring.py: D′ has groups A..; D adds one unit
that adds 1 to existing groups and creates a group of its own; each mechanism runs
400,000 times per dataset with a fixed SeededRandom; the outputs (or a
post-processing of them, which is as good a family of sets S) are histogrammed and
hockey_stick_lower_bound (simultaneous Clopper-Pearson intervals, false failure
< 1e-6 per check) bounds Σ max(0, P_D(S) − e^ε P_D′(S)) from below.  It must be
≤ δ; the same check must catch the mechanism with half the noise, and with the
threshold lowered to c_max + (τ − c_max)//2 (the threshold "halved").
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.privacy.calibration import analytic_gaussian_sigma, gaussian_delta
from gateway.privacy.events import GaussianEvent
from gateway.privacy.partition_selection import keep_probabilities, min_units
from gateway.privacy.random import SeededRandom
from gateway.privacy.samplers import discrete_laplace, rounded_gaussian, rounded_laplace
from gateway.privacy.thresholding import (
    MARGIN,
    gaussian_threshold,
    gaussian_threshold_select,
    noise_tail,
    select_above_threshold,
    threshold_delta,
    threshold_for,
    units_for_half,
)

from .dp_check import clopper_pearson, hockey_stick_lower_bound

N = 400_000
SAMPLERS = {
    "discrete_laplace": lambda scale, n, rng: discrete_laplace(scale, n, rng),
    "laplace": lambda scale, n, rng: rounded_laplace(scale, 1.0, n, rng),
    "gaussian": lambda scale, n, rng: rounded_gaussian(scale, 1.0, n, rng),
}


# -- tails and τ ---------------------------------------------------------------------------

def _brute_tail(kind: str, scale: float, k: int) -> float:
    """P(X ≥ k) by summing the distribution (independent of the closed forms)."""
    if kind == "discrete_laplace":
        a = math.exp(-1.0 / scale)
        js = np.arange(-2000, 2001)
        pmf = (1 - a) / (1 + a) * a ** np.abs(js)
        return float(pmf[js >= k].sum())
    from scipy import stats
    dist = stats.laplace(scale=scale) if kind == "laplace" else stats.norm(scale=scale)
    # round(Z) ≥ k  <=>  Z ≥ k − ½ (ties have probability 0)
    return float(dist.sf(k - 0.5))


@pytest.mark.parametrize("kind", ["discrete_laplace", "laplace", "gaussian"])
@pytest.mark.parametrize("scale", [0.7, 3.0, 25.0])
def test_tails_are_the_exact_distribution(kind: str, scale: float) -> None:
    for k in (-3, 0, 1, 2, 5, int(4 * scale) + 1):
        assert noise_tail(kind, scale, k) == pytest.approx(_brute_tail(kind, scale, k),
                                                           rel=1e-9, abs=1e-300)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["discrete_laplace", "laplace", "gaussian"])
def test_tails_match_the_samplers(kind: str) -> None:
    """What the samplers really produce has the tails the thresholds are computed from."""
    scale = 2.5
    x = SAMPLERS[kind](scale, N, SeededRandom(7))
    ks = [1, 2, 3, 5, 8]
    counts = np.array([(x >= k).sum() for k in ks])
    lo, hi = clopper_pearson(counts, N, 1e-6 / len(ks))
    for k, a, b in zip(ks, lo, hi, strict=True):
        assert a <= noise_tail(kind, scale, k) <= b, (kind, k)


@pytest.mark.parametrize("kind", ["discrete_laplace", "laplace", "gaussian"])
@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0, 100.0, 3000.0])
@pytest.mark.parametrize(("c", "l0", "delta"), [(1, 1, 1e-6), (5, 1, 1e-6), (1, 100, 1e-6),
                                                (20, 4, 1e-9), (1, 3, 0.05)])
def test_threshold_is_the_smallest_that_bounds_delta(kind: str, scale: float, c: int, l0: int,
                                                     delta: float) -> None:
    tau = threshold_for(kind, scale, c, l0, delta)
    assert tau >= c + 1
    assert l0 * noise_tail(kind, scale, tau - c) <= delta * (1 - MARGIN)
    assert threshold_delta(kind, scale, c, l0, tau) <= delta
    if tau - 1 > c:  # one lower would not do
        assert l0 * noise_tail(kind, scale, tau - 1 - c) > delta * (1 - MARGIN)


def test_units_needed_at_epsilon_one() -> None:
    """The figure this work is about: ε = 1, δ = 1e-6, L0 = 1.  Thresholding the released
    COUNT(DISTINCT unit) (discrete Laplace, scale 1/ε) keeps a group with 15 units half of
    the time; the truncated geometric at ε/2 (a separate share) needs 26."""
    tau = threshold_for("discrete_laplace", 1.0, 1, 1, 1e-6)
    assert tau == 15 and units_for_half(tau, 1.0) == 15
    assert min_units(0.5, 1e-6) == 26
    # COUNT(*) with M = 5 rows per unit: noise scale M/ε, c_max = M, n50 in units of M rows.
    tau_rows = threshold_for("discrete_laplace", 5.0, 5, 1, 1e-6)
    assert units_for_half(tau_rows, 5.0) == 15


@pytest.mark.parametrize("kind", ["discrete_laplace", "laplace", "gaussian"])
@pytest.mark.parametrize(("tau", "per_unit"), [(15, 1.0), (72, 5.0), (19910, 1280.0),
                                               (7, 0.5)])
def test_units_for_half_is_exact(kind: str, tau: int, per_unit: float) -> None:
    """At n50 units a group is kept with probability ≥ ½, with one unit fewer < ½."""
    n = units_for_half(tau, per_unit)

    def keep(units: int) -> float:
        v = units * per_unit  # P(v + X ≥ τ) = P(X ≥ ⌈τ − v⌉)
        return noise_tail(kind, 3.0, math.ceil(tau - v - 1e-12))

    assert keep(n) >= 0.5 > keep(n - 1)


def test_min_units_is_the_table_argmax() -> None:
    for eps in (0.01, 0.3, 1.0, 4.0):
        for delta in (1e-9, 1e-6, 0.02):
            for l0 in (1, 7):
                table = keep_probabilities(eps, delta, l0)
                for p in (0.05, 0.5, 0.99):
                    assert min_units(eps, delta, l0, p) == int(np.argmax(table >= p))


def test_threshold_rejects_bad_parameters() -> None:
    for kwargs in ({"delta": 0.0}, {"delta": 1.0}, {"scale": 0.0}, {"scale": math.inf},
                   {"contribution": 0}, {"contribution": 1.5}, {"max_partitions": 0},
                   {"kind": "exponential"}):
        args = {"kind": "gaussian", "scale": 1.0, "contribution": 1, "max_partitions": 1,
                "delta": 1e-6, **kwargs}
        with pytest.raises(ValueError):
            threshold_for(**args)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        gaussian_threshold(0.0, 1e-6, 1)
    with pytest.raises(ValueError):
        gaussian_threshold_select(np.array([1, -1]), 1.0, 3, SeededRandom(0))


@pytest.mark.parametrize("l0", [1, 4, 100, 400])
def test_gaussian_threshold_parameters(l0: int) -> None:
    eps, delta = 0.5, 1e-6
    g = gaussian_threshold(eps, delta, l0)
    assert g.delta_noise + g.delta_threshold == pytest.approx(delta, rel=1e-12)
    # the noise is the analytic Gaussian for L2 sensitivity √L0 at (ε, δ_1) ...
    assert g.sigma == pytest.approx(analytic_gaussian_sigma(eps, g.delta_noise, math.sqrt(l0)))
    assert gaussian_delta(g.sigma, eps, math.sqrt(l0)) <= g.delta_noise * (1 + 1e-9)
    GaussianEvent(g.noise_multiplier, eps, g.delta_noise)  # accepted: it really is (ε, δ_1)
    # ... and τ the smallest with L0 · P(1 + N ≥ τ) ≤ δ_2.
    assert g.threshold == threshold_for("gaussian", g.sigma, 1, l0, g.delta_threshold)
    assert g.units_for_half == g.threshold


def test_gaussian_threshold_grows_with_the_root_of_l0() -> None:
    """√L0 instead of L0: at L0 = 100 it needs far fewer units than the alternatives."""
    eps, delta = 0.5, 1e-6
    small, large = gaussian_threshold(eps, delta, 1), gaussian_threshold(eps, delta, 100)
    assert large.threshold < 15 * small.threshold  # ~√100 (and a log), not 100
    assert large.threshold < min_units(eps, delta, 100) / 4
    assert large.threshold < threshold_for("discrete_laplace", 100.0, 1, 100, 1e-6) / 3


# -- neighbouring datasets -----------------------------------------------------------------

SHARED = 2  # groups in D′ the added unit adds 1 to; it also creates one group of its own


def _shared_counts(tau: int) -> np.ndarray:
    """Counts of the shared groups in D′: one just below τ, one far above."""
    return np.array([tau - 1, tau + 6], dtype=np.int64)


def _threshold_outputs(kind: str, scale: float, tau: int, counts: np.ndarray, own: bool,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """N runs of "threshold the released count": per run the kept flags of the shared
    groups and the own group, and the sum of the released noisy counts of the kept
    shared groups (a post-processing of the output)."""
    groups = len(counts) + 1
    rng = SeededRandom(seed)
    noisy = np.concatenate([counts, [1 if own else 0]])[None, :] + \
        SAMPLERS[kind](scale, N * groups, rng).reshape(N, groups)
    kept = select_above_threshold(noisy, tau)
    if not own:  # the group does not exist without the unit: never released
        kept[:, -1] = False
    flags = (kept * (1 << np.arange(groups))).sum(axis=1)
    released = np.where(kept[:, :-1], noisy[:, :-1], 0).sum(axis=1)
    return flags, released


def _threshold_check(kind: str, scale: float, tau: int, epsilon: float, delta: float) -> float:
    """Largest hockey-stick lower bound over the families of sets checked."""
    base = _shared_counts(tau)
    fa, ra = _threshold_outputs(kind, scale, tau, base + 1, True, seed=11)
    fb, rb = _threshold_outputs(kind, scale, tau, base, False, seed=12)
    groups = SHARED + 1
    worst = hockey_stick_lower_bound(fa, fb, np.arange(2 ** groups + 1) - 0.5, epsilon,
                                     false_failure=1e-6 / 2)
    # The released counts (kept shared groups summed) beside the own group's flag.
    centre = int(base.sum())
    k = 12
    ca = (np.clip(ra - centre, -k, k) + k) * 2 + (fa >> SHARED)
    cb = (np.clip(rb - centre, -k, k) + k) * 2 + (fb >> SHARED)
    edges = np.arange(2 * (2 * k + 1) + 1) - 0.5
    return max(worst, hockey_stick_lower_bound(ca, cb, edges, epsilon, false_failure=1e-6 / 2))


CASES = [pytest.param("calibrated", id="calibrated"),
         pytest.param("half-noise", id="half-noise-detected"),
         pytest.param("low-threshold", id="lowered-threshold-detected")]


@pytest.mark.slow
@pytest.mark.parametrize("variant", CASES)
def test_threshold_on_a_released_unit_count_laplace(variant: str) -> None:
    """COUNT(DISTINCT unit) under Laplace, L0 = 3: discrete Laplace of scale L0/ε on every
    count, τ for δ_thr = δ.  The unit adds 1 to two groups of D′ and creates one."""
    epsilon, delta, l0 = 1.0, 0.05, SHARED + 1
    scale = l0 / epsilon
    tau = threshold_for("discrete_laplace", scale, 1, l0, delta)
    if variant == "half-noise":
        scale /= 2
    if variant == "low-threshold":
        tau = 1 + (tau - 1) // 2
    hs = _threshold_check("discrete_laplace", scale, tau, epsilon, delta)
    assert (hs <= delta) is (variant == "calibrated"), f"{variant}: {hs:.4f} vs {delta}"


@pytest.mark.slow
@pytest.mark.parametrize("variant", CASES)
def test_threshold_on_a_released_unit_count_gaussian(variant: str) -> None:
    """The same under mechanism='gaussian': the count's noise is the analytic Gaussian for
    L2 sensitivity √L0 at (ε, δ/2), τ for δ_thr = δ/2; the whole is (ε, δ)."""
    epsilon, delta, l0 = 1.0, 0.05, SHARED + 1
    sigma = analytic_gaussian_sigma(epsilon, delta / 2, math.sqrt(l0))
    tau = threshold_for("gaussian", sigma, 1, l0, delta / 2)
    if variant == "half-noise":
        sigma /= 2
    if variant == "low-threshold":
        tau = 1 + (tau - 1) // 2
    hs = _threshold_check("gaussian", sigma, tau, epsilon, delta)
    assert (hs <= delta) is (variant == "calibrated"), f"{variant}: {hs:.4f} vs {delta}"


@pytest.mark.slow
@pytest.mark.parametrize("variant", CASES)
def test_gaussian_threshold_neighbours(variant: str) -> None:
    """Gaussian thresholding at (ε, δ), L0 = 5: the unit adds 1 to four groups of D′ (at
    the threshold, where the decisions move most) and creates one; only the decisions are
    released (the number of shared groups kept, and the own group's)."""
    epsilon, delta, l0 = 1.0, 0.05, 5
    g = gaussian_threshold(epsilon, delta, l0)
    sigma, tau = g.sigma, g.threshold
    if variant == "half-noise":
        sigma /= 2
    if variant == "low-threshold":
        tau = 1 + (tau - 1) // 2
    worst = 0.0
    offsets = (-1, 1)
    for j, off in enumerate(offsets):
        shared = np.full(l0 - 1, tau + off, dtype=np.int64)
        out = []
        for own, seed in ((True, 20 + j), (False, 30 + j)):
            counts = np.tile(np.concatenate([shared + own, [int(own)]]), N)
            kept = gaussian_threshold_select(counts, sigma, tau, SeededRandom(seed))
            kept = kept.reshape(N, l0)
            if not own:
                kept[:, -1] = False
            out.append(kept[:, :-1].sum(axis=1) * 2 + kept[:, -1])
        hs = hockey_stick_lower_bound(out[0], out[1], np.arange(2 * l0 + 1) - 0.5, epsilon,
                                      false_failure=1e-6 / len(offsets))
        worst = max(worst, hs)
    assert (worst <= delta) is (variant == "calibrated"), f"{variant}: {worst:.4f} vs {delta}"
