"""Server behaviour: timeouts, limits, TLS, auth options, shutdown, `gateway serve`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import errors

from tests.pgwire.conftest import ServerThread, run_client


@pytest.fixture(scope="module")
def strict(policy_path: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerThread]:
    """A second server with tight limits and cleartext keys enabled."""
    srv = ServerThread(policy_path, tmp_path_factory.mktemp("strict") / "state.db",
                       idle_timeout_s=1.0, catalog_timeout_s=0.5, max_connections=3,
                       auth_methods=("password",))
    yield srv
    srv.close()


def test_idle_sessions_are_closed(strict: ServerThread) -> None:
    with psycopg.connect(strict.dsn(*strict.analyst()), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        time.sleep(2.5)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")


def test_long_catalog_queries_are_interrupted(strict: ServerThread) -> None:
    with psycopg.connect(strict.dsn(*strict.analyst()), autocommit=True) as conn:
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT count(*) FROM pg_attribute a, pg_attribute b, "
                         "pg_attribute c, pg_attribute d")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_connection_limit(strict: ServerThread) -> None:
    user, key = strict.analyst()
    conns = [psycopg.connect(strict.dsn(user, key)) for _ in range(3)]
    try:
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            psycopg.connect(strict.dsn(user, key))
    finally:
        for c in conns:
            c.close()


def test_cleartext_keys_only_when_enabled(pg: ServerThread, strict: ServerThread) -> None:
    user, key = strict.analyst()
    with psycopg.connect(strict.dsn(user, key, require_auth="password")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)
    with pytest.raises(psycopg.OperationalError):  # the default server offers SCRAM only
        psycopg.connect(pg.dsn(*pg.analyst(), require_auth="password"))
    with psycopg.connect(pg.dsn(*pg.analyst(), require_auth="scram-sha-256")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_stop_terminates_sessions_with_57P01(policy_path: Path, tmp_path: Path) -> None:
    srv = ServerThread(policy_path, tmp_path / "state.db")
    try:
        conn = psycopg.connect(srv.dsn(*srv.analyst()), autocommit=True)
        srv.call(srv.server.stop())
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()
    finally:
        srv.close()


def test_protocol_garbage_is_refused_cleanly(pg: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", pg.port), timeout=10) as s:
        s.sendall(b"\x00\x00\x00\x08\x00\x02\x00\x00")  # protocol 2.0
        reply = s.recv(1024)
    assert reply[:1] == b"E" and b"0A000" in reply
    user, key = pg.analyst()
    with psycopg.connect(pg.dsn(user, key)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_with_a_configured_certificate(policy_path: Path, tmp_path: Path) -> None:
    cert, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(keyfile), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, keyfile)
    srv = ServerThread(policy_path, tmp_path / "state.db", ssl_context=ctx, ssl_required=True)
    try:
        user, key = srv.analyst()
        out = run_client(_TLS, srv.dsn(user, key, sslmode="require"))
        assert out == {"ssl": True, "one": 1}
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(srv.dsn(user, key, sslmode="disable"))
    finally:
        srv.close()


_TLS = """
import json, sys
import psycopg
with psycopg.connect(sys.argv[1]) as conn:
    one = conn.execute("SELECT 1").fetchone()[0]
    print(json.dumps({"ssl": conn.pgconn.ssl_in_use, "one": one}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gateway_cli() -> list[str]:
    exe = Path(sys.executable).with_name("gateway")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gateway.cli"]


def _has_serve() -> bool:
    out = subprocess.run([*_gateway_cli(), "serve", "--help"], capture_output=True, text=True)
    return out.returncode == 0 and "--pg-port" in out.stdout


@pytest.mark.skipif(not _has_serve(), reason="`gateway serve --pg-port` is not available yet")
def test_gateway_serve_runs_http_and_pgwire_on_one_ledger(policy_path: Path, tmp_path: Path
                                                         ) -> None:
    state = tmp_path / "state.db"
    common = ["--policy", str(policy_path), "--state", str(state)]
    key = subprocess.run([*_gateway_cli(), "analyst", "add", "eve", *common], check=True,
                         capture_output=True, text=True, timeout=60).stdout.strip()
    http_port, pg_port = _free_port(), _free_port()
    proc = subprocess.Popen([*_gateway_cli(), "serve", *common, "--http-port", str(http_port),
                             "--pg-port", str(pg_port), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        dsn = f"host=127.0.0.1 port={pg_port} user=eve password={key} dbname=bi"
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = psycopg.connect(dsn, autocommit=True, connect_timeout=2)
                break
            except psycopg.OperationalError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "gateway serve did not start"
                time.sleep(0.3)
        with conn:
            conn.execute("SET dp.epsilon = 0.7")
            conn.execute("SELECT city, COUNT(*) FROM visits GROUP BY city").fetchall()
        budget = httpx.get(f"http://127.0.0.1:{http_port}/v1/budget",
                           headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
        assert budget["epsilon_spent"] == pytest.approx(0.7)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0
