"""Encoding uses public metadata only: bounds, public values, documented imputation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gateway import Gateway
from gateway.errors import InvalidRequest
from gateway.sql.selection import SelectedColumn, Selection, select_training_rows
from gateway.training.encoding import Encoding, Feature, Label, build_encoding

ENC = Encoding(
    (Feature("x", "numeric", 0.0, 10.0), Feature("b", "bool"),
     Feature("c", "categorical", values=("p", "q"))),
    Label("y", "binary", classes=(False, True)))


def test_numeric_scaled_clamped_and_imputed() -> None:
    x = np.ma.masked_array([0.0, 5.0, 10.0, 20.0, -3.0, np.nan, 1.0], mask=[0, 0, 0, 0, 0, 0, 1])
    b = np.ma.masked_array([True, False, True, False, True, False, True],
                           mask=[0, 0, 0, 0, 0, 1, 0])
    c = np.array(["p", "q", "r", None, "p", "q", "p"], dtype=object)
    out = ENC.encode_columns([x, b, c])
    assert out[:, 0].tolist() == [-1.0, 0.0, 1.0, 1.0, -1.0, 0.0, 0.0]  # [-1, 1], clamped
    assert out[:, 1].tolist() == [0, 0, 0, 0, 0, 1, 1]  # NaN and NULL flagged
    assert out[:, 2].tolist() == [1, 0, 1, 0, 1, 0.5, 1]  # NULL bool -> 0.5
    assert out[:, 3].tolist() == [0, 0, 0, 0, 0, 1, 0]
    onehot = out[:, 4:]
    assert onehot.sum(axis=1).tolist() == [1] * 7
    assert onehot[:, 2].tolist() == [0, 0, 1, 1, 0, 0, 0]  # unlisted and NULL -> <other>
    assert ENC.column_names() == ["x", "x:missing", "b", "b:missing", "c=p", "c=q", "c=<other>"]


def test_caller_rows_encode_like_engine_columns() -> None:
    rows = [{"x": 5, "B": True, "c": "q"}, {"c": "zzz"}, {"x": "not a number", "b": 1}]
    out = ENC.encode_rows(rows)
    assert out[0].tolist() == [0.0, 0, 1, 0, 0, 1, 0]
    assert out[1].tolist() == [0.0, 1, 0.5, 1, 0, 0, 1]
    assert out[2].tolist() == [0.0, 1, 0.5, 1, 0, 0, 1]
    with pytest.raises(InvalidRequest):
        ENC.encode_rows([1, 2])  # type: ignore[list-item]


def test_labels() -> None:
    y, keep = ENC.encode_label(np.ma.masked_array([True, False, True], mask=[0, 0, 1]))
    assert y[:, 0].tolist() == [1.0, 0.0] and keep.tolist() == [True, True, False]
    reg = Encoding((), Label("t", "numeric", lo=-10.0, hi=10.0))
    y, keep = reg.encode_label(np.array([-10.0, 0.0, 30.0, np.nan]))
    assert y[:, 0].tolist() == [-1.0, 0.0, 1.0] and keep.tolist() == [True, True, True, False]
    assert reg.decode(np.array([[0.5], [2.0]])) == [5.0, 10.0]
    multi = Encoding((), Label("k", "classes", classes=("a", "b", "c")))
    y, keep = multi.encode_label(np.array(["c", "x", "a"], dtype=object))
    assert y.tolist() == [[0, 0, 1], [1, 0, 0]] and keep.tolist() == [True, False, True]
    assert multi.decode(np.array([[0.1, 0.7, 0.2]])) == ["b"]


def test_round_trip_through_json() -> None:
    back = Encoding.from_dict(json.loads(json.dumps(ENC.to_dict())))
    assert back == ENC


def test_encoding_depends_on_the_policy_not_the_data(shared_gw: Gateway) -> None:
    sql = "SELECT x1, device, flag, y FROM events"
    full = select_training_rows(sql, "y", shared_gw._context, shared_gw._tables)
    none = select_training_rows(sql + " WHERE x1 > 100", "y", shared_gw._context,
                                shared_gw._tables)  # selects no rows
    assert build_encoding(full, "logistic") == build_encoding(none, "logistic")


@pytest.mark.parametrize(("label", "model", "message"), [
    (SelectedColumn("k", "categorical", values=("a", "b", "c")), "logistic", "binary"),
    (SelectedColumn("k", "categorical", values=("a", "b")), "linear", "numeric"),
    (SelectedColumn("k", "numeric", bounds=(0.0, 1e6)), "softmax", "two public values"),
])
def test_label_must_suit_the_model(label: SelectedColumn, model: str, message: str) -> None:
    sel = Selection("", (SelectedColumn("x", "bool"),), label, None, 1,  # type: ignore[arg-type]
                    frozenset())
    with pytest.raises(InvalidRequest, match=message):
        build_encoding(sel, model)
