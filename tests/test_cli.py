"""The command line (DESIGN §1.6), run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, web_policy


def gateway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120)


def test_analyst_add_prints_only_the_key(tmp_path: Path) -> None:
    policy, state = web_policy(tmp_path), tmp_path / "s.db"
    out = gateway("analyst", "add", "alice", "--epsilon", "3", "--policy", str(policy),
                  "--state", str(state))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and out.stdout.startswith("dpg_")
    listed = gateway("analyst", "list", "--policy", str(policy), "--state", str(state))
    assert "alice" in listed.stdout and " 3 " in listed.stdout
    again = gateway("analyst", "add", "alice", "--policy", str(policy), "--state", str(state))
    assert again.returncode == 1 and "already exists" in again.stderr


def test_query_explain_budget(tmp_path: Path) -> None:
    env = {"GATEWAY_POLICY": str(web_policy(tmp_path)), "GATEWAY_STATE": str(tmp_path / "s.db")}
    q = gateway("query", "SELECT device, COUNT(*) AS n FROM visits GROUP BY device",
                "--epsilon", "0.5", "--analyst", "bob", env=env)
    assert q.returncode == 0, q.stderr
    assert "device" in q.stdout and "mobile" in q.stdout and "(4 rows)" in q.stdout
    assert "epsilon spent 0.5" in q.stderr and "95% within" in q.stderr
    j = gateway("query", "SELECT COUNT(*) FROM visits", "--json", "--analyst", "bob", env=env)
    assert json.loads(j.stdout)["epsilon_spent"] == 0.5
    e = gateway("explain", "SELECT SUM(spend) FROM visits", env=env)
    assert json.loads(e.stdout)["epsilon_cost"] == 0.5
    b = gateway("budget", "bob", env=env)
    assert json.loads(b.stdout)["epsilon_spent"] <= 1.0


def test_rejection_exit_code_and_reason(tmp_path: Path) -> None:
    env = {"GATEWAY_POLICY": str(web_policy(tmp_path)), "GATEWAY_STATE": str(tmp_path / "s.db")}
    out = gateway("query", "SELECT user_id FROM visits", env=env)
    assert out.returncode == 2
    assert "rejected:" in out.stderr and "aggregate" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_policy_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: x\ntables: {}\n")
    out = gateway("query", "SELECT 1", "--policy", str(bad), "--state", str(tmp_path / "s"))
    assert out.returncode == 1 and str(bad) in out.stderr and "Traceback" not in out.stderr


def test_sample_data(tmp_path: Path) -> None:
    out = gateway("sample-data", "--rows", "3000", "--out", str(tmp_path / "d"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d" / "visits.parquet").exists() and "rows" in out.stderr


def test_demo_runs(tmp_path: Path) -> None:
    out = gateway("demo", "--policy", str(web_policy(tmp_path)), "--state", str(tmp_path / "s"))
    assert out.returncode == 0, out.stderr
    assert "Created analyst 'demo'" in out.stdout and "rejected:" in out.stdout
    again = gateway("demo", "--policy", str(web_policy(tmp_path)), "--state",
                    str(tmp_path / "s"))
    assert "cached answer: free" in again.stdout


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`gateway query ... | head -c 7`: 9,636 rows (290 kB, more than a pipe holds) meet a
    reader that goes away; no traceback, exit 0."""
    env = {**os.environ, "GATEWAY_POLICY": str(web_policy(tmp_path)),
           "GATEWAY_STATE": str(tmp_path / "s.db")}
    cmd = (f"{sys.executable} -m gateway.cli query --epsilon 1 'SELECT country, device, age, "
           "COUNT(*) AS n FROM visits GROUP BY country, device, age' | head -c 7")
    out = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert len(out.stdout) == 7
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
    assert out.returncode == 0
