"""Benchmark of the privacy library: noise throughput and budget-check latency.

Run with ``.venv/bin/python bench/bench_noise.py``.  Prints
* secure noise samples per second for the three integer samplers,
* the time of one Accountant budget check with 10,000 recorded events of
  mixed types plus one new event (cached composition + one compose + one ε(δ)),
* ε of k Laplace(ε=0.1) releases at δ = 1e-6 under basic and PLD composition.
"""

from __future__ import annotations

import statistics
import time

from gateway.privacy.accountant import DEFAULT_DISCRETIZATION, Accountant
from gateway.privacy.calibration import analytic_gaussian_sigma
from gateway.privacy.events import (
    ApproxDpEvent,
    DiscreteLaplaceEvent,
    GaussianEvent,
    LaplaceEvent,
    SubsampledGaussianEvent,
)
from gateway.privacy.random import SecureRandom
from gateway.privacy.samplers import (
    discrete_laplace,
    rounded_gaussian,
    rounded_laplace,
)


def _best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_samplers() -> None:
    rng = SecureRandom()
    samplers = {
        "discrete_laplace": lambda n: discrete_laplace(10.0, n, rng),
        "rounded_laplace": lambda n: rounded_laplace(10.0, 2.0**-10, n, rng),
        "rounded_gaussian": lambda n: rounded_gaussian(10.0, 2.0**-10, n, rng),
    }
    print("noise samples/s (SecureRandom, best of 5)")
    for name, fn in samplers.items():
        row = []
        for n in (10**3, 10**5, 10**6):
            dt = _best_of(lambda fn=fn, n=n: fn(n), 5)
            row.append(f"n=1e{len(str(n)) - 1}: {n / dt / 1e6:7.2f} M/s")
        print(f"  {name:17s} " + "  ".join(row))


def _mixed_events(count: int) -> list:
    """A ledger-like history: many ε choices, Gaussian, partition selection, one DP-SGD run."""
    events: list = []
    eps_choices = (0.001, 0.002, 0.005, 0.01, 0.02)
    sigma = analytic_gaussian_sigma(0.01, 1e-9, 1.0)
    for i in range(count):
        r = i % 10
        eps = eps_choices[i % len(eps_choices)]
        if r < 5:
            events.append(LaplaceEvent(eps))
        elif r < 7:
            events.append(DiscreteLaplaceEvent(eps, sensitivity=1 + i % 3))
        elif r < 8:
            events.append(GaussianEvent(sigma, 0.01, 1e-9))
        else:
            events.append(ApproxDpEvent(eps, 1e-11))
    events[-1] = SubsampledGaussianEvent(1.1, 0.01, 1000, 1.0, 1e-8)
    return events


def bench_accountant() -> None:
    events = _mixed_events(10_000)
    new = [LaplaceEvent(0.1)]
    print("\nbudget check, 10,000 mixed events + 1 new (delta budget 1e-6)")
    for vdi in (1e-2, 1e-3, 1e-4):
        t0 = time.perf_counter()
        acc = Accountant(events, value_discretization_interval=vdi)
        build = time.perf_counter() - t0
        acc.check(new, 10.0, 1e-6)  # warm the per-event PLD cache
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            result = acc.check(new, 10.0, 1e-6)
            times.append(time.perf_counter() - t0)
        default = " (default)" if vdi == DEFAULT_DISCRETIZATION else ""
        print(
            f"  interval {vdi:g}{default}: median {statistics.median(times) * 1e3:6.2f} ms,"
            f" eps={result.epsilon:.3f} via {result.method}"
            f" (basic {float(result.basic_epsilon):.2f});"
            f" rebuild from events {build * 1e3:.0f} ms"
        )


def bench_composition() -> None:
    print("\nk x Laplace(eps=0.1) at delta=1e-6      basic     PLD")
    for k in (100, 330, 1000):
        acc = Accountant([LaplaceEvent(0.1)] * k)
        basic, _ = acc.basic()
        pld = acc.pld_epsilon(1e-6)
        print(f"  k={k:5d}{'':26s}{float(basic):8.2f}  {pld:6.3f}")


if __name__ == "__main__":
    bench_samplers()
    bench_accountant()
    bench_composition()
