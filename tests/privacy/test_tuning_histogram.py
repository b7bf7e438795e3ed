"""The tuning histogram (gateway/query/tuning.py) on neighbouring datasets.

Adding a unit adds one to exactly one cell of the histogram of (rows per unit,
mean |value|), so the release of that cell is what differs: sampled many times
with a SeededRandom through the same function the gateway calls, its privacy loss
must stay below the ε the charge records (DiscreteLaplaceEvent(ε, 1)); the
companion run with half the noise must be caught.  The chosen bound is
post-processing of the histogram.
"""

from __future__ import annotations

import numpy as np
import pytest

from gateway.engine.base import ResultSet
from gateway.privacy.random import SeededRandom
from gateway.query.tuning import TuningNoise, noisy_histogram

from .dp_check import edges_with_tails, privacy_loss_lower_bound

N = 60_000
EPSILON = 1.0


def _release(exact: list[int], tuning: TuningNoise, seed: int) -> np.ndarray:
    result = ResultSet(("__dp_bin", "__dp_n"), ("int", "int"),
                       (list(range(len(exact))), exact))
    rng = SeededRandom(seed)
    return np.asarray([noisy_histogram(result, tuning, rng)[1, 0, 0] for _ in range(N)])


@pytest.mark.slow
@pytest.mark.parametrize(("noise_factor", "private"), [
    pytest.param(1.0, True, id="calibrated"),
    pytest.param(0.5, False, id="half-noise-detected")])
def test_tuning_histogram_neighbours(noise_factor: float, private: bool) -> None:
    # The sampler is given scale 1/ε'; "half the noise" is ε' = 2ε under a claim of ε.
    tuning = TuningNoise(EPSILON / noise_factor, (1, 2, 4), cells=1)
    assert tuning.event().epsilon == EPSILON / noise_factor
    d = [30, 12, 4, 1]  # units per row-count bin: 1, 2-3, 4, more (value bins: one)
    d_prime = [30, 13, 4, 1]  # one more unit, with 2-3 rows
    a = _release(d, tuning, 1)
    b = _release(d_prime, tuning, 2)
    # Counts are clipped at 0 (post-processing); bin 1 is far from it.
    edges = edges_with_tails(np.arange(12 - 10, 13 + 10 + 1) - 0.5)
    loss = privacy_loss_lower_bound(a, b, edges)
    assert (loss <= EPSILON) is private, f"privacy-loss lower bound {loss:.3f} vs eps {EPSILON}"


def test_every_unit_falls_in_exactly_one_cell() -> None:
    """The sensitivity argument: cells partition the units (rows bins x value bins)."""
    tuning = TuningNoise(1.0, (1, 2, 4, 8), cells=1, value_column="__dp_v0", value_bound=10.0)
    assert tuning.bins == tuning.row_bins * tuning.value_bins == 5 * 20
    result = ResultSet(("__dp_bin", "__dp_n"), ("int", "int"), ([0, 99], [5, 7]))
    hist = noisy_histogram(result, tuning, SeededRandom(3))
    assert hist.shape == (5, 20, 1) and (hist >= 0).all()


def test_cells_with_a_groups_axis() -> None:
    """With L0 tuned too, a unit is in one (rows, value, groups) cell."""
    tuning = TuningNoise(1.0, (1, 2, 4), cells=1, groups=(1, 2, 4, 8), group_keys=("k",),
                         groups_ceiling=8)
    assert (tuning.row_bins, tuning.value_bins, tuning.group_bins) == (4, 1, 5)
    result = ResultSet(("__dp_bin", "__dp_n"), ("int", "int"), ([0, 19], [5, 7]))
    hist = noisy_histogram(result, tuning, SeededRandom(4))
    assert hist.shape == (4, 1, 5)
