"""Session settings (GUCs) answered locally, with PostgreSQL's transaction rules.

BI tools and drivers ``SET`` and ``SHOW`` a zoo of parameters on connect; none
of them changes how the gateway computes an answer except ``dp.epsilon``,
``dp.delta`` and ``dp.mechanism``, the per-query spend, ``dp.ci95``, a target 95%
half-width asked for instead of an ε (the later of ``SET dp.ci95`` and ``SET dp.epsilon``
wins; ``RESET dp.ci95`` goes back to ``dp.epsilon``), and ``dp.report``, which adds
each noisy value's 95% half-width as a column.  Values set inside a
transaction are undone by ROLLBACK (and ``SET LOCAL`` ends with the
transaction), as in PostgreSQL — except the ``dp.*`` settings, which are
session-level (a documented deviation, DESIGN §1.5): psycopg2 and SQLAlchemy run
``SET dp.epsilon`` inside a transaction, a refused query aborts it, the driver
rolls back, and undoing the SET would silently charge the next query the default
ε instead of the one set.  ``SET LOCAL dp.*`` still ends with the transaction (it
says so).  Rolling back never refunds budget: that lives in the ledger, not here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gateway.pgwire.errors import INVALID_PARAMETER_VALUE, UNDEFINED_OBJECT, PgError

SERVER_VERSION = "16.4"
SERVER_VERSION_NUM = "160004"

# Canonical spelling (SHOW column names and ParameterStatus use it).
_CANONICAL = ("DateStyle", "IntervalStyle", "TimeZone")
CANONICAL = {n.lower(): n for n in _CANONICAL}

DEFAULTS: dict[str, str] = {
    "server_version": SERVER_VERSION, "server_version_num": SERVER_VERSION_NUM,
    "server_encoding": "UTF8", "client_encoding": "UTF8", "datestyle": "ISO, MDY",
    "intervalstyle": "postgres", "timezone": "UTC", "integer_datetimes": "on",
    "standard_conforming_strings": "on", "application_name": "", "is_superuser": "off",
    "session_authorization": "", "default_transaction_read_only": "off",
    "in_hot_standby": "off", "scram_iterations": "4096", "search_path": '"$user", public',
    "transaction_isolation": "read committed",
    "default_transaction_isolation": "read committed", "transaction_read_only": "off",
    "extra_float_digits": "1", "max_identifier_length": "63", "lc_collate": "C",
    "lc_ctype": "C", "lc_messages": "C", "lc_monetary": "C", "lc_numeric": "C",
    "lc_time": "C", "statement_timeout": "0", "lock_timeout": "0",
    "idle_in_transaction_session_timeout": "0", "idle_session_timeout": "0",
    "client_min_messages": "notice", "bytea_output": "hex", "escape_string_warning": "on",
    "max_connections": "100", "block_size": "8192", "row_security": "on", "jit": "off",
    "synchronous_commit": "on", "ssl": "off", "password_encryption": "scram-sha-256",
    "default_tablespace": "", "timezone_abbreviations": "Default", "work_mem": "4MB",
    "max_index_keys": "32", "default_table_access_method": "heap",
    "enable_seqscan": "on", "plan_cache_mode": "auto", "temp_buffers": "8MB",
    "session_replication_role": "origin", "vacuum_freeze_min_age": "50000000",
    "wal_level": "replica", "shared_buffers": "128MB", "port": "5433",
    "listen_addresses": "localhost", "cluster_name": "", "data_directory_mode": "0700",
    "dp.report": "none", "dp.ci95": "none",
}

# Sent as ParameterStatus at startup and whenever they change (GUC_REPORT).
REPORTED = ("server_version", "server_encoding", "client_encoding", "application_name",
            "datestyle", "intervalstyle", "timezone", "integer_datetimes",
            "standard_conforming_strings", "is_superuser", "session_authorization",
            "default_transaction_read_only", "in_hot_standby", "scram_iterations")

# dp.* settings that take one of a few words: (the words, the hint when another is given).
_CHOICES = {
    "dp.report": (("ci95", "none"), "use ci95 (a <col>_ci95 column per noisy column) or none"),
    "dp.mechanism": (("laplace", "gaussian"), "use laplace or gaussian"),
}

# Who the session is: fixed by authentication, whatever spelling a client uses to ask.
IDENTITY = frozenset({"session_authorization", "role"})

READ_ONLY = frozenset({"server_version", "server_version_num", "server_encoding",
                       "integer_datetimes", "is_superuser", "max_identifier_length",
                       "block_size", "lc_collate", "lc_ctype", "max_connections",
                       "in_hot_standby", "ssl", "max_index_keys", "dp.budget"})

DESCRIPTIONS = {
    "dp.epsilon": "privacy budget (epsilon) spent by each data query",
    "dp.delta": "privacy budget (delta) spent by each data query",
    "dp.mechanism": "noise mechanism: laplace or gaussian",
    "dp.report": "ci95: add a <col>_ci95 column (95% half-width) after each noisy column; "
                 "none: do not",
    "dp.ci95": "accuracy-first: spend the smallest epsilon whose predicted 95% half-width "
               "meets this target in every noisy column (none: spend dp.epsilon)",
}

# Off: spend dp.epsilon.
CI95_OFF = "none"


def display_name(name: str) -> str:
    return CANONICAL.get(name.lower(), name.lower())


def _check_dp(name: str, value: str) -> str:
    if name == "dp.ci95":
        v = value.strip().lower()
        if v in (CI95_OFF, "off", ""):
            return CI95_OFF
        try:
            x = float(v)
        except ValueError:
            x = math.nan
        if not math.isfinite(x) or x <= 0:
            raise PgError(INVALID_PARAMETER_VALUE,
                          f'invalid value for parameter "dp.ci95": "{value}"',
                          hint="the target 95% half-width is a positive number, e.g. "
                          "SET dp.ci95 = 50 (none, or RESET dp.ci95, to spend dp.epsilon)")
        return repr(x) if x != int(x) or "e" in v else str(int(x))
    if name in _CHOICES:
        allowed, hint = _CHOICES[name]
        v = value.strip().lower()
        if v not in allowed:
            raise PgError(INVALID_PARAMETER_VALUE,
                          f'invalid value for parameter "{name}": "{value}"', hint=hint)
        return v
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    ok = math.isfinite(x) and (x > 0 if name == "dp.epsilon" else 0 <= x < 1)
    if not ok:
        hint = ("epsilon is a positive number, e.g. SET dp.epsilon = 0.2"
                if name == "dp.epsilon" else "delta is a number in [0, 1), e.g. 1e-7")
        raise PgError(INVALID_PARAMETER_VALUE,
                      f'invalid value for parameter "{name}": "{value}"', hint=hint)
    return repr(x) if x != int(x) or "e" in value.lower() else value.strip()


def normalize(name: str, value: str) -> str:
    """Validate a new value; raise PgError (22023) if PostgreSQL or DP would refuse it."""
    if name in ("dp.epsilon", "dp.delta", "dp.mechanism", "dp.report", "dp.ci95"):
        return _check_dp(name, value)
    if name in ("transaction_isolation", "default_transaction_isolation"):
        v = " ".join(value.lower().split())
        if v not in ("read uncommitted", "read committed", "repeatable read", "serializable"):
            raise PgError(INVALID_PARAMETER_VALUE, f'invalid value for parameter "{name}": '
                          f'"{value}"')
        return v
    if name == "client_encoding":
        v = value.strip().upper().replace("-", "").replace("_", "")
        if v in ("UTF8", "UNICODE"):
            return "UTF8"
        if v == "SQLASCII":  # bytes pass through unchanged
            return "SQL_ASCII"
        raise PgError("0A000", f'client encoding "{value}" is not supported',
                      hint="the gateway sends and expects UTF8")
    if name == "datestyle" and "ISO" not in value.upper():
        raise PgError("0A000", f'DateStyle "{value}" is not supported',
                      hint="dates and times are always sent in ISO format")
    return value


@dataclass
class Settings:
    """One session's parameters: session values, transaction-local overlay, snapshots."""

    reset_values: dict[str, str]
    values: dict[str, str] = field(default_factory=dict)
    local: dict[str, str] = field(default_factory=dict)
    _tx_snapshot: dict[str, str] | None = None
    _savepoints: list[tuple[str, dict[str, str], dict[str, str]]] = field(
        default_factory=list)
    policy_dp: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, startup: dict[str, str], policy_dp: dict[str, str] | None = None
               ) -> Settings:
        """Defaults, then the policy's per-query spend, then the client's startup values."""
        base = dict(DEFAULTS)
        base.update(policy_dp or {})
        for k, v in startup.items():
            key = k.lower()
            if key in READ_ONLY or key == "role":  # the role is the authenticated analyst
                continue
            try:
                base[key] = normalize(key, v)
                if key == "dp.epsilon":  # the later of dp.epsilon and dp.ci95 wins
                    base["dp.ci95"] = CI95_OFF
            except PgError:
                if key not in ("client_encoding", "datestyle"):
                    raise
                # libpq follows the ParameterStatus we report back (UTF8, ISO), so a
                # client that asked for something else learns what it gets instead.
        return cls(reset_values=base, values=dict(base), policy_dp=dict(policy_dp or {}))

    def get(self, name: str) -> str | None:
        key = name.lower()
        if key in self.local:
            return self.local[key]
        return self.values.get(key)

    def show(self, name: str) -> str:
        v = self.get(name)
        if v is None:
            raise PgError(UNDEFINED_OBJECT, f'unrecognized configuration parameter "{name}"')
        return v

    def set(self, name: str, value: str | None, *, local: bool = False) -> list[str]:
        """Set (value None: reset to default); returns the reported names that changed."""
        key = name.lower()
        if key in READ_ONLY:
            raise PgError("55P02", f'parameter "{key}" cannot be changed')
        if key in IDENTITY:
            raise PgError("42501", "changing the role or session authorization is not allowed",
                          hint="connect as the analyst whose budget the queries should use")
        before = self.get(key)
        if value is None:
            default = self.reset_values.get(key)
            if local:
                self._set_local(key, default)
            elif default is None:
                self.values.pop(key, None)
            else:
                self.values[key] = default
        else:
            value = normalize(key, value)
            if local:
                self._set_local(key, value)
            else:
                self.values[key] = value
                self.local.pop(key, None)
            if key == "dp.epsilon":  # an ε chosen after a target ends accuracy-first
                self.set("dp.ci95", CI95_OFF, local=local)
        return [key] if key in REPORTED and self.get(key) != before else []

    def _set_local(self, key: str, value: str | None) -> None:
        if self._tx_snapshot is None:
            return  # SET LOCAL outside a transaction has no effect (PostgreSQL warns)
        if value is None:
            self.local.pop(key, None)
        else:
            self.local[key] = value

    def reset_all(self) -> list[str]:
        before = {k: self.get(k) for k in REPORTED}
        self.values = dict(self.reset_values)
        self.local.clear()
        return [k for k in REPORTED if self.get(k) != before[k]]

    def reported(self) -> list[tuple[str, str]]:
        return [(display_name(k), self.get(k) or "") for k in REPORTED]

    def all(self) -> list[tuple[str, str]]:
        keys = sorted(set(self.values) | set(self.local))
        return [(display_name(k), self.get(k) or "") for k in keys]

    # -- transactions ---------------------------------------------------------------------

    def begin(self) -> None:
        self._tx_snapshot = dict(self.values)
        self._savepoints.clear()

    def end(self, commit: bool) -> list[str]:
        before = {k: self.get(k) for k in REPORTED}
        if not commit and self._tx_snapshot is not None:
            self.values = _keep_dp(self._tx_snapshot, self.values)
        self._tx_snapshot = None
        self.local.clear()
        self._savepoints.clear()
        return [k for k in REPORTED if self.get(k) != before[k]]

    def savepoint(self, name: str) -> None:
        self._savepoints.append((name.lower(), dict(self.values), dict(self.local)))

    def _find(self, name: str) -> int:
        for i in range(len(self._savepoints) - 1, -1, -1):
            if self._savepoints[i][0] == name.lower():
                return i
        raise PgError("3B001", f'savepoint "{name}" does not exist')

    def release(self, name: str) -> None:
        del self._savepoints[self._find(name):]

    def rollback_to(self, name: str) -> list[str]:
        i = self._find(name)
        before = {k: self.get(k) for k in REPORTED}
        _, values, local = self._savepoints[i]
        self.values, self.local = _keep_dp(values, self.values), dict(local)
        del self._savepoints[i + 1:]
        return [k for k in REPORTED if self.get(k) != before[k]]

    # -- the per-query spend --------------------------------------------------------------

    def _explicit(self, name: str) -> str | None:
        """The value if the client chose it, None if it is the policy's default (so the
        core applies its own defaulting rules, e.g. a Gaussian query's delta)."""
        v = self.get(name)
        return None if v in (None, "") or v == self.policy_dp.get(name) else v

    def _float(self, name: str) -> float | None:
        v = self._explicit(name)
        return None if v is None else float(v)

    @property
    def epsilon(self) -> float | None:
        return self._float("dp.epsilon")

    @property
    def delta(self) -> float | None:
        return self._float("dp.delta")

    @property
    def mechanism(self) -> str | None:
        return self._explicit("dp.mechanism")

    @property
    def ci95(self) -> float | None:
        """The target 95% half-width of accuracy-first queries (None: spend dp.epsilon)."""
        v = self.get("dp.ci95")
        return None if v in (None, "", CI95_OFF) else float(v)

    def spend(self) -> dict[str, Any]:
        """What each data query spends: ``ci95`` (accuracy-first, while dp.ci95 is set:
        it takes precedence over dp.epsilon) or ``epsilon``; ``delta`` and ``mechanism``
        either way (keywords of Gateway.query_as and Gateway.explain)."""
        ci95 = self.ci95
        return {"epsilon": self.epsilon if ci95 is None else None, "delta": self.delta,
                "mechanism": self.mechanism, "ci95": ci95}

    @property
    def report(self) -> str:
        """'ci95': data queries get a <col>_ci95 column after each noisy column."""
        return self.get("dp.report") or "none"


def _keep_dp(restored: dict[str, str], current: dict[str, str]) -> dict[str, str]:
    """``restored`` (a snapshot being rolled back to) with the session's current ``dp.*``
    values: the per-query spend is session-level, never undone by a ROLLBACK."""
    out = {k: v for k, v in restored.items() if not k.startswith("dp.")}
    out.update({k: v for k, v in current.items() if k.startswith("dp.")})
    return out
