"""Utility: DP models come close to the non-private fit of the same model.

The data (conftest) has ~20k units with 1-5 rows each and known signals; the
non-private baseline is fitted on all rows with the model's own encoding.
Seeds are fixed, so these are deterministic; with fresh seeds the margins
below are several times the run-to-run spread we measured.
"""

from __future__ import annotations

import numpy as np

from gateway import Gateway
from gateway.training.model import TrainedModel
from gateway.training.nonprivate import fit_nonprivate
from tests.training.conftest import Synth, rows


def _baseline(m: TrainedModel, synth: Synth, features: list[str]) -> list:  # type: ignore[type-arg]
    x = m.encoding.encode_rows(rows(synth.train, features))
    y, keep = m.encoding.encode_label(synth.train[m.label].to_numpy())
    params = fit_nonprivate(m.network, x[keep], y)
    return m.encoding.decode(m.network.predict(params, m.encoding.encode_rows(
        rows(synth.test, features))))


def test_logistic_at_epsilon_1_is_within_3_points(gw: Gateway, synth: Synth) -> None:
    features = ["x1", "x2", "age", "device", "flag"]
    m = gw.train("SELECT x1, x2, age, device, flag, y FROM events", label="y",
                 model="logistic", epsilon=1.0, delta=1e-5, analyst="u")
    truth = synth.test.y.to_numpy()
    dp = np.mean(np.array(m.predict(rows(synth.test, features))) == truth)
    base = np.mean(np.array(_baseline(m, synth, features)) == truth)
    assert base > 0.74  # the signal is there
    assert dp >= base - 0.03


def test_linear_regression_r2_within_0_05(gw: Gateway, synth: Synth) -> None:
    features = ["x1", "x2", "age"]
    m = gw.train("SELECT x1, x2, age, target FROM events", label="target", model="linear",
                 epsilon=1.0, delta=1e-5, analyst="u")
    truth = synth.test.target.to_numpy()

    def r2(pred: list) -> float:  # type: ignore[type-arg]
        return 1.0 - float(np.mean((np.array(pred) - truth) ** 2) / np.var(truth))

    base = r2(_baseline(m, synth, features))
    assert base > 0.9
    assert r2(m.predict(rows(synth.test, features))) >= base - 0.05


def test_softmax_learns_a_separable_problem(gw: Gateway, synth: Synth) -> None:
    m = gw.train("SELECT x1, x2, cls FROM events", label="cls", model="softmax",
                 epsilon=1.0, delta=1e-5, analyst="u")
    pred = np.array(m.predict(rows(synth.test, ["x1", "x2"])))
    assert np.mean(pred == synth.test.cls.to_numpy()) > 0.93
    assert set(m.coefficients() or {}) == {"a", "b", "c"}


def test_mlp_learns_what_a_linear_model_cannot(gw: Gateway, synth: Synth) -> None:
    sql = "SELECT x1, x2, checker FROM events"
    truth = synth.test.checker.to_numpy()
    mlp = gw.train(sql, label="checker", model="mlp", epsilon=2.0, delta=1e-5, analyst="u",
                   hidden=[16])
    glm = gw.train(sql, label="checker", model="logistic", epsilon=2.0, delta=1e-5,
                   analyst="u")
    test = rows(synth.test, ["x1", "x2"])
    assert np.mean(np.array(mlp.predict(test)) == truth) > 0.93
    assert np.mean(np.array(glm.predict(test)) == truth) < 0.7
    two = gw.train(sql, label="checker", model="mlp", epsilon=2.0, delta=1e-5, analyst="u",
                   hidden=[8, 8], activation="relu")
    assert len(two.weights or []) == 6
    assert np.mean(np.array(two.predict(test)) == truth) > 0.85
