"""Python client for a running `gateway serve`, and a DB-API 2.0 (PEP 249) driver.

    conn = connect("http://127.0.0.1:8000", api_key="dpg_...")
    conn.query("SELECT device, AVG(spend) FROM visits GROUP BY device", epsilon=0.3).to_pandas()
    cur = conn.cursor(); cur.execute("SELECT COUNT(*) FROM visits WHERE age > ?", [40])

Retries: a 503 (engine or ledger down, server saturated, timeout), a 409 (the
same request still running) or a dropped connection is retried with
exponential backoff, honouring ``Retry-After``.  Every request that spends
budget carries one ``Idempotency-Key`` for all its attempts, so the server
charges it at most once and a retry collects the stored answer.

Errors are the PEP 249 classes below, picked by the problem ``type`` of the answer
(:data:`PROBLEM_TYPES`), each with ``.type .status .title .detail .problem``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import random
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from gateway.sql.parse import mark_top

apilevel = "2.0"
threadsafety = 2  # threads may share the module and connections, not cursors
paramstyle = "qmark"  # also accepted: named (:name) with a mapping, numeric ($1)

RETRY_STATUSES = frozenset({409, 429, 503})


class Warning(Exception):
    """PEP 249 requires it; the gateway never warns."""


class Error(Exception):
    """Base of every client error; server problems carry their RFC 9457 members."""

    def __init__(self, message: str, *, problem: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.problem: dict[str, Any] = dict(problem or {})
        self.type: str | None = self.problem.get("type")
        self.status: int | None = self.problem.get("status")
        self.title: str | None = self.problem.get("title")
        self.detail: str = str(self.problem.get("detail", message))


class InterfaceError(Error):
    """The gateway could not be reached or answered something unreadable."""
class DatabaseError(Error):
    """The gateway answered with an error."""
class DataError(DatabaseError):
    """A parameter that has no SQL literal."""
class OperationalError(DatabaseError):
    """Not the caller's fault as such: budget, credentials, availability."""
class IntegrityError(DatabaseError):
    """PEP 249 requires it; nothing the client does writes data."""
class InternalError(DatabaseError):
    """A bug in the gateway."""
class ProgrammingError(DatabaseError):
    """The request itself is wrong: fix the SQL, the parameters or the call."""
class NotSupportedError(DatabaseError):
    """Transactions, binary parameters."""
class AuthError(OperationalError):
    """Missing or invalid API key (401)."""
class BudgetExceeded(OperationalError):
    """The privacy budget cannot afford the query (403); repeats of old queries are free."""
class Unavailable(OperationalError):
    """Engine or ledger down, server saturated or timed out: still failing after retries."""
class QueryRejected(ProgrammingError):
    """The SQL cannot be shown to be private; ``problem`` has ``rule`` and ``span``."""
class InvalidRequest(ProgrammingError):
    """Bad ε/δ, malformed or oversized body, reused idempotency key."""
class Forbidden(ProgrammingError):
    """Authenticated, but not allowed (e.g. the audit log without admin role)."""
class NotFound(ProgrammingError):
    """No such model or resource."""


PROBLEM_TYPES: dict[str, type[Error]] = {
    "query_rejected": QueryRejected, "invalid_request": InvalidRequest,
    "malformed_request": InvalidRequest, "payload_too_large": InvalidRequest,
    "idempotency_key_reused": InvalidRequest, "method_not_allowed": InvalidRequest,
    "budget_exceeded": BudgetExceeded, "unauthorized": AuthError, "forbidden": Forbidden,
    "not_found": NotFound, "backend_error": Unavailable, "ledger_unavailable": Unavailable,
    "overloaded": Unavailable, "timeout": Unavailable, "idempotency_key_in_use": Unavailable,
    "internal_error": InternalError, "policy_error": InternalError,
}


def error_from_response(status: int, body: Any) -> Error:
    """The exception for an error response (problem+json, or anything else)."""
    problem = body if isinstance(body, dict) and "type" in body else {
        "type": None, "status": status, "title": f"HTTP {status}",
        "detail": f"the server answered {status} without a problem document"}
    cls = PROBLEM_TYPES.get(str(problem.get("type"))) or (
        InternalError if status >= 500 else ProgrammingError)
    return cls(str(problem.get("detail") or problem.get("title")), problem=problem)


class DBAPITypeObject:
    """Compares equal to every column type name it stands for (``NUMBER == "int"``)."""

    def __init__(self, *names: str) -> None:
        self.names = frozenset(names)

    def __eq__(self, other: object) -> bool:
        return other in self.names if isinstance(other, str) else other is self

    def __hash__(self) -> int:
        return hash(self.names)


STRING = DBAPITypeObject("text")
BINARY = DBAPITypeObject("blob")
NUMBER = DBAPITypeObject("int", "float", "bool")
DATETIME = DBAPITypeObject("date", "timestamp")
ROWID = DBAPITypeObject()
Date, Time, Timestamp = dt.date, dt.time, dt.datetime
Binary = bytes


DateFromTicks, TimestampFromTicks = dt.date.fromtimestamp, dt.datetime.fromtimestamp


def TimeFromTicks(ticks: float) -> dt.time:
    return dt.datetime.fromtimestamp(ticks).time()


# -- parameters: bound as sqlglot literals, never pasted into the text ---------------

def bind(sql: str, params: Sequence[Any] | Mapping[str, Any] | None) -> str:
    """``sql`` with each ``?`` / ``$n`` / ``:name`` replaced by a SQL literal of its value.

    Values become sqlglot literal nodes and the SQL is generated from the tree,
    so a value can never end a string or add a clause.
    """
    if params is None:
        return sql
    if isinstance(params, str | bytes):
        raise ProgrammingError("parameters must be a sequence or a mapping, not a string")
    tree = _parse_marked(sql)
    holes = list(tree.find_all(exp.Placeholder))
    qmarks = sorted(int(str(h.this)[3:]) for h in holes if str(h.this or "").startswith("__p"))
    if isinstance(params, Mapping):
        values = dict(params)
    else:
        seq = list(params)
        if (qmarks and len(qmarks) != len(seq)) or (seq and not holes):
            raise ProgrammingError(f"the SQL has {len(holes)} placeholders but {len(seq)} "
                                   "parameters were given")
        values = ({f"__p{at}": v for at, v in zip(qmarks, seq, strict=True)} if qmarks
                  else {str(i + 1): v for i, v in enumerate(seq)})
    for h in holes:
        key = str(h.this or "")
        if key not in values:
            raise ProgrammingError(f"no parameter for placeholder "
                                   f"{'?' if key.startswith('__p') else key!r}")
        h.replace(_literal(values[key]))
    return tree.sql(dialect="duckdb")


def _parse_marked(sql: str) -> exp.Expr:
    """Parse with each ``?`` renamed ``$__p<offset>``, so they can be told apart in order."""
    try:
        dialect = sqlglot.Dialect.get_or_raise("duckdb")
        tokens = dialect.tokenize(sql)
        text = sql
        for tok in reversed([t for t in tokens
                             if t.token_type == TokenType.PLACEHOLDER and t.text == "?"]):
            text = text[:tok.start] + f"$__p{tok.start}" + text[tok.end + 1:]
        tokens = dialect.tokenize(text)
        mark_top(tokens)  # T-SQL's SELECT TOP n, as the gateway reads it (LIMIT n)
        trees = [t for t in dialect.parser().parse(tokens, text) if t is not None]
    except (ParseError, TokenError) as e:
        raise ProgrammingError(f"cannot bind parameters: the SQL does not parse ({e})") from None
    if len(trees) != 1:
        raise ProgrammingError("send exactly one statement")
    return trees[0]


def _literal(value: Any) -> exp.Expr:
    if isinstance(value, bytes | bytearray | memoryview):
        raise NotSupportedError("binary parameters are not supported")
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError("NaN and infinite parameters have no SQL literal")
    if value is None or isinstance(value, bool | int | float | str | decimal.Decimal
                                   | dt.date | dt.datetime):
        return exp.convert(value)
    raise DataError(f"cannot pass a {type(value).__name__} as a SQL parameter")


def accuracy_target(ci95: float | None, accuracy: float | None) -> float | None:
    """``ci95=`` or its alias ``accuracy=`` (the server checks the value)."""
    if ci95 is not None and accuracy is not None and ci95 != accuracy:
        raise ProgrammingError("ci95 and accuracy name the same target; give one of them")
    return ci95 if ci95 is not None else accuracy


def spend_body(sql: str, epsilon: float | None, delta: float | None, mechanism: str | None,
               ci95: float | None = None) -> dict[str, Any]:
    """The body of a query or explain request (absent fields: the server's defaults)."""
    body = {"sql": sql, "epsilon": epsilon, "delta": delta, "mechanism": mechanism,
            "ci95": ci95}
    return {k: v for k, v in body.items() if v is not None}


class Column(NamedTuple):
    name: str
    type: str


@dataclass(frozen=True)
class Result:
    """A released answer: noisy rows, what they cost, how accurate they are."""

    query_id: str
    columns: list[Column]
    rows: list[tuple[Any, ...]]
    epsilon_spent: float
    delta_spent: float
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    cached: bool = False
    budget: dict[str, float] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    # Per row, aligned with columns: each value's 95% half-width (None: a key, or none).
    ci95: list[tuple[float | None, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    target_ci95: float | None = None  # accuracy-first requests: the target that was met

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Result:
        columns = [Column(c["name"], c["type"]) for c in body["columns"]]
        parse = [_PARSERS.get(c.type) for c in columns]
        rows = [tuple(p(v) if p is not None and v is not None else v
                      for p, v in zip(parse, row, strict=True)) for row in body["rows"]]
        return cls(body["query_id"], columns, rows, body["epsilon_spent"], body["delta_spent"],
                   body.get("accuracy", []), body.get("cached", False),
                   body.get("budget", {}), body,
                   [tuple(ci) for ci in body.get("ci95", [])], list(body.get("notes", [])),
                   body.get("target_ci95"))

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame.from_records(self.rows, columns=[c.name for c in self.columns])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


_PARSERS = {"date": dt.date.fromisoformat, "timestamp": dt.datetime.fromisoformat}


# -- the HTTP session with retries ----------------------------------------------------

def backoff_delay(attempt: int, base: float, cap: float, retry_after: str | None) -> float:
    """Retry-After when the server gave one, else capped exponential backoff, full jitter."""
    if retry_after is not None:
        try:
            return min(cap, max(0.0, float(retry_after)))
        except ValueError:
            pass
    return random.uniform(0, min(cap, base * 2 ** attempt))



class Connection:
    """A session with the gateway; also a PEP 249 connection (``cursor()``)."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 0.25, max_backoff: float = 8.0,
                 epsilon: float | None = None, delta: float | None = None,
                 mechanism: str | None = None, transport: httpx.BaseTransport | None = None,
                 report: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.epsilon, self.delta, self.mechanism = epsilon, delta, mechanism
        self.report = report  # cursors' default: 'ci95' adds <col>_ci95 columns
        self._http: httpx.Client | None = httpx.Client(
            base_url=self.url, timeout=timeout, transport=transport,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "dp-gateway-client"})

    def request(self, method: str, path: str, *, json: Any = None,
                params: Mapping[str, Any] | None = None, charged: bool = False,
                idempotency_key: str | None = None) -> Any:
        """One logical request: retried on 503/409/connection errors, one key for all tries."""
        if self._http is None:
            raise InterfaceError("the connection is closed")
        headers = {}
        if charged:
            headers["Idempotency-Key"] = idempotency_key or uuid.uuid4().hex
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                resp = self._http.request(method, path, json=json, params=params,
                                          headers=headers)
            except httpx.TransportError as e:
                if last:
                    raise InterfaceError(f"cannot reach the gateway at {self.url}: "
                                         f"{type(e).__name__}") from None
                time.sleep(backoff_delay(attempt, self.backoff, self.max_backoff, None))
                continue
            if resp.status_code in RETRY_STATUSES and not last:
                time.sleep(backoff_delay(attempt, self.backoff, self.max_backoff,
                                         resp.headers.get("Retry-After")))
                continue
            try:
                body = resp.json()
            except ValueError:
                body = None
            if resp.status_code >= 400:
                raise error_from_response(resp.status_code, body)
            if body is None:
                raise InterfaceError(f"unreadable answer from {self.url}{path}")
            return body
        raise AssertionError("unreachable")  # pragma: no cover

    def _spend(self, epsilon: float | None, delta: float | None, mechanism: str | None,
               sql: str, ci95: float | None = None) -> dict[str, Any]:
        return spend_body(sql, self.epsilon if epsilon is None and ci95 is None else epsilon,
                          self.delta if delta is None else delta,
                          self.mechanism if mechanism is None else mechanism, ci95)

    def query(self, sql: str, epsilon: float | None = None, delta: float | None = None,
              mechanism: str | None = None, *, params: Any = None,
              idempotency_key: str | None = None, report: str | None = None,
              ci95: float | None = None, accuracy: float | None = None) -> Result:
        """Run a DP query (charged unless cached); ``params`` binds ``?`` placeholders.

        ``report='ci95'`` adds a float column ``<col>_ci95`` after each column computed
        from noisy aggregates (each value's 95% half-width, also in ``Result.ci95``).
        ``ci95=50`` (alias ``accuracy=50``) instead of ``epsilon``: the server spends the
        smallest ε whose predicted 95% half-width is within ±50 in every noisy column
        (``Result.target_ci95``; the notes name the ε and the binding column)."""
        body = self._spend(epsilon, delta, mechanism, bind(sql, params),
                           accuracy_target(ci95, accuracy))
        if report is not None:
            body["report"] = report
        return Result.from_json(self.request("POST", "/v1/query", json=body, charged=True,
                                             idempotency_key=idempotency_key))

    def explain(self, sql: str, epsilon: float | None = None, delta: float | None = None,
                mechanism: str | None = None, *, params: Any = None,
                ci95: float | None = None, accuracy: float | None = None) -> dict[str, Any]:
        """Plan, cost and accuracy; free.  ``ci95=``: the ε a query with that target
        would be charged (``epsilon_cost``)."""
        body = self._spend(epsilon, delta, mechanism, bind(sql, params),
                           accuracy_target(ci95, accuracy))
        return self.request("POST", "/v1/explain", json=body)

    def budget(self) -> dict[str, Any]:
        return self.request("GET", "/v1/budget")

    def schema(self) -> dict[str, Any]:
        return self.request("GET", "/v1/schema")

    def audit(self, analyst: str | None = None, since: float | str | None = None,
              until: float | str | None = None, limit: int = 100, offset: int = 0
              ) -> list[dict[str, Any]]:
        """Admin only: one page of the audit log, oldest first (next: ``offset + limit``)."""
        params = {k: v for k, v in (("analyst", analyst), ("since", since), ("until", until),
                                    ("limit", limit), ("offset", offset)) if v is not None}
        return self.request("GET", "/v1/audit", params=params)

    def train(self, sql: str, label: str, model: str = "logistic", *,
              epsilon: float | None = None, delta: float | None = None, wait: bool = True,
              poll_s: float = 0.5, idempotency_key: str | None = None, **hyper: Any) -> Model:
        """DP training on the rows ``sql`` selects, charged when it starts.

        Blocks until the model is trained (like ``Gateway.train``) unless ``wait=False``,
        which returns the job (``model_id``, ``status``) at once.
        """
        body = {k: v for k, v in {"sql": sql, "label": label, "model": model,
                                  "epsilon": epsilon, "delta": delta, **hyper}.items()
                if v is not None}
        info = Model(self, self.request("POST", "/v1/models", json=body, charged=True,
                                        idempotency_key=idempotency_key))
        while wait and info.get("status") in ("queued", "running"):
            time.sleep(poll_s)
            info = self.model(info["model_id"])
        if info.get("status") == "failed":
            raise OperationalError(f"training failed: {info.get('error')}", problem=info)
        return info

    def models(self) -> list[Model]:
        return [Model(self, m) for m in self.request("GET", "/v1/models")]

    def model(self, model_id: str) -> Model:
        return Model(self, self.request("GET", f"/v1/models/{model_id}"))

    def predict(self, model_id: str, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        body = self.request("POST", f"/v1/models/{model_id}/predict",
                            json={"rows": [dict(r) for r in rows]})
        return list(body["predictions"])

    def cursor(self) -> Cursor:
        return Cursor(self)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def commit(self) -> None:
        """Nothing to commit: every answer is final (and charged) when it is returned."""

    def rollback(self) -> None:
        raise NotSupportedError("the gateway has no transactions: a released answer and its "
                                "charge cannot be rolled back")

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Model(dict[str, Any]):
    """What the server says of a model, as a dict and as attributes (``m.id``,
    ``m.epsilon_spent``, ``m.metrics``), plus ``m.predict(rows)``."""

    def __init__(self, conn: Connection, info: dict[str, Any]) -> None:
        super().__init__(info)
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        try:
            return self["model_id" if name == "id" else name]
        except KeyError:
            raise AttributeError(name) from None

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        return self._conn.predict(self["model_id"], rows)


class Cursor:
    """PEP 249 cursor; ``epsilon``/``delta``/``mechanism`` set what each execute spends, and
    ``report = 'ci95'`` (default: the connection's ``report``) adds a ``<col>_ci95`` column
    after each column computed from noisy aggregates, as ``SET dp.report`` does over pgwire.

    ``ci95 = 50`` makes each execute accuracy-first (the smallest ε whose predicted 95%
    half-width is within ±50 in every noisy column), as ``SET dp.ci95`` does over pgwire:
    the later of ``ci95`` and ``epsilon`` to be set wins (setting ``epsilon`` clears
    ``ci95``; ``ci95 = None`` goes back to ``epsilon``)."""

    arraysize = 1

    def __init__(self, conn: Connection) -> None:
        self.connection = conn
        self._epsilon: float | None = conn.epsilon
        self._ci95: float | None = None
        self.delta, self.mechanism = conn.delta, conn.mechanism
        self.report = conn.report
        self.result: Result | None = None
        self._rows: list[tuple[Any, ...]] = []
        self._pos = 0
        self._closed = False

    @property
    def epsilon(self) -> float | None:
        return self._epsilon

    @epsilon.setter
    def epsilon(self, value: float | None) -> None:
        self._epsilon = value
        if value is not None:
            self._ci95 = None  # the later choice wins, as SET dp.epsilon over pgwire

    @property
    def ci95(self) -> float | None:
        """The target 95% half-width of accuracy-first executes (None: spend ``epsilon``)."""
        return self._ci95

    @ci95.setter
    def ci95(self, value: float | None) -> None:
        self._ci95 = value

    @property
    def description(self) -> list[tuple[Any, ...]] | None:
        if self.result is None:
            return None
        return [(c.name, c.type, None, None, None, None, True) for c in self.result.columns]

    @property
    def rowcount(self) -> int:
        return -1 if self.result is None else len(self._rows)

    def execute(self, operation: str, parameters: Any = None, *,
                report: str | None = None) -> Cursor:
        """Run ``operation``; ``report`` ('ci95' or 'none') overrides ``self.report``."""
        self._check()
        self.result = self.connection.query(
            operation, None if self._ci95 is not None else self._epsilon, self.delta,
            self.mechanism, params=parameters, report=report or self.report, ci95=self._ci95)
        self._rows, self._pos = list(self.result.rows), 0
        return self

    def executemany(self, operation: str, seq_of_parameters: Sequence[Any]) -> Cursor:
        for params in seq_of_parameters:
            self.execute(operation, params)
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = self.fetchmany(1)
        return rows[0] if rows else None

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        self._check(need_result=True)
        n = self.arraysize if size is None else size
        out = self._rows[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.fetchmany(len(self._rows))

    def close(self) -> None:
        self._closed = True

    def setinputsizes(self, sizes: Any) -> None:
        pass

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        pass

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while (row := self.fetchone()) is not None:
            yield row

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, need_result: bool = False) -> None:
        if self._closed or self.connection._http is None:
            raise InterfaceError("the cursor is closed")
        if need_result and self.result is None:
            raise ProgrammingError("execute() a query before fetching")


for _cls in (Warning, Error, InterfaceError, DatabaseError, DataError, OperationalError,
             IntegrityError, InternalError, ProgrammingError, NotSupportedError):
    setattr(Connection, _cls.__name__, _cls)  # PEP 249 extension: Connection.Error etc.


def connect(url: str, api_key: str, **options: Any) -> Connection:
    """Open a session with a gateway at ``url`` (nothing is sent until the first call).

    ``options``: ``timeout`` (s, per attempt), ``retries``, ``backoff`` (s),
    ``max_backoff``, default ``epsilon``/``delta``/``mechanism``, ``transport``, and
    ``report='ci95'`` (cursors add a ``<col>_ci95`` column after each noisy column).
    """
    return Connection(url, api_key, **options)
