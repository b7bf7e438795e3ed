"""Feature and label encoding from public metadata only.

DP-SGD bounds each unit's influence by clipping gradients, but the *encoding*
of the data must not look at the data either: scaling by the observed min/max
or mean/std, or one-hot encoding the observed categories, would leak (a
category that appears only because one person is in the data changes the
model's shape).  So every choice here is a function of the policy:

* numeric (and date) features are scaled by their policy bounds to [-1, 1] and
  clamped there;
* a NULL or NaN numeric value is imputed as 0, the midpoint of the scaled range,
  and flagged in a *missing-indicator* column (1 when missing, else 0), so the
  model can learn what missingness means without any statistic of the data;
* booleans are 0/1 (NULL imputed 0.5, plus a missing indicator);
* categorical features are one-hot over their public values plus one
  "other or NULL" column;
* labels: binary (bool, or two public values), classes (public values), or
  numeric scaled by its bounds to [-1, 1]; rows whose label is NULL, NaN or not
  a public value are dropped (a per-row filter, which needs no bound).

The encoding is stored with the model (it is public), and ``predict`` applies
it to caller-supplied rows keyed by the training query's column names.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gateway.errors import InvalidRequest
from gateway.sql.selection import SelectedColumn, Selection

EPOCH = np.datetime64("1970-01-01T00:00:00", "us")
_DAY_US = 86_400_000_000.0


@dataclass(frozen=True)
class Feature:
    """How one selected column becomes encoded columns."""

    name: str
    kind: str  # numeric | bool | categorical
    lo: float | None = None
    hi: float | None = None
    values: tuple[Any, ...] | None = None
    temporal: bool = False

    @property
    def width(self) -> int:
        if self.kind == "categorical":
            assert self.values is not None
            return len(self.values) + 1
        return 2  # value and missing indicator

    def column_names(self) -> list[str]:
        if self.kind == "categorical":
            assert self.values is not None
            return [f"{self.name}={v}" for v in self.values] + [f"{self.name}=<other>"]
        return [self.name, f"{self.name}:missing"]


@dataclass(frozen=True)
class Label:
    """How the label column becomes a training target."""

    name: str
    kind: str  # binary | classes | numeric
    classes: tuple[Any, ...] | None = None  # binary: (negative, positive)
    lo: float | None = None
    hi: float | None = None

    @property
    def outputs(self) -> int:
        if self.kind == "classes":
            assert self.classes is not None
            return len(self.classes)
        return 1


@dataclass(frozen=True)
class Encoding:
    features: tuple[Feature, ...]
    label: Label

    @property
    def width(self) -> int:
        return sum(f.width for f in self.features)

    def column_names(self) -> list[str]:
        return [n for f in self.features for n in f.column_names()]

    def to_dict(self) -> dict[str, Any]:
        return {"features": [_plain(asdict(f)) for f in self.features],
                "label": _plain(asdict(self.label)),
                "columns": self.column_names(),
                "imputation": "numeric/bool NULL or NaN -> midpoint (0 after scaling to "
                              "[-1, 1]; 0.5 for booleans) plus a missing-indicator column; "
                              "categorical NULL or unlisted value -> the <other> column"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Encoding:
        feats = tuple(Feature(f["name"], f["kind"], f.get("lo"), f.get("hi"),
                              _values(f.get("values")), bool(f.get("temporal")))
                      for f in d["features"])
        lab = d["label"]
        return cls(feats, Label(lab["name"], lab["kind"], _values(lab.get("classes")),
                                lab.get("lo"), lab.get("hi")))

    # -- features -------------------------------------------------------------------

    def encode_columns(self, columns: Sequence[Any]) -> np.ndarray:
        """Engine columns (one per feature, possibly masked arrays) -> float64 matrix."""
        n = len(columns[0]) if columns else 0
        out = np.zeros((n, self.width))
        at = 0
        for f, col in zip(self.features, columns, strict=True):
            _encode_into(f, col, out[:, at:at + f.width])
            at += f.width
        return out

    def encode_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Caller rows keyed by column name (case-insensitive) -> float64 matrix."""
        if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
            raise InvalidRequest("rows must be a list of objects",
                                 hint='e.g. [{"age": 40, "device": "tv"}]')
        lowered = []
        for r in rows:
            if not isinstance(r, Mapping):
                raise InvalidRequest("each row must be an object mapping column names to values",
                                     hint='e.g. {"age": 40, "device": "tv"}')
            lowered.append({str(k).lower(): v for k, v in r.items()})
        columns = [_python_column(f, [r.get(f.name.lower()) for r in lowered])
                   for f in self.features]
        return self.encode_columns(columns)

    # -- label ------------------------------------------------------------------------

    def encode_label(self, col: Any) -> tuple[np.ndarray, np.ndarray]:
        """Engine label column -> (targets for the kept rows, mask of kept rows)."""
        lab = self.label
        data, missing = _split(col)
        if lab.kind == "numeric":
            assert lab.lo is not None and lab.hi is not None
            v = np.asarray(data, dtype=np.float64)
            keep = ~missing & ~np.isnan(v)
            return _scale(v[keep], lab.lo, lab.hi)[:, None], keep
        assert lab.classes is not None
        index = _class_index(lab.classes, data, missing)
        keep = index >= 0
        if lab.kind == "binary":
            return index[keep].astype(np.float64)[:, None], keep
        onehot = np.zeros((int(keep.sum()), len(lab.classes)))
        onehot[np.arange(onehot.shape[0]), index[keep]] = 1.0
        return onehot, keep

    def decode(self, outputs: np.ndarray) -> list[Any]:
        """Model outputs (probabilities or scaled values) -> label values."""
        lab = self.label
        if lab.kind == "numeric":
            assert lab.lo is not None and lab.hi is not None
            mid, half = (lab.hi + lab.lo) / 2.0, (lab.hi - lab.lo) / 2.0
            return [float(v) for v in mid + half * np.clip(outputs[:, 0], -1.0, 1.0)]
        assert lab.classes is not None
        if lab.kind == "binary":
            return [lab.classes[int(p >= 0.5)] for p in outputs[:, 0]]
        return [lab.classes[int(i)] for i in np.argmax(outputs, axis=1)]


def build_encoding(selection: Selection, model: str) -> Encoding:
    """The encoding of a selection for a model type; rejects labels the model cannot fit."""
    feats = tuple(_feature(c) for c in selection.features)
    return Encoding(feats, _label(selection.label, model))


def _feature(c: SelectedColumn) -> Feature:
    if c.kind == "numeric":
        assert c.bounds is not None
        return Feature(c.name, "numeric", c.bounds[0], c.bounds[1], temporal=c.temporal)
    if c.kind == "bool":
        return Feature(c.name, "bool")
    return Feature(c.name, "categorical", values=c.values)


MAX_CLASSES = 100


def _label(c: SelectedColumn, model: str) -> Label:
    classes: tuple[Any, ...] | None = None
    if c.kind == "bool":
        classes = (False, True)
    elif c.kind == "categorical":
        classes = c.values
    elif c.kind == "numeric" and c.bounds is not None and not c.temporal:
        lo, hi = c.bounds
        if lo.is_integer() and hi.is_integer() and hi - lo + 1 <= MAX_CLASSES and \
                model != "linear":
            classes = tuple(int(v) for v in range(int(lo), int(hi) + 1))
    if model == "linear" or (model == "mlp" and classes is None):
        if c.kind == "bool":
            return Label(c.name, "numeric", lo=0.0, hi=1.0)
        if c.kind != "numeric" or c.bounds is None or c.bounds[0] == c.bounds[1]:
            raise InvalidRequest(
                f"regression needs a numeric label with bounds; {c.name!r} is {c.kind}",
                hint="use model='logistic' or 'softmax' for a categorical label")
        return Label(c.name, "numeric", lo=c.bounds[0], hi=c.bounds[1])
    if classes is None or len(classes) < 2:
        raise InvalidRequest(
            f"classification needs a label with at least two public values; {c.name!r} has "
            f"none", hint="use a bool label, a text label with public_values, or model='linear'")
    if model == "logistic":
        if len(classes) != 2:
            raise InvalidRequest(
                f"logistic regression needs a binary label; {c.name!r} has {len(classes)} "
                f"classes", hint="use model='softmax' for several classes")
        return Label(c.name, "binary", classes=classes)
    if model == "mlp" and len(classes) == 2:
        return Label(c.name, "binary", classes=classes)
    return Label(c.name, "classes", classes=classes)


# -- column helpers ---------------------------------------------------------------------

def _split(col: Any) -> tuple[np.ndarray, np.ndarray]:
    """(data, missing) of an engine column, masked array or not."""
    if isinstance(col, np.ma.MaskedArray):
        return np.ma.getdata(col), np.ma.getmaskarray(col).copy()
    arr = np.asarray(col)
    if arr.dtype == object:
        return arr, np.array([v is None for v in arr], dtype=bool)
    return arr, np.zeros(arr.shape[0], dtype=bool)


def _scale(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi == lo:
        return np.zeros_like(v)
    out = (v - lo) * (2.0 / (hi - lo)) - 1.0
    return np.clip(out, -1.0, 1.0)


def _numeric(f: Feature, data: np.ndarray) -> np.ndarray:
    if f.temporal and np.issubdtype(data.dtype, np.datetime64):
        us = (data.astype("datetime64[us]") - EPOCH).astype(np.float64)
        return us / _DAY_US
    if f.temporal and data.dtype == object:
        return np.array([_days(v) for v in data], dtype=np.float64)
    return np.asarray(data, dtype=np.float64)


def _encode_into(f: Feature, col: Any, out: np.ndarray) -> None:
    data, missing = _split(col)
    if f.kind == "categorical":
        assert f.values is not None
        index = _class_index(f.values, data, missing)
        index[index < 0] = len(f.values)
        out[np.arange(out.shape[0]), index] = 1.0
        return
    if f.kind == "bool":
        v = np.where(missing, 0.5, np.asarray(data, dtype=bool).astype(np.float64))
    else:
        assert f.lo is not None and f.hi is not None
        raw = np.where(missing, np.nan, _numeric(f, data))
        missing = missing | np.isnan(raw)
        v = np.where(missing, 0.0, _scale(np.nan_to_num(raw), f.lo, f.hi))
    out[:, 0] = v
    out[:, 1] = missing


def _class_index(values: tuple[Any, ...], data: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Index of each value among the public values; -1 for NULL or unlisted values."""
    lookup = {_key(v): i for i, v in enumerate(values)}
    index = np.fromiter((lookup.get(_key(v), -1) for v in data), dtype=np.int64,
                        count=len(data))
    index[missing] = -1
    return index


def _key(v: Any) -> Any:
    """Normalise values so 1 == 1.0 == True do not collide and numpy scalars match."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, int | float):
        return ("n", float(v))
    if isinstance(v, dt.date):  # dates travel as ISO strings in the stored encoding
        return ("s", v.isoformat())
    return ("s", str(v))


def _days(v: Any) -> float:
    if v is None:
        return np.nan
    if isinstance(v, dt.datetime):
        return v.timestamp() / 86400.0
    if isinstance(v, dt.date):
        return float((v - dt.date(1970, 1, 1)).days)
    if isinstance(v, str):
        try:
            return _days(dt.datetime.fromisoformat(v) if "T" in v or " " in v
                         else dt.date.fromisoformat(v))
        except ValueError:
            return np.nan
    return np.nan


def _python_column(f: Feature, values: list[Any]) -> np.ndarray:
    """Caller values of one feature as an object column (None = missing)."""
    col = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        if f.kind == "numeric":
            if f.temporal:
                v = _days(v)
            elif isinstance(v, bool) or not isinstance(v, int | float):
                try:
                    v = float(v) if v is not None and not isinstance(v, bool) else None
                except (TypeError, ValueError):
                    v = None
        elif f.kind == "bool" and not isinstance(v, bool):
            v = None
        col[i] = v
    if f.kind == "numeric":
        return np.ma.masked_array(
            np.array([np.nan if v is None else v for v in col], dtype=np.float64),
            mask=np.array([v is None for v in col]))
    return col


def _values(v: Any) -> tuple[Any, ...] | None:
    return tuple(v) if v is not None else None


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, tuple):
            v = [x.isoformat() if hasattr(x, "isoformat") else x for x in v]
        out[k] = v
    return out
