"""Unit tests of the wire pieces that need no server: types, SQL text, SCRAM, settings."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import hmac
import math

import pytest
import sqlglot
from hypothesis import given
from hypothesis import strategies as st

from gateway.pgwire import sqltext, types
from gateway.pgwire.auth import AuthFailed, ScramExchange, fake_verifier
from gateway.pgwire.errors import PgError
from gateway.pgwire.session import data_oid, provably_empty
from gateway.pgwire.settings import Settings
from gateway.state.keys import scram_verifier

# -- types ------------------------------------------------------------------------------


@given(st.integers(0, 12).flatmap(lambda places: st.decimals(
    allow_nan=False, allow_infinity=False, places=places, min_value=-10**15,
    max_value=10**15)))
def test_numeric_binary_round_trips(d: decimal.Decimal) -> None:
    back = types.decode_param(types.numeric_binary(d), types.NUMERIC, True)
    assert back == d and back.as_tuple().exponent == min(0, d.as_tuple().exponent)


@pytest.mark.parametrize("value, oid, text", [
    (100.0, types.FLOAT8, "100"), (0.1, types.FLOAT8, "0.1"), (1e20, types.FLOAT8, "1e+20"),
    (math.nan, types.FLOAT8, "NaN"), (-math.inf, types.FLOAT8, "-Infinity"),
    (True, types.BOOL, "t"), (5, types.INT8, "5"), (5.6, types.INT8, "6"),
    (decimal.Decimal("1.50"), types.NUMERIC, "1.50"), (3, types.NUMERIC, "3"),
    (dt.date(2024, 1, 2), types.DATE, "2024-01-02"),
    (dt.datetime(2024, 1, 2, 3, 4, 5, 500000), types.TIMESTAMP, "2024-01-02 03:04:05.5"),
    (dt.date(2024, 1, 2), types.TIMESTAMP, "2024-01-02 00:00:00"),
    (["a", None, "b c", ""], 1009, '{a,NULL,"b c",""}'),
    ([1, 2], 1007, "{1,2}"), (b"\x01\xff", types.BYTEA, "\\x01ff"),
])
def test_text_output_matches_postgresql(value: object, oid: int, text: str) -> None:
    assert types.encode(value, oid, False) == text.encode()


@pytest.mark.parametrize("value, oid", [
    (True, types.BOOL), (-7, types.INT2), (123456, types.INT4), (-(2**40), types.INT8),
    (0.5, types.FLOAT8), (dt.date(1999, 12, 31), types.DATE),
    (dt.datetime(2024, 5, 6, 7, 8, 9, 10), types.TIMESTAMP), ("héllo", types.TEXT),
    (decimal.Decimal("-12345.0067"), types.NUMERIC), ([1, None, 3], 1016),
])
def test_binary_values_round_trip(value: object, oid: int) -> None:
    raw = types.encode(value, oid, True)
    assert raw is not None
    assert types.decode_param(raw, oid, True) == value


def test_text_parameters_and_arrays() -> None:
    assert types.decode_param(b"42", types.INT4, False) == 42
    assert types.decode_param(b"t", types.BOOL, False) is True
    assert types.decode_param(b"2024-01-02 03:04:05+00", types.TIMESTAMPTZ, False).tzinfo
    assert types.decode_param(b'{a,"b,c",NULL}', 1009, False) == ["a", "b,c", None]
    assert types.decode_param(b"{1,2}", 1007, False) == [1, 2]
    assert types.decode_param(b"x", 0, False) == "x"  # unknown: kept as text
    with pytest.raises(types.ParamError):
        types.decode_param(b"abc", types.INT4, False)


def test_duckdb_types_map_to_postgres_oids() -> None:
    assert types.duck_oid("BIGINT") == 20 and types.duck_oid("INTEGER") == 23
    assert types.duck_oid("DECIMAL(18,3)") == 1700 and types.duck_oid("UINTEGER") == 26
    assert types.duck_oid("VARCHAR[]") == 1009 and types.duck_oid("STRUCT(a INT)") == 25
    assert data_oid("HUGEINT") == 20 and data_oid("DOUBLE") == 701


# -- SQL text ---------------------------------------------------------------------------


def test_split_statements_respects_strings_comments_and_dollar_quotes() -> None:
    sql = "SELECT 'a;b'; -- x;\nSELECT $$c;d$$ ; SELECT E'e\\';f';;"
    assert sqltext.split_statements(sql) == ["SELECT 'a;b'", "SELECT $$c;d$$",
                                             "SELECT E'e\\';f'"]
    assert sqltext.split_statements("  ;  -- only a comment") == []


def test_bind_renders_safe_literals() -> None:
    sql = "SELECT $1, '$1', x - $2 FROM t WHERE a = $3 -- $1\n AND b = ANY($4)"
    out = sqltext.bind(sql, ["o'k", -5, dt.date(2024, 1, 2), ["a", "b"]])
    assert out == ("SELECT 'o''k', '$1', x - (-5) FROM t WHERE a = CAST('2024-01-02' AS DATE)"
                   " -- $1\n AND b = ANY(ARRAY['a', 'b'])")
    assert sqltext.count_params(sql) == 4
    with pytest.raises(PgError):
        sqltext.bind("SELECT $2", [1])


@given(st.text())
def test_bound_strings_are_one_literal(s: str) -> None:
    tree = sqlglot.parse_one(sqltext.bind("SELECT $1 AS v", [s.replace("\x00", "")]),
                             dialect="postgres")
    assert tree.expressions[0].this.this == s.replace("\x00", "")


def test_session_command_grammar() -> None:
    assert sqltext.parse_set("SET LOCAL dp.epsilon TO 0.2")[0] == sqltext.SetCommand(
        "dp.epsilon", "0.2", True)
    assert sqltext.parse_set("set time zone 'UTC'")[0].value == "UTC"
    assert sqltext.parse_set("SET search_path = public, \"$user\"")[0].value == \
        'public, "$user"'
    assert sqltext.parse_show("SHOW TRANSACTION ISOLATION LEVEL") == "transaction_isolation"
    assert sqltext.parse_fetch('FETCH 10 IN "Cur"') == sqltext.Fetch("Cur", "forward", 10)
    assert sqltext.parse_fetch("FETCH ALL c") == sqltext.Fetch("c", "forward", None)
    d = sqltext.parse_declare('DECLARE "C1" NO SCROLL CURSOR WITH HOLD FOR SELECT 1')
    assert (d.name, d.hold, d.query) == ("C1", True, "SELECT 1")
    assert sqltext.classify("(SELECT 1)") == "query" and sqltext.classify("vacuum") == "other"
    with pytest.raises(PgError):
        sqltext.parse_set("SET ROLE postgres")


def test_repair_for_sqlglot() -> None:
    assert sqltext.repair_for_sqlglot("SELECT a AS select, b AS insert FROM t") == \
        'SELECT a AS "select", b AS "insert" FROM t'
    assert sqltext.repair_for_sqlglot("SELECT x::regtype[] FROM t") == \
        "SELECT x::_regtype FROM t"


@pytest.mark.parametrize("sql, empty", [
    ("SELECT * FROM visits WHERE 1 = 0", True), ("SELECT * FROM visits WHERE 1 <> 1", True),
    ("SELECT * FROM visits LIMIT 0", True), ("SELECT * FROM visits WHERE false", True),
    ("SELECT * FROM visits WHERE 1 = 1", False), ("SELECT COUNT(*) FROM visits", False),
    ("SELECT city FROM visits WHERE 1 = 0 GROUP BY city", False),
])
def test_provably_empty(sql: str, empty: bool) -> None:
    assert provably_empty(sqlglot.parse_one(sql, dialect="postgres")) is empty


# -- SCRAM ------------------------------------------------------------------------------


def _client_final(password: str, server_first: bytes, client_first_bare: str
                  ) -> tuple[bytes, bytes]:
    attrs = dict(p.split("=", 1) for p in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]),
                                 int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth = f"{client_first_bare},{server_first.decode()},{without_proof}".encode()
    sig = hmac.new(hashlib.sha256(client_key).digest(), auth, hashlib.sha256).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig, strict=True)))
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    expected = b"v=" + base64.b64encode(hmac.new(server_key, auth, hashlib.sha256).digest())
    return f"{without_proof},p={proof.decode()}".encode(), expected


def test_scram_exchange_accepts_the_key_and_proves_the_server() -> None:
    exchange = ScramExchange(scram_verifier("dpg_secret"))
    bare = "n=,r=clientnonce"
    server_first = exchange.server_first(f"n,,{bare}".encode())
    final, expected = _client_final("dpg_secret", server_first, bare)
    assert exchange.server_final(final) == expected


def test_scram_exchange_refuses_a_wrong_key_and_unknown_users() -> None:
    for verifier in (scram_verifier("dpg_secret"), fake_verifier(b"k", "nobody")):
        exchange = ScramExchange(verifier)
        bare = "n=,r=abc"
        final, _ = _client_final("dpg_wrong", exchange.server_first(f"n,,{bare}".encode()),
                                 bare)
        with pytest.raises(AuthFailed):
            exchange.server_final(final)
    assert fake_verifier(b"k", "x").salt == fake_verifier(b"k", "x").salt  # stable per user
    with pytest.raises(AuthFailed):
        ScramExchange(scram_verifier("a")).server_first(b"p=tls-server-end-point,,n=,r=x")


# -- settings ---------------------------------------------------------------------------


def test_settings_follow_transaction_rules() -> None:
    s = Settings.create({"application_name": "x", "dp.epsilon": "0.3"},
                        {"dp.epsilon": "0.5", "dp.delta": "0.0", "dp.mechanism": "laplace"})
    assert s.epsilon == 0.3 and s.delta is None and s.mechanism is None
    s.begin()
    assert s.set("application_name", "y") == ["application_name"]
    s.savepoint("a")
    s.set("dp.epsilon", "0.1", local=True)
    assert s.epsilon == 0.1
    s.rollback_to("a")
    assert s.epsilon == 0.3
    assert s.end(commit=False) == ["application_name"]
    assert s.get("application_name") == "x"
    # dp.* is session-level: a ROLLBACK (or ROLLBACK TO) keeps a SET made inside
    s.begin()
    s.set("dp.epsilon", "0.7")
    s.set("application_name", "z")
    s.savepoint("b")
    s.set("dp.delta", "1e-7")
    s.rollback_to("b")
    assert s.delta == 1e-7
    s.end(commit=False)
    assert s.epsilon == 0.7 and s.delta == 1e-7 and s.get("application_name") == "x"
    s.set("dp.epsilon", "0.3")
    s.set("dp.delta", None)
    with pytest.raises(PgError):
        s.set("server_version", "1")
    with pytest.raises(PgError):
        s.set("dp.epsilon", "nan")
    s.set("dp.epsilon", "0.5")
    assert s.epsilon is None  # the policy's default: the core applies its own defaults


def test_every_option_and_sqlstate_is_documented() -> None:
    import dataclasses
    from pathlib import Path

    from gateway.pgwire import PgWireOptions

    doc = (Path(__file__).resolve().parents[2] / "docs" / "pgwire.md").read_text()
    for f in dataclasses.fields(PgWireOptions):
        assert f"`{f.name}`" in doc, f"docs/pgwire.md does not document option {f.name}"
    for state in ("42000", "42501", "28P01", "0A000", "57014", "22023"):
        assert state in doc
