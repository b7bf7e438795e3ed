"""The non-private fit of the same models: for tests and benchmarks ONLY.

It minimises the same per-row loss over all rows with L-BFGS (no sampling,
no clipping, no noise), which is the yardstick DP-SGD's utility is measured
against.  Nothing in the Gateway calls it: releasing its output would release
the data.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

from gateway.training.models import Network, Params, flatten, gradients, unflatten


def fit_nonprivate(net: Network, x: np.ndarray, y: np.ndarray, params: Params | None = None,
                   l2: float = 1e-6, max_iter: int = 500) -> Params:
    """Minimise mean loss + l2/2·‖W‖² by L-BFGS; returns the fitted parameters."""
    start = params if params is not None else net.init(np.random.default_rng(0))
    n = max(1, x.shape[0])

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        p = unflatten(flat, start)
        acts, z = net.forward(p, x)
        deltas = net.backward(p, acts, net.output_delta(z, y))
        grads = gradients(net, p, acts, deltas)
        value = float(net.loss(z, y).sum()) / n
        out = []
        for k, (w, g) in enumerate(zip(p, grads, strict=True)):
            g = g / n
            if k % 2 == 0:
                value += 0.5 * l2 * float(np.sum(w * w))
                g = g + l2 * w
            out.append(g)
        return value, flatten(out)

    res = optimize.minimize(objective, flatten(start), jac=True, method="L-BFGS-B",
                            options={"maxiter": max_iter})
    return unflatten(res.x, start)
