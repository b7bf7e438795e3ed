"""`gateway serve` as a process, and the CLI's remote mode.

Graceful SIGTERM (a request in flight still gets its answer, exit code 0), the
demo analyst of `make run` (created once, its printed curl line and Python
snippet work as printed), the PostgreSQL-wire proxy beside HTTP, and
`gateway query --url URL --key KEY` printing a table.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.api.live import ROOT, LiveServer, add_analysts, free_port, write_policy

# Hundreds of public groups with several statistics each: seconds of work.
SLOW = ("SELECT country, device, COUNT(*) AS n, SUM(spend) AS s, AVG(duration_s) AS d, "
        "STDDEV(age) AS a FROM visits GROUP BY country, device")


def test_sigterm_finishes_requests_in_flight_then_exits_0(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, per_analyst=(10.0, 0.0))
    key = add_analysts(policy, tmp_path / "state.db", {"sam": {}})["sam"]
    server = LiveServer(policy, tmp_path / "state.db").start()
    answers: list[httpx.Response] = []

    c = server.client(key)
    assert c.get("/v1/budget").status_code == 200  # the connection is open

    def ask() -> None:
        answers.append(c.post("/v1/query", json={"sql": SLOW, "epsilon": 0.5}))

    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(0.5)  # the request has arrived and is being served
    assert server.stop(timeout_s=60) == 0, server.output()
    asker.join(60)
    c.close()
    assert [a.status_code for a in answers] == [200], server.output()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/healthz", timeout=2)


def test_demo_analyst_is_created_once_and_the_banner_works(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, per_analyst=(4.0, 0.0))
    state = tmp_path / "state.db"
    server = LiveServer(policy, state, args=["--demo"]).start()
    try:
        banner = server.output()
        keys = re.findall(r"dpg_[A-Za-z0-9_-]+", banner)
        assert keys and len(set(keys)) == 1, banner
        key = keys[0]
        curl = next(line.strip() for line in banner.splitlines()
                    if line.strip().startswith("curl "))
        if shutil.which("curl"):
            out = subprocess.run(shlex.split(curl), capture_output=True, text=True,
                                 timeout=60, check=True).stdout
            assert '"epsilon_spent"' in out, out
        snippet = banner.split("Or from Python:")[1].split("API docs:")[0]
        code = "\n".join(line.strip() for line in snippet.strip().splitlines())
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, cwd=ROOT)
        assert run.returncode == 0, run.stderr
        assert "desktop" in run.stdout and "'analyst': 'demo'" in run.stdout
    finally:
        server.stop()

    again = LiveServer(policy, state, args=["--demo"], log=tmp_path / "second.log").start()
    try:
        second = again.output()
        assert "already exists" in second and "gateway analyst add" in second
        assert not re.findall(r"dpg_[A-Za-z0-9_-]+", second)  # no new key, none reprinted
        with httpx.Client(base_url=again.url, headers={"Authorization": f"Bearer {key}"}) as c:
            assert c.get("/v1/budget").json()["analyst"] == "demo"  # the first key still works
    finally:
        again.stop()


def test_pgwire_proxy_starts_beside_http_or_is_reported_missing(tmp_path: Path) -> None:
    policy = write_policy(tmp_path)
    pg_port = free_port()
    server = LiveServer(policy, tmp_path / "state.db", pg_port=pg_port,
                        args=["--log-level", "info"]).start()
    try:
        log = server.output()
        if "PostgreSQL-wire proxy is unavailable" in log:
            return  # the proxy is not installed in this build: HTTP alone serves
        assert "PostgreSQL-wire proxy on" in log, log
        with socket.create_connection(("127.0.0.1", pg_port), timeout=10):
            pass
    finally:
        assert server.stop() == 0


def test_serve_without_policy_fails_clearly(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--policy",
                          str(tmp_path / "nope.yaml"), "--state", str(tmp_path / "s.db"),
                          "--no-pg"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "no policy file" in run.stderr


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("remote")
    policy = write_policy(folder)
    state = folder / "state.db"
    keys = add_analysts(policy, state, {"rita": {"epsilon": 5.0}, "poor": {"epsilon": 0.01}})
    server = LiveServer(policy, state).start()
    try:
        yield server, keys
    finally:
        server.stop()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_cli_query_against_a_server_prints_a_table(remote) -> None:  # type: ignore[no-untyped-def]
    server, keys = remote
    run = cli("query", "--url", server.url, "--key", keys["rita"], "--epsilon", "0.2",
              "SELECT device, COUNT(*) AS n FROM visits GROUP BY device ORDER BY device")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert re.match(r"device\s*\|\s*n", lines[0]) and set(lines[1]) <= {"-", "+"}
    assert lines[2].startswith("desktop") and lines[-1] == "(4 rows)"
    assert "epsilon spent 0.2" in run.stderr
    budget = cli("budget", "--url", server.url, "--key", keys["rita"])
    assert budget.returncode == 0 and '"analyst": "rita"' in budget.stdout
    explain = cli("explain", "--url", server.url, "--key", keys["rita"],
                  "SELECT COUNT(*) FROM visits")
    assert explain.returncode == 0 and '"epsilon_cost"' in explain.stdout


def test_cli_remote_errors_have_the_in_process_exit_codes(remote) -> None:  # type: ignore[no-untyped-def]
    server, keys = remote
    rejected = cli("query", "--url", server.url, "--key", keys["rita"],
                   "SELECT user_id FROM visits")
    assert rejected.returncode == 2 and rejected.stderr.startswith("rejected:")
    assert "at: 'user_id'" in rejected.stderr
    poor = cli("query", "--url", server.url, "--key", keys["poor"], "--epsilon", "0.5",
               "SELECT COUNT(*) FROM visits")
    assert poor.returncode == 3 and poor.stderr.startswith("budget exceeded:")
    bad = cli("budget", "--url", server.url, "--key", "dpg_nope")
    assert bad.returncode == 1 and "API key" in bad.stderr


def test_access_log_never_holds_a_key_sent_in_a_url(tmp_path: Path) -> None:
    """A key in a query string is refused, and the access log keeps the path only."""
    policy = write_policy(tmp_path, per_analyst=(10.0, 0.0))
    key = add_analysts(policy, tmp_path / "state.db", {"sam": {}})["sam"]
    server = LiveServer(policy, tmp_path / "state.db",
                        args=["--access-log", "--log-level", "info", "--no-pg"]).start()
    try:
        r = httpx.get(f"{server.url}/v1/budget?key={key}&api_key={key}", timeout=10)
        assert r.status_code == 401
        ok = httpx.get(f"{server.url}/v1/budget", timeout=10,
                       headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
    finally:
        server.stop(timeout_s=30)
    out = server.output()
    assert "/v1/budget" in out and "<query removed>" in out, out
    assert key not in out


@pytest.mark.parametrize(("taken", "flag"), [("http", "--http-port"), ("pg", "--no-pg")])
def test_a_port_in_use_is_named_without_a_traceback(tmp_path: Path, taken: str,
                                                    flag: str) -> None:
    policy = write_policy(tmp_path, per_analyst=(10.0, 0.0))
    http_port, pg_port = free_port(), free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", http_port if taken == "http" else pg_port))
        s.listen()
        out = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(policy),
             "--state", str(tmp_path / "s.db"), "--http-port", str(http_port),
             "--pg-port", str(pg_port)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2
    assert "already in use" in out.stderr and flag in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
