"""Optional DP evaluation of a trained model on held-out units.

Training accuracy on private data is never released (it is a statistic of the
data with unbounded sensitivity to memorisation).  Instead, when the analyst
asks for ``holdout=h``, a fraction h of the units — chosen at random,
independently of the data — is kept out of training, and the model's quality
on them is released with noise:

    value = (Σ_u m_u + Laplace) / (N_eval + discrete Laplace)

where m_u is the unit's mean per-row score over its (at most M) rows: 0/1
correctness for classifiers (bound 1), squared error on the [-1, 1]-scaled
label for regression (bound 4).  One unit moves the sum by at most the bound
and the count by 1; each gets half of the evaluation's ε.  The sum is rounded
to a power-of-two grid with grid-aware sensitivity, as everywhere else.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gateway.privacy.calibration import choose_grid, grid_sensitivity
from gateway.privacy.random import RandomSource
from gateway.privacy.samplers import discrete_laplace, rounded_laplace
from gateway.training.dpsgd import UnitData
from gateway.training.encoding import Encoding
from gateway.training.models import Network, Params


def dp_evaluate(net: Network, params: Params, data: UnitData, encoding: Encoding,
                epsilon: float, holdout: float, rng: RandomSource) -> dict[str, Any]:
    label = encoding.label
    if label.kind == "numeric":
        metric, bound = "mse", 4.0
    else:
        metric, bound = "accuracy", 1.0
    total = 0.0
    if data.units:
        out = net.predict(params, data.x.astype(np.float64))
        if label.kind == "numeric":
            score = (np.clip(out[:, 0], -1.0, 1.0) - data.y[:, 0]) ** 2
        elif label.kind == "binary":
            score = ((out[:, 0] >= 0.5) == (data.y[:, 0] >= 0.5)).astype(np.float64)
        else:
            score = (np.argmax(out, axis=1) == np.argmax(data.y, axis=1)).astype(np.float64)
        per_unit = np.add.reduceat(score, data.starts) / data.counts
        total = float(np.clip(per_unit, 0.0, bound).sum())
    half = epsilon / 2.0
    scale0 = bound / half
    grid = choose_grid(scale0, bound)
    scale = grid_sensitivity(bound, grid, 1, "l1") / half
    noisy_sum = (round(total / grid) + int(rounded_laplace(scale, grid, 1, rng)[0])) * grid
    noisy_count = data.units + int(discrete_laplace(1.0 / half, 1, rng)[0])
    value = float(np.clip(noisy_sum / max(noisy_count, 1), 0.0, bound))
    result: dict[str, Any] = {
        "kind": "dp_holdout_evaluation",
        "note": "differentially private estimate on held-out units (charged); not a "
                "training metric",
        "metric": metric, "value": value, "epsilon": epsilon, "holdout_fraction": holdout,
        "noise": {"sum": {"mechanism": "laplace", "scale": scale, "grid": grid},
                  "count": {"mechanism": "discrete_laplace", "scale": 1.0 / half}},
    }
    if metric == "mse":
        assert label.lo is not None and label.hi is not None
        half_range = (label.hi - label.lo) / 2.0
        result["value_in_label_units"] = value * half_range ** 2
        result["rmse_in_label_units"] = float(np.sqrt(value)) * half_range
    return result
