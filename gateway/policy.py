"""The policy file (``policies/*.yaml``): what may be asked of a dataset.

A policy is the operator's statement of the privacy unit, the contribution
bounds and the public metadata (types, bounds, public values).  Everything here
is public: analysts may read all of it, and every planning decision must be a
function of the SQL text and this policy only, never of the data.

Loading is strict (``extra="forbid"``) because a typo in a policy silently
weakens privacy; every error names the file, the key path and the fix.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.errors import PolicyError

if TYPE_CHECKING:
    from gateway.sql.names import TableNames

ColumnType = Literal["int", "float", "text", "bool", "date", "timestamp"]
Mechanism = Literal["laplace", "gaussian"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineSpec(_Strict):
    """Where the data lives; DuckDB embedded unless said otherwise."""

    kind: Literal["duckdb", "postgres", "spark"] = "duckdb"
    database: str | None = Field(
        default=None, description="duckdb: a database file holding tables named by `source`"
    )
    dsn: str | None = None
    master: str | None = None
    memory_limit: str = "4GB"
    threads: int = Field(default=2, ge=1, le=256)

    @model_validator(mode="after")
    def _available(self) -> EngineSpec:
        # Accepting a kind no executor implements would fail later, or worse, run
        # with a dialect whose guards were never checked.
        if self.kind != "duckdb":
            raise ValueError(f"engine kind {self.kind!r} is not available in this version; "
                             "use kind: duckdb")
        return self


class ColumnSpec(_Strict):
    type: ColumnType
    role: Literal["identifier", "privacy_unit"] | None = None
    # [low, high], or `auto`: each query tunes the range of its sums and means over the
    # column privately, inside the hard `limits` (gateway/query/tuning.py).
    bounds: tuple[Any, Any] | Literal["auto"] | None = None
    limits: tuple[Any, Any] | None = Field(
        default=None, description="with `bounds: auto`: the hard range [low, high] a tuned "
        "range stays inside (and what planning assumes)")
    public_values: tuple[Any, ...] | None = None
    public_values_from: str | None = Field(
        default=None, description="`table.column` of a public table whose values are public"
    )
    key: bool = Field(
        default=False, description="public tables: the column is unique (checked at load), so "
        "protected tables may join on it; unique columns are also found at load without it"
    )

    @model_validator(mode="after")
    def _check(self) -> ColumnSpec:
        if self.bounds == "auto":
            if self.type not in ("int", "float"):
                raise ValueError(f"`bounds: auto` is for int and float columns, not "
                                 f"{self.type}; give [low, high] instead")
            if self.limits is None:
                raise ValueError("`bounds: auto` needs `limits: [low, high]`, the hard range "
                                 "a tuned range must stay inside")
            lo, hi = (_coerce_bound(self.type, b) for b in self.limits)
            if lo > hi:
                raise ValueError(f"lower limit {self.limits[0]} is above upper limit "
                                 f"{self.limits[1]}; write limits as [low, high]")
            object.__setattr__(self, "limits", (lo, hi))
        elif self.limits is not None:
            raise ValueError("`limits` goes with `bounds: auto`; with fixed bounds remove it")
        elif self.bounds is not None:
            if self.type in ("text", "bool"):
                raise ValueError(
                    f"bounds are only meaningful for int, float, date and timestamp columns, "
                    f"not {self.type}; remove `bounds`"
                )
            lo, hi = (_coerce_bound(self.type, b) for b in self.bounds)
            if lo > hi:
                raise ValueError(
                    f"lower bound {self.bounds[0]} is above upper bound {self.bounds[1]}; "
                    f"write bounds as [low, high]"
                )
            object.__setattr__(self, "bounds", (lo, hi))
        if self.public_values is not None and self.public_values_from is not None:
            raise ValueError("give either public_values or public_values_from, not both")
        if self.public_values is not None:
            if len(self.public_values) == 0:
                raise ValueError("public_values is empty; list the values or remove the key")
            values = tuple(_coerce_value(self.type, v) for v in self.public_values)
            if len(set(values)) != len(values):
                raise ValueError("public_values has duplicates; list each value once")
            object.__setattr__(self, "public_values", values)
        if self.public_values_from is not None and self.public_values_from.count(".") != 1:
            raise ValueError(
                "public_values_from must be `table.column` naming a public table, "
                "e.g. public_values_from: countries.country"
            )
        if self.role is not None and (self.public_values or self.public_values_from):
            raise ValueError(f"a {self.role} column cannot have public values; remove them")
        return self

    @property
    def auto_bounds(self) -> bool:
        return self.bounds == "auto"

    @property
    def planning_bounds(self) -> tuple[Any, Any] | None:
        """What planning assumes: the bounds, or for `auto` the hard limits."""
        if self.bounds == "auto":
            return self.limits
        return self.bounds

    @property
    def numeric_bounds(self) -> tuple[float, float] | None:
        """Bounds as floats (dates as days since epoch), for interval arithmetic."""
        b = self.planning_bounds
        if b is None:
            return None
        return (_as_number(b[0]), _as_number(b[1]))


def _as_number(v: Any) -> float:
    if isinstance(v, dt.datetime):
        return v.timestamp() / 86400.0
    if isinstance(v, dt.date):
        return float(v.toordinal() - dt.date(1970, 1, 1).toordinal())
    return float(v)


def _coerce_bound(kind: str, v: Any) -> Any:
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int | float) or not float(v).is_integer():
            raise ValueError(f"bound {v!r} of an int column must be an integer")
        return int(v)
    if kind == "float":
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"bound {v!r} of a float column must be a finite number")
        return float(v)
    if kind == "date":
        if isinstance(v, dt.datetime):
            return v.date()
        if isinstance(v, dt.date):
            return v
        try:
            return dt.date.fromisoformat(str(v))
        except ValueError:
            raise ValueError(f"bound {v!r} of a date column must be YYYY-MM-DD") from None
    if kind == "timestamp":
        if isinstance(v, dt.datetime):
            return v
        try:
            return dt.datetime.fromisoformat(str(v))
        except ValueError:
            raise ValueError(f"bound {v!r} of a timestamp column must be ISO 8601") from None
    raise ValueError(f"no bounds for type {kind}")


def _coerce_value(kind: str, v: Any) -> Any:
    if v is None:  # `null` in public_values: NULL is a group of its own (a public value)
        return None
    if kind == "text":
        return str(v)
    if kind == "bool":
        if not isinstance(v, bool):
            raise ValueError(f"public value {v!r} of a bool column must be true or false")
        return v
    return _coerce_bound(kind, v)


# Schemas of the catalog a PostgreSQL client reads (pgwire answers them itself).
_RESERVED_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})


class AutoBound(_Strict):
    """``{auto: true, max: 500}``: the bound is tuned privately for each query, at most
    ``max`` (gateway/query/tuning.py); ``max`` is the hard ceiling the operator allows."""

    auto: Literal[True]
    max: int = Field(ge=1, le=1_000_000)


class TableSpec(_Strict):
    source: str
    # `schema: NAME`: queries may also write NAME.table (public., main. and the dataset
    # name are accepted for every table; gateway/sql/names.py).  `schema` would shadow
    # a BaseModel attribute, hence the alias.
    schema_: str | None = Field(
        default=None, alias="schema", pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$",
        description="a schema queries may qualify the table with (NAME.table)")
    public: bool = False
    privacy_unit: str | None = None
    max_rows_per_unit: int | AutoBound = Field(
        default=1, description="rows one unit may contribute to a query, or {auto: true, "
        "max: N}: tuned privately per query up to N")
    max_groups_per_unit: int | AutoBound = Field(
        default=1, description="groups one unit may touch in a query, or {auto: true, max: "
        "N}: tuned privately per query up to N")
    columns: dict[str, ColumnSpec] = Field(default_factory=dict)

    @field_validator("max_groups_per_unit")
    @classmethod
    def _groups_range(cls, v: int | AutoBound) -> int | AutoBound:
        n = v.max if isinstance(v, AutoBound) else v
        if n < 1:
            raise ValueError("max_groups_per_unit must be at least 1: use a larger number")
        if n > 100_000:
            raise ValueError("max_groups_per_unit must be at most 100000: use a smaller number")
        return v

    @property
    def groups_ceiling(self) -> int:
        g = self.max_groups_per_unit
        return g.max if isinstance(g, AutoBound) else g

    @property
    def groups_auto(self) -> bool:
        return isinstance(self.max_groups_per_unit, AutoBound)

    @field_validator("max_rows_per_unit")
    @classmethod
    def _rows_range(cls, v: int | AutoBound) -> int | AutoBound:
        if isinstance(v, int) and v < 1:
            raise ValueError("max_rows_per_unit must be at least 1: use a larger number "
                             "(or {auto: true, max: N} to have it tuned per query)")
        if isinstance(v, int) and v > 1_000_000:
            raise ValueError("max_rows_per_unit must be at most 1000000: use a smaller "
                             "number (or {auto: true, max: N} to have it tuned per query)")
        return v

    @property
    def rows_ceiling(self) -> int:
        """The largest M any query over this table may use (the fixed bound, or auto's max)."""
        m = self.max_rows_per_unit
        return m.max if isinstance(m, AutoBound) else m

    @property
    def rows_auto(self) -> bool:
        return isinstance(self.max_rows_per_unit, AutoBound)

    @model_validator(mode="after")
    def _check(self) -> TableSpec:
        if self.schema_ is not None and self.schema_.lower() in _RESERVED_SCHEMAS:
            raise ValueError(f"schema {self.schema_!r} is the PostgreSQL catalog's; choose "
                             "another name (or omit it: public. and main. are accepted anyway)")
        if self.public:
            if self.privacy_unit is not None:
                raise ValueError("a public table has no privacy_unit; remove one of the two")
            return self
        keyed = [n for n, c in self.columns.items() if c.key]
        if keyed:
            raise ValueError(
                f"column {keyed[0]!r}: `key: true` is for columns of public tables (what a "
                "protected table may join on); remove it")
        if not self.columns:
            raise ValueError(
                "a protected table must declare its columns (type, bounds, roles); "
                "add a `columns:` mapping or mark the table `public: true`"
            )
        units = [n for n, c in self.columns.items() if c.role == "privacy_unit"]
        if self.privacy_unit is None:
            if units:
                raise ValueError(
                    f"column {units[0]!r} has role privacy_unit but the table has no "
                    f"`privacy_unit`; add privacy_unit: {units[0]}"
                )
            if self.max_rows_per_unit != 1 or self.max_groups_per_unit != 1:
                raise ValueError(
                    "without privacy_unit each row is its own unit, so max_rows_per_unit and "
                    "max_groups_per_unit must be 1; add a privacy_unit or remove them"
                )
        else:
            if self.privacy_unit not in self.columns:
                raise ValueError(
                    f"privacy_unit {self.privacy_unit!r} is not among the declared columns; "
                    f"add `{self.privacy_unit}: {{type: int, role: privacy_unit}}`"
                )
            if units and units != [self.privacy_unit]:
                raise ValueError(
                    f"only the privacy_unit column {self.privacy_unit!r} may have role "
                    f"privacy_unit (found {units})"
                )
        return self

    @property
    def is_row_level(self) -> bool:
        return not self.public and self.privacy_unit is None


class Budget(_Strict):
    epsilon: float = Field(gt=0)
    delta: float = Field(default=0.0, ge=0, lt=1)

    @field_validator("epsilon")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("epsilon must be a finite number")
        return v


class BudgetSpec(_Strict):
    dataset: Budget
    per_analyst: Budget
    renyi_share: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="share of each δ budget reserved for the Rényi branch of the privacy "
        "filter (0: basic composition only); events may then use the rest of δ")


class Defaults(_Strict):
    epsilon: float = Field(default=0.5, gt=0)
    delta: float = Field(default=0.0, ge=0, lt=1)
    mechanism: Mechanism = "laplace"


class Limits(_Strict):
    min_epsilon_per_query: float = Field(default=1e-4, gt=0)
    max_epsilon_per_query: float | None = Field(default=None, gt=0)
    max_sql_length: int = Field(default=20_000, ge=100)
    query_timeout_s: float = Field(default=60.0, gt=0)
    max_groups: int = Field(
        default=100_000, ge=1, description="largest public-key domain enumerated for one query"
    )
    max_public_groups: int = Field(
        default=10_000, ge=1, description="most rows the public domains of a query's GROUP BY "
        "keys may release (their product); beyond it groups are chosen by DP partition "
        "selection (needs delta > 0)"
    )
    tuning_epsilon_share: float = Field(
        default=0.1, gt=0, le=0.5, description="share of a query's epsilon spent on tuning "
        "its `auto` contribution bounds (a DP histogram of per-unit contributions)")


class PolicyModel(_Strict):
    dataset: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")
    engine: EngineSpec = Field(default_factory=EngineSpec)
    tables: dict[str, TableSpec]
    budget: BudgetSpec
    defaults: Defaults = Field(default_factory=Defaults)
    limits: Limits = Field(default_factory=Limits)

    @model_validator(mode="after")
    def _cross_refs(self) -> PolicyModel:
        if not self.tables:
            raise ValueError("no tables; declare at least one under `tables:`")
        _unique_ignoring_case(self.tables, "tables", "tables")
        for tname, table in self.tables.items():
            _unique_ignoring_case(table.columns, f"tables.{tname}.columns", "columns")
        for tname, table in self.tables.items():
            for cname, col in table.columns.items():
                ref = col.public_values_from
                if ref is None:
                    continue
                other, _, ocol = ref.partition(".")
                target = self.tables.get(other)
                if target is None:
                    raise ValueError(
                        f"tables.{tname}.columns.{cname}.public_values_from refers to table "
                        f"{other!r}, which the policy does not declare; declare it with "
                        f"`public: true` or fix the name"
                    )
                if not target.public:
                    raise ValueError(
                        f"tables.{tname}.columns.{cname}.public_values_from refers to "
                        f"{other!r}, which is not public; values of a protected table are "
                        f"not public"
                    )
                if target.columns and ocol not in target.columns:
                    raise ValueError(
                        f"tables.{tname}.columns.{cname}.public_values_from: table {other!r} "
                        f"has no column {ocol!r}"
                    )
        if self.defaults.mechanism == "gaussian" and self.defaults.delta == 0:
            raise ValueError("defaults: the gaussian mechanism needs delta > 0")
        return self


def _around(raw: bytes, line: int, context: int = 2) -> str:
    """The lines around ``line`` (0-based), numbered, the faulty one marked."""
    lines = raw.decode("utf-8", "replace").splitlines()
    lo, hi = max(0, line - context), min(len(lines), line + context + 1)
    shown = [f"{'>' if i == line else ' '} {i + 1:4} | {lines[i]}" for i in range(lo, hi)]
    return ("\n" + "\n".join(shown)) if shown else ""


def _unique_ignoring_case(names: dict[str, Any], where: str, what: str) -> None:
    """SQL names are case-insensitive: two that differ only in case are one name."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.lower(), name)
        if other != name:
            raise ValueError(f"{where}: {other!r} and {name!r} name the same {what[:-1]} "
                             f"(SQL names ignore case); rename or remove one")


class Policy:
    """A loaded policy: the validated model plus where it came from."""

    def __init__(self, model: PolicyModel, path: Path, version: str) -> None:
        self.model = model
        self.path = path
        self.folder = path.parent
        self.version = version
        self._names: TableNames | None = None

    @property
    def dataset(self) -> str:
        return self.model.dataset

    @property
    def tables(self) -> dict[str, TableSpec]:
        return self.model.tables

    def table(self, name: str) -> TableSpec | None:
        """Case-insensitive table lookup (SQL identifiers are case-insensitive)."""
        if name in self.model.tables:
            return self.model.tables[name]
        lowered = name.lower()
        for key, spec in self.model.tables.items():
            if key.lower() == lowered:
                return spec
        return None

    @property
    def names(self) -> TableNames:
        """How queries may name the tables (gateway/sql/names.py: the one resolver)."""
        if self._names is None:
            from gateway.sql.names import TableNames

            self._names = TableNames.from_policy(self)
        return self._names

    def canonical_table_name(self, name: str, quoted: bool = False) -> str | None:
        """The declared name of the table ``name`` names (unquoted: ignoring case)."""
        return self.names.lookup(name, quoted)

    def resolve_path(self, source: str) -> Path:
        p = Path(source)
        return p if p.is_absolute() else (self.folder / p).resolve()

    def error(self, key_path: str, message: str) -> PolicyError:
        return PolicyError(f"{self.path}: {key_path}: {message}")


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file, or raise PolicyError naming file, key and fix."""
    p = Path(path)
    try:
        raw_bytes = p.read_bytes()
    except OSError as e:
        raise PolicyError(
            f"{p}: cannot read the policy file ({e.strerror}); pass --policy PATH or set "
            f"GATEWAY_POLICY"
        ) from None
    try:
        data = yaml.load(raw_bytes, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except _DuplicateKey as e:
        raise PolicyError(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None)
        raise PolicyError(f"{p}: not valid YAML{where}"
                          f"{f' ({problem})' if problem else ''}; fix the syntax"
                          f"{_around(raw_bytes, mark.line) if mark is not None else ''}"
                          ) from None
    if not isinstance(data, dict):
        raise PolicyError(f"{p}: the policy must be a YAML mapping with dataset, tables, budget")
    try:
        model = PolicyModel.model_validate(data)
    except ValidationError as e:
        raise PolicyError(_describe(p, e)) from None
    version = hashlib.sha256(raw_bytes).hexdigest()[:16]
    return Policy(model, p.resolve(), version)


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys: PyYAML would keep the last one, so
    `max_rows_per_unit` written twice would silently take the later value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise _DuplicateKey(f"line {line}: key {key!r} appears twice in one mapping; "
                                    f"keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_FIXES = {
    "extra_forbidden": "remove it or fix its spelling",
    "missing": "add it",
    "literal_error": "use one of the allowed values",
    "greater_than": "use a positive number",
    "greater_than_equal": "use a larger number",
    "less_than": "use a smaller number",
    "less_than_equal": "use a smaller number",
    "float_parsing": "use a number",
    "int_parsing": "use an integer",
    "string_pattern_mismatch": "use letters, digits, '_' or '-'",
}


def _describe(path: Path, err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = ".".join(str(x) for x in item["loc"]) or "(top level)"
        msg = str(item["msg"]).removeprefix("Value error, ")
        fix = _FIXES.get(item["type"])
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{path}: {loc}: {msg}" + (f"; {fix}" if fix else ""))
    return "\n".join(lines)
