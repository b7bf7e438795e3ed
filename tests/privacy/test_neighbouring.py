"""Empirical privacy of every mechanism on neighbouring datasets.

Each test releases a value x and its neighbour x + Δ many times with a fixed
SeededRandom, bins the outputs, and bounds the privacy loss from below with
simultaneous Clopper-Pearson intervals (see ``dp_check``): a correct mechanism
fails with probability < 1e-6 over the seed.  Every test has a companion that
runs the identical check on a mechanism with *half* the noise (or twice the ε
for partition selection) and asserts the check catches it, so the checks are
known to have teeth.
"""

from __future__ import annotations

import numpy as np
import pytest

from gateway.privacy.calibration import (
    analytic_gaussian_sigma,
    choose_grid,
    grid_sensitivity,
    laplace_scale,
)
from gateway.privacy.partition_selection import keep_probabilities, select_partitions
from gateway.privacy.random import SeededRandom
from gateway.privacy.samplers import discrete_laplace, rounded_gaussian, rounded_laplace

from .dp_check import edges_with_tails, hockey_stick_lower_bound, privacy_loss_lower_bound

N = 400_000
HALF_NOISE = pytest.param(0.5, False, id="half-noise-detected")
FULL_NOISE = pytest.param(1.0, True, id="calibrated")


@pytest.mark.slow
@pytest.mark.parametrize(("epsilon", "sensitivity"), [(1.0, 1), (0.5, 3)])
@pytest.mark.parametrize(("noise_factor", "private"), [FULL_NOISE, HALF_NOISE])
def test_discrete_laplace_neighbours(
    epsilon: float, sensitivity: int, noise_factor: float, private: bool
) -> None:
    scale = laplace_scale(epsilon, sensitivity) * noise_factor
    x = 7  # any integer; the neighbour is x + Δ
    a = x + discrete_laplace(scale, N, SeededRandom(1))
    b = x + sensitivity + discrete_laplace(scale, N, SeededRandom(2))
    reach = int(6 * laplace_scale(epsilon, sensitivity))
    edges = edges_with_tails(np.arange(x - reach, x + sensitivity + reach + 1) - 0.5)
    loss = privacy_loss_lower_bound(a, b, edges)
    assert (loss <= epsilon) is private, f"privacy-loss lower bound {loss:.3f} vs eps {epsilon}"


@pytest.mark.slow
@pytest.mark.parametrize("fixed_grid", [None, 0.25])
@pytest.mark.parametrize(("noise_factor", "private"), [FULL_NOISE, HALF_NOISE])
def test_rounded_laplace_neighbours(
    fixed_grid: float | None, noise_factor: float, private: bool
) -> None:
    epsilon, sensitivity = 1.0, 1.0
    grid = fixed_grid or choose_grid(laplace_scale(epsilon, sensitivity), sensitivity)
    # x is off the grid, so the release first rounds it: calibrate for Δ + grid.
    scale = laplace_scale(epsilon, grid_sensitivity(sensitivity, grid)) * noise_factor
    x, x2 = 0.3, 0.3 + sensitivity

    def release(value: float, seed: int) -> np.ndarray:
        k = np.rint(value / grid) + rounded_laplace(scale, grid, N, SeededRandom(seed))
        return k * grid

    edges = edges_with_tails(np.arange(-4.0, 5.6, 0.25) + 1e-9)
    loss = privacy_loss_lower_bound(release(x, 3), release(x2, 4), edges)
    assert (loss <= epsilon) is private, f"privacy-loss lower bound {loss:.3f} vs eps {epsilon}"


@pytest.mark.slow
@pytest.mark.parametrize(("noise_factor", "private"), [FULL_NOISE, HALF_NOISE])
def test_rounded_gaussian_neighbours(noise_factor: float, private: bool) -> None:
    epsilon, delta, sensitivity = 1.0, 0.01, 1.0
    grid = choose_grid(analytic_gaussian_sigma(epsilon, delta, sensitivity), sensitivity)
    sigma = analytic_gaussian_sigma(epsilon, delta, grid_sensitivity(sensitivity, grid, norm="l2"))
    sigma *= noise_factor
    x, x2 = -0.4, -0.4 + sensitivity

    def release(value: float, seed: int) -> np.ndarray:
        k = np.rint(value / grid) + rounded_gaussian(sigma, grid, N, SeededRandom(seed))
        return k * grid

    edges = edges_with_tails(np.arange(-6.0, 6.0, 0.2) + 1e-9)
    hs = hockey_stick_lower_bound(release(x, 5), release(x2, 6), edges, epsilon)
    assert (hs <= delta) is private, f"hockey-stick lower bound {hs:.4f} vs delta {delta}"


def _keep_samples(count: int, epsilon: float, delta: float, seed: int) -> np.ndarray:
    counts = np.full(200_000, count, dtype=np.int64)
    return select_partitions(counts, epsilon, delta, 1, SeededRandom(seed)).astype(np.int64)


@pytest.mark.slow
@pytest.mark.parametrize(("epsilon_factor", "private"), [(1.0, True), (2.0, False)])
def test_partition_selection_neighbours(epsilon_factor: float, private: bool) -> None:
    """n vs n−1 units for every n up to the always-keep count."""
    epsilon, delta = 1.0, 0.02
    used = epsilon * epsilon_factor  # the "broken" mechanism spends twice the ε it claims
    n_max = len(keep_probabilities(used, delta)) + 1
    edges = np.array([-0.5, 0.5, 1.5])
    worst = 0.0
    for n in range(1, n_max):
        a = _keep_samples(n, used, delta, seed=100 + n)
        b = _keep_samples(n - 1, used, delta, seed=200 + n)
        # One check per n: 1e-6 / n_max each keeps the overall rate below 1e-6.
        hs = hockey_stick_lower_bound(a, b, edges, epsilon, false_failure=1e-6 / n_max)
        worst = max(worst, hs)
    assert (worst <= delta) is private, f"hockey-stick lower bound {worst:.4f} vs delta {delta}"


@pytest.mark.slow
@pytest.mark.parametrize(("epsilon_factor", "private"), [(1.0, True), (2.0, False)])
def test_partition_selection_unit_in_two_partitions(epsilon_factor: float, private: bool) -> None:
    """max_partitions=2: removing a unit lowers two counts; the joint release stays (ε, δ)-DP."""
    epsilon, delta, l0 = 1.0, 0.02, 2
    used = epsilon * epsilon_factor
    m = 200_000
    edges = np.arange(-0.5, 4.0)
    worst = 0.0
    pairs = [(1, 3), (3, 5), (6, 9)]
    for i, (n1, n2) in enumerate(pairs):
        outcomes = []
        for shift, seed in ((0, 300 + i), (1, 400 + i)):
            counts = np.array([n1 - shift, n2 - shift] * m, dtype=np.int64)
            kept = select_partitions(counts, used, delta, l0, SeededRandom(seed)).reshape(m, 2)
            outcomes.append(2 * kept[:, 0].astype(np.int64) + kept[:, 1])
        hs = hockey_stick_lower_bound(
            outcomes[0], outcomes[1], edges, epsilon, false_failure=1e-6 / len(pairs)
        )
        worst = max(worst, hs)
    assert (worst <= delta) is private, f"hockey-stick lower bound {worst:.4f} vs delta {delta}"
