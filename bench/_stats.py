"""Latency percentiles shared by the benchmark scripts."""

from __future__ import annotations


def pct(xs: list[float], q: float) -> float:
    """The q-quantile of ``xs`` (nearest rank)."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]
