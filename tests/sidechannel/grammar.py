"""Typed row-level expressions for the side-channel test (the query *shapes* are in
shapes.py).

The grammar follows what ``gateway/sql/validate.py`` allows: expressions of every
type with nested searched and operand CASE, CAST/TRY_CAST to each allowed type,
date parts (epoch too), DATE_TRUNC, strftime/TO_CHAR, date arithmetic and
intervals, large constants, division, string functions, COALESCE/NULLIF/
LEAST/GREATEST, IN, BETWEEN, LIKE.  About one operand in fourteen is deliberately
of the wrong type (text as a boolean, a date compared with an int): the gateway may
refuse those, but must do so whatever the data holds.

A plain recursive generator driven by ``random.Random(seed)`` keeps CI
deterministic and lets each node carry what the comparison needs: its type,
whether aggregating it is bounded, and whether a key built from it has a public
domain (then the released key set must be identical on D and D′).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.sidechannel.data import COLUMNS, MAX_GROUPS, PUB_COLUMNS

INT, FLOAT, TEXT, BOOL, DATE, TS = "int", "float", "text", "bool", "date", "timestamp"
TYPES = (INT, FLOAT, TEXT, BOOL, DATE, TS)
WEIGHTS = (5, 4, 4, 3, 3, 1)
MISTYPE = 0.07  # share of operands deliberately of another type (compounds over a query)


@dataclass(frozen=True)
class Col:
    """A column in scope: its reference and the public metadata the policy gives it."""

    ref: str
    type: str
    bounded: bool = False  # numeric (or date) with policy bounds: SUM/AVG/YEAR are bounded
    public: bool = False  # a key over it has a public domain (released in full)
    unit: bool = False


@dataclass(frozen=True)
class Expr:
    """A generated expression and what is known about it."""

    sql: str
    type: str
    public: bool = False  # built only from public-domain columns, in a key-safe way


def _public_domain(spec: dict[str, Any]) -> bool:
    """The gateway's rule (gateway/sql/domains.py): listed values, a public table's
    values, booleans, and int or date ranges of at most MAX_GROUPS values."""
    kind, bounds = spec["type"], spec.get("bounds")
    if spec.get("role"):
        return False
    if "public_values" in spec or "public_values_from" in spec or kind == "bool":
        return True
    if bounds is not None and kind == "int":
        return bool(bounds[1] - bounds[0] + 1 <= MAX_GROUPS)
    if bounds is not None and kind == "date":
        lo, hi = (dt.date.fromisoformat(b) for b in bounds)
        return (hi - lo).days + 1 <= MAX_GROUPS
    return False


def table_cols(table: str, alias: str | None = None) -> list[Col]:
    """The columns of a policy table, referenced as ``alias.name``."""
    alias = alias or table
    if table == "pub":  # a public table: every column's values are public, none bounded
        return [Col(f"{alias}.{n}", t, public=True) for n, t in PUB_COLUMNS.items()]
    return [Col(f"{alias}.{n}", c["type"], bounded="bounds" in c, public=_public_domain(c),
                unit=c.get("role") == "privacy_unit") for n, c in COLUMNS[table].items()]


INT_LITS = ["0", "1", "-1", "3", "7", "42", "1000", "2147483647", "9223372036854775807",
            "-9223372036854775807", "123456789012345"]
FLOAT_LITS = ["0.5", "2.5", "-1.5", "1e308", "-1e308", "1e-300", "1e18", "3.14159", "PI()"]
TEXT_LITS = ["'a'", "'abc'", "''", "'NaN'", "'2024-01-01'", "'12'", "'c01'", "'north'",
             "'true'", "'x%'"]
DATE_LITS = ["DATE '2024-01-01'", "DATE '2023-06-15'", "DATE '0001-01-01'",
             "DATE '9999-12-31'", "CAST('2024-02-29' AS DATE)", "'2023-03-01'"]
# Timestamps mostly as strings: the gateway refuses every TIMESTAMP literal and cast
# (sqlglot spells the type TIMESTAMPNTZ), which would drown the rest.
TS_LITS = ["'2024-01-01 10:00:00'", "'2023-05-05 05:05:05'", "'0001-01-01 00:00:00'",
           "CAST('2023-05-05 05:05:05' AS TIMESTAMP)"]
CAST_TYPES = {INT: ["INT", "BIGINT", "SMALLINT", "TINYINT"], FLOAT: ["DOUBLE", "FLOAT",
              "DECIMAL(18, 3)"], TEXT: ["VARCHAR", "TEXT", "CHAR"], BOOL: ["BOOLEAN"],
              DATE: ["DATE"], TS: ["TIMESTAMP"]}
PARTS = ["year", "quarter", "month", "week", "day", "dayofweek", "dayofyear", "hour",
         "isodow", "epoch"]
TRUNC_PARTS = ["year", "quarter", "month", "week", "day", "hour"]
AGGS = ["SUM", "AVG", "VAR_POP", "VAR_SAMP", "VARIANCE", "STDDEV", "STDDEV_POP",
        "STDDEV_SAMP",
        # every engine's spelling (T-SQL, MySQL, Oracle, ...), mapped by validation
        "VAR", "VARP", "STD", "STDEV", "STDEVP", "VARIANCE_SAMP", "VARIANCE_POP"]


class Gen:
    """Expressions over the columns in scope, typed, of bounded depth."""

    def __init__(self, rng: random.Random, cols: list[Col]) -> None:
        self.r = rng
        self.cols = [c for c in cols if not c.unit]
        self.units = [c for c in cols if c.unit]

    # -- helpers --------------------------------------------------------------------

    def p(self, prob: float) -> bool:
        return self.r.random() < prob

    def pick(self, items: list[str]) -> str:
        return self.r.choice(items)

    def col(self, kind: str, pred: Callable[[Col], bool] = lambda c: True) -> Col | None:
        found = [c for c in self.cols if c.type == kind and pred(c)]
        return self.r.choice(found) if found else None

    def lit(self, kind: str) -> str:
        table = {INT: INT_LITS, FLOAT: FLOAT_LITS, TEXT: TEXT_LITS, DATE: DATE_LITS,
                 TS: TS_LITS, BOOL: ["TRUE", "FALSE"]}[kind]
        return "NULL" if self.p(0.04) else self.pick(table)

    def any_type(self) -> str:
        return self.r.choices(TYPES, WEIGHTS)[0]

    def other(self, kind: str) -> str:
        while (t := self.any_type()) == kind:
            pass
        return t

    # -- row-level expressions ----------------------------------------------------------

    def expr(self, kind: str, depth: int = 2) -> str:
        """A row-level expression of ``kind`` (sometimes, on purpose, of another)."""
        if self.p(MISTYPE):
            kind = self.other(kind)
        if depth <= 0 or self.p(0.3):
            c = self.col(kind)
            return c.ref if c is not None and self.p(0.8) else self.lit(kind)
        d = depth - 1
        common: list[Callable[[], str]] = [
            lambda: self.case(kind, d), lambda: self.operand_case(kind, d),
            lambda: f"COALESCE({self.expr(kind, d)}, {self.lit(kind)})",
            lambda: f"NULLIF({self.expr(kind, d)}, {self.expr(kind, d)})",
            lambda: f"{self.pick(['CAST', 'TRY_CAST'])}({self.expr(self.any_type(), d)}"
                    f" AS {self.pick(CAST_TYPES[kind])})",
        ]
        build: dict[str, list[Callable[[], str]]] = {
            INT: [
                lambda: f"({self.expr(INT, d)} {self.pick(['+', '-', '*'])} {self.expr(INT, d)})",
                lambda: f"{self.pick(['YEAR', 'MONTH', 'DAY', 'QUARTER', 'DAYOFWEEK'])}"
                        f"({self.expr(DATE, d)})",
                lambda: f"EXTRACT({self.pick(PARTS[:-1])} FROM {self.expr(TS, d)})",
                lambda: f"LENGTH({self.expr(TEXT, d)})",
                lambda: f"{self.pick(['ABS', 'SIGN'])}({self.expr(INT, d)})",
                lambda: f"{self.pick(['ROUND', 'FLOOR', 'CEIL'])}({self.expr(FLOAT, d)})",
                lambda: f"{self.pick(['LEAST', 'GREATEST'])}({self.expr(INT, d)}, "
                        f"{self.expr(INT, d)}, {self.lit(INT)})",
            ],
            FLOAT: [
                lambda: f"({self.expr(FLOAT, d)} / {self.expr(self.pick([INT, FLOAT]), d)})",
                lambda: f"({self.expr(FLOAT, d)} {self.pick(['+', '*'])} {self.lit(FLOAT)})",
                lambda: f"date_part('{self.pick(PARTS)}', {self.expr(self.pick([DATE, TS]), d)})",
                lambda: f"EXTRACT(epoch FROM {self.expr(TS, d)})",
                lambda: f"{self.pick(['SQRT', 'LN', 'EXP', 'ABS'])}({self.expr(FLOAT, d)})",
                lambda: f"POWER({self.expr(FLOAT, d)}, {self.pick(['2', '3'])})",
                lambda: f"ROUND({self.expr(FLOAT, d)}, {self.pick(['0', '2', '-1'])})",
            ],
            TEXT: [
                lambda: f"{self.pick(['LOWER', 'UPPER', 'TRIM'])}({self.expr(TEXT, d)})",
                lambda: f"SUBSTRING({self.expr(TEXT, d)}, {self.expr(INT, d)}, "
                        f"{self.pick(['1', '2', '3'])})",
                lambda: f"CONCAT({self.expr(TEXT, d)}, {self.expr(self.any_type(), d)})",
                lambda: f"({self.expr(TEXT, d)} || {self.expr(TEXT, d)})",
                lambda: f"{self.pick(['LEFT', 'RIGHT'])}({self.expr(TEXT, d)}, "
                        f"{self.pick(['1', '2', '5'])})",
                lambda: f"strftime({self.expr(self.pick([DATE, TS]), d)}, "
                        f"'{self.pick(['%Y-%m', '%Y', '%d/%m/%Y %H'])}')",
                lambda: f"TO_CHAR({self.expr(DATE, d)}, 'YYYY-MM')",
            ],
            BOOL: [lambda: self.pred(d)],
            DATE: [
                lambda: f"({self.expr(DATE, d)} + {self.pick(['1', '30', '-365', '100000'])})",
                lambda: f"{self.pick(['LEAST', 'GREATEST'])}({self.expr(DATE, d)}, "
                        f"{self.lit(DATE)})",
            ],
            TS: [
                lambda: f"DATE_TRUNC('{self.pick(TRUNC_PARTS)}', "
                        f"{self.expr(self.pick([DATE, TS]), d)})",
                lambda: f"({self.expr(self.pick([DATE, TS]), d)} + INTERVAL "
                        f"{self.pick(['1 DAY', '2 HOUR', '1000000 DAY', '3 MONTH'])})",
            ],
        }
        return self.r.choice(build[kind] + common)()

    def case(self, kind: str, depth: int) -> str:
        arms = " ".join(f"WHEN {self.pred(depth)} THEN {self.expr(kind, depth)}"
                        for _ in range(self.r.randint(1, 2)))
        tail = f" ELSE {self.expr(kind, depth)}" if self.p(0.7) else ""
        return f"CASE {arms}{tail} END"

    def operand_case(self, kind: str, depth: int) -> str:
        """``CASE x WHEN y ...``: the engine compares x with each y, casting if their
        types differ, so x and y are of independently chosen types half the time."""
        t = self.any_type()
        u = t if self.p(0.5) else self.any_type()
        arms = " ".join(f"WHEN {self.expr(u, depth)} THEN {self.expr(kind, depth)}"
                        for _ in range(self.r.randint(1, 2)))
        return f"CASE {self.expr(t, depth)} {arms} ELSE {self.expr(kind, depth)} END"

    def pred(self, depth: int = 2) -> str:
        """A row-level condition."""
        if depth <= 0 or self.p(0.25):
            return self.simple_pred()
        d = depth - 1
        forms: list[Callable[[], str]] = [
            lambda: f"({self.pred(d)} AND {self.pred(d)})",
            lambda: f"({self.pred(d)} OR {self.pred(d)})",
            lambda: f"NOT {self.pred(d)}",
            lambda: self.compare(d), lambda: self.compare(d), lambda: self.compare(d),
            lambda: self.case(BOOL, d),
        ]
        return self.r.choice(forms)()

    def compare(self, depth: int) -> str:
        t = self.any_type()
        u = t if not self.p(MISTYPE) else self.other(t)
        left = self.expr(t, depth)
        form = self.r.random()
        if form < 0.6:
            op = self.pick(["=", "<>", "<", "<=", ">", ">=", "IS DISTINCT FROM"])
            return f"{left} {op} {self.expr(u, depth)}"
        if form < 0.75:
            items = ", ".join(self.lit(u) for _ in range(self.r.randint(1, 3)))
            return f"{left} {self.pick(['IN', 'NOT IN'])} ({items})"
        if form < 0.9:
            return f"{left} BETWEEN {self.lit(u)} AND {self.lit(u)}"
        return f"{left} IS {self.pick(['NULL', 'NOT NULL'])}"

    def simple_pred(self) -> str:
        forms: list[Callable[[], str]] = [
            lambda: f"{self.expr(INT, 0)} {self.pick(['>', '=', '<='])} {self.lit(INT)}",
            lambda: f"{self.expr(FLOAT, 0)} {self.pick(['>', '<'])} {self.lit(FLOAT)}",
            lambda: f"{self.expr(TEXT, 0)} {self.pick(['=', '<>', '>'])} {self.lit(TEXT)}",
            lambda: f"{self.expr(TEXT, 1)} {self.pick(['LIKE', 'ILIKE', 'NOT LIKE'])} "
                    f"'{self.pick(['%a%', 'c0_', '', '%'])}'",
            lambda: f"{self.expr(DATE, 0)} {self.pick(['>', '<', '='])} {self.lit(DATE)}",
            lambda: f"{self.expr(TS, 0)} {self.pick(['>', '<'])} {self.lit(TS)}",
            lambda: f"{self.pick(['isnan', 'isinf', 'isfinite'])}({self.expr(FLOAT, 0)})",
            lambda: f"{self.pick(['starts_with', 'contains'])}({self.expr(TEXT, 0)}, 'a')",
            lambda: self.expr(BOOL, 0) if not self.p(0.3) else self.expr(TEXT, 0),  # text!
            lambda: f"{self.expr(INT, 0)} IS NULL",
            # Two constants: the engine may fold them once, or convert per row (then
            # a failure appears only when rows reach it).
            lambda: f"{self.lit(t := self.any_type())} {self.pick(['=', '>', '<>'])} "
                    f"{self.lit(t if self.p(0.5) else self.other(t))}",
        ]
        return self.r.choice(forms)()

    # -- aggregate arguments and keys -----------------------------------------------

    def num(self, depth: int = 2) -> str:
        """A numeric expression the gateway can bound (mostly): bounded columns,
        date parts of bounded dates, CASE/COALESCE/LEAST/GREATEST, arithmetic."""
        if self.p(0.05):  # unbounded on purpose: must be refused whatever the data
            return self.pick([c.ref for c in self.cols if c.type in (INT, FLOAT)
                              and not c.bounded] or ["1"]) if self.p(0.5) else \
                self.pick([f"date_part('epoch', {self.date_ref()})",
                           f"LENGTH({self.expr(TEXT, 0)})", f"YEAR({self.expr(INT, 0)})",
                           f"CAST({self.expr(TEXT, 0)} AS INT)"])
        if depth <= 0 or self.p(0.3):
            c = self.col(self.pick([INT, FLOAT]), lambda c: c.bounded)
            if c is not None and self.p(0.75):
                return c.ref
            return self.pick(["1", "2.5", "-3", "0", "1000000"])
        d = depth - 1
        forms: list[Callable[[], str]] = [
            lambda: f"{self.pick(['YEAR', 'MONTH', 'QUARTER', 'DAY'])}({self.date_ref()})",
            lambda: f"EXTRACT({self.pick(['year', 'month', 'dow', 'doy'])} FROM "
                    f"{self.date_ref()})",
            lambda: f"date_part('{self.pick(['year', 'month', 'hour', 'week'])}', "
                    f"{self.date_ref()})",
            lambda: f"CASE WHEN {self.pred(d)} THEN {self.num(d)} ELSE {self.num(d)} END",
            lambda: f"CASE {self.expr(self.any_type(), d)} WHEN "
                    f"{self.expr(self.any_type(), d)} THEN {self.num(d)} "
                    f"ELSE {self.num(d)} END",
            lambda: f"COALESCE({self.num(d)}, {self.pick(['0', '1'])})",
            lambda: f"LEAST(GREATEST({self.num(d)}, -5), 5)",
            lambda: f"({self.num(d)} {self.pick(['+', '-', '*'])} {self.num(d)})",
            lambda: f"({self.num(d)} * PI())",  # a constant function, evaluated at planning
            lambda: f"({self.num(d)} / {self.divisor()})",
            lambda: f"{self.pick(['ABS', 'ROUND', 'FLOOR'])}({self.num(d)})",
            lambda: f"CAST({self.num(d)} AS {self.pick(['INT', 'DOUBLE', 'BIGINT'])})",
            lambda: f"CASE WHEN {self.pred(d)} THEN 1 ELSE 0 END",
        ]
        return self.r.choice(forms)()

    def divisor(self) -> str:
        """Constants, or a bounded int shifted off zero (or not: then refused)."""
        c = self.col(INT, lambda c: c.bounded)
        if c is None or self.p(0.5):
            return self.pick(["2", "-7", "0.5", "1e-300"])
        return f"({c.ref} + 1)" if self.p(0.7) else c.ref

    def date_ref(self) -> str:
        c = self.col(DATE, lambda c: c.bounded) or self.col(TS, lambda c: c.bounded)
        return c.ref if c is not None else "DATE '2024-01-01'"

    def key(self) -> Expr:
        """A GROUP BY key: public-domain (mostly) or private (partition selection)."""
        if self.p(0.75):
            return self.public_key()
        forms: list[Callable[[], str]] = [
            lambda: self.pick([c.ref for c in self.cols if not c.public and c.type != BOOL]
                              or ["1"]),
            lambda: f"SUBSTRING({self.expr(TEXT, 0)}, 1, 2)",
            lambda: f"DATE_TRUNC('day', {self.expr(TS, 0)})",
            lambda: f"ROUND({self.expr(FLOAT, 1)})",
            lambda: self.expr(self.any_type(), 2),
        ]
        return Expr(self.r.choice(forms)(), "unknown", public=False)

    def public_key(self) -> Expr:
        pub = [c for c in self.cols if c.public]
        if not pub:
            return Expr("1", INT, public=False)
        c = self.r.choice(pub)
        # Keep enumerated domains small (products of several dates are slow to build).
        small = [x for x in pub if x.type in (TEXT, BOOL) or x.ref.endswith((".k", ".j"))]
        other = self.r.choice(small or pub)
        dates = [x.ref for x in pub if x.type == DATE]
        to = self.pick(["INT", "VARCHAR", "BOOLEAN"])
        shifted = {INT: (f"({other.ref} + 1)", INT), TEXT: (f"LOWER({other.ref})", TEXT),
                   BOOL: (f"NOT {other.ref}", BOOL)}.get(other.type, (other.ref, other.type))
        forms: list[Callable[[], tuple[str, str]]] = [
            lambda: (c.ref, c.type), lambda: (c.ref, c.type), lambda: shifted,
            lambda: (f"CASE WHEN {other.ref} IS NULL THEN 'none' WHEN {self.pub_pred(other)} "
                     f"THEN 'x' ELSE 'y' END", TEXT),
            lambda: (f"CASE {c.ref} WHEN {other.ref} THEN 'same' ELSE 'other' END", TEXT),
            lambda: (f"COALESCE(CAST({other.ref} AS VARCHAR), 'none')", TEXT),
            lambda: (f"CAST({other.ref} AS {to})", {"INT": INT, "VARCHAR": TEXT}.get(to, BOOL)),
        ]
        if dates:
            day = self.pick(dates)
            forms += [lambda: (f"YEAR({day})", INT), lambda: (f"DATE_TRUNC('month', {day})", TS),
                      lambda: (f"strftime({day}, '%Y-%m')", TEXT)]
        sql, kind = self.r.choice(forms)()
        return Expr(sql, kind, public=True)

    def pub_pred(self, c: Col) -> str:
        lit = {INT: "3", FLOAT: "1.5", TEXT: "'b'", BOOL: "TRUE", DATE: "DATE '2024-01-01'",
               TS: "'2024-01-01 00:00:00'"}[c.type]
        if self.p(MISTYPE):
            lit = self.lit(self.other(c.type))
        return f"{c.ref} {self.pick(['=', '<', '>'])} {lit}"

    def quantile(self) -> str:
        """MEDIAN, MIN/MAX, QUANTILE_CONT, PERCENTILE_CONT ... WITHIN GROUP, APPROX_QUANTILES."""
        value = self.expr(DATE, 1) if self.p(0.2) else self.num(2)
        rank = self.pick(["0.5", "0.01", "0.9", "1", "0", "1.5", "-0.1"])
        return self.r.choice([
            lambda: f"MEDIAN({value})",
            lambda: f"{self.pick(['MIN', 'MAX'])}({value})",
            lambda: f"QUANTILE_CONT({value}, {rank})",
            lambda: f"PERCENTILE_{self.pick(['CONT', 'DISC'])}({rank}) WITHIN GROUP "
                    f"(ORDER BY {value}{self.pick(['', ' DESC'])})",
            lambda: f"APPROX_QUANTILES({value}, {self.pick(['2', '4', '0'])})",
        ])()

    def aggregate(self) -> str:
        """An aggregate call, sometimes with FILTER (WHERE ...)."""
        r = self.r.random()
        if r < 0.2:
            call = "COUNT(*)"
        elif r < 0.3:
            call = f"COUNT({self.expr(self.any_type(), 1)})"
        elif r < 0.36 and self.units:
            call = f"COUNT(DISTINCT {self.r.choice(self.units).ref})"
        elif r < 0.40:  # distinct values of any column or expression
            call = f"COUNT(DISTINCT {self.expr(self.any_type(), 1)})"
        elif r < 0.42:  # a condition aggregated as 0/1
            call = f"{self.pick(['SUM', 'AVG'])}({self.pred(1)})"
        elif r < 0.55:  # DP quantiles, over numbers or dates
            call = self.quantile()
        else:
            call = f"{self.pick(AGGS)}({self.num(2)})"
        if self.p(0.25):
            call += f" FILTER (WHERE {self.pred(1)})"
        return call
