"""Pass 5: the bounded query, run inside the engine.

One query, in stages (CTEs), after the analyst's joins and filters:

1. ``__dp_rows``    one row per input row: unit, keys, per-row values (cleaned,
                    clamped, guarded so no value can raise); rows without a
                    unit are dropped, keys outside a public domain too.
2. ``__dp_groups``  per (unit, group): partial sums — Google's plan of
                    aggregating per unit first, which is both more accurate and
                    cheaper than sampling rows.
3. ``__dp_units``   per unit: how many groups it touches and the totals its
                    scaling needs (a GROUP BY and a join: measured about twice
                    as fast in DuckDB as windows over every unit).
4. ``__dp_kept``    units in more than L0 groups keep L0 of them, chosen by a
                    keyed hash of (unit, group, fresh secret salt): random and
                    independent of every value.  Only those few units are
                    ranked; the others pass through.  Skipped when L0 covers
                    the whole domain.
5. ``__dp_contrib`` each unit's contributions scaled so that together they are
                    at most what M clamped rows could add (see StatSpec), and put
                    on the integer grid of the noise: sums of integers are exact
                    and order-independent, unlike sums of floats, so the
                    sensitivity the noise was calibrated for really holds.
6. final            Σ over units per group (and the unit count per group when
                    partitions must be selected).

Without GROUP BY a unit has one "group", and stages 3-4 disappear.

DP quantiles (MEDIAN, PERCENTILE_CONT, MIN, MAX, ...) add a few stages per value
(``__dp_qr<i>`` ... ``__dp_qa<i>``): the bin of each clamped value, each unit's
value count t, every row weighted min(1, M/t) on a grid of
2^-QUANTILE_WEIGHT_BITS (a unit weighs at most M in all); summed per (group,
bin); returned per group as two arrays (bins, weights) on the final row of the
group.  Only the
histogram leaves the engine, never a value.  The salt is
a named query parameter (``$salt``, also used by the pre-join truncation of
protected relations), so the rewritten SQL text is deterministic and serves as
the cache key.  Every row-level expression arrives from the analysis typed and
total (guarded where needed); :func:`gateway.sql.verify.verify_total` checks
the finished tree once more.  Only portable SQL and the executor's small
dialect hooks (guard, keyed hash, NaN test) are used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from sqlglot import exp

from gateway.engine.base import Executor
from gateway.sql.domains import typed_literal
from gateway.sql.plan import KeySpec, Plan, QuantileSpec, StatSpec
from gateway.sql.relations import SALT
from gateway.sql.verify import verify_total

if TYPE_CHECKING:
    from gateway.query.noise import Grid

MAX_IN_LIST = 1000
# Quantile weights are integers in units of 2^-10 of a value (truncated, so a unit
# never weighs more than M).
QUANTILE_WEIGHT_BITS = 10


def rewrite(plan: Plan, grids: Mapping[str, Grid], executor: Executor) -> exp.Select:
    tree = _Rewriter(plan, grids, executor).build()
    verify_total(tree)
    return tree


def _col(name: str) -> exp.Column:
    return exp.column(name, quoted=True)


def _num(v: float) -> exp.Expr:
    if float(v).is_integer() and abs(v) < 2**53:
        return exp.Literal.number(int(v))
    return exp.Cast(this=exp.Literal.number(repr(float(v))), to=exp.DataType.build("DOUBLE"))


def _double(v: float) -> exp.Expr:
    return exp.Cast(this=exp.Literal.number(repr(float(v))), to=exp.DataType.build("DOUBLE"))


def _sum(e: exp.Expr) -> exp.Expr:
    return exp.Sum(this=e)


def _coalesce0(e: exp.Expr) -> exp.Expr:
    return exp.Coalesce(this=e, expressions=[exp.Literal.number(0)])


def _bigint(e: exp.Expr) -> exp.Expr:
    return exp.Cast(this=e, to=exp.DataType.build("BIGINT"))


def value_columns(plan: Plan) -> tuple[dict[str, str], dict[str, str]]:
    """The per-row value columns of stage ``__dp_rows``: (value SQL -> column, statistic
    or quantile name -> its column).  Statistics of one value share a column."""
    values: dict[str, str] = {}
    of: dict[str, str] = {}
    for s in plan.stats:
        assert s.value is not None
        text = s.value.sql(dialect="duckdb")
        of[s.name] = values.setdefault(text, f"__dp_v{len(values)}")
    for q in plan.quantiles:
        text = q.value.sql(dialect="duckdb")
        of[q.name] = values.setdefault(text, f"__dp_v{len(values)}")
    return values, of


class _Rewriter:
    def __init__(self, plan: Plan, grids: Mapping[str, Grid], executor: Executor) -> None:
        self.plan = plan
        self.grids = grids
        self.ex = executor
        self.keys = [k.name for k in plan.keys]
        # value SQL -> column in __dp_rows; stat name -> value column
        self.values, self.stat_value = value_columns(plan)
        # COUNT(DISTINCT col) has stages of its own; the per-unit sums handle the rest.
        self.main_stats = [s for s in plan.stats if s.kind != "distinct"]
        self.distinct = [s for s in plan.stats if s.kind == "distinct"]

    def build(self) -> exp.Select:
        ctes: list[tuple[str, exp.Query]] = [("__dp_rows", self._rows())]
        # Quantiles alone need none of the per-unit sums, unless their groups must be
        # selected (the unit counts).
        main = bool(self.main_stats) or self.plan.partition_selection or not (
            self.plan.quantiles or self.distinct)
        if main:
            ctes.append(("__dp_groups", self._groups()))
            source = "__dp_groups"
            if self.keys:
                ctes.append(("__dp_units", self._units()))
                ctes.append(("__dp_joined", self._joined()))
                source = "__dp_joined"
                if self._needs_selection():
                    ctes.append(("__dp_kept", self._kept()))
                    source = "__dp_kept"
            ctes.append(("__dp_contrib", self._contrib(source)))
        for i, q in enumerate(self.plan.quantiles):
            ctes.extend(self._quantile_stages(i, q))
        for i, d in enumerate(self.distinct):
            ctes.extend(self._distinct_stages(i, d))
        final = self._with_quantiles(self._final() if main else None)
        user_ctes = list(self.plan.with_.expressions) if self.plan.with_ is not None else []
        with_ = exp.With(expressions=[c.copy() for c in user_ctes] + [
            exp.CTE(this=q, alias=exp.TableAlias(this=exp.to_identifier(n, quoted=True)))
            for n, q in ctes])
        final.set("with_", with_)
        return final

    # -- stage 1 ---------------------------------------------------------------------

    def _rows(self) -> exp.Select:
        rel = self.plan.relation.copy()  # conditions already guarded by analyze
        assert self.plan.unit is not None
        items: list[exp.Expr] = [exp.alias_(self.plan.unit.copy(), "__dp_unit", quoted=True)]
        for key in self.plan.keys:
            items.append(exp.alias_(self._key(key), key.name, quoted=True))
        by_value = {}
        for s in self.plan.stats:
            assert s.value is not None
            by_value[self.stat_value[s.name]] = s.value
        for q in self.plan.quantiles:
            by_value[self.stat_value[q.name]] = q.value
        for col, value in by_value.items():
            items.append(exp.alias_(value.copy(), col, quoted=True))
        rel.set("expressions", items)
        conds: list[exp.Expr] = [exp.Not(this=exp.Is(this=self.plan.unit.copy(),
                                                           expression=exp.Null()))]
        for key in self.plan.keys:
            if key.domain is not None and len(key.domain) <= MAX_IN_LIST:
                conds.append(_in_domain(key))
        where = rel.args.get("where")
        if where is not None:
            conds.insert(0, where.this)
        rel.set("where", exp.Where(this=exp.and_(*conds)))
        return rel

    def _key(self, key: KeySpec) -> exp.Expr:
        """A key value that can always be fetched: dates and timestamps outside years
        1-9999 (valid in the engine, not in Python) become NULL row by row, so their
        presence cannot make the query fail."""
        e = key.engine.copy()
        if key.type not in ("date", "timestamp") or (
                key.domain is not None and len(key.domain) <= MAX_IN_LIST):
            return e
        kind = "DATE" if key.type == "date" else "TIMESTAMP"
        lo = exp.Cast(this=exp.Literal.string("0001-01-01"), to=exp.DataType.build(kind))
        hi = exp.Cast(this=exp.Literal.string("9999-12-31"), to=exp.DataType.build(kind))
        inside = exp.Between(this=e.copy(), low=lo, high=hi)
        return self.ex.guard(exp.Case(ifs=[exp.If(this=inside, true=e)]))

    # -- stage 2 ---------------------------------------------------------------------

    def _groups(self) -> exp.Select:
        group_by = ["__dp_unit", *self.keys]
        items: list[exp.Expr] = [_col(c) for c in group_by]
        for s in self.main_stats:
            assert s.value is not None
            value = s.value
            v = _col(self.stat_value[s.name])
            if s.kind == "sum":
                is_one = isinstance(value, exp.Literal) and value.this == "1"
                agg: exp.Expr = exp.Count(this=exp.Star()) if is_one else _coalesce0(_sum(v))
            elif s.kind == "units":
                agg = _coalesce0(exp.Max(this=v))
            elif s.power == 0:
                agg = exp.Count(this=v)
            else:
                centred = exp.Paren(this=exp.Sub(this=v, expression=_double(s.mid)))
                term = centred if s.power == 1 else exp.Mul(this=centred,
                                                            expression=centred.copy())
                agg = _coalesce0(_sum(term))
            items.append(exp.alias_(agg, s.name, quoted=True))
        return exp.select(*items).from_("__dp_rows").group_by(*[_col(c) for c in group_by])

    # -- stages 3 and 4 ------------------------------------------------------------

    def _needs_selection(self) -> bool:
        size = self.plan.domain_size
        return size is None or self.plan.max_groups < size

    def _totals(self) -> dict[str, tuple[str, exp.Expr]]:
        """Per statistic: the column holding its unit total, and how it is summed."""
        out: dict[str, tuple[str, exp.Expr]] = {}
        counts = {s.ratio: s.name for s in self.main_stats if s.kind == "ratio" and s.power == 0}
        for s in self.main_stats:
            if s.kind == "units":
                continue
            if s.kind == "sum":
                v: exp.Expr = _col(s.name)
                if s.lo < 0:  # non-negative sums need no ABS
                    v = exp.Abs(this=v)
                out[s.name] = (_total_name(s.name), v)
            else:
                assert s.ratio is not None
                out[s.name] = (_total_name(counts[s.ratio]), _col(counts[s.ratio]))
        return out

    def _units(self) -> exp.Select:
        items: list[exp.Expr] = [_col("__dp_unit")]
        if self._needs_selection():
            items.append(exp.alias_(exp.Count(this=exp.Star()), "__dp_ng", quoted=True))
        seen = set()
        for col, value in self._totals().values():
            if col not in seen:
                seen.add(col)
                items.append(exp.alias_(_sum(value.copy()), col, quoted=True))
        return exp.select(*items).from_("__dp_groups").group_by(_col("__dp_unit"))

    def _joined(self) -> exp.Select:
        return (exp.select(exp.Star()).from_("__dp_groups")
                .join("__dp_units", using=["__dp_unit"]))

    def _kept(self) -> exp.Query:
        """Units within L0 groups pass through; the others keep L0 groups, chosen by a
        keyed hash, and their totals are recomputed over the groups kept."""
        l0 = exp.Literal.number(self.plan.max_groups)
        ng = _col("__dp_ng")
        stats = [_col(s.name) for s in self.main_stats]
        totals = {col: value for col, value in self._totals().values()}
        few = exp.select(_col("__dp_unit"), *[_col(k) for k in self.keys], *stats,
                         *[_col(c) for c in totals]).from_("__dp_joined").where(
            exp.LTE(this=ng, expression=l0))
        order = self.ex.keyed_hash([_col("__dp_unit"), *[_col(k) for k in self.keys]],
                                   exp.Placeholder(this=SALT))
        rank = exp.Window(this=exp.RowNumber(), partition_by=[_col("__dp_unit")],
                          order=exp.Order(expressions=[exp.Ordered(this=order)]))
        ranked = exp.select(exp.Star(), exp.alias_(rank, "__dp_rank", quoted=True)).from_(
            "__dp_joined").where(exp.GT(this=ng.copy(), expression=l0.copy()))
        chosen = exp.select(exp.Star()).from_(ranked.subquery("__dp_ranked")).where(
            exp.LTE(this=_col("__dp_rank"), expression=l0.copy()))
        many = exp.select(
            _col("__dp_unit"), *[_col(k) for k in self.keys], *[s.copy() for s in stats],
            *[exp.alias_(exp.Window(this=_sum(v.copy()), partition_by=[_col("__dp_unit")]),
                         c, quoted=True) for c, v in totals.items()]
        ).from_(chosen.subquery("__dp_chosen"))
        return exp.union(few, many, distinct=False)

    def _contrib(self, source: str) -> exp.Select:
        m = self.plan.max_rows
        totals = self._totals()
        items: list[exp.Expr] = [_col(k) for k in self.keys]
        for s in self.main_stats:
            v = _col(s.name)
            if s.kind == "units":
                items.append(exp.alias_(_bigint(v), s.name, quoted=True))
                continue
            col, value = totals[s.name]
            # Without groups the unit's total is its own (only) value.
            total = _col(col) if self.keys else value.copy()
            if s.kind == "sum":
                # Scale the unit's per-group sums together: Σ|sum| <= M·max(|lo|, |hi|).
                cap: float = m * max(abs(s.lo), abs(s.hi))
                if not self.keys:  # one group: scaling is clamping to [-cap, cap]
                    clamped: exp.Expr = exp.Least(this=v.copy(), expressions=[_num(cap)],
                                                        ignore_nulls=True)
                    if s.lo < 0:
                        clamped = exp.Greatest(this=clamped, expressions=[_num(-cap)],
                                               ignore_nulls=True)
                    grid = self.grids[s.name]
                    value_on_grid = _bigint(clamped) if grid.integral else \
                        self._on_grid(clamped, grid)
                    items.append(exp.alias_(value_on_grid, s.name, quoted=True))
                    continue
            else:
                # Scale all of the unit's rows by min(1, M / its row count): it then
                # counts as at most M rows and its own mean is unchanged.
                cap = float(m)
            scaled = exp.Case(
                ifs=[exp.If(this=exp.LTE(this=total, expression=_num(cap)), true=v.copy())],
                default=exp.Div(this=exp.Mul(this=_double(cap), expression=v.copy()),
                                expression=total.copy()))
            items.append(exp.alias_(self._on_grid(scaled, self.grids[s.name]), s.name,
                                    quoted=True))
        return exp.select(*items).from_(source)

    # -- quantiles ----------------------------------------------------------------------

    def _bin(self, q: QuantileSpec) -> exp.Expr:
        """The bin of a (clamped, non-NULL) value: an integer in [0, bins).

        Computed in DOUBLE from a value clamped to [lo, hi] whose span and scale the
        planner checked to be finite (and |lo|, |hi| <= 1e15): (v - lo) is in [0, span]
        and the scaled value in [0, bins], so nothing can overflow or fail; it is still
        wrapped in the engine's guard, and clamped to [0, bins - 1] against rounding.
        """
        v: exp.Expr = _col(self.stat_value[q.name])
        if q.bins == 1:
            return exp.Literal.number(0)
        if q.kind == "date":
            v = exp.DateDiff(this=v, expression=typed_literal(q.origin, "date"),
                             unit=exp.Var(this="DAY"))
        offset: exp.Expr = exp.Paren(this=exp.Sub(
            this=exp.Cast(this=v, to=exp.DataType.build("DOUBLE")), expression=_double(q.lo)))
        if not (q.integral and q.hi - q.lo + 1 == q.bins):
            offset = exp.Mul(this=offset, expression=_double(q.bins / (q.hi - q.lo)))
        index = exp.Greatest(this=exp.Least(this=_bigint(exp.Floor(this=offset)),
                                            expressions=[_num(q.bins - 1)], ignore_nulls=True),
                             expressions=[exp.Literal.number(0)], ignore_nulls=True)
        return self.ex.guard(index)

    def _quantile_stages(self, i: int, q: QuantileSpec) -> list[tuple[str, exp.Query]]:
        """Histogram stages of one quantile value (names ``__dp_q<x><i>``).

        The unit bound is applied row by row: each row of a unit with t values weighs
        min(1, M/t) (truncated on the weight grid), so a unit weighs at most M in all,
        over all its groups together.  That is the whole bound the exponential
        mechanism needs (a unit with weights c_g in its groups loses ε·c_g/M in each,
        ε in all), so no choice of L0 groups is made: it would cost a ranking and
        lose data for nothing.
        """
        keys = [_col(k) for k in self.keys]
        unit = _col("__dp_unit")
        value = _col(self.stat_value[q.name])
        binned = exp.select(unit.copy(), *[k.copy() for k in keys],
                            exp.alias_(self._bin(q), "__dp_bin", quoted=True)
                            ).from_("__dp_rows").where(
            exp.Not(this=exp.Is(this=value, expression=exp.Null())))
        rows = exp.select(exp.Star()).from_(binned.subquery("__dp_binned")).where(
            exp.Not(this=exp.Is(this=_col("__dp_bin"), expression=exp.Null())))
        names = {x: f"__dp_q{x}{i}" for x in ("r", "u", "w", "a")}
        count = exp.alias_(exp.Count(this=exp.Star()), "__dp_t", quoted=True)
        # Only units with more than M values need a weight below 1: the join back to
        # the rows then builds its hash table on those few units (measured about twice
        # as fast as joining every unit's count at 10M rows).
        per_unit = exp.select(unit.copy(), count).from_(names["r"]).group_by(
            unit.copy()).having(exp.GT(this=exp.Count(this=exp.Star()),
                                       expression=_num(self.plan.max_rows)))
        weights = exp.select(*[k.copy() for k in keys], _col("__dp_bin"),
                             exp.alias_(_sum(self._row_weight()), "__dp_w", quoted=True)
                             ).from_(names["r"]).join(names["u"], using=["__dp_unit"],
                                                      join_type="left").group_by(
            *[k.copy() for k in keys], _col("__dp_bin"))
        stages: list[tuple[str, exp.Query]] = [(names["r"], rows), (names["u"], per_unit),
                                               (names["w"], weights)]

        def ordered(col: str) -> exp.Expr:
            return exp.ArrayAgg(this=exp.Order(this=_col(col), expressions=[
                exp.Ordered(this=_col("__dp_bin"), nulls_first=False)]))

        arrays = exp.select(*[k.copy() for k in keys],
                            exp.alias_(ordered("__dp_bin"), f"{q.name}_b", quoted=True),
                            exp.alias_(ordered("__dp_w"), f"{q.name}_w", quoted=True)
                            ).from_(names["w"])
        if keys:
            arrays = arrays.group_by(*[k.copy() for k in keys])
        stages.append((names["a"], arrays))
        return stages

    def _row_weight(self) -> exp.Expr:
        """A row's weight on the grid 2^-QUANTILE_WEIGHT_BITS when its unit has __dp_t
        values: 1 (t <= M: the unit is not among the heavy ones, __dp_t is NULL), or
        M/t truncated (a unit never weighs more than M)."""
        one = 2 ** QUANTILE_WEIGHT_BITS
        m = self.plan.max_rows
        return exp.Case(
            ifs=[exp.If(this=exp.Is(this=_col("__dp_t"), expression=exp.Null()),
                        true=_num(one))],
            default=_bigint(exp.Floor(this=exp.Div(this=_double(m * one),
                                                   expression=_col("__dp_t")))))

    def _with_quantiles(self, main: exp.Select | None) -> exp.Select:
        """One row per group: the final sums (if any), each quantile's histogram arrays and
        each distinct count.

        Each histogram and distinct count chose its units' groups on its own rows, so a
        group may be in one part and not in another: the groups are the union of all
        parts' groups, and a part's missing values are zeros or empty histograms."""
        if not (self.plan.quantiles or self.distinct):
            assert main is not None
            return main
        parts: list[tuple[str, exp.Expr]] = []
        if main is not None:
            parts.append(("__dp_m", main.subquery("__dp_m")))
        parts += [(f"__dp_qa{i}", exp.to_table(f"__dp_qa{i}"))
                  for i in range(len(self.plan.quantiles))]
        parts += [(f"__dp_qd{i}", exp.to_table(f"__dp_qd{i}")) for i in range(len(self.distinct))]
        items: list[exp.Expr] = []
        if not self.keys:
            q = exp.select()
            for j, (alias, source) in enumerate(parts):
                if isinstance(source, exp.Table):
                    source = exp.alias_(source, alias, table=True)
                q = q.from_(source) if j == 0 else q.join(source, join_type="cross")
            items.append(exp.Star())
            return q.select(*items)
        if self.plan.partition_selection:
            # Only the groups the per-unit sums kept (at most L0 per unit) can be
            # selected: the other parts are joined onto those, so one unit in many
            # groups cannot make the engine return (and Python read) a row for each.
            assert main is not None
            base = "__dp_m"
            q = exp.select().from_(main.subquery("__dp_m"))
            joined = parts[1:]
        else:
            union: exp.Query | None = None
            for alias, source in parts:
                part = exp.select(*[_col(k) for k in self.keys]).from_(
                    source.copy() if alias == "__dp_m" else alias)
                union = part if union is None else exp.union(union, part, distinct=True)
            assert union is not None
            base = "__dp_all"
            q = exp.select().from_(union.subquery("__dp_all"))
            joined = parts
        items += [exp.column(k, base, quoted=True) for k in self.keys]
        for alias, source in joined:
            if isinstance(source, exp.Table):
                source = exp.alias_(source, alias, table=True)
            on = exp.and_(*[exp.NullSafeEQ(this=exp.column(k, base, quoted=True),
                                           expression=exp.column(k, alias, quoted=True))
                            for k in self.keys])
            q = q.join(source, on=on, join_type="left")
        if main is not None:
            extra = [s.name for s in self.main_stats]
            if self.plan.partition_selection:
                extra.append("__dp_units")
            items += [exp.alias_(_coalesce0(exp.column(c, "__dp_m", quoted=True)), c,
                                 quoted=True) for c in extra]
        for i, spec in enumerate(self.plan.quantiles):
            for suffix in ("_b", "_w"):
                items.append(exp.column(f"{spec.name}{suffix}", f"__dp_qa{i}", quoted=True))
        for i, stat in enumerate(self.distinct):
            items.append(exp.alias_(_coalesce0(exp.column(stat.name, f"__dp_qd{i}", quoted=True)),
                                    stat.name, quoted=True))
        return q.select(*items)

    def _distinct_stages(self, i: int, stat: StatSpec) -> list[tuple[str, exp.Query]]:
        """COUNT(DISTINCT col): each unit's distinct (group, value) pairs, at most M of them
        per unit chosen by the keyed hash, then the distinct values per group."""
        keys = [_col(k) for k in self.keys]
        unit = _col("__dp_unit")
        value = _col(self.stat_value[stat.name])
        pairs = exp.select(unit.copy(), *[k.copy() for k in keys],
                           exp.alias_(value.copy(), "__dp_x", quoted=True)).from_(
            "__dp_rows").where(exp.Not(this=exp.Is(this=value.copy(), expression=exp.Null()))
                               ).group_by(unit.copy(), *[k.copy() for k in keys], value.copy())
        order = self.ex.keyed_hash([_col("__dp_unit"), *[k.copy() for k in keys],
                                    _col("__dp_x")], exp.Placeholder(this=SALT))
        rank = exp.Window(this=exp.RowNumber(), partition_by=[_col("__dp_unit")],
                          order=exp.Order(expressions=[exp.Ordered(this=order)]))
        ranked = exp.select(exp.Star(), exp.alias_(rank, "__dp_rank", quoted=True)).from_(
            f"__dp_qp{i}")
        counted = exp.select(*[k.copy() for k in keys], exp.alias_(
            exp.Count(this=exp.Distinct(expressions=[_col("__dp_x")])), stat.name, quoted=True)
        ).from_(f"__dp_qx{i}").where(
            exp.LTE(this=_col("__dp_rank"), expression=_num(self.plan.max_rows)))
        if keys:
            counted = counted.group_by(*[k.copy() for k in keys])
        return [(f"__dp_qp{i}", pairs), (f"__dp_qx{i}", ranked), (f"__dp_qd{i}", counted)]

    def _on_grid(self, e: exp.Expr, grid: Grid) -> exp.Expr:
        if grid.integral:
            # Truncation toward zero never increases a contribution's magnitude.
            return _bigint(exp.Anonymous(this="trunc", expressions=[e]))
        return _bigint(exp.Round(this=exp.Mul(this=e, expression=_double(1.0 / grid.step))))

    # -- stage 5 ---------------------------------------------------------------------

    def _final(self) -> exp.Select:
        items: list[exp.Expr] = [_col(k) for k in self.keys]
        for s in self.main_stats:
            # Summed in the engine's widest integer (no cast back to 64 bits, which could
            # overflow with enough units: an error that would depend on the data).
            items.append(exp.alias_(_coalesce0(_sum(_col(s.name))), s.name, quoted=True))
        if self.plan.partition_selection:
            items.append(exp.alias_(exp.Count(this=exp.Star()), "__dp_units", quoted=True))
        q = exp.select(*items).from_("__dp_contrib")
        if self.keys:
            q = q.group_by(*[_col(k) for k in self.keys])
        return q


def _in_domain(key: KeySpec) -> exp.Expr:
    """``key IN (domain)``, and ``OR key IS NULL`` when NULL is a public value of the key
    (``x IN (..., NULL)`` would never hold)."""
    assert key.domain is not None
    values = [typed_literal(v, key.type) for v in key.domain if v is not None]
    engine = key.engine if isinstance(key.engine, exp.Column | exp.Func | exp.Paren) else \
        exp.Paren(this=key.engine)  # `c IS NULL IN (...)` would parse otherwise
    in_values = exp.In(this=engine.copy(), expressions=values)
    if None not in key.domain:
        return in_values  # an empty domain keeps no row
    is_null = exp.Is(this=engine.copy(), expression=exp.Null())
    return exp.Paren(this=exp.or_(in_values, is_null)) if values else is_null


def _star(table: str) -> exp.Column:
    return exp.Column(this=exp.Star(), table=exp.to_identifier(table, quoted=True))


def _total_name(stat: str) -> str:
    return "__dp_t" + stat.removeprefix("__dp_s")
