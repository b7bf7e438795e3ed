"""A trained model as the gateway releases it: weights, encoding, public metadata.

``predict`` runs on rows the *caller* supplies, so it is post-processing of a
released model and costs no budget.  Rows are keyed by the training query's
output column names (case-insensitive); a missing key is a NULL and is imputed
as documented in :mod:`.encoding`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.errors import InvalidRequest
from gateway.training.encoding import Encoding
from gateway.training.models import Network, Params
from gateway.training.registry import DONE, ModelRecord

MAX_PREDICT_ROWS = 100_000


@dataclass(frozen=True)
class TrainedModel:
    id: str
    model: str
    status: str
    progress: float
    analyst: str
    sql: str
    label: str
    policy_version: str
    epsilon_spent: float
    delta_spent: float
    privacy: dict[str, Any]
    hyper: dict[str, Any]
    metrics: dict[str, Any]
    encoding: Encoding
    network: Network
    weights: Params | None = None
    error: str | None = None
    created: float = 0.0
    updated: float = 0.0
    _extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_record(cls, rec: ModelRecord) -> TrainedModel:
        spec = rec.spec
        net = Network(**{**spec["network"], "hidden": tuple(spec["network"]["hidden"])})
        weights = None
        metrics: dict[str, Any] = {}
        if rec.result is not None:
            weights = [np.asarray(w["values"], dtype=np.float64).reshape(w["shape"])
                       for w in rec.result["weights"]]
            metrics = rec.result.get("metrics", {})
        return cls(rec.id, spec["model"], rec.status, rec.progress, rec.analyst, spec["sql"],
                   spec["label"], spec["policy_version"], spec["epsilon_spent"],
                   spec["delta_spent"], spec["privacy"], spec["hyper"], metrics,
                   Encoding.from_dict(spec["encoding"]), net, weights, rec.error, rec.created,
                   rec.updated)

    # -- prediction (free: post-processing) -------------------------------------------

    def _outputs(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if self.status != DONE or self.weights is None:
            raise InvalidRequest(f"model {self.id} is {self.status}, not ready to predict",
                                 hint="wait until its status is 'done'")
        if len(rows) > MAX_PREDICT_ROWS:
            raise InvalidRequest(f"at most {MAX_PREDICT_ROWS} rows per prediction call",
                                 hint="split the rows into several calls")
        x = self.encoding.encode_rows(rows)
        return self.network.predict(self.weights, x)

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Predicted label values: a class (bool/text/int) or a number for regression."""
        return self.encoding.decode(self._outputs(rows))

    def predict_proba(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Class probabilities: P(positive) for binary labels, a list per row otherwise."""
        out = self._outputs(rows)
        if self.encoding.label.kind == "numeric":
            raise InvalidRequest("a regression model has no class probabilities",
                                 hint="use predict()")
        if self.encoding.label.kind == "binary":
            return [float(p) for p in out[:, 0]]
        return [[float(p) for p in row] for row in out]

    # -- what adapters show ----------------------------------------------------------------

    def coefficients(self) -> dict[str, Any] | None:
        """GLM coefficients per encoded column (on the [-1, 1]-scaled features)."""
        if self.weights is None or self.network.hidden:
            return None
        w, b = self.weights
        names = self.encoding.column_names()
        lab = self.encoding.label
        if w.shape[1] == 1:
            return {"intercept": float(b[0]),
                    "weights": {n: float(v) for n, v in zip(names, w[:, 0], strict=True)}}
        assert lab.classes is not None
        return {str(c): {"intercept": float(b[k]),
                         "weights": {n: float(v) for n, v in zip(names, w[:, k], strict=True)}}
                for k, c in enumerate(lab.classes)}

    def to_dict(self, weights: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model_id": self.id, "status": self.status, "progress": self.progress,
            "model": self.model, "analyst": self.analyst, "sql": self.sql, "label": self.label,
            "policy_version": self.policy_version, "epsilon_spent": self.epsilon_spent,
            "delta_spent": self.delta_spent, "privacy": dict(self.privacy),
            "hyper_parameters": dict(self.hyper), "metrics": dict(self.metrics),
            "encoding": self.encoding.to_dict(),
            "architecture": {"inputs": self.network.inputs, "outputs": self.network.outputs,
                             "hidden": list(self.network.hidden), "head": self.network.head,
                             "activation": self.network.activation if self.network.hidden
                             else None},
            "coefficients": self.coefficients(), "error": self.error,
            "created": self.created, "updated": self.updated,
        }
        if weights:
            out["weights"] = weights_to_json(self.weights) if self.weights is not None else None
        return out


def weights_to_json(params: Params) -> list[dict[str, Any]]:
    out = []
    for k, p in enumerate(params):
        name = f"layer{k // 2 + 1}.{'weight' if k % 2 == 0 else 'bias'}"
        out.append({"name": name, "shape": list(p.shape), "values": p.ravel().tolist()})
    return out
