"""bench/compare.py (docs/accuracy.md) on a tiny dataset, so the comparison cannot rot.

The gateway-and-DuckDB half always runs; SmartNoise SQL runs too when ``snsql`` is
importable (the optional ``compare`` extra; CI installs only ``.[dev]``)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from bench import compare
from bench.compare_report import key_figures, summary, write_report

HAS_SN = importlib.util.find_spec("snsql") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
HUGE = 1000.0


def test_relative_errors_count_unreleased_groups_as_100_percent() -> None:
    truth = {"a": 10.0, "b": 0.0, "c": 5.0}
    assert compare.relative_errors(truth, {"a": 12.0, "x": 3.0}) == {"a": 0.2, "c": 1.0}
    assert compare.relative_errors({(): 4.0}, {(): None}) == {(): 1.0}
    assert compare.as_answer([("a", 1), ("b", float("nan"))], True) == {"a": 1.0, "b": None}


def test_ngrams_touch_about_per_user_groups(tmp_path: Path) -> None:
    import duckdb

    path = compare.make_ngrams(40, tmp_path / "ng.parquet", per_user=20, vocab=200)
    per_user = duckdb.sql(f"SELECT COUNT(*) AS n, COUNT(DISTINCT ngram) AS d FROM "
                          f"read_parquet('{path}') GROUP BY user_id").fetchall()
    assert len(per_user) == 40
    assert all(n == d for n, d in per_user)  # one row per distinct (user, n-gram)
    assert 10 <= sorted(n for n, _ in per_user)[20] <= 30


@pytest.mark.skipif(HAS_SN and not HAS_MPL, reason="the compare extra is half installed")
def test_compare_runs_end_to_end_on_tiny_data(tmp_path: Path) -> None:
    argv = ["--rows", "3000", "--reps", "2", "--eps", f"1,{HUGE:g}", "--ngram-users", "30",
            "--ngram-vocab", "300", "--exact-reps", "1", "--data-dir", str(tmp_path / "data"),
            "--out", str(tmp_path / "docs" / "accuracy.md")]
    if not HAS_SN:
        argv.append("--no-smartnoise")
    cfg, out, png_dir = compare.parse_args(argv)
    assert cfg.smartnoise == HAS_SN
    res = compare.run(cfg)
    assert res.systems == (("gateway", "smartnoise") if HAS_SN else ("gateway",))
    assert [q.key for q in res.queries] == [q.key for q in compare.QUERIES]
    assert res.inputs.visits_rows == 3000 and res.inputs.ngram_users == 30

    for q in res.queries:
        info = res.info[q.key]
        assert info.truth, q.key
        for eps in cfg.epsilons:
            g = res.run("gateway", q.key, eps)
            assert g is not None and g.failure is None, (q.key, g and g.failure)
            assert len(g.times_ms) == cfg.reps_for(q)
            # Equal total ε: the gateway charges what it was asked (never more; at a huge ε
            # it may need less); δ only to select groups.
            e, d = g.spent
            assert e <= eps * (1 + 1e-6), (q.key, g.spent)
            if eps == 1:
                assert math.isclose(e, eps, rel_tol=1e-6), (q.key, g.spent)
            assert (d > 0) == q.selection and d <= cfg.delta, (q.key, g.spent)
            if HAS_SN:
                s = res.run("smartnoise", q.key, eps)
                assert s is not None and s.failure is None, (q.key, s and s.failure)
                assert info.sn_mechanisms and ("keycount" in info.sn_mechanisms) == q.grouped
                assert math.isclose(s.spent[0], eps, rel_tol=1e-9), (q.key, s.spent)

    # Distinct users have no bounding bias: at a huge ε the answers are (nearly) exact,
    # which checks that answers and truths are matched up.
    assert res.info["users"].truth[()] == res.inputs.visits_users
    assert res.error("gateway", "users", HUGE) < 1e-3
    assert res.run("gateway", "users_device", HUGE).median_released == 4
    if HAS_SN:
        assert res.error("smartnoise", "users", HUGE) < 1e-2
        assert key_figures(res)["overall"] is not None

    write_report(res, out, png_dir)
    text = out.read_text()
    assert text.startswith("# Accuracy: the gateway against SmartNoise SQL")
    for q in res.queries:
        assert f"`{q.key}`" in text
    if HAS_MPL:
        pngs = sorted(p.name for p in png_dir.glob("*.png"))
        assert "time.png" in pngs and "released_groups.png" in pngs
        assert {f"error_{f}.png" for f in compare.FAMILIES} <= set(pngs)
        assert "(accuracy/time.png)" in text
    else:
        assert "matplotlib is not installed" in text
    lines = summary(res)
    assert "users_ngram" in lines
    assert ("median over queries of (gateway median rel. error" in lines) == HAS_SN
