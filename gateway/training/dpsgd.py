"""User-level DP-SGD (Abadi et al., CCS 2016, with the unit as the example).

One step, for parameters θ:

1. **Poisson sampling of units**: each unit is in the batch independently with
   probability q (the sampling the accountant's subsampled-Gaussian PLD assumes).
2. **Per-unit gradient**: the sum of the loss gradients of the unit's rows; at
   most ``max_rows_per_unit`` rows per unit, chosen once, uniformly at random and
   independently of their values (:func:`prepare_units`).
3. **Clipping**: each unit's gradient is scaled to L2 norm ≤ C.  The norms come
   from inner products of layer inputs and output gradients (see
   :mod:`.models`); the clipped sum is one weighted matrix product.
4. **Noise**: N(0, σ²C'²) per coordinate from the shared secure sampler
   (:func:`gateway.privacy.samplers.rounded_gaussian`), on a power-of-two grid
   onto which the clipped sum is rounded too, so the set of possible outputs does
   not depend on the data (Mironov 2012).  Rounding can move neighbours √d·g
   further apart, so C' = C + √d·g (``grid_sensitivity``); g ≈ C·2⁻²⁴ keeps that
   below one part in a million for any realistic d.
5. **Normalisation by a public expected batch size** B̂ = q·N̂ (N̂ is public or a
   DP count — never the exact number of units), then an optimizer step (Adam or
   momentum SGD: post-processing of the noisy gradient).

Randomness (sampling, row choice, noise) comes from the gateway's RandomSource —
the OS CSPRNG in production, a seeded generator in tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.privacy.calibration import grid_sensitivity
from gateway.privacy.random import RandomSource, uniform_open
from gateway.privacy.samplers import MAX_GRID_RATIO, rounded_gaussian
from gateway.training.models import Network, Params, gradients

GRID_FINENESS = 24


@dataclass(frozen=True)
class UnitData:
    """Encoded rows grouped by unit (at most M rows each), in a random row order."""

    x: np.ndarray  # (rows, inputs)
    y: np.ndarray  # (rows, outputs)
    starts: np.ndarray  # first row of each unit
    counts: np.ndarray  # rows of each unit (1..M)
    single: bool = field(init=False)  # every unit has one row: closed-form norms
    xsq: np.ndarray = field(init=False)  # ‖x_i‖² per row, computed once (inputs are fixed)

    def __post_init__(self) -> None:
        object.__setattr__(self, "single", bool(self.counts.size == 0 or
                                                self.counts.max() == 1))
        x64 = self.x.astype(np.float64)
        object.__setattr__(self, "xsq", np.einsum("ij,ij->i", x64, x64))

    @property
    def units(self) -> int:
        return int(self.starts.shape[0])

    def subset(self, units: np.ndarray) -> UnitData:
        rows, _ = _rows_of(self.starts, self.counts, units)
        counts = self.counts[units]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return UnitData(self.x[rows], self.y[rows], starts, counts)


def prepare_units(unit_ids: np.ndarray, x: np.ndarray, y: np.ndarray, max_rows: int,
                  rng: RandomSource) -> UnitData:
    """Group rows by unit and keep at most ``max_rows`` per unit, chosen at random.

    Rows are ordered by (unit, a fresh uniform key): a uniformly random order
    within each unit that depends on no value, so keeping the first ``max_rows``
    is a uniform random subset.
    """
    n = unit_ids.shape[0]
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return UnitData(x[:0].astype(np.float32), y[:0], empty, empty)
    _, codes = np.unique(unit_ids, return_inverse=True)
    keys = uniform_open(rng, n)
    order = np.lexsort((keys, codes))
    codes = codes[order]
    first = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    counts = np.diff(np.r_[first, n])
    rank = np.arange(n) - np.repeat(first, counts)
    kept = order[rank < max_rows]
    counts = np.minimum(counts, max_rows)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    # Inputs are stored in float32: gathering a batch's rows is the memory-bound part
    # of a step, and encoded features in [-1, 1] lose nothing that matters.  Every
    # computation after the gather is float64 (clipping included).
    return UnitData(np.ascontiguousarray(x[kept], dtype=np.float32),
                    np.ascontiguousarray(y[kept]), starts, counts.astype(np.int64))


def poisson_sample(units: int, rate: float, rng: RandomSource) -> np.ndarray:
    """Indices of units included independently with probability ``rate`` (sorted)."""
    return poisson_batches(units, rate, 1, rng)[0]


def poisson_batches(units: int, rate: float, steps: int, rng: RandomSource
                    ) -> list[np.ndarray]:
    """Independent Poisson samples of ``units`` units for ``steps`` steps at once.

    The steps' Bernoulli(q) trials are laid end to end (trial k is unit k mod N
    of step k div N) and the successes are drawn as geometric gaps: the gaps of
    i.i.d. Bernoulli(q) trials are i.i.d. Geometric(q), G = 1 + ⌊log U / log(1 − q)⌋
    by inversion.  This costs ~qN random words per step instead of N, and one
    vectorised pass per block of steps instead of one per step.
    """
    if units == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(steps)]
    if rate >= 1.0:
        return [np.arange(units, dtype=np.int64) for _ in range(steps)]
    total = units * steps
    log1q = math.log1p(-rate)
    out: list[np.ndarray] = []
    pos = -1
    while True:
        expected = rate * (total - pos)
        m = int(expected + 6.0 * math.sqrt(expected) + 16)
        gaps = np.floor(np.log(uniform_open(rng, m)) / log1q).astype(np.int64) + 1
        idx = pos + np.cumsum(gaps)
        out.append(idx[idx < total])
        if idx[-1] >= total:
            break
        pos = int(idx[-1])
    hits = np.concatenate(out)
    bounds = np.searchsorted(hits, np.arange(steps + 1) * units)
    return [hits[bounds[t]:bounds[t + 1]] - t * units for t in range(steps)]


def _rows_of(starts: np.ndarray, counts: np.ndarray, units: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of ``units`` and, per row, its position among them."""
    c = counts[units]
    total = int(c.sum())
    seg = np.repeat(np.arange(units.shape[0]), c)
    offsets = np.cumsum(c) - c
    rows = starts[units][seg] + (np.arange(total) - offsets[seg])
    return rows, seg


@dataclass
class Batch:
    """One Poisson batch: its rows, each row's unit, and same-unit row pairs."""

    rows: np.ndarray
    seg: np.ndarray  # row -> position of its unit in the batch
    units: int
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # (i, j, unit) within a unit


def make_batch(data: UnitData, units: np.ndarray) -> Batch:
    if data.single:
        return Batch(data.starts[units], np.arange(units.shape[0]), units.shape[0], None)
    rows, seg = _rows_of(data.starts, data.counts, units)
    c = data.counts[units][seg]  # per row: rows of its unit
    i = np.repeat(np.arange(rows.shape[0]), c)
    first_row = (np.cumsum(data.counts[units]) - data.counts[units])[seg]  # unit's first row
    pos = np.arange(i.shape[0]) - np.repeat(np.cumsum(c) - c, c)
    j = first_row[i] + pos
    return Batch(rows, seg, units.shape[0], (i, j, seg[i]))


def unit_norms(batch: Batch, acts: list[np.ndarray], deltas: list[np.ndarray],
               input_sq: np.ndarray | None = None) -> np.ndarray:
    """L2 norm of each unit's summed gradient, over all layers.

    Per layer, ‖Σ_{i∈u} [a_i,1] ⊗ δ_i‖²_F = Σ_{i,j∈u} (a_i·a_j + 1)(δ_i·δ_j); with one
    row per unit it is (‖a_i‖² + 1)‖δ_i‖² — for the input layer with ‖x_i‖²
    precomputed (``input_sq``), the GLM closed form ‖[x_i, 1]‖·‖p_i − y_i‖.
    """
    sq = np.zeros(batch.units)
    for k, (a, d) in enumerate(zip(acts, deltas, strict=True)):
        if batch.pairs is None:
            asq = input_sq if k == 0 and input_sq is not None else np.einsum("ij,ij->i", a, a)
            sq += (asq + 1.0) * np.einsum("ij,ij->i", d, d)
        else:
            i, j, u = batch.pairs
            term = (np.einsum("ij,ij->i", a[i], a[j]) + 1.0) * np.einsum("ij,ij->i", d[i], d[j])
            sq += np.bincount(u, weights=term, minlength=batch.units)
    return np.sqrt(np.maximum(sq, 0.0))


@dataclass(frozen=True)
class StepInfo:
    """What a test hook sees at each step (never exposed to analysts)."""

    step: int
    params: Params
    units: np.ndarray  # sampled unit indices
    rows: np.ndarray  # their rows
    norms: np.ndarray  # per-unit gradient norms before clipping
    scale: np.ndarray  # per-unit clipping factor (contribution norm = norms * scale)
    clipped_sum: Params  # Σ_u clip(g_u), before noise


@dataclass
class SGDConfig:
    noise_multiplier: float
    sampling_rate: float
    steps: int
    clip: float
    expected_batch: float  # public: q × N̂
    learning_rate: float = 0.1
    optimizer: str = "adam"  # adam | sgd
    momentum: float = 0.9
    l2: float = 0.0
    average: float = 0.0  # EMA of iterates (0 = last iterate)
    extra: dict[str, Any] = field(default_factory=dict)


def noise_grid(clip: float, sigma: float) -> float:
    """Power-of-two grid ≈ C·2⁻²⁴, coarser only if σC/g would exceed the sampler's range."""
    g = 2.0 ** math.floor(math.log2(clip) - GRID_FINENESS)
    while sigma * clip / g > MAX_GRID_RATIO / 2:
        g *= 2.0
    return g


class BufferedRandom:
    """Serves a RandomSource's words from large blocks.

    One ``os.urandom`` call per step for the sampling and one for the noise cost
    more than the arithmetic of a small step; reading 64k words at a time keeps
    every word from the same secure source, just fetched in bulk.
    """

    def __init__(self, source: RandomSource, block: int = 1 << 16) -> None:
        self.source = source
        self.block = block
        self._buf = np.zeros(0, dtype=np.uint64)
        self._at = 0

    def words(self, n: int) -> np.ndarray:
        if n > self.block:
            return self.source.words(n)
        if self._at + n > self._buf.shape[0]:
            self._buf = self.source.words(self.block)
            self._at = 0
        out = self._buf[self._at:self._at + n]
        self._at += n
        return out


def train(net: Network, params: Params, data: UnitData, cfg: SGDConfig, rng: RandomSource,
          progress: Callable[[float], None] | None = None,
          hook: Callable[[StepInfo], None] | None = None) -> Params:
    """Run DP-SGD and return the released parameters (noisy by construction)."""
    rng = BufferedRandom(rng)
    params = [p.copy() for p in params]
    d = sum(p.size for p in params)
    grid = noise_grid(cfg.clip, cfg.noise_multiplier)
    sens = grid_sensitivity(cfg.clip, grid, d, "l2")  # C' = C + √d·g
    sigma = cfg.noise_multiplier * sens
    opt = _Optimizer(cfg, params)
    avg = [p.copy() for p in params] if cfg.average > 0 else None
    every = max(1, cfg.steps // 100)
    block = max(1, min(cfg.steps, 256, (1 << 22) // max(1, d)))
    for first in range(0, cfg.steps, block):
        count = min(block, cfg.steps - first)
        # Sampling and noise are independent of the data: draw them a block at a time.
        batches = poisson_batches(data.units, cfg.sampling_rate, count, rng)
        noise = rounded_gaussian(sigma, grid, count * d, rng).reshape(count, d)
        for k in range(count):
            t = first + k
            clipped = _clipped_sum(net, params, data, batches[k], cfg.clip, t, hook)
            at = 0
            noisy: Params = []
            for g in clipped:
                # Round the clipped sum onto the grid, add integer noise, scale back.
                q = np.rint(g / grid) + noise[k, at:at + g.size].reshape(g.shape)
                noisy.append(q * (grid / cfg.expected_batch))
                at += g.size
            opt.step(params, noisy)
            if avg is not None:
                for a, p in zip(avg, params, strict=True):
                    a *= cfg.average
                    a += (1.0 - cfg.average) * p
            if progress is not None and (t % every == 0 or t == cfg.steps - 1):
                progress((t + 1) / cfg.steps)
    return avg if avg is not None else params


def _clipped_sum(net: Network, params: Params, data: UnitData, units: np.ndarray,
                 clip: float, t: int, hook: Callable[[StepInfo], None] | None) -> Params:
    if units.shape[0] == 0:
        return [np.zeros_like(p) for p in params]
    if data.single and len(params) == 2 and hook is None:
        return _glm_single_row(net, params, data, units, clip)
    batch = make_batch(data, units)
    x = np.take(data.x, batch.rows, axis=0).astype(np.float64)
    acts, z = net.forward(params, x)
    deltas = net.backward(params, acts, net.output_delta(z, data.y[batch.rows]))
    norms = unit_norms(batch, acts, deltas, data.xsq[batch.rows] if data.single else None)
    scale = np.minimum(1.0, clip / np.maximum(norms, 1e-300))
    clipped = gradients(net, params, acts, deltas, scale[batch.seg])
    if hook is not None:
        hook(StepInfo(t, [p.copy() for p in params], units, batch.rows, norms, scale,
                      [g.copy() for g in clipped]))
    return clipped


def _glm_single_row(net: Network, params: Params, data: UnitData, units: np.ndarray,
                    clip: float) -> Params:
    """The GLM closed form when every unit has one row (row-level data, or M = 1).

    Row i's gradient is [x_i, 1] ⊗ r_i with r = p − y, so its norm is
    ‖[x_i, 1]‖·‖r_i‖ with the first factor precomputed; the clipped sum is one
    weighted product.  Same numbers as the generic path (tested), fewer calls.
    """
    rows = data.starts[units]
    x = np.take(data.x, rows, axis=0).astype(np.float64)
    w, b = params
    r = net.output(x @ w + b) - np.take(data.y, rows, axis=0)
    rsq = r * r if r.shape[1] == 1 else np.einsum("ij,ij->i", r, r)[:, None]
    norms = np.sqrt((np.take(data.xsq, rows)[:, None] + 1.0) * rsq)
    r *= np.minimum(1.0, clip / np.maximum(norms, 1e-300))
    return [x.T @ r, r.sum(axis=0)]


class _Optimizer:
    """Adam (Kingma & Ba 2015) or heavy-ball SGD on the noisy mean gradient."""

    def __init__(self, cfg: SGDConfig, params: Params) -> None:
        self.cfg = cfg
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params] if cfg.optimizer == "adam" else None
        self.t = 0

    def step(self, params: Params, grads: Params) -> None:
        cfg = self.cfg
        self.t += 1
        for k, (p, g) in enumerate(zip(params, grads, strict=True)):
            if cfg.l2 and k % 2 == 0:  # weights only, not biases
                g = g + cfg.l2 * p
            if self.v is None:
                self.m[k] = cfg.momentum * self.m[k] + g
                p -= cfg.learning_rate * self.m[k]
                continue
            b1, b2 = 0.9, 0.999
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            mhat = self.m[k] / (1 - b1 ** self.t)
            vhat = self.v[k] / (1 - b2 ** self.t)
            p -= cfg.learning_rate * mhat / (np.sqrt(vhat) + 1e-8)
