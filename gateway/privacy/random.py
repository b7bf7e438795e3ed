"""Sources of random bits for noise sampling.

Every sampler in :mod:`gateway.privacy.samplers` takes a :class:`RandomSource`
and turns its raw 64-bit words into noise.  Keeping the source separate means
production code always draws from the operating system's CSPRNG while tests can
inject a reproducible generator, without the samplers knowing the difference.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "RandomSource",
    "SecureRandom",
    "SeededRandom",
    "default_random",
    "uniform_open",
]

_TWO_POW_M64 = 2.0**-64
# Largest float64 strictly below 1.0; the clamp target that keeps uniforms open.
_BELOW_ONE = float(np.nextafter(1.0, 0.0))


def _check_count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise ValueError(f"sample count must be an integer, got {n!r}")
    if n < 0:
        raise ValueError(f"sample count must be >= 0, got {n}")
    return int(n)


@runtime_checkable
class RandomSource(Protocol):
    """Anything that can produce uniformly random 64-bit words."""

    def words(self, n: int) -> np.ndarray:
        """Return ``n`` independent uniform ``uint64`` words."""
        ...


class SecureRandom:
    """Words from the operating system's CSPRNG (``os.urandom``).

    This is the production default.  Differential privacy proofs assume the
    noise is unpredictable to the analyst: numpy's PCG64 is a fast statistical
    generator whose state can be recovered from its outputs, after which every
    future noise value is known and can simply be subtracted (see Mironov,
    "On significance of the least significant bits for differential privacy",
    CCS 2012, for how far implementations drift from the textbook mechanism).
    The whole request is served by one ``os.urandom`` call, which keeps the
    cost of secure bytes at tens of millions of words per second.
    """

    def words(self, n: int) -> np.ndarray:
        n = _check_count(n)
        return np.frombuffer(os.urandom(8 * n), dtype=np.uint64)

    def __repr__(self) -> str:
        return "SecureRandom()"


class SeededRandom:
    """Reproducible words from numpy's PCG64.  FOR TESTS ONLY.

    Statistical tests need the same draws on every run so that a failure can
    be reproduced and a stated false-failure rate is meaningful.  PCG64 is not
    cryptographically secure: never use this class to protect real data.
    """

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._generator = np.random.Generator(np.random.PCG64(seed))

    def words(self, n: int) -> np.ndarray:
        n = _check_count(n)
        return self._generator.bit_generator.random_raw(n).astype(np.uint64, copy=False)

    def __repr__(self) -> str:
        return f"SeededRandom({self._seed})"


def uniform_open(rng: RandomSource, n: int) -> np.ndarray:
    """Return ``n`` float64 values uniform on the open interval (0, 1).

    Each value is ``(w + 1/2) * 2**-64`` for a fresh 64-bit word ``w``.  Using
    all 64 bits (rather than the usual 53) keeps full relative precision for
    small values, which is what inverse-CDF samplers need: ``-log(u)`` then
    reaches about 45 instead of 37, so the exponential/Laplace tails are cut
    off only at probability ~e^-45.  The ``+ 1/2`` keeps 0 out; converting a
    word close to 2**64 to float64 can round up to 2**64, so the result is
    clamped to the largest double below 1 to keep 1 out as well.
    """
    w = rng.words(_check_count(n))
    u = w.astype(np.float64)
    u += 0.5
    u *= _TWO_POW_M64
    np.minimum(u, _BELOW_ONE, out=u)
    return u


_DEFAULT = SecureRandom()


def default_random() -> RandomSource:
    """The process-wide secure source used when callers pass no ``rng``."""
    return _DEFAULT
