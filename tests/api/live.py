"""A real `gateway serve` process for tests: free port, own policy and state, /healthz wait.

Tests of the HTTP adapter run against this (not only the in-process ASGI app),
so what they check is what a client on the network sees: uvicorn, signals,
threads and the SQLite ledger shared with other processes included.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data"


def write_policy(folder: Path, *, dataset: tuple[float, float] = (100.0, 0.0),
                 per_analyst: tuple[float, float] = (1.0, 0.0), **limits: Any) -> Path:
    """policies/web.yaml over the sample data with the budgets the HTTP tests need."""
    data = yaml.safe_load((ROOT / "policies" / "web.yaml").read_text())
    data["tables"]["visits"]["source"] = str(SAMPLE / "visits.parquet")
    data["tables"]["countries"]["source"] = str(SAMPLE / "countries.csv")
    data["budget"] = {"dataset": {"epsilon": dataset[0], "delta": dataset[1]},
                      "per_analyst": {"epsilon": per_analyst[0], "delta": per_analyst[1]}}
    if limits:
        data["limits"] = {**data.get("limits", {}), **limits}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def add_analysts(policy: Path, state: Path, specs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Create analysts on a state file (before or while a server uses it); name -> key."""
    from gateway.service import Gateway

    with Gateway.open(policy, state) as gw:
        return {name: gw.add_analyst(name, **spec) for name, spec in specs.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """``gateway serve`` as a child process; ``log`` holds its stdout and stderr."""

    def __init__(self, policy: Path, state: Path, *, args: Sequence[str] = (),
                 log: Path | None = None, pg_port: int | None = None) -> None:
        self.policy, self.state, self.args = policy, state, list(args)
        self.pg_port = pg_port
        self.log = log or state.with_suffix(".log")
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> LiveServer:
        self.port = free_port()
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(self.policy),
               "--state", str(self.state), "--http-port", str(self.port),
               *(["--no-pg"] if self.pg_port is None else ["--pg-port", str(self.pg_port)]),
               "--log-level", "warning", *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway serve exited early:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"gateway serve did not become healthy:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait: the graceful path."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL: the crash path."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def client(self, key: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0, **kw)


PROBLEM_MEMBERS = {"type", "title", "status", "detail"}


def assert_problem(resp: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    """The one error shape (RFC 9457), pinned here and reused for every endpoint."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].split(";")[0] == "application/problem+json"
    body = resp.json()
    assert set(body) >= PROBLEM_MEMBERS, body
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if type_ is not None:
        assert body["type"] == type_, body
    text = resp.text
    assert "Traceback" not in text and 'File "' not in text, text
    if status == 401:
        assert resp.headers["www-authenticate"].startswith("Bearer")
    if status == 503:
        assert int(resp.headers["retry-after"]) >= 1
    return body  # type: ignore[no-any-return]
