"""Noise calibration and accuracy statements computed from public parameters.

Everything here is a pure function of (epsilon, delta, sensitivity, grid):
never of the data, so explaining the cost and the expected error of a query
reveals nothing.
"""

from __future__ import annotations

import math

from scipy import special

__all__ = [
    "analytic_gaussian_sigma",
    "choose_grid",
    "discrete_laplace_ci95",
    "gaussian_ci95",
    "gaussian_delta",
    "grid_sensitivity",
    "laplace_ci95",
    "laplace_scale",
    "rounded_ci95",
]

Z95 = 1.959963984540054  # Φ⁻¹(0.975)

# choose_grid: the grid is at most 2^-GRID_FINENESS of both the noise scale and
# the sensitivity, and never finer than 2^-GRID_FLOOR of the sensitivity.
GRID_FINENESS = 10
GRID_FLOOR = 30


def _positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _delta(value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"delta must be a number, got {value!r}") from None
    if not 0.0 < v < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {value!r}")
    return v


# --------------------------------------------------------------------------- Laplace


def laplace_scale(epsilon: float, l1_sensitivity: float) -> float:
    """Laplace scale Δ1/ε that makes a statistic of L1 sensitivity Δ1 ε-DP.

    Dwork, McSherry, Nissim & Smith, "Calibrating noise to sensitivity", TCC 2006.
    """
    return _positive("l1_sensitivity", l1_sensitivity) / _positive("epsilon", epsilon)


# --------------------------------------------------------------------------- Gaussian


def _log_phi(x: float) -> float:
    return float(special.log_ndtr(x))


def gaussian_delta(sigma: float, epsilon: float, l2_sensitivity: float) -> float:
    """Exact δ(ε) of the Gaussian mechanism N(0, σ²) on a statistic of L2 sensitivity Δ.

    Balle & Wang, "Improving the Gaussian mechanism for differential privacy:
    analytical calibration and optimal denoising", ICML 2018, Theorem 8:
        δ(ε) = Φ(Δ/2σ − εσ/Δ) − e^ε Φ(−Δ/2σ − εσ/Δ).
    The second term is formed in log space so that large ε does not overflow.
    """
    sigma = _positive("sigma", sigma)
    eps = float(epsilon)
    if not math.isfinite(eps) or eps < 0.0:
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    delta2 = _positive("l2_sensitivity", l2_sensitivity)
    a = delta2 / (2.0 * sigma)
    b = eps * sigma / delta2
    first = math.exp(_log_phi(a - b))
    second = math.exp(min(eps + _log_phi(-a - b), 0.0))
    return min(1.0, max(0.0, first - second))


def analytic_gaussian_sigma(epsilon: float, delta: float, l2_sensitivity: float) -> float:
    """Smallest σ for which the Gaussian mechanism is (ε, δ)-DP, rounded up.

    Balle & Wang 2018, Algorithm 1 (the analytic Gaussian mechanism): δ(σ) from
    :func:`gaussian_delta` decreases in σ, so we bisect on log σ keeping the
    invariant "hi satisfies, lo violates" until they agree to ~1e-12 relative,
    and return ``hi``.  The answer therefore never undershoots (as computed in
    float64), and unlike the classical σ = Δ√(2 ln(1.25/δ))/ε it is valid for
    every ε > 0, not only ε < 1.
    """
    eps = _positive("epsilon", epsilon)
    target = _delta(delta)
    sens = _positive("l2_sensitivity", l2_sensitivity)

    def ok(sigma: float) -> bool:
        return gaussian_delta(sigma, eps, sens) <= target

    hi = sens
    while not ok(hi):
        hi *= 2.0
    lo = hi
    while ok(lo) and lo > 1e-300:
        lo /= 2.0
    if ok(lo):  # pragma: no cover - δ(σ) → 1 as σ → 0 for any δ < 1
        return lo
    while hi / lo - 1.0 > 1e-12:
        mid = math.sqrt(lo * hi)
        if mid <= lo or mid >= hi:
            break
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


# --------------------------------------------------------------------------- grids


def _pow2_floor(x: float) -> float:
    _, e = math.frexp(x)  # x = m * 2**e with 0.5 <= m < 1
    return math.ldexp(1.0, e - 1)


def _pow2_ceil(x: float) -> float:
    p = _pow2_floor(x)
    return p if p == x else 2.0 * p


def choose_grid(noise_scale: float, l1_sensitivity: float) -> float:
    """Power-of-two grid for rounded noise, from public parameters only.

    The grid g is the largest power of two that is at most 2^-10 of *both* the
    noise scale and the sensitivity, but never below Δ·2^-30:

    * g ≤ noise_scale/1024 keeps the rounding error (≤ g/2 on the noise, ≤ g/2
      on the value) three orders of magnitude below the noise;
    * g ≤ Δ/1024 keeps the price of rounding the true value onto the grid
      small: neighbours can move Δ + g apart (see :func:`grid_sensitivity`),
      i.e. at most 0.1% more noise.  Without it a small ε would give a grid
      coarser than Δ itself;
    * g ≥ Δ·2^-30 bounds every value in grid units by 2^30 per unit of
      sensitivity, so sums over billions of privacy units stay well inside
      int64 even at enormous ε.

    Integer-valued statistics with integer sensitivity can simply use grid 1
    (their values are already on the grid, so no sensitivity is added).
    """
    scale = _positive("noise_scale", noise_scale)
    sens = _positive("l1_sensitivity", l1_sensitivity)
    fine = _pow2_floor(min(scale, sens) * 2.0**-GRID_FINENESS)
    floor = _pow2_ceil(sens * 2.0**-GRID_FLOOR)
    return max(fine, floor)


def grid_sensitivity(
    sensitivity: float, grid: float, coordinates: int = 1, norm: str = "l1"
) -> float:
    """Sensitivity after the true values are rounded to the grid.

    Rounding each coordinate moves it by at most g/2, so two neighbouring
    statistics that differed by Δ can differ by up to Δ + g per changed
    coordinate pair: Δ1 + coordinates·g in L1, Δ2 + √coordinates·g in L2, where
    ``coordinates`` is how many outputs one privacy unit can change (its
    max_groups).  Pass ``coordinates=0`` when the values already lie on the
    grid (integer counts with grid 1).
    """
    sens = _positive("sensitivity", sensitivity)
    g = _positive("grid", grid)
    if isinstance(coordinates, bool) or not isinstance(coordinates, int) or coordinates < 0:
        raise ValueError(f"coordinates must be an integer >= 0, got {coordinates!r}")
    if norm == "l1":
        return sens + coordinates * g
    if norm == "l2":
        return sens + math.sqrt(coordinates) * g
    raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")


# --------------------------------------------------------------------------- accuracy


def laplace_ci95(scale: float) -> float:
    """Half-width t with P(|Z| ≤ t) = 0.95 for Z ~ Laplace(scale): scale·ln 20."""
    return _positive("scale", scale) * math.log(20.0)


def _two_sided_geometric_tail(k: int, alpha: float) -> float:
    """P(|X| > k) = 2 α^(k+1) / (1 + α) for P(X = j) ∝ α^|j|."""
    return 2.0 * math.exp((k + 1) * math.log(alpha)) / (1.0 + alpha)


def discrete_laplace_ci95(scale: float) -> float:
    """Smallest integer k with P(|X| ≤ k) ≥ 0.95 for the two-sided geometric.

    With α = e^(-1/scale), P(|X| ≤ k) = 1 − 2α^(k+1)/(1+α) exactly, so the
    closed-form candidate is checked against that CDF and nudged to the
    smallest integer that really reaches 95%.
    """
    scale = _positive("scale", scale)
    alpha = math.exp(-1.0 / scale)
    if alpha == 0.0 or _two_sided_geometric_tail(0, alpha) <= 0.05:
        return 0.0
    k = max(0, math.ceil(math.log(0.025 * (1.0 + alpha)) / math.log(alpha) - 1.0))
    while k > 0 and _two_sided_geometric_tail(k - 1, alpha) <= 0.05:
        k -= 1
    while _two_sided_geometric_tail(k, alpha) > 0.05:
        k += 1
    return float(k)


def gaussian_ci95(sigma: float) -> float:
    """Half-width 1.959964·σ of the central 95% interval of N(0, σ²)."""
    return Z95 * _positive("sigma", sigma)


def rounded_ci95(half_width: float, grid: float, value_on_grid: bool = False) -> float:
    """95% half-width after rounding the noise (and possibly the value) to the grid.

    Rounding the noise moves it by at most g/2, so |round(Z/g)·g| ≤ |Z| + g/2;
    if the true value was also rounded onto the grid the released answer is
    within |Z| + g of it.  Both are conservative: coverage stays ≥ 95%.
    """
    t = float(half_width)
    if not math.isfinite(t) or t < 0.0:
        raise ValueError(f"half_width must be a finite number >= 0, got {half_width!r}")
    g = _positive("grid", grid)
    return t + (0.5 * g if value_on_grid else g)
