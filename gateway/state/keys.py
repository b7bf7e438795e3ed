"""API keys and the verifiers stored for them.

Keys are 256-bit random tokens, so a plain SHA-256 is enough to store them (no
dictionary to attack); lookups go by hash and the final comparison is constant
time.  The PostgreSQL-wire proxy authenticates with SCRAM-SHA-256 (RFC 5802 /
RFC 7677), which needs a salted verifier derived from the key when it is
created: only StoredKey and ServerKey are kept, never the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "dpg_"
SCRAM_ITERATIONS = 4096


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class ScramVerifier:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def encode(self) -> str:
        b64 = base64.b64encode
        return (f"SCRAM-SHA-256${self.iterations}:{b64(self.salt).decode()}$"
                f"{b64(self.stored_key).decode()}:{b64(self.server_key).decode()}")

    @classmethod
    def decode(cls, text: str) -> ScramVerifier:
        _, rest = text.split("$", 1)
        iters_salt, keys = rest.split("$", 1)
        iters, salt = iters_salt.split(":", 1)
        stored, server = keys.split(":", 1)
        b64d = base64.b64decode
        return cls(b64d(salt), int(iters), b64d(stored), b64d(server))


def scram_verifier(password: str, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> ScramVerifier:
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return ScramVerifier(salt, iterations, stored_key, server_key)
