"""Distribution tests of the integer samplers.

Moment checks use a 6-standard-error band (false-failure rate ~2e-9 each under
a normal approximation) with the fourth moment supplying the standard error of
the variance; goodness of fit uses chi-square with a p-value threshold of 1e-6.
All draws come from fixed seeds, so the tests are deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gateway.privacy.random import SeededRandom
from gateway.privacy.samplers import (
    MAX_DISCRETE_SCALE,
    bernoulli,
    discrete_laplace,
    rounded_gaussian,
    rounded_laplace,
)

from .fakes import FixedWords

N = 500_000


def _assert_moments(x: np.ndarray, mean: float, var: float, fourth: float) -> None:
    se_mean = math.sqrt(var / x.size)
    se_var = math.sqrt((fourth - var**2) / x.size)
    assert abs(x.mean() - mean) < 6 * se_mean, (x.mean(), mean)
    assert abs(x.var() - var) < 6 * se_var, (x.var(), var)


def _chi_square_pvalue(observed: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square p-value after pooling cells with expected count < 5."""
    expected = probs * observed.sum()
    keep = expected >= 5
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] < 5:  # fold the pooled tail into the smallest kept cell
        i = int(np.argmin(exp[:-1]))
        obs[i] += obs[-1]
        exp[i] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    exp *= obs.sum() / exp.sum()
    return float(stats.chisquare(obs, exp).pvalue)


# --------------------------------------------------------------------------- discrete Laplace


def _two_sided_geometric_pmf(k: np.ndarray, scale: float) -> np.ndarray:
    alpha = math.exp(-1.0 / scale)
    return (1 - alpha) / (1 + alpha) * alpha ** np.abs(k)


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0, 50.0])
def test_discrete_laplace_pmf_and_moments(scale: float) -> None:
    x = discrete_laplace(scale, N, SeededRandom(11))
    assert x.dtype == np.int64 and x.shape == (N,)
    alpha = math.exp(-1.0 / scale)
    var = 2 * alpha / (1 - alpha) ** 2
    # Fourth moment of the two-sided geometric: 2α(1 + 10α + α²)/(1 − α)^4.
    fourth = 2 * alpha * (1 + 10 * alpha + alpha**2) / (1 - alpha) ** 4
    _assert_moments(x.astype(np.float64), 0.0, var, fourth)
    reach = int(40 * scale) + 2
    support = np.arange(-reach, reach + 1)
    observed = np.bincount(x - x.min(), minlength=0)
    full = np.zeros(len(support), dtype=np.int64)
    lo = x.min() + reach
    full[lo : lo + len(observed)] = observed
    probs = _two_sided_geometric_pmf(support, scale)
    assert _chi_square_pvalue(full, probs / probs.sum()) > 1e-6


def test_discrete_laplace_tail_is_cut_at_about_45_scales() -> None:
    # Word 0 gives the smallest uniform, 2^-65: the largest geometric possible.
    x = discrete_laplace(10.0, 1, FixedWords([0, 2**64 - 1]))
    assert x[0] == math.floor(10.0 * 65 * math.log(2))


# --------------------------------------------------------------------------- rounded noise


@pytest.mark.parametrize(("scale", "grid"), [(1.0, 2.0**-10), (3.0, 0.5), (100.0, 1.0)])
def test_rounded_laplace_matches_rounded_distribution(scale: float, grid: float) -> None:
    k = rounded_laplace(scale, grid, N, SeededRandom(12))
    assert k.dtype == np.int64
    z = k * grid
    # Continuous moments (2b², 24b⁴) plus rounding; tolerance absorbs the g²/12.
    _assert_moments(z, 0.0, 2 * scale**2 + grid**2 / 12, 24 * scale**4 * 1.1)
    # Bins of the rounded variable vs the exact Laplace mass of each bin.
    edges = np.linspace(-6 * scale, 6 * scale, 49)
    edges = np.unique(np.round(edges / grid)) * grid - grid / 2
    cells = np.concatenate([[-np.inf], edges, [np.inf]])
    observed, _ = np.histogram(z, bins=cells)
    probs = np.diff(stats.laplace.cdf(cells, scale=scale))
    assert _chi_square_pvalue(observed, probs) > 1e-6


@pytest.mark.parametrize(("sigma", "grid"), [(1.0, 2.0**-10), (3.0, 0.5), (100.0, 1.0)])
def test_rounded_gaussian_matches_rounded_distribution(sigma: float, grid: float) -> None:
    k = rounded_gaussian(sigma, grid, N, SeededRandom(13))
    assert k.dtype == np.int64
    z = k * grid
    _assert_moments(z, 0.0, sigma**2 + grid**2 / 12, 3 * sigma**4 * 1.1)
    edges = np.linspace(-5 * sigma, 5 * sigma, 41)
    edges = np.unique(np.round(edges / grid)) * grid - grid / 2
    cells = np.concatenate([[-np.inf], edges, [np.inf]])
    observed, _ = np.histogram(z, bins=cells)
    probs = np.diff(stats.norm.cdf(cells, scale=sigma))
    assert _chi_square_pvalue(observed, probs) > 1e-6


def test_rounded_samplers_are_symmetric_in_the_tails() -> None:
    """Sign bit + lower-tail inverse CDF: both tails reach the same depth."""
    g = rounded_gaussian(1.0, 2.0**-20, 2, FixedWords([0, 2**63]))
    assert g[0] == -g[1] and g[0] * 2.0**-20 > 9.0
    lap = rounded_laplace(1.0, 2.0**-20, 2, FixedWords([0, 2**63]))
    assert lap[0] == -lap[1] and lap[0] * 2.0**-20 > 43.0


def test_samplers_are_reproducible_with_a_seed() -> None:
    for fn in (
        lambda r: discrete_laplace(2.0, 100, r),
        lambda r: rounded_laplace(2.0, 0.125, 100, r),
        lambda r: rounded_gaussian(2.0, 0.125, 100, r),
    ):
        assert np.array_equal(fn(SeededRandom(5)), fn(SeededRandom(5)))
    assert discrete_laplace(2.0, 0, SeededRandom(0)).shape == (0,)
    assert discrete_laplace(2.0, 10).dtype == np.int64  # default secure source


# --------------------------------------------------------------------------- Bernoulli


def test_bernoulli() -> None:
    p = np.array([0.0, 1.0, 0.25, 1e-300])
    out = bernoulli(np.tile(p, (N // 4, 1)), SeededRandom(14))
    assert out.dtype == bool and out.shape == (N // 4, 4)
    assert not out[:, 0].any() and out[:, 1].all() and not out[:, 3].any()
    freq = out[:, 2].mean()
    assert abs(freq - 0.25) < 6 * math.sqrt(0.25 * 0.75 / (N // 4))
    assert bernoulli(np.array([]), SeededRandom(0)).shape == (0,)


@pytest.mark.parametrize("bad", [[-0.1], [1.5], [float("nan")]])
def test_bernoulli_rejects_bad_probabilities(bad: list[float]) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bernoulli(np.array(bad), SeededRandom(0))


# --------------------------------------------------------------------------- validation

BAD = [0.0, -1.0, float("nan"), float("inf"), "x", None]


@pytest.mark.parametrize("bad", BAD)
def test_samplers_reject_bad_scales(bad: object) -> None:
    rng = SeededRandom(0)
    with pytest.raises(ValueError):
        discrete_laplace(bad, 10, rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rounded_laplace(bad, 0.5, 10, rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rounded_gaussian(bad, 0.5, 10, rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rounded_laplace(1.0, bad, 10, rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rounded_gaussian(1.0, bad, 10, rng)  # type: ignore[arg-type]


def test_samplers_reject_bad_counts_and_extreme_ratios() -> None:
    rng = SeededRandom(0)
    with pytest.raises(ValueError):
        discrete_laplace(1.0, -1, rng)
    with pytest.raises(ValueError):
        rounded_gaussian(1.0, 0.5, 2.5, rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exceeds"):
        discrete_laplace(MAX_DISCRETE_SCALE * 2, 1, rng)
    with pytest.raises(ValueError, match="grid"):
        rounded_laplace(1.0, 2.0**-50, 1, rng)
