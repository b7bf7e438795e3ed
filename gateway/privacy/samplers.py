"""Vectorised noise samplers that are safe against floating-point attacks.

All samplers return *integers*: either integer noise for integer-valued
statistics, or noise measured in units of a fixed power-of-two ``grid``.  The
caller adds them to a value that is itself an integer (or rounded to the
grid), so the set of possible outputs never depends on the true value.
Textbook floating-point Laplace noise leaks the true value through which
doubles can occur (Mironov, "On significance of the least significant bits for
differential privacy", CCS 2012); integer outputs close that channel.

Everything is built from :func:`gateway.privacy.random.uniform_open` over
64-bit words, one vectorised pass per call, so a million samples including
the secure bytes take a few tens of milliseconds.

Finite precision, stated once for all samplers here.  (1) Uniforms are
``(w + 1/2) 2^-64``, so ``-log(u) <= 45.1``: exponential, Laplace and
geometric tails are cut at about 45 scales and Gaussian tails at about 9.2
sigma.  The removed mass (~e^-44, ~1e-19) is an additive delta far below any
delta we are asked for.  (2) Bin edges of the inverse-CDF maps are computed in
float64 with a few ulps of error, so the probability of an output ``k`` may be
off by a relative ``~|k| 2^-50``; for privacy this is an additive epsilon of
at most ``90 * max|k| * 2^-50`` which the scale caps below keep far under the
smallest epsilon the gateway allows (1e-4).
"""

from __future__ import annotations

import numpy as np
from scipy import special

from gateway.privacy.calibration import _positive
from gateway.privacy.random import RandomSource, _check_count, default_random, uniform_open

__all__ = [
    "MAX_DISCRETE_SCALE",
    "MAX_GRID_RATIO",
    "bernoulli",
    "discrete_laplace",
    "rounded_gaussian",
    "rounded_laplace",
]

# Largest discrete-Laplace scale accepted (2^24 ~ 1.7e7 integer units): with
# outputs up to 45 * 2^24 the float error bound above stays below 7e-7.
MAX_DISCRETE_SCALE = float(2**24)
# Largest ratio noise_scale / grid accepted by the rounded samplers; keeps the
# grid-unit outputs (<= 45 * ratio) exactly representable and well inside int64.
MAX_GRID_RATIO = float(2**40)

_LOW63 = np.uint64(2**63 - 1)
_SHIFT63 = np.uint64(63)
_TWO_POW_M63 = 2.0**-63
_BELOW_ONE = float(np.nextafter(1.0, 0.0))


def _check_ratio(scale: float, grid: float, what: str) -> None:
    if scale / grid > MAX_GRID_RATIO:
        raise ValueError(
            f"{what} / grid = {scale / grid:.3g} exceeds {MAX_GRID_RATIO:.3g}; "
            "use a coarser grid (see calibration.choose_grid)"
        )


def _sign_and_uniform(rng: RandomSource, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Split each 64-bit word into a random sign and a 63-bit open uniform.

    One word per sample halves the secure bytes needed by symmetric
    distributions; 63 bits still give ``-log(u)`` up to ~44.
    """
    w = rng.words(n)
    negative = (w >> _SHIFT63).astype(bool)
    u = (w & _LOW63).astype(np.float64)
    u += 0.5
    u *= _TWO_POW_M63
    np.minimum(u, _BELOW_ONE, out=u)
    return negative, u


def discrete_laplace(scale: float, n: int, rng: RandomSource | None = None) -> np.ndarray:
    """Two-sided geometric noise: ``P(k) ∝ exp(-|k| / scale)`` on the integers.

    For integer statistics with integer sensitivity Δ, ``scale = Δ / ε`` gives
    ε-DP (Ghosh, Roughgarden & Sundararajan, "Universally utility-maximizing
    privacy mechanisms", STOC 2009).  Sampled as ``G1 - G2`` with independent
    geometrics ``G = floor(scale * E)``, ``E = -log(U) ~ Exp(1)``: this is the
    exact inverse CDF because ``P(G >= k) = P(E >= k / scale) = exp(-k / scale)``,
    and the difference of two such geometrics is the two-sided geometric
    (Inusah & Kozubowski, "A discrete analogue of the Laplace distribution",
    2006).  Finite precision truncates each geometric at ~45 scales (see the
    module docstring): |k| ≲ 45·scale, tail mass ≈ e^-44, a negligible δ.
    """
    scale = _positive("scale", scale)
    if scale > MAX_DISCRETE_SCALE:
        raise ValueError(
            f"discrete Laplace scale {scale:.3g} exceeds {MAX_DISCRETE_SCALE:.3g}; "
            "use rounded_laplace on a coarser grid instead"
        )
    n = _check_count(n)
    rng = rng if rng is not None else default_random()
    e = uniform_open(rng, 2 * n)
    np.log(e, out=e)
    e *= -scale
    np.floor(e, out=e)
    g = e.astype(np.int64)
    return g[:n] - g[n:]


def rounded_laplace(
    scale: float, grid: float, n: int, rng: RandomSource | None = None
) -> np.ndarray:
    """Laplace(scale) noise rounded to the nearest multiple of ``grid``, in grid units.

    Releasing ``a + k`` where ``a = x / grid`` is an integer and
    ``k = round(Z / grid)``, ``Z ~ Laplace(scale)``, equals ``round((a·grid + Z) / grid)``:
    post-processing of the continuous Laplace mechanism (Dwork, McSherry, Nissim &
    Smith 2006) applied to ``a·grid``, so it keeps its ε, while the output set (the
    integers) no longer depends on x, which defeats Mironov's attack.  When x is
    not already on the grid, rounding it first can move neighbours ``grid`` further
    apart: calibrate with :func:`gateway.privacy.calibration.grid_sensitivity`.
    """
    scale = _positive("scale", scale)
    grid = _positive("grid", grid)
    _check_ratio(scale, grid, "scale")
    n = _check_count(n)
    rng = rng if rng is not None else default_random()
    negative, u = _sign_and_uniform(rng, n)
    np.log(u, out=u)
    u *= -(scale / grid)  # |Z| / grid, exponential with mean scale / grid
    np.rint(u, out=u)
    k = u.astype(np.int64)
    np.negative(k, out=k, where=negative)
    return k


def rounded_gaussian(
    sigma: float, grid: float, n: int, rng: RandomSource | None = None
) -> np.ndarray:
    """N(0, sigma²) noise rounded to the nearest multiple of ``grid``, in grid units.

    Same post-processing argument as :func:`rounded_laplace`, for the Gaussian
    mechanism.  ``|Z| = -sigma * Φ⁻¹(U / 2)`` is the exact inverse CDF of the
    half-normal (``P(|Z| > t) = 2 Φ(-t / sigma)``); a separate random bit gives
    the sign.  Working from the lower tail of Φ keeps full precision out to
    ~9.2 sigma in *both* tails, unlike ``Φ⁻¹(U)`` which loses the upper tail to
    the spacing of doubles near 1.
    """
    sigma = _positive("sigma", sigma)
    grid = _positive("grid", grid)
    _check_ratio(sigma, grid, "sigma")
    n = _check_count(n)
    rng = rng if rng is not None else default_random()
    negative, u = _sign_and_uniform(rng, n)
    u *= 0.5
    z = special.ndtri(u)  # <= 0
    z *= -(sigma / grid)
    np.rint(z, out=z)
    k = z.astype(np.int64)
    np.negative(k, out=k, where=negative)
    return k


def bernoulli(p: np.ndarray, rng: RandomSource | None = None) -> np.ndarray:
    """Independent coin flips, ``True`` with probability ``p[i]`` (same shape as ``p``).

    ``u < p`` with ``u`` on the open unit interval at 2^-64 resolution, so a
    probability of exactly 0 never fires, 1 always fires, and tiny
    probabilities such as partition-selection's δ are honoured.
    """
    probs = np.asarray(p, dtype=np.float64)
    if probs.size and not (np.all(probs >= 0.0) and np.all(probs <= 1.0)):
        raise ValueError("bernoulli probabilities must lie in [0, 1] (and not be NaN)")
    rng = rng if rng is not None else default_random()
    u = uniform_open(rng, probs.size).reshape(probs.shape)
    return u < probs
