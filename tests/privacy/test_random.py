"""Random sources and the open-interval uniform they feed to every sampler."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.privacy.random import (
    RandomSource,
    SecureRandom,
    SeededRandom,
    default_random,
    uniform_open,
)

from .fakes import FixedWords


def test_sources_satisfy_protocol() -> None:
    assert isinstance(SecureRandom(), RandomSource)
    assert isinstance(SeededRandom(0), RandomSource)
    assert isinstance(default_random(), SecureRandom)
    assert default_random() is default_random()


@pytest.mark.parametrize("source", [SecureRandom(), SeededRandom(3)])
def test_words_are_uint64(source: RandomSource) -> None:
    w = source.words(1000)
    assert w.dtype == np.uint64 and w.shape == (1000,)
    assert source.words(0).shape == (0,)
    # Top bits are used for signs: they must be balanced (6-sigma band).
    top = (w >> np.uint64(63)).astype(int).mean()
    assert abs(top - 0.5) < 6 * 0.5 / np.sqrt(1000)


def test_seeded_is_reproducible_and_secure_is_not() -> None:
    assert np.array_equal(SeededRandom(42).words(100), SeededRandom(42).words(100))
    assert not np.array_equal(SeededRandom(42).words(100), SeededRandom(43).words(100))
    s = SecureRandom()
    assert not np.array_equal(s.words(8), s.words(8))  # collision probability 2^-512


def test_uniform_open_never_hits_the_endpoints() -> None:
    u = uniform_open(FixedWords([0, 1, 2**63, 2**64 - 1, 2**64 - 1024]), 5)
    assert np.all(u > 0.0) and np.all(u < 1.0)
    assert u[0] == 2.0**-65  # small values keep full precision
    assert u[1] == 1.5 * 2.0**-64
    assert u[2] == 0.5 + 2.0**-65 or u[2] == 0.5


@pytest.mark.slow
def test_uniform_open_is_uniform() -> None:
    u = uniform_open(SeededRandom(7), 1_000_000)
    assert u.dtype == np.float64
    counts, _ = np.histogram(u, bins=20, range=(0.0, 1.0))
    expected = u.size / 20
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 60.0  # 19 dof: P(chi2 > 60) ~ 3e-6
    assert abs(u.mean() - 0.5) < 6 * np.sqrt(1 / 12 / u.size)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None, True])
def test_bad_counts_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        SecureRandom().words(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        uniform_open(SeededRandom(0), bad)  # type: ignore[arg-type]
