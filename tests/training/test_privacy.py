"""DP-SGD's privacy mechanics, checked through the trainer's test hook.

Statistical tests use a seeded generator; each states its false-failure rate
for a fresh seed (they are deterministic as written).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.privacy.calibration import grid_sensitivity
from gateway.privacy.random import SeededRandom
from gateway.training.dpsgd import (
    SGDConfig,
    StepInfo,
    noise_grid,
    poisson_sample,
    prepare_units,
    train,
)
from gateway.training.models import Network, Params, flatten, gradients, network_for


def _data(units: int, rows_per_unit: np.ndarray, inputs: int, outputs: int, seed: int = 0,
          binary: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rs = np.random.default_rng(seed)
    ids = np.repeat(np.arange(units), rows_per_unit)
    x = rs.uniform(-1, 1, (ids.shape[0], inputs))
    if outputs == 1:
        y = (rs.random((ids.shape[0], 1)) < 0.5).astype(float) if binary else \
            rs.uniform(-1, 1, (ids.shape[0], 1))
    else:
        y = np.eye(outputs)[rs.integers(0, outputs, ids.shape[0])]
    return ids, x, y


def _brute_unit_gradient(net: Network, params: Params, x: np.ndarray, y: np.ndarray
                         ) -> np.ndarray:
    """Σ of per-row gradients of one unit, one row at a time (no tricks)."""
    total = None
    for i in range(x.shape[0]):
        acts, z = net.forward(params, x[i:i + 1])
        g = flatten(gradients(net, params, acts,
                              net.backward(params, acts, net.output_delta(z, y[i:i + 1]))))
        total = g if total is None else total + g
    assert total is not None
    return total


@pytest.mark.parametrize(("model", "hidden", "outputs"), [
    ("logistic", (), 1), ("linear", (), 1), ("softmax", (), 3), ("mlp", (8,), 3),
    ("mlp", (6, 5), 1),
])
def test_per_unit_clipping_holds_on_every_step(model: str, hidden: tuple[int, ...],
                                               outputs: int) -> None:
    counts = np.random.default_rng(1).integers(1, 12, 300)
    ids, x, y = _data(300, counts, 5, outputs, binary=model != "linear")
    rng = SeededRandom(3)
    data = prepare_units(ids, x, y, 4, rng)
    net = network_for(model, 5, outputs, outputs == 1 and model != "linear", hidden)
    clip = 0.3
    cfg = SGDConfig(1.0, 0.1, 15, clip, 30.0, learning_rate=0.5)
    seen: list[StepInfo] = []
    train(net, net.init(np.random.default_rng(0)), data, cfg, rng, hook=seen.append)
    assert len(seen) == 15
    for info in seen:
        assert np.all(info.norms * info.scale <= clip * (1 + 1e-9))
        assert np.any(info.norms > clip)  # clipping is active, so the check means something
        # The vectorised per-unit norms and clipped sum equal a row-by-row computation.
        expected_sum = np.zeros(sum(p.size for p in info.params))
        for k, u in enumerate(info.units):
            rows = slice(data.starts[u], data.starts[u] + data.counts[u])
            g = _brute_unit_gradient(net, info.params, data.x[rows].astype(float),
                                     data.y[rows])
            assert np.linalg.norm(g) == pytest.approx(info.norms[k], rel=1e-9, abs=1e-12)
            expected_sum += g * min(1.0, clip / np.linalg.norm(g))
        assert np.allclose(flatten(info.clipped_sum), expected_sum, atol=1e-10)


def test_a_unit_with_many_rows_counts_no_more_than_one_with_few() -> None:
    counts = np.array([1] * 50 + [500])  # the last unit has 500 rows
    ids, x, y = _data(51, counts, 4, 1)
    y[:] = 1.0
    x[ids == 50] = 1.0  # all its rows push the same way, so its raw gradient is huge
    rng = SeededRandom(5)
    data = prepare_units(ids, x, y, 3, rng)
    assert data.counts.tolist() == [1] * 50 + [3]  # at most max_rows_per_unit rows kept
    net = network_for("logistic", 4, 1, True)
    seen: list[StepInfo] = []
    train(net, net.init(np.random.default_rng(0)), data, SGDConfig(1.0, 1.0, 3, 1.0, 51.0),
          rng, hook=seen.append)
    for info in seen:
        contribution = info.norms * info.scale
        heavy = int(np.flatnonzero(info.units == 50)[0])
        assert contribution[heavy] <= 1.0 + 1e-9
        assert contribution[heavy] <= contribution.max() + 1e-12


def test_rows_kept_per_unit_are_a_uniform_choice() -> None:
    # One unit with 10 rows, keep 2: each row should be kept with probability 1/5.
    ids = np.zeros(10, dtype=int)
    x = np.arange(10, dtype=float)[:, None]
    rng = SeededRandom(9)
    hits = np.zeros(10)
    trials = 4000
    for _ in range(trials):
        kept = prepare_units(ids, x, x, 2, rng).x[:, 0].astype(int)
        hits[kept] += 1
    # Each count ~ Binomial(4000, 0.2): sd 25.3; 5 sd per cell, 10 cells: false failure < 1e-5.
    assert np.all(np.abs(hits - trials * 0.2) < 5 * math.sqrt(trials * 0.2 * 0.8))


def test_noise_with_zero_gradients_matches_sigma_c_over_batch() -> None:
    # Linear model on all-zero inputs: the weight gradients are exactly zero on every
    # step, so with plain SGD (lr 1, no momentum) the released weights are the sum of
    # T noise draws divided by the public expected batch.
    inputs, steps, sigma, clip, batch = 400, 9, 1.3, 0.7, 25.0
    ids = np.arange(500)
    x = np.zeros((500, inputs))
    y = np.zeros((500, 1))
    rng = SeededRandom(21)
    data = prepare_units(ids, x, y, 1, rng)
    net = network_for("linear", inputs, 1, False)
    cfg = SGDConfig(sigma, 0.05, steps, clip, batch, learning_rate=1.0, optimizer="sgd",
                    momentum=0.0)
    w = train(net, net.init(np.random.default_rng(0)), data, cfg, rng)[0][:, 0]
    d = net.num_parameters
    c_eff = grid_sensitivity(clip, noise_grid(clip, sigma), d, "l2")
    expected_sd = math.sqrt(steps) * sigma * c_eff / batch
    assert c_eff == pytest.approx(clip, rel=1e-5)
    # Sample variance of 400 normals: relative sd sqrt(2/400) = 7%; 5 sd => 35%.
    # False-failure rate < 1e-6 per bound.
    assert np.var(w) / expected_sd**2 == pytest.approx(1.0, abs=5 * math.sqrt(2 / inputs))
    assert abs(np.mean(w)) < 5 * expected_sd / math.sqrt(inputs)
    # Gaussian shape: about 95% within 1.96 sd (binomial sd 1.1% over 400; 5 sd => 5.4%).
    inside = np.mean(np.abs(w) < 1.96 * expected_sd)
    assert inside == pytest.approx(0.95, abs=0.055)


def test_batches_behave_like_poisson_sampling() -> None:
    units, rate, steps = 2_000, 0.03, 3_000
    rng = SeededRandom(17)
    sizes = np.empty(steps)
    hits = np.zeros(units)
    for t in range(steps):
        s = poisson_sample(units, rate, rng)
        assert np.all(np.diff(s) > 0) and (s.size == 0 or (s[0] >= 0 and s[-1] < units))
        sizes[t] = s.size
        hits[s] += 1
    mean, var = units * rate, units * rate * (1 - rate)
    # Batch size ~ Binomial(N, q): mean within 5 standard errors, variance within 10%
    # (relative sd of a sample variance of 3000 draws is ~2.6%); false failure < 1e-4.
    assert abs(sizes.mean() - mean) < 5 * math.sqrt(var / steps)
    assert sizes.var() == pytest.approx(var, rel=0.13)
    # Each unit is included with probability q, independently of its index.
    per_unit_sd = math.sqrt(steps * rate * (1 - rate))
    assert np.all(np.abs(hits - steps * rate) < 5.5 * per_unit_sd)
    chi2 = float(np.sum((hits - steps * rate) ** 2 / (steps * rate * (1 - rate))))
    # chi2 ~ chi2_2000 (mean 2000, sd ~63): 6 sd either way.
    assert abs(chi2 - units) < 6 * math.sqrt(2 * units)
    assert poisson_sample(10, 1.0, rng).tolist() == list(range(10))


@pytest.mark.parametrize(("model", "outputs"), [("logistic", 1), ("softmax", 4), ("linear", 1)])
def test_single_row_fast_path_equals_the_generic_path(model: str, outputs: int) -> None:
    ids, x, y = _data(400, np.ones(400, dtype=int), 6, outputs, binary=model != "linear")
    net = network_for(model, 6, outputs, outputs == 1 and model != "linear")
    cfg = SGDConfig(1.0, 0.2, 5, 0.5, 80.0, learning_rate=0.3)
    runs = []
    for hook in (None, lambda info: None):  # a hook forces the generic path
        rng = SeededRandom(4)
        data = prepare_units(ids, x, y, 1, rng)
        runs.append(flatten(train(net, net.init(np.random.default_rng(0)), data, cfg, rng,
                                  hook=hook)))
    assert np.allclose(runs[0], runs[1], rtol=0, atol=1e-12)
