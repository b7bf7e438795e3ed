"""The Gateway's training API (DESIGN §1.2): contract, jobs, registry, predict, CLI."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest

from gateway import Gateway
from gateway.cli.train import add_train_parser, run_train
from gateway.errors import InvalidRequest, NotFound
from tests.support import WEB_POLICY
from tests.training.conftest import Synth

PUBLIC_KEYS = {"model_id", "status", "progress", "model", "analyst", "sql", "label",
               "policy_version", "epsilon_spent", "delta_spent", "privacy", "hyper_parameters",
               "metrics", "encoding", "architecture", "coefficients", "error", "created",
               "updated", "weights"}


def test_contract_example_on_the_web_policy(tmp_path: Path) -> None:
    with Gateway.open(WEB_POLICY, state=tmp_path / "state.db") as gw:
        m = gw.train("SELECT age, duration_s, device, converted FROM visits",
                     label="converted", model="logistic", epsilon=1.0, delta=1e-6,
                     analyst="alice")
        assert isinstance(m.id, str) and m.status == "done"
        assert 0.9 < m.epsilon_spent <= 1.0 and m.delta_spent == 1e-6
        assert isinstance(m.metrics, dict)
        pred = m.predict([{"age": 40, "duration_s": 120, "device": "tv"}])
        assert len(pred) == 1 and isinstance(pred[0], bool)
        spent = gw.budget("alice")
        # One charge, committed before any row was read, settled to the exact events.
        assert spent["epsilon_spent"] <= 1.0 + 1e-9 and spent["charges"] == 1
        d = gw.model(gw.analyst("alice"), m.id)
        assert set(d) == PUBLIC_KEYS
        assert d["privacy"]["units_source"] == "dp_count"
        assert {"noise_multiplier", "sampling_rate", "steps", "clip", "epsilon",
                "delta"} <= set(d["privacy"])
        assert d["sql"].startswith("SELECT age") and d["policy_version"] == gw.policy.version


def test_submit_returns_at_once_and_reports_progress(gw: Gateway) -> None:
    who = gw.ledger.ensure_analyst("erin")
    start = time.monotonic()
    model_id = gw.submit_training(who, "SELECT x1, x2, device, y FROM events", "y",
                                  "logistic", 1.0, 1e-5, epochs=20, batch_size=200)
    charged = gw.budget_of(who)["epsilon_spent"]
    # Charged (count, then DP-SGD) before training started.
    assert sum(c["epsilon"] for c in gw.ledger.charges("erin")) == pytest.approx(
        gw.model(who, model_id)["epsilon_spent"])
    first = gw.model(who, model_id)
    assert first["status"] in ("queued", "running", "done")
    seen = {first["status"]}
    progress = [first["progress"]]
    while first["status"] not in ("done", "failed") and time.monotonic() - start < 60:
        time.sleep(0.05)
        first = gw.model(who, model_id)
        seen.add(first["status"])
        progress.append(first["progress"])
    assert first["status"] == "done", first["error"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert first["weights"] and first["coefficients"]["weights"]
    assert gw.budget_of(who)["epsilon_spent"] == charged  # nothing charged afterwards


def test_registry_is_per_analyst_and_predict_is_free(gw: Gateway) -> None:
    m = gw.train("SELECT x1, device, y FROM events", label="y", epsilon=0.5, analyst="fay",
                 epochs=1)
    fay, gus = gw.analyst("fay"), gw.ledger.ensure_analyst("gus")
    listed = gw.models(fay)
    assert [x["model_id"] for x in listed] == [m.id] and "weights" not in listed[0]
    assert gw.models(gus) == []
    with pytest.raises(NotFound):
        gw.model(gus, m.id)
    with pytest.raises(NotFound):
        gw.predict(gus, m.id, [{"x1": 1.0}])
    before = gw.budget_of(fay)
    out = gw.predict(fay, m.id, [{"x1": 2.5, "device": "a"}, {"x1": -2.5}, {}])
    assert len(out) == 3 and all(isinstance(v, bool) for v in out)
    assert gw.budget_of(fay) == before
    gw.add_analyst("root", admin=True)
    assert [x["model_id"] for x in gw.models(gw.analyst("root"))] == [m.id]


def test_dp_holdout_evaluation_is_labelled_and_charged(gw: Gateway) -> None:
    m = gw.train("SELECT x1, x2, age, device, flag, y FROM events", label="y", epsilon=1.0,
                 delta=1e-5, analyst="hal", holdout=0.1)
    ev = m.metrics["dp_holdout"]
    assert ev["kind"] == "dp_holdout_evaluation" and "differentially private" in ev["note"]
    assert ev["metric"] == "accuracy" and 0.68 < ev["value"] < 0.85
    assert ev["epsilon"] == pytest.approx(0.1)
    assert m.epsilon_spent <= 1.0 and m.privacy["eval_epsilon"] == pytest.approx(0.1)
    reg = gw.train("SELECT x1, x2, target FROM events", label="target", model="linear",
                   epsilon=1.0, delta=1e-5, analyst="hal", holdout=0.2)
    assert reg.metrics["dp_holdout"]["metric"] == "mse"
    assert reg.metrics["dp_holdout"]["rmse_in_label_units"] < 2.0


def test_public_unit_estimate_row_level_tables_and_given_sigma(gw: Gateway) -> None:
    m = gw.train("SELECT x1, y FROM flat", label="y", epsilon=1.0, delta=1e-5, analyst="ida",
                 units=60_000, epochs=1)
    assert m.privacy["units_source"] == "public" and m.privacy["units_estimate"] == 60_000
    assert m.privacy["count_epsilon"] == 0.0 and m.privacy["max_rows_per_unit"] == 1
    assert [c["kind"] for c in gw.ledger.charges("ida")] == ["train"]
    s = gw.train("SELECT x1, y FROM events", label="y", delta=1e-5, analyst="ida",
                 noise_multiplier=3.0, epochs=1, units=20_000)
    assert s.privacy["noise_multiplier"] == 3.0 and s.epsilon_spent < 1.0
    # Without epsilon or a public unit count the cost is unknown before reading: refused.
    before = len(gw.ledger.charges("ida"))
    with pytest.raises(InvalidRequest, match="before any row is read"):
        gw.train("SELECT x1, y FROM events", label="y", delta=1e-5, analyst="ida",
                 noise_multiplier=3.0, epochs=1)
    assert len(gw.ledger.charges("ida")) == before


def test_bad_requests(gw: Gateway) -> None:
    for kwargs, words in [({"epoch": 3}, "unknown training parameter"),
                          ({"hidden": [8]}, "only for model='mlp'"),
                          ({"holdout": 0.9}, "holdout"),
                          ({"model": "forest"}, "unknown model"),
                          ({"delta": 0.0}, "delta")]:
        args = {"model": "logistic", "epsilon": 1.0, "delta": 1e-5, **kwargs}
        with pytest.raises(InvalidRequest, match=words):
            gw.train("SELECT x1, y FROM events", label="y", analyst="jo", **args)
    with pytest.raises(InvalidRequest, match="binary"):
        gw.train("SELECT x1, cls FROM events", label="cls", model="logistic", epsilon=1.0,
                 analyst="jo")
    assert gw.ledger.charges("jo") == []


def test_cli_train_prints_model_and_progress(synth: Synth, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    common = ["--policy", str(synth.policy), "--state", str(tmp_path / "s.db")]
    args = parser.parse_args(["train", "SELECT x1, x2, y FROM events", "--label", "y",
                              "--epsilon", "0.5", "--delta", "1e-5", "--epochs", "1",
                              "--json", *common])
    assert run_train(args) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["status"] == "done"
    assert "training [" in err and "100.0%" in err
    args = parser.parse_args(["train", "SELECT user_id, y FROM events", "--label", "y",
                              *common])
    assert run_train(args) == 2
    assert "rejected" in capsys.readouterr().err
