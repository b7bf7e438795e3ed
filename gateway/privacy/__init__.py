"""The gateway's privacy library: pure functions and values, no SQL, no I/O.

* :mod:`.random` – secure (default) and seeded sources of random words;
* :mod:`.samplers` – vectorised integer / grid-rounded noise;
* :mod:`.calibration` – noise scales, grids and 95% error half-widths;
* :mod:`.partition_selection` – DP release of group keys without public values;
* :mod:`.events` – privacy events and DP-SGD accounting helpers;
* :mod:`.accountant` – basic and PLD composition for the budget ledger.

Only numpy, scipy, dp_accounting and the standard library are imported here.
"""

from __future__ import annotations

from gateway.privacy.accountant import Accountant, FilterBudget, Sums, fits
from gateway.privacy.calibration import (
    analytic_gaussian_sigma,
    choose_grid,
    discrete_laplace_ci95,
    gaussian_ci95,
    gaussian_delta,
    grid_sensitivity,
    laplace_ci95,
    laplace_scale,
    rounded_ci95,
)
from gateway.privacy.events import (
    ApproxDpEvent,
    DiscreteLaplaceEvent,
    GaussianEvent,
    LaplaceEvent,
    PrivacyEvent,
    SubsampledGaussianEvent,
    dp_sgd_epsilon,
    dp_sgd_epsilon_rdp,
    event_from_dict,
    solve_noise_multiplier,
)
from gateway.privacy.partition_selection import (
    keep_probabilities,
    select_partitions,
    threshold_summary,
)
from gateway.privacy.random import (
    RandomSource,
    SecureRandom,
    SeededRandom,
    default_random,
    uniform_open,
)
from gateway.privacy.samplers import (
    bernoulli,
    discrete_laplace,
    rounded_gaussian,
    rounded_laplace,
)

__all__ = [
    "Accountant",
    "ApproxDpEvent",
    "DiscreteLaplaceEvent",
    "FilterBudget",
    "GaussianEvent",
    "LaplaceEvent",
    "PrivacyEvent",
    "RandomSource",
    "SecureRandom",
    "SeededRandom",
    "SubsampledGaussianEvent",
    "Sums",
    "analytic_gaussian_sigma",
    "bernoulli",
    "choose_grid",
    "default_random",
    "discrete_laplace",
    "discrete_laplace_ci95",
    "dp_sgd_epsilon",
    "dp_sgd_epsilon_rdp",
    "event_from_dict",
    "fits",
    "gaussian_ci95",
    "gaussian_delta",
    "grid_sensitivity",
    "keep_probabilities",
    "laplace_ci95",
    "laplace_scale",
    "rounded_ci95",
    "rounded_gaussian",
    "rounded_laplace",
    "select_partitions",
    "solve_noise_multiplier",
    "threshold_summary",
    "uniform_open",
]
