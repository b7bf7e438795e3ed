"""The model families, as small dense networks in numpy.

Every supported model is a stack of dense layers ``z = a W + b``:

* ``linear``   – no hidden layer, identity head, squared loss ½(z − y)²;
* ``logistic`` – no hidden layer, sigmoid head, binary cross-entropy;
* ``softmax``  – no hidden layer, softmax head, cross-entropy (multi-class);
* ``mlp``      – one or two hidden tanh/ReLU layers and the head the label needs.

One representation keeps the DP-SGD step generic: for each layer the backward
pass yields the layer's input activations ``a`` (n × in) and the loss gradient
with respect to its output ``δ`` (n × out).  Row i's gradient of that layer is
the outer product ``[a_i, 1] ⊗ δ_i`` — so per-row and per-unit gradient norms
follow from inner products of ``a`` and ``δ`` without materialising per-example
gradients (Goodfellow, "Efficient per-example gradient computations", 2015;
the "ghost norm" of Li et al., ICLR 2022, for sums over several rows).  For the
GLMs that is the closed form ``‖g_i‖ = ‖[x_i, 1]‖·|r_i|`` with residual ``r``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import special

MODELS = ("linear", "logistic", "softmax", "mlp")
ACTIVATIONS = ("tanh", "relu")

Params = list[np.ndarray]  # [W1, b1, W2, b2, ...]


@dataclass(frozen=True)
class Network:
    """Shape and head of a model; parameters are passed around separately."""

    inputs: int
    outputs: int
    head: str  # identity | sigmoid | softmax
    hidden: tuple[int, ...] = field(default=())
    activation: str = "tanh"

    @property
    def sizes(self) -> list[int]:
        return [self.inputs, *self.hidden, self.outputs]

    @property
    def num_parameters(self) -> int:
        s = self.sizes
        return sum((s[i] + 1) * s[i + 1] for i in range(len(s) - 1))

    def init(self, rng: np.random.Generator) -> Params:
        """GLMs start at zero; hidden layers get Glorot-uniform weights (data-independent)."""
        params: Params = []
        s = self.sizes
        for i in range(len(s) - 1):
            if self.hidden and i < len(s) - 2:
                limit = np.sqrt(6.0 / (s[i] + s[i + 1]))
                params.append(rng.uniform(-limit, limit, size=(s[i], s[i + 1])))
            else:
                params.append(np.zeros((s[i], s[i + 1])))
            params.append(np.zeros(s[i + 1]))
        return params

    # -- forward and backward -----------------------------------------------------------

    def forward(self, params: Params, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Inputs of every layer and the head's pre-activation output z."""
        acts = [x]
        a = x
        layers = len(params) // 2
        for i in range(layers):
            z = a @ params[2 * i] + params[2 * i + 1]
            if i == layers - 1:
                return acts, z
            a = np.tanh(z) if self.activation == "tanh" else np.maximum(z, 0.0)
            acts.append(a)
        raise AssertionError("a network has at least one layer")

    def output(self, z: np.ndarray) -> np.ndarray:
        """Head: probabilities (sigmoid/softmax) or values (identity)."""
        if self.head == "sigmoid":
            return special.expit(z)
        if self.head == "softmax":
            return special.softmax(z, axis=1)
        return z

    def output_delta(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """d loss_i / d z_i for each row: the canonical-link residual p − y (or z − y)."""
        return self.output(z) - y

    def backward(self, params: Params, acts: list[np.ndarray], delta: np.ndarray
                 ) -> list[np.ndarray]:
        """Per-layer output gradients δ, matching ``acts`` (layer i maps acts[i])."""
        deltas = [delta]
        for i in range(len(acts) - 1, 0, -1):
            back = deltas[0] @ params[2 * i].T
            a = acts[i]
            back *= (1.0 - a * a) if self.activation == "tanh" else (a > 0.0)
            deltas.insert(0, back)
        return deltas

    def loss(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-row loss (used by the non-private fit and by tests)."""
        if self.head == "sigmoid":
            return np.logaddexp(0.0, z[:, 0]) - y[:, 0] * z[:, 0]
        if self.head == "softmax":
            return special.logsumexp(z, axis=1) - np.sum(y * z, axis=1)
        return 0.5 * np.sum((z - y) ** 2, axis=1)

    def predict(self, params: Params, x: np.ndarray) -> np.ndarray:
        _, z = self.forward(params, x)
        return self.output(z)


def network_for(model: str, inputs: int, outputs: int, binary: bool,
                hidden: tuple[int, ...] = (), activation: str = "tanh") -> Network:
    """The network of a model type for an encoding with ``inputs`` columns."""
    if model == "linear":
        return Network(inputs, outputs, "identity")
    if model == "logistic":
        return Network(inputs, 1, "sigmoid")
    if model == "softmax":
        return Network(inputs, outputs, "softmax")
    if model == "mlp":
        head = "identity" if outputs == 1 and not binary else ("sigmoid" if binary else
                                                                 "softmax")
        return Network(inputs, 1 if binary else outputs, head, tuple(hidden), activation)
    raise ValueError(f"unknown model {model!r}")


def gradients(net: Network, params: Params, acts: list[np.ndarray], deltas: list[np.ndarray],
              row_weight: np.ndarray | None = None) -> Params:
    """Σ_i w_i ∇loss_i for all layers (w = 1 when ``row_weight`` is None)."""
    grads: Params = []
    for a, d in zip(acts, deltas, strict=True):
        dw = d if row_weight is None else d * row_weight[:, None]
        grads.append(a.T @ dw)
        grads.append(dw.sum(axis=0))
    return grads


def flatten(params: Params) -> np.ndarray:
    return np.concatenate([p.ravel() for p in params])


def unflatten(flat: np.ndarray, like: Params) -> Params:
    out: Params = []
    at = 0
    for p in like:
        out.append(flat[at:at + p.size].reshape(p.shape))
        at += p.size
    return out
