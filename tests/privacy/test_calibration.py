"""Calibration: Gaussian σ, grids, and 95% half-widths (plus their empirical coverage)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from gateway.privacy.calibration import (
    analytic_gaussian_sigma,
    choose_grid,
    discrete_laplace_ci95,
    gaussian_ci95,
    gaussian_delta,
    grid_sensitivity,
    laplace_ci95,
    laplace_scale,
    rounded_ci95,
)
from gateway.privacy.random import SeededRandom
from gateway.privacy.samplers import discrete_laplace, rounded_gaussian, rounded_laplace


def test_laplace_scale() -> None:
    assert laplace_scale(0.5, 2.0) == 4.0
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            laplace_scale(bad, 1.0)
        with pytest.raises(ValueError):
            laplace_scale(1.0, bad)


# --------------------------------------------------------------------------- Gaussian


def _hockey_stick_by_quadrature(sigma: float, epsilon: float, sens: float) -> float:
    """∫ max(0, p(z) − e^ε q(z)) dz for p = N(0, σ²), q = N(Δ, σ²)."""
    # p > e^ε q exactly when z < Δ/2 − εσ²/Δ.
    cut = sens / 2 - epsilon * sigma**2 / sens

    def f(z: float) -> float:
        return stats.norm.pdf(z, scale=sigma) - math.exp(epsilon) * stats.norm.pdf(
            z, loc=sens, scale=sigma
        )

    value, _ = integrate.quad(f, -np.inf, cut, epsabs=1e-14, epsrel=1e-10)
    return value


@pytest.mark.parametrize(
    ("sigma", "epsilon", "sens"), [(1.0, 0.5, 1.0), (3.0, 0.1, 2.0), (0.7, 2.0, 1.0)]
)
def test_gaussian_delta_matches_independent_computations(
    sigma: float, epsilon: float, sens: float
) -> None:
    exact = gaussian_delta(sigma, epsilon, sens)
    assert exact == pytest.approx(_hockey_stick_by_quadrature(sigma, epsilon, sens), rel=1e-6)
    # dp_accounting's pessimistic PLD is an upper bound that is close.
    pld = pld_lib.from_gaussian_mechanism(sigma / sens, value_discretization_interval=1e-4)
    upper = pld.get_delta_for_epsilon(epsilon)
    assert exact <= upper <= exact * 1.01 + 1e-12


@given(
    epsilon=st.floats(0.01, 20.0),
    log10_delta=st.floats(-12.0, -2.0),
    sens=st.sampled_from([0.5, 1.0, 7.0]),
)
@settings(max_examples=200, deadline=None)
def test_analytic_gaussian_never_undershoots_and_is_tight(
    epsilon: float, log10_delta: float, sens: float
) -> None:
    delta = 10.0**log10_delta
    sigma = analytic_gaussian_sigma(epsilon, delta, sens)
    assert gaussian_delta(sigma, epsilon, sens) <= delta
    assert gaussian_delta(sigma * (1 - 1e-6), epsilon, sens) > delta
    if epsilon < 1:  # never worse than the classical calibration (Dwork & Roth, Thm A.1)
        assert sigma <= sens * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def test_analytic_gaussian_rejects_bad_parameters() -> None:
    for eps, delta, sens in [(0, 1e-5, 1), (1, 0, 1), (1, 1, 1), (1, 1e-5, 0), (math.nan, 0.1, 1)]:
        with pytest.raises(ValueError):
            analytic_gaussian_sigma(eps, delta, sens)


# --------------------------------------------------------------------------- grids


@pytest.mark.parametrize(
    ("scale", "sens"), [(1.0, 1.0), (1000.0, 1.0), (0.01, 1.0), (10.0, 3.0), (1e-12, 5.0)]
)
def test_choose_grid(scale: float, sens: float) -> None:
    g = choose_grid(scale, sens)
    mantissa, _ = math.frexp(g)
    assert mantissa == 0.5  # a power of two
    fine = 2.0 ** math.floor(math.log2(min(scale, sens) / 1024))  # largest pow2 below both
    floor = 2.0 ** math.ceil(math.log2(sens * 2.0**-30))  # smallest pow2 above the floor
    assert g == max(fine, floor)
    assert g >= sens * 2.0**-30


def test_choose_grid_examples() -> None:
    assert choose_grid(10.0, 1.0) == 2.0**-10  # capped by the sensitivity
    assert choose_grid(0.5, 3.0) == 2.0**-11
    assert choose_grid(1e-9, 1.0) == 2.0**-30  # enormous ε: floor keeps int64 headroom
    with pytest.raises(ValueError):
        choose_grid(0.0, 1.0)


def test_grid_sensitivity() -> None:
    assert grid_sensitivity(1.0, 0.25) == 1.25
    assert grid_sensitivity(1.0, 0.25, coordinates=4) == 2.0
    assert grid_sensitivity(1.0, 0.25, coordinates=4, norm="l2") == 1.5
    assert grid_sensitivity(3.0, 1.0, coordinates=0) == 3.0
    with pytest.raises(ValueError):
        grid_sensitivity(1.0, 0.25, norm="linf")
    with pytest.raises(ValueError):
        grid_sensitivity(1.0, 0.25, coordinates=-1)


# --------------------------------------------------------------------------- 95% half-widths


def _geometric_cdf_abs(k: int, scale: float) -> float:
    alpha = math.exp(-1 / scale)
    return 1 - 2 * alpha ** (k + 1) / (1 + alpha)


@pytest.mark.parametrize("scale", [0.01, 0.2, 0.5, 1.0, 3.3, 10.0, 1e4])
def test_discrete_laplace_ci95_is_the_smallest_integer(scale: float) -> None:
    k = discrete_laplace_ci95(scale)
    assert k == int(k) >= 0
    assert _geometric_cdf_abs(int(k), scale) >= 0.95
    if k > 0:
        assert _geometric_cdf_abs(int(k) - 1, scale) < 0.95


def test_closed_form_half_widths() -> None:
    assert laplace_ci95(2.0) == pytest.approx(2 * math.log(20))
    assert stats.laplace.cdf(laplace_ci95(1.0)) == pytest.approx(0.975)
    assert gaussian_ci95(2.0) == pytest.approx(2 * stats.norm.ppf(0.975), rel=1e-12)
    assert rounded_ci95(1.0, 0.5) == 1.5
    assert rounded_ci95(1.0, 0.5, value_on_grid=True) == 1.25
    with pytest.raises(ValueError):
        rounded_ci95(-1.0, 0.5)


# Coverage: 200k draws, tolerance 6 standard errors (~0.003).
COVER_N = 200_000
COVER_TOL = 6 * math.sqrt(0.95 * 0.05 / COVER_N)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [0.4, 2.0, 25.0])
def test_discrete_laplace_ci95_coverage(scale: float) -> None:
    k = discrete_laplace_ci95(scale)
    x = discrete_laplace(scale, COVER_N, SeededRandom(21))
    covered = np.mean(np.abs(x) <= k)
    assert abs(covered - _geometric_cdf_abs(int(k), scale)) < COVER_TOL


@pytest.mark.slow
@pytest.mark.parametrize(("scale", "grid"), [(1.0, 2.0**-10), (4.0, 0.5)])
def test_rounded_laplace_ci95_coverage(scale: float, grid: float) -> None:
    z = rounded_laplace(scale, grid, COVER_N, SeededRandom(22)) * grid
    x = 0.3  # released value: round(x/g) + noise, compared with the true x
    released = np.rint(x / grid) * grid + z
    half = rounded_ci95(laplace_ci95(scale), grid)
    covered = np.mean(np.abs(released - x) <= half)
    assert covered >= 0.95 - COVER_TOL
    if grid < 1e-2:  # fine grid: coverage is essentially exact
        assert covered <= 0.95 + COVER_TOL


@pytest.mark.slow
@pytest.mark.parametrize(("sigma", "grid"), [(1.0, 2.0**-10), (4.0, 0.5)])
def test_rounded_gaussian_ci95_coverage(sigma: float, grid: float) -> None:
    z = rounded_gaussian(sigma, grid, COVER_N, SeededRandom(23)) * grid
    half = rounded_ci95(gaussian_ci95(sigma), grid, value_on_grid=True)
    covered = np.mean(np.abs(z) <= half)
    assert covered >= 0.95 - COVER_TOL
    if grid < 1e-2:
        assert covered <= 0.95 + COVER_TOL
