"""Authentication for the wire proxy: SCRAM-SHA-256 against the stored verifier.

The user name is the analyst and the password is their API key.  The gateway
never stores a key, only a SCRAM verifier made when the key was created
(:func:`gateway.state.keys.scram_verifier`), so the server side of RFC 5802 / RFC 7677
is all we can run: the client proves it knows the key without sending it, and
we prove we hold the verifier.  Unknown users get a stable fake verifier and the
same exchange, so a failed login does not tell whether the analyst exists.

Cleartext passwords (checked like an HTTP bearer key) are offered only when the
operator enables them, because the key then crosses the network as-is.  MD5 is
never offered: it needs ``md5(key || user)`` at rest, which we do not keep.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from gateway.state.keys import ScramVerifier

MECHANISM = "SCRAM-SHA-256"
SCRAM_METHOD = "scram-sha-256"
PASSWORD_METHOD = "password"
METHODS = (SCRAM_METHOD, PASSWORD_METHOD)


class AuthFailed(Exception):
    """The proof did not verify (or the exchange was malformed)."""


def fake_verifier(server_secret: bytes, user: str) -> ScramVerifier:
    """A verifier no password matches, with a salt that is stable for ``user``."""
    salt = hmac.new(server_secret, b"salt:" + user.encode(), hashlib.sha256).digest()[:16]
    return ScramVerifier(salt, 4096, secrets.token_bytes(32), secrets.token_bytes(32))


def _attrs(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        if len(part) >= 2 and part[1] == "=":
            out.setdefault(part[0], part[2:])
    return out


@dataclass
class ScramExchange:
    """One SCRAM-SHA-256 server conversation (RFC 5802 §5, without channel binding)."""

    verifier: ScramVerifier
    _client_first_bare: str = ""
    _server_first: str = ""
    _nonce: str = ""
    _gs2: str = ""

    def server_first(self, client_first: bytes) -> bytes:
        text = client_first.decode("utf-8", errors="strict")
        # gs2-header: channel-binding flag, optional authzid, then the bare message.
        flag, _, rest = text.partition(",")
        authzid, _, bare = rest.partition(",")
        if flag not in ("n", "y") or authzid:
            raise AuthFailed("channel binding and authorization identities are not supported")
        attrs = _attrs(bare)
        cnonce = attrs.get("r", "")
        if not cnonce or any(c in cnonce for c in ", "):
            raise AuthFailed("missing client nonce")
        self._gs2 = f"{flag},{authzid},"
        self._client_first_bare = bare
        self._nonce = cnonce + base64.b64encode(secrets.token_bytes(18)).decode()
        salt = base64.b64encode(self.verifier.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={self.verifier.iterations}"
        return self._server_first.encode()

    def server_final(self, client_final: bytes) -> bytes:
        text = client_final.decode("utf-8", errors="strict")
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise AuthFailed("missing client proof")
        attrs = _attrs(without_proof)
        if attrs.get("r") != self._nonce:
            raise AuthFailed("nonce mismatch")
        if attrs.get("c") != base64.b64encode(self._gs2.encode()).decode():
            raise AuthFailed("channel binding mismatch")
        auth_message = ",".join((self._client_first_bare, self._server_first, without_proof))
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            raise AuthFailed("malformed proof") from None
        signature = hmac.new(self.verifier.stored_key, auth_message.encode(),
                             hashlib.sha256).digest()
        if len(proof) != len(signature):
            raise AuthFailed("malformed proof")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(),
                                   self.verifier.stored_key):
            raise AuthFailed("wrong password")
        server_sig = hmac.new(self.verifier.server_key, auth_message.encode(),
                              hashlib.sha256).digest()
        return b"v=" + base64.b64encode(server_sig)
