"""Hyper-parameters of a training run: parsed strictly, all public.

Hyper-parameters are chosen by the analyst without seeing the data, so they
may be released with the model.  Unknown names are rejected (a typo such as
``epoch=3`` silently training with defaults would waste budget).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from gateway.errors import InvalidRequest
from gateway.training.models import ACTIVATIONS, MODELS

MAX_STEPS = 200_000


@dataclass(frozen=True)
class Hyper:
    """Training knobs; defaults suit GLMs on tens of thousands of units."""

    epochs: float = 5.0  # expected passes over the units
    batch_size: int | None = None  # expected units per step; None: N̂/20 within [64, 4096]
    clip: float = 1.0  # C, the per-unit gradient norm bound
    learning_rate: float | None = None  # None: 0.1 (adam) or 1.0 (sgd)
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd only
    noise_multiplier: float | None = None  # σ; None: solved from epsilon
    hidden: tuple[int, ...] = (32,)  # mlp only: one or two hidden layers
    activation: str = "tanh"
    l2: float = 0.0
    average: float = 0.0  # exponential moving average of iterates (0: last iterate)
    units: int | None = None  # a public estimate of the number of units (skips the DP count)
    count_epsilon: float | None = None  # ε of the DP unit count; None: 2% of epsilon
    holdout: float = 0.0  # fraction of units held out for a DP evaluation
    eval_epsilon: float | None = None  # ε of that evaluation; None: 10% of epsilon
    max_rows_per_unit: int | None = None  # may only lower the policy's bound

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 0.1 if self.optimizer == "adam" else 1.0

    def to_dict(self, model: str) -> dict[str, Any]:
        d = asdict(self)
        d["learning_rate"] = self.lr
        if model == "mlp":
            d["hidden"] = list(self.hidden)
        else:
            del d["hidden"], d["activation"]
        return d

    @classmethod
    def parse(cls, model: str, raw: Mapping[str, Any]) -> Hyper:
        if model not in MODELS:
            raise InvalidRequest(f"unknown model {model!r}",
                                 hint="use one of: " + ", ".join(MODELS))
        known = {f.name for f in fields(cls)}
        extra = sorted(k for k in raw if k not in known)
        if extra:
            raise InvalidRequest(f"unknown training parameter(s): {', '.join(extra)}",
                                 hint="known: " + ", ".join(sorted(known)))
        values = {k: v for k, v in raw.items() if v is not None}
        kw: dict[str, Any] = {}
        # Ranges wide enough for any real run, narrow enough that no arithmetic on
        # them overflows or divides by zero after the run was charged.
        for name, lo, hi in (("epochs", 1e-3, 1e4), ("clip", 1e-6, 1e6),
                             ("learning_rate", 1e-8, 1e3), ("noise_multiplier", 1e-2, 1e5),
                             ("count_epsilon", 1e-6, 1e3), ("eval_epsilon", 1e-6, 1e3)):
            if name in values:
                kw[name] = _within(name, _positive(name, values[name]), lo, hi)
        for name, lo, hi in (("momentum", 0.0, 0.999), ("l2", 0.0, 1e3),
                             ("average", 0.0, 0.9999), ("holdout", 0.0, 0.5)):
            if name in values:
                kw[name] = _within(name, values[name], lo, hi)
        for name in ("batch_size", "units", "max_rows_per_unit"):
            if name in values:
                kw[name] = _count(name, values[name])
                if kw[name] > 10**12:
                    raise InvalidRequest(f"{name} must be at most 10^12, got {kw[name]}")
        if "optimizer" in values:
            if values["optimizer"] not in ("adam", "sgd"):
                raise InvalidRequest(f"unknown optimizer {values['optimizer']!r}",
                                     hint="use 'adam' or 'sgd'")
            kw["optimizer"] = values["optimizer"]
        if "activation" in values:
            if values["activation"] not in ACTIVATIONS:
                raise InvalidRequest(f"unknown activation {values['activation']!r}",
                                     hint="use " + " or ".join(ACTIVATIONS))
            kw["activation"] = values["activation"]
        if "hidden" in values:
            kw["hidden"] = _hidden(values["hidden"])
        h = cls(**kw)
        if model != "mlp" and "hidden" in values:
            raise InvalidRequest(f"hidden layers are only for model='mlp', not {model!r}",
                                 hint="remove hidden=, or use model='mlp'")
        if h.holdout == 0.0 and "eval_epsilon" in values:
            raise InvalidRequest("eval_epsilon needs a holdout fraction",
                                 hint="pass holdout=0.1 as well")
        return h


def _positive(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        raise InvalidRequest(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


def _within(name: str, v: Any, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise InvalidRequest(f"{name} must be a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _count(name: str, v: Any) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InvalidRequest(f"{name} must be an integer >= 1, got {v!r}")
    return v


def _hidden(v: Any) -> tuple[int, ...]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v,)
    if isinstance(v, str):
        try:
            v = tuple(int(p) for p in v.split(",") if p.strip())
        except ValueError:
            v = ()
    if not isinstance(v, list | tuple) or not 1 <= len(v) <= 2 or not all(
            isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 1024 for k in v):
        raise InvalidRequest(f"hidden must be one or two layer widths in 1..1024, got {v!r}",
                             hint="e.g. hidden=[32] or hidden=[64, 32]")
    return tuple(v)
