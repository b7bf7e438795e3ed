"""Request and response models of the HTTP API (DESIGN §1.3), for validation and OpenAPI.

Request bodies refuse unknown fields (``extra="forbid"``): a misspelt
``epsilon`` silently falling back to the default would spend budget the
analyst did not mean to spend.  Value checks that depend on the policy (the
per-query ε limits, the budget) stay in the core, so every adapter applies
them the same way; here only what is true of any request is checked.

Response models document the shapes the core's ``to_dict()`` methods produce;
routes send those dicts as they are (no second serialisation pass).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SQL_EXAMPLE = "SELECT country, COUNT(*) AS n FROM visits GROUP BY country"
MAX_PREDICT_ROWS = 10_000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class QueryRequest(_Body):
    """A DP query; ε/δ/mechanism default to the policy's ``defaults``."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"sql": SQL_EXAMPLE, "epsilon": 0.5},
        {"sql": "SELECT device, AVG(spend) AS avg_spend FROM visits GROUP BY device",
         "epsilon": 0.3, "delta": 1e-7, "mechanism": "gaussian"},
    ]})

    sql: str = Field(min_length=1, description="one SELECT statement (DuckDB dialect)")
    epsilon: float | None = Field(default=None, gt=0, description="ε to spend on this query")
    delta: float | None = Field(default=None, ge=0, lt=1, description="δ to spend")
    mechanism: Literal["laplace", "gaussian"] | None = Field(
        default=None, description="noise distribution (gaussian needs δ > 0)")


class ColumnOut(BaseModel):
    name: str
    type: str = Field(description="int, float, text, bool, date, timestamp")


class AccuracyOut(BaseModel):
    column: str
    mechanism: str
    noise_scale: float | None = Field(description="scale of the noise added to this column")
    ci95: float | None = Field(description="half-width of a 95% interval around the answer")


class RemainingOut(BaseModel):
    epsilon_remaining: float
    delta_remaining: float


class QueryResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "query_id": "0f6c8d4b6a1e4f7e9a3b2c1d0e9f8a7b",
        "columns": [{"name": "country", "type": "text"}, {"name": "n", "type": "int"}],
        "rows": [["DE", 10412], ["US", 20988]],
        "epsilon_spent": 0.5, "delta_spent": 0.0,
        "budget": {"epsilon_remaining": 3.5, "delta_remaining": 1e-6},
        "accuracy": [{"column": "n", "mechanism": "discrete_laplace", "noise_scale": 40.0,
                      "ci95": 120.0}],
        "cached": False}]})

    query_id: str
    columns: list[ColumnOut]
    rows: list[list[Any]] = Field(description="noisy rows; dates as ISO 8601 strings")
    epsilon_spent: float = Field(description="0 when the answer came from the cache")
    delta_spent: float
    budget: RemainingOut
    accuracy: list[AccuracyOut]
    cached: bool = Field(description="the same query at the same ε was answered before: free")


class ExplainResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "rewritten_sql": "WITH \"__dp_rows\" AS (...) SELECT ...",
        "aggregates": [{"aggregate": "COUNT(*)", "function": "count", "bounds": [0.0, 1.0],
                        "statistics": []}],
        "group_keys": [{"key": "country", "public_domain_size": 40}],
        "partition_selection": None, "epsilon_cost": 0.5, "delta_cost": 0.0,
        "accuracy": [{"column": "n", "mechanism": "discrete_laplace", "noise_scale": 40.0,
                      "ci95": 120.0}]}]})

    rewritten_sql: str
    aggregates: list[dict[str, Any]]
    group_keys: list[dict[str, Any]] = Field(default_factory=list)
    partition_selection: dict[str, Any] | None
    epsilon_cost: float
    delta_cost: float
    accuracy: list[AccuracyOut]


class BudgetTotals(BaseModel):
    epsilon_total: float
    delta_total: float
    epsilon_spent: float
    delta_spent: float
    epsilon_remaining: float
    delta_remaining: float
    charges: int


class BudgetResponse(BudgetTotals):
    """The caller's own budget, and the dataset-wide one every analyst draws from."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "analyst": "alice", "epsilon_total": 4.0, "delta_total": 1e-6, "epsilon_spent": 0.5,
        "delta_spent": 0.0, "epsilon_remaining": 3.5, "delta_remaining": 1e-6, "charges": 1,
        "dataset": {"epsilon_total": 10.0, "delta_total": 1e-6, "epsilon_spent": 0.5,
                    "delta_spent": 0.0, "epsilon_remaining": 9.5, "delta_remaining": 1e-6,
                    "charges": 1}}]})

    analyst: str
    dataset: BudgetTotals


class SchemaColumn(BaseModel):
    name: str
    type: str
    role: str | None = None
    bounds: list[Any] | None = None
    public_values: list[Any] | None = None
    public_values_from: str | None = None


class SchemaTable(BaseModel):
    public: bool
    privacy_unit: str | None = None
    max_rows_per_unit: int | None = None
    max_groups_per_unit: int | None = None
    columns: list[SchemaColumn]


class SchemaResponse(BaseModel):
    """The policy's public part: everything an analyst may know without spending ε."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "dataset": "web", "policy_version": "ca7ae0ccdd09208d",
        "tables": {"visits": {"public": False, "privacy_unit": "user_id",
                              "max_rows_per_unit": 20, "max_groups_per_unit": 4,
                              "columns": [{"name": "age", "type": "int", "bounds": [18, 90]}]}}}]})

    dataset: str
    policy_version: str
    tables: dict[str, SchemaTable]


class AuditQuery(BaseModel):
    """Filters of GET /v1/audit; unknown parameters are refused (a typo would widen them)."""

    model_config = ConfigDict(extra="forbid")

    analyst: str | None = Field(default=None, pattern=r"^[\w.-]{1,64}$",
                                description="only this analyst")
    since: float | dt.datetime | None = Field(
        default=None, description="Unix seconds or an ISO 8601 time (naive times are UTC)")
    until: float | dt.datetime | None = Field(
        default=None, description="inclusive upper bound, like since")
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=2**62)

    def window(self) -> tuple[float | None, float | None]:
        return _unix(self.since), _unix(self.until)


def _unix(t: float | dt.datetime | None) -> float | None:
    if t is None or isinstance(t, float):
        return t
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


class AuditEntry(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": 7, "ts": 1767225600.0, "analyst": "alice", "action": "query",
        "sql": "SELECT COUNT(*) FROM visits", "epsilon": 0.5, "delta": 0.0, "outcome": "ok",
        "detail": None, "query_id": "0f6c8d4b"}]})

    id: int
    ts: float = Field(description="seconds since the Unix epoch")
    analyst: str | None
    action: str
    sql: str | None
    epsilon: float
    delta: float
    outcome: str = Field(description="ok, cached, replayed, or the problem type of a failure")
    detail: str | None
    query_id: str | None


class HealthResponse(BaseModel):
    status: Literal["ok"]
    dataset: str


# -- training (DESIGN §1.3; the core's Gateway.submit_training) -----------------------

class ModelRequest(_Body):
    """Train a model with DP-SGD on rows selected by ``sql``; charged when it starts.

    Hyper-parameters are optional and public (released with the model); their
    ranges are checked by the core, which applies its defaults to the rest.
    """

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "sql": "SELECT age, duration_s, device, converted FROM visits", "label": "converted",
        "model": "logistic", "epsilon": 1.0, "delta": 1e-6, "epochs": 3}]})

    sql: str = Field(min_length=1, description="a row-wise SELECT of features and the label")
    label: str = Field(min_length=1, description="the column to predict")
    model: str = Field(default="logistic", description="linear, logistic, softmax or mlp")
    epsilon: float | None = Field(default=None, gt=0,
                                  description="total ε (or give noise_multiplier)")
    delta: float | None = Field(default=None, ge=0, lt=1, description="δ (> 0 for DP-SGD)")
    epochs: float | None = Field(default=None, description="expected passes over the units")
    batch_size: int | None = Field(default=None, description="expected units per step")
    clip: float | None = Field(default=None, description="per-unit gradient norm bound C")
    learning_rate: float | None = None
    optimizer: str | None = Field(default=None, description="adam or sgd")
    momentum: float | None = Field(default=None, description="sgd only")
    noise_multiplier: float | None = Field(default=None, description="σ; solved from ε if "
                                           "omitted")
    hidden: list[int] | None = Field(default=None, max_length=8,
                                     description="mlp only: hidden layer widths")
    activation: str | None = Field(default=None, description="mlp only")
    l2: float | None = None
    average: float | None = Field(default=None, description="EMA of iterates (0: last)")
    units: int | None = Field(default=None, description="a public estimate of the number of "
                              "units (skips the DP count)")
    count_epsilon: float | None = None
    holdout: float | None = Field(default=None, description="fraction held out for a DP "
                                  "evaluation")
    eval_epsilon: float | None = None
    max_rows_per_unit: int | None = Field(default=None, description="may only lower the "
                                          "policy's bound")

    def hyper(self) -> dict[str, Any]:
        """The hyper-parameters that were given (the core applies its defaults to the rest)."""
        base = {"sql", "label", "model", "epsilon", "delta"}
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if k not in base}


class ModelJob(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model_id": "m_5f0c2a9e", "status": "queued"}]})

    model_id: str
    status: str


class PredictRequest(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"rows": [{"age": 40, "duration_s": 120.0, "device": "tv"}]}]})

    rows: list[dict[str, Any]] = Field(max_length=MAX_PREDICT_ROWS,
                                       description="feature values by column name")


class PredictResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model_id": "m_5f0c2a9e", "predictions": [0.27]}]})

    model_id: str
    predictions: list[Any]


class Problem(BaseModel):
    """RFC 9457 problem details; ``type`` is the stable code of the error class."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "type": "budget_exceeded", "title": "Privacy budget exceeded", "status": 403,
        "detail": "the privacy budget of analyst 'alice' cannot afford this query: ..."}]})

    type: str
    title: str
    status: int
    detail: str
