"""Request and response models of the HTTP API (DESIGN §1.3), for validation and OpenAPI.

Request bodies refuse unknown fields (``extra="forbid"``): a misspelt
``epsilon`` silently falling back to the default would spend budget the
analyst did not mean to spend.  Value checks that depend on the policy (the
per-query ε limits, the budget) stay in the core, so every adapter applies
them the same way; here only what is true of any request is checked.

Numbers that spend or shape privacy (ε, δ, the training hyper-parameters) are
JSON numbers and nothing else: pydantic's lax mode would read ``true`` as 1.0
and ``"0.5"`` as 0.5, so a client bug would spend budget nobody asked for.  A
``null`` is refused too (omit the field to get the default): ``JSON.stringify``
writes NaN and Infinity as ``null``, which must not turn into the policy default.
Nothing is charged for a body refused here: validation runs before the route.

Response models document the shapes the core's ``to_dict()`` methods produce;
routes send those dicts as they are (no second serialisation pass).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict
from pydantic.json_schema import JsonDict
from pydantic_core import PydanticCustomError

SQL_EXAMPLE = "SELECT country, COUNT(*) AS n FROM visits GROUP BY country"
MAX_PREDICT_ROWS = 10_000


def _integral(value: Any) -> Any:
    """3.0 is an integer in JSON Schema (and to the core's checks); 3.5 is not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _not_null(value: Any) -> Any:
    if value is None:
        raise PydanticCustomError(
            "number_type", "Input should be a number; omit the field to use the default")
    return value


def _not_nullable(schema: JsonDict) -> None:
    """Document the field as it validates: a number (or list) that may be left out."""
    options = schema.pop("anyOf", None)
    if isinstance(options, list):
        for option in options:
            if isinstance(option, dict) and option.get("type") != "null":
                schema.update(option)
    schema.pop("default", None)  # the default is "absent", not null


Real = Annotated[float, Strict()]
"""A JSON number, integer or not (strict: no booleans, no strings; finite by _Body)."""

MAX_COUNT = 2**53
"""Counts (batch size, units, rows, widths) become floats in the core: past 2**53 they
are not even exact, and 10**400 would overflow there (a 500) instead of being a 422."""

Count = Annotated[int, Strict(), Field(le=MAX_COUNT), BeforeValidator(_integral)]
"""A JSON integer (or an integral float such as 3.0); no booleans, no strings."""

OptReal = Annotated[Real | None, BeforeValidator(_not_null)]
"""An optional number: absent means the default, ``null`` is refused."""

OptCount = Annotated[Count | None, BeforeValidator(_not_null)]


def _opt(description: str | None = None, **constraints: Any) -> Any:
    """``Field`` of an optional number (omitted: None, which the core reads as its default)."""
    return Field(default=None, description=description, json_schema_extra=_not_nullable,
                 **constraints)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class QueryRequest(_Body):
    """A DP query; ε/δ/mechanism default to the policy's ``defaults``."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"sql": SQL_EXAMPLE, "epsilon": 0.5},
        {"sql": "SELECT device, AVG(spend) AS avg_spend FROM visits GROUP BY device",
         "epsilon": 0.3, "delta": 1e-7, "mechanism": "gaussian"},
        {"sql": SQL_EXAMPLE, "ci95": 50},
    ]})

    sql: str = Field(min_length=1, description="one SELECT statement (DuckDB dialect)")
    epsilon: OptReal = _opt("ε to spend on this query (a JSON number)", gt=0)
    ci95: OptReal = _opt(
        "accuracy-first, instead of epsilon (giving both is refused): the target 95% "
        "half-width, in each noisy column's own units. The gateway spends the smallest ε "
        "(three significant digits) whose predicted half-width meets it in every column "
        "that carries noise, from the plan and the policy alone; quantiles, ratios of "
        "aggregates and targets below an AVG/VAR/STDDEV's bound are refused "
        "(query_rejected, rule accuracy_target), as is an ε the budget cannot pay", gt=0)
    delta: OptReal = _opt("δ to spend (a JSON number)", ge=0, lt=1)
    mechanism: Literal["laplace", "gaussian"] | None = Field(
        default=None, description="noise distribution (gaussian needs δ > 0)")
    report: Literal["none", "ci95"] | None = Field(
        default=None, description="'ci95': add a float column <col>_ci95 after each column "
        "computed from noisy aggregates, holding each cell's 95% half-width (as SQL clients "
        "see it over pgwire with SET dp.report = 'ci95'); the ci95 field has them anyway")


class ColumnOut(BaseModel):
    name: str
    type: str = Field(description="int, float, text, bool, date, timestamp")


class AccuracyOut(BaseModel):
    column: str
    mechanism: str
    noise_scale: float | None = Field(description="scale of the noise added to this column")
    ci95: float | None = Field(description="half-width of a 95% interval around the answer")
    rank_error95: float | None = Field(
        default=None, description="DP quantiles only (present only for them): by how many "
        "values (rows, weighted) the chosen rank may miss, with probability 0.95")


class RemainingOut(BaseModel):
    epsilon_remaining: float
    delta_remaining: float


class QueryResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "query_id": "0f6c8d4b6a1e4f7e9a3b2c1d0e9f8a7b",
        "columns": [{"name": "country", "type": "text"}, {"name": "n", "type": "int"}],
        "rows": [["DE", 10412], ["US", 20988]],
        "ci95": [[None, 120.0], [None, 120.0]],
        "epsilon_spent": 0.5, "delta_spent": 0.0,
        "budget": {"epsilon_remaining": 3.5, "delta_remaining": 1e-6},
        "accuracy": [{"column": "n", "mechanism": "discrete_laplace", "noise_scale": 40.0,
                      "ci95": 120.0}],
        "cached": False, "notes": []}]})

    query_id: str
    columns: list[ColumnOut]
    rows: list[list[Any]] = Field(description="noisy rows; dates as ISO 8601 strings")
    ci95: list[list[float | None]] = Field(
        default_factory=list, description="per row, aligned with columns: the 95% half-width "
        "of each value; null for group keys, and for values computed from several aggregates "
        "(see notes)")
    epsilon_spent: float = Field(description="0 when the answer came from the cache")
    delta_spent: float
    budget: RemainingOut
    accuracy: list[AccuracyOut]
    cached: bool = Field(description="the same query at the same ε was answered before: free")
    notes: list[str] = Field(
        default_factory=list, description="how the answer was made, in words (e.g. groups "
        "chosen by partition selection because the public domains are too large)")
    target_ci95: float | None = Field(
        default=None, description="accuracy-first requests only (present only for them): "
        "the requested ci95; epsilon_spent is the ε chosen for it (0 when cached), and notes "
        "name that ε and the binding column")


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
    notes: list[str] = Field(default_factory=list)
    branches: list[dict[str, Any]] | None = Field(
        default=None, description="a statement of several SELECTs (UNION ALL, UNION, "
        "INTERSECT, EXCEPT) only: per SELECT, its SQL, kind (dp, public, public_domains), "
        "epsilon_cost and delta_cost (its share; the charge is their composition), "
        "aggregates, group_keys, partition_selection, accuracy and rewritten_sql")
    target_ci95: float | None = Field(
        default=None, description="accuracy-first requests only (present only for them): "
        "the requested ci95; epsilon_cost is the ε a query would be charged for it, and "
        "notes name the binding column")


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
    bounds: list[Any] | Literal["auto"] | None = Field(
        default=None, description="[low, high], or \"auto\": each query tunes the range "
        "privately inside `limits`")
    limits: list[Any] | None = None
    public_values: list[Any] | None = None
    public_values_from: str | None = None


class SchemaTable(BaseModel):
    public: bool
    schema_: str | None = Field(
        default=None, alias="schema",
        description="the table's own schema from the policy: queries may write schema.table "
        "(public., main. and the dataset name are accepted for every table)")
    privacy_unit: str | None = None
    max_rows_per_unit: int | None = None
    max_rows_per_unit_auto: bool | None = Field(
        default=None, description="true: max_rows_per_unit is a ceiling; each query tunes "
        "its bound privately (the result's notes say which)")
    max_groups_per_unit: int | None = None
    max_groups_per_unit_auto: bool | None = Field(
        default=None, description="true: max_groups_per_unit is a ceiling; each query that "
        "depends on it tunes it privately")
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
    epsilon: OptReal = _opt("total ε (or give noise_multiplier)", gt=0)
    delta: OptReal = _opt("δ (> 0 for DP-SGD)", ge=0, lt=1)
    epochs: OptReal = _opt("expected passes over the units")
    batch_size: OptCount = _opt("expected units per step")
    clip: OptReal = _opt("per-unit gradient norm bound C")
    learning_rate: OptReal = _opt()
    optimizer: str | None = Field(default=None, description="adam or sgd")
    momentum: OptReal = _opt("sgd only")
    noise_multiplier: OptReal = _opt("σ; solved from ε if omitted")
    hidden: Annotated[list[Count] | None, BeforeValidator(_not_null)] = _opt(
        "mlp only: hidden layer widths", max_length=8)
    activation: str | None = Field(default=None, description="mlp only")
    l2: OptReal = _opt()
    average: OptReal = _opt("EMA of iterates (0: last)")
    units: OptCount = _opt("a public estimate of the number of units (skips the DP count)")
    count_epsilon: OptReal = _opt()
    holdout: OptReal = _opt("fraction held out for a DP evaluation")
    eval_epsilon: OptReal = _opt()
    max_rows_per_unit: OptCount = _opt("may only lower the policy's bound")

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
