"""Several DP results in one statement: UNION [ALL], INTERSECT and EXCEPT of SELECTs.

``SELECT 'mobile' AS device, COUNT(*) AS n FROM visits WHERE device = 'mobile'
UNION ALL SELECT 'tv', COUNT(*) FROM visits WHERE device = 'tv' ORDER BY n DESC``

Each branch is an ordinary query, planned, calibrated and rewritten by the
single-query pipeline (:meth:`Gateway.plan`, :meth:`Gateway.prepare`); a WITH
clause in front of the statement is given to every branch that reads one of its
CTEs.  Nothing here plans SQL.  What this module adds:

* **the split of the budget.**  The requested (ε, δ) is for the whole statement.
  ε is split equally over the branches that release noisy statistics; δ equally
  over those among them that use it (DP partition selection, the Gaussian
  mechanism).  A branch over public tables only, or one answered from public
  domains, releases nothing that depends on protected data and costs nothing.
  Identical branches share one release (and one share).
* **one charge.**  The statement's cost is the composition of every branch's
  events (:attr:`Calibration.events`), reserved in *one* ledger entry, so the
  admission filter sees every mechanism that runs.  It is committed before any
  branch reads a protected row (the reservation is the executor's read permit),
  and a refusal of any branch at planning runs nothing and charges nothing.
* **the cache.**  The stored answer is the list of the branches' releases (noisy
  statistics), keyed by every branch's own answer key: the same statement at the
  same ε returns the same noisy answer for free.
* **the combination** is post-processing: each branch's noisy result becomes a
  small typed table in the post-processing DuckDB (which holds nothing else), and
  the set operation, its ORDER BY, LIMIT and OFFSET run there.  UNION, INTERSECT
  and EXCEPT (with or without ALL) only compare released rows, so they are
  post-processing too.  A set operation of raw rows *inside* a FROM or a CTE
  combines rows before they are aggregated (one unit's rows could count in several
  branches), which cannot be attributed; :mod:`gateway.sql.validate` refuses it.
* **a wrapper** (BI tools write ``SELECT * FROM (<the statement>) AS t WHERE ...
  ORDER BY ... LIMIT ...``; also ``(<the statement>) ORDER BY ...``): when every
  SELECT of a set operation in FROM is a DP query of its own (it aggregates
  protected data, or reads public tables only), the outer SELECT reads released rows
  only, so it is post-processing too.  The set operation is planned, charged and
  cached exactly as the same statement unwrapped; the outer SELECT (validated as
  any query, reading nothing but the set operation's rows: no join, no other table)
  runs over the combined rows in the post-processing DuckDB, and each cell keeps its
  half-width when it is ``c·a + b`` of one released value (:mod:`gateway.query.cells`).

Types and names are decided at planning, from the plans alone: the output has the
first branch's column names; a column must have the same type in every branch
(integers and floats mix as float), else the statement is refused before anything
runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd
import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.tokens import Token, TokenType

from gateway.engine.duckdb import CANONICAL
from gateway.errors import BackendError, InternalError, QueryRejected, Span
from gateway.query.cells import (
    KEY,
    OPAQUE,
    ROW_ID,
    Cell,
    _aggregating,
    _flatten,
    _is_star,
    _linear,
    noisy_columns,
    row_ids,
    thread_rows,
)
from gateway.query.perturb import from_domains
from gateway.query.postprocess import Column
from gateway.query.prepared import LRU, Prepared
from gateway.query.results import Accuracy, Explanation, QueryResult, decode_release
from gateway.sql.analyze import check_reserved_names
from gateway.sql.parse import parse_statement
from gateway.sql.plan import Plan
from gateway.sql.postprocess_plan import NOISY_TABLE
from gateway.sql.validate import QUANTILE_FUNCTIONS, SPREAD_FUNCTIONS, span_of, validate
from gateway.sql.wrapper import aggregates_protected
from gateway.state.ledger import Cost

if TYPE_CHECKING:
    from gateway.service import Gateway
    from gateway.state.ledger import Analyst

MAX_BRANCHES = 16  # SELECTs in one statement; each gets 1/k of ε, so more would be noise

_MAY_COMBINE = re.compile(r"\b(union|intersect|except)\b", re.IGNORECASE)
_SET_ARGS = frozenset({"this", "expression", "distinct", "with_", "order", "limit", "offset"})
_ROW = "__dp_urow"  # hidden: which branch row an output row of a UNION ALL came from
_RULE = "set_operation"


def _table(i: int) -> str:
    return f"__dp_b{i}"


def _frame(i: int) -> str:
    return f"__dp_f{i}"


@dataclass(frozen=True)
class Branch:
    """One SELECT of the statement, planned on its own."""

    sql: str  # the SELECT as a query of its own (with the CTEs it reads)
    plan: Plan
    columns: tuple[Column, ...]  # planned output names and types
    noisy: bool  # releases noisy statistics: costs a share of the budget
    piece: _Piece  # where its text comes from in the statement (for error spans)

    def uses_delta(self, mechanism: str) -> bool:
        """Does its calibration spend δ: partition selection, or Gaussian noise on its
        statistics (quantiles use the exponential mechanism, pure ε)?"""
        plan = self.plan
        return self.noisy and (plan.partition_selection or (mechanism == "gaussian" and any(
            s.sensitivity(plan.max_rows, plan.max_groups)[0] > 0 for s in plan.stats)))


@dataclass(frozen=True)
class CompoundPlan:
    """Everything decided from the text and the policy, before ε is known."""

    sql: str
    dialect: str
    branches: tuple[Branch, ...]
    columns: tuple[Column, ...]  # output: the first branch's names, unified types
    combine: str  # DuckDB SQL of the set operation over the branches' frames __dp_f<i>
    threaded: bool  # only UNION ALL: each output row is one branch row (half-widths)
    kind: str  # "UNION ALL", "UNION", "INTERSECT", ... for messages
    outer: Outer | None = None  # a SELECT over the set operation's rows (a wrapper)

    @property
    def fresh(self) -> tuple[int, ...]:
        """The branches that compute a release: the first of each distinct noisy SELECT
        (identical branches share one release and one share)."""
        first: dict[str, int] = {}
        for i, b in enumerate(self.branches):
            if b.noisy:
                first.setdefault(b.sql, i)
        return tuple(first.values())

    def shares(self, epsilon: float, delta: float, mechanism: str
               ) -> list[tuple[float, float]]:
        """Each branch's (ε, δ): ε split equally over the fresh releases, δ over those
        among them that spend it; a branch that releases nothing noisy costs nothing
        whatever it is given (the whole request)."""
        fresh = self.fresh
        with_delta = [i for i in fresh if self.branches[i].uses_delta(mechanism)]
        eps_each = share(epsilon, len(fresh))
        delta_each = share(delta, len(with_delta)) if with_delta else 0.0
        return [(eps_each, delta_each if b.uses_delta(mechanism) else 0.0) if b.noisy
                else (epsilon, delta) for b in self.branches]


@dataclass(frozen=True)
class Outer:
    """The analyst's SELECT over the combined rows (``SELECT ... FROM (<set operation>)
    AS t ...``): post-processing, run in the post-processing DuckDB."""

    sql: str  # DuckDB SQL over the branches' frames (the combination as __dp_noisy)
    text: str  # the outer SELECT over __dp_noisy (the combined rows), for explain
    columns: tuple[Column, ...]  # output names and types, decided at planning
    cells: tuple[Cell, ...]  # per output column: how its half-width follows (agg "c<j>")
    threaded: bool  # the hidden row id (cells.ROW_ID) runs through it: half-widths


@dataclass(frozen=True)
class CompoundPrepared:
    """A compound statement at one (ε, δ, mechanism): its branches, shares and charge."""

    key: tuple[str, str, float, float, str]
    plan: CompoundPlan
    preps: tuple[Prepared, ...]
    shares: tuple[tuple[float, float], ...]  # (ε, δ) each branch was prepared at
    release: tuple[int | None, ...]  # per branch: its index in the stored list, or None
    fresh: tuple[int, ...]  # for each stored release, the branch that computes it
    cost: Cost  # composition of the events of every stored release
    answer_key: str | None  # None: nothing noisy, nothing to charge or store


class Compounds:
    """Plans, charges and answers compound statements for one Gateway."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self._statements: LRU[tuple[str, str], CompoundPlan | bool] = LRU(1024)
        self._prepared: LRU[tuple[str, str, float, float, str], CompoundPrepared] = LRU(1024)

    # -- planning -------------------------------------------------------------------------

    def plan(self, sql: str, dialect: str = "duckdb") -> CompoundPlan | None:
        """The compound plan of ``sql``, or None when it is not a set operation (a
        single SELECT, or text that does not parse: the single-query path says why)."""
        key = (dialect, sql)
        found = self._statements.get(key)
        if found is not None:
            return found if isinstance(found, CompoundPlan) else None
        if not isinstance(sql, str) or not _MAY_COMBINE.search(sql):
            return None
        tree: exp.Expr | None
        try:
            tree = parse_statement(sql, max_length=self.gw.policy.model.limits.max_sql_length,
                                   dialect=dialect)
        except QueryRejected as e:
            tree = _parenthesized(sql, dialect, e)
        cplan: CompoundPlan | None = None
        if isinstance(tree, exp.SetOperation):
            cplan = self._plan(tree, sql, dialect)
        elif isinstance(tree, exp.Select | exp.Subquery):
            cplan = self._wrapper(tree, sql, dialect)
        self._statements.put(key, cplan if cplan is not None else False)
        return cplan

    def _plan(self, tree: exp.SetOperation, sql: str, dialect: str,
              shared: list[exp.CTE] | None = None, path: tuple[str, ...] = ()
              ) -> CompoundPlan:
        """The set operation ``tree``; ``shared``: the CTEs of an outer SELECT around it
        (a wrapper) and ``path`` the way to its text from the statement's start."""
        _leaves(tree)  # the shape and the number of SELECTs are checked first
        tree = tree.copy()
        leaves = _leaves(tree)
        with_ = tree.args.get("with_")
        ctes = [*(shared or []), *(with_.expressions if with_ is not None else [])]
        names = [c.alias_or_name.lower() for c in ctes]
        if len(set(names)) != len(names):
            raise QueryRejected(
                "a WITH clause inside FROM defines a name the statement's WITH defines too",
                hint="give each CTE its own name (or put every CTE in the WITH clause at the "
                "start of the statement)", rule=_RULE)
        kinds = sorted({_kind(n) for n in _set_nodes(tree)})
        kind = kinds[0] if len(kinds) == 1 else " / ".join(kinds)
        text = _Text(sql, dialect, len(leaves), len(ctes), kind, path)
        branches = []
        for i, leaf in enumerate(leaves):
            used = [ctes.index(c) for c in _used_ctes(leaf, ctes)]
            branches.append(self._branch(text.branch(i, used), i, kind))
        columns = _unify(branches, kind)
        threaded = all(_kind(n) == "UNION ALL" for n in _set_nodes(tree))
        combine = _combine(tree, leaves, columns, threaded, kind)
        cplan = CompoundPlan(sql, dialect, tuple(branches), columns, combine, threaded, kind)
        # Bind the combination over empty frames: a wrong ORDER BY is refused here,
        # before any charge, and the output is as planned.
        try:
            out, _ = self.gw.post.run_sql(combine, _frames(cplan, [[] for _ in branches]))
        except BackendError:
            raise QueryRejected(
                f"the ORDER BY / LIMIT after the {kind} cannot be applied to its columns",
                hint="order by an output column of the first SELECT (by name or by position "
                "1, 2, ...) and give LIMIT / OFFSET as numbers", rule=_RULE) from None
        if threaded:
            out = out[:-1]
        if [c.name for c in out] != [c.name for c in columns]:  # cannot happen
            raise InternalError("the columns of a combined result are not the planned ones")
        return cplan

    # -- a SELECT over a set operation (a wrapper) ---------------------------------------

    def _wrapper(self, tree: exp.Select | exp.Subquery, sql: str, dialect: str
                 ) -> CompoundPlan | None:
        """``SELECT ... FROM (<set operation>) AS t ...`` (FROM subqueries may nest) or
        ``(<set operation>) ORDER BY ... LIMIT ...``, when every SELECT of the set
        operation is a DP query of its own.  None when the statement holds no set
        operation, or one with a SELECT of raw rows: the single-query path refuses it
        (:mod:`gateway.sql.validate`: one unit's rows could count in several SELECTs)."""
        if tree.find(exp.SetOperation) is None:
            return None
        policy = self.gw.policy
        top_with = tree.args.get("with_")
        shared = list(top_with.expressions) if top_with is not None else []
        sets = _outermost_sets(tree)
        kinds: set[str] = set()
        for node in sets:
            own = node.args.get("with_")
            ctes = [*shared, *(own.expressions if own is not None else [])]
            kinds.update(_classify(leaf, ctes, policy) for leaf in _loose_leaves(node))
        if "raw" in kinds:
            return None
        found = _shape(tree)
        if found is None or len(sets) != 1:
            if kinds != {"dp"}:
                return None  # refused by the single-query path, with its reason
            raise _misplaced(tree, sets, sql)
        outer, derived, path = found
        setop = _unparen(derived.this)
        assert isinstance(setop, exp.SetOperation)
        checked = self._check_outer(outer, derived, sql, dialect, _kind(setop))
        cplan = self._plan(setop, sql, dialect, shared, path)
        return replace(cplan, outer=self._outer(cplan, checked))

    def _check_outer(self, outer: exp.Select, derived: exp.Subquery, sql: str, dialect: str,
                     kind: str) -> exp.Select:
        """The outer SELECT validated as any query (allowlist, casts, names), with the
        set operation's rows as the table ``__dp_noisy``; it may read nothing else."""
        derived.set("this", exp.select(exp.null()))  # stands for the set operation's rows
        outer.set("with_", None)  # its CTEs are the SELECTs' (each planned with them)
        checked = validate(outer, sql, self.gw._tables, dialect)
        check_reserved_names(checked, sql)
        level, sub = checked, None
        while sub is None:
            src = level.args["from_"].this
            inner = _unparen(src.this)
            if isinstance(inner, exp.Select) and inner.args.get("from_") is not None:
                level = inner
            else:
                sub = src
        if any(True for _ in checked.find_all(exp.Join, exp.Table, exp.With, exp.SetOperation)):
            raise _joined(kind, None)
        alias = sub.args.get("alias")
        sub.replace(exp.Table(this=exp.to_identifier(NOISY_TABLE),
                              alias=alias.copy() if alias is not None else None))
        return checked

    def _outer(self, cplan: CompoundPlan, select: exp.Select) -> Outer:
        """The outer SELECT over the combined rows, bound over empty frames (a column it
        cannot find is refused here, before any charge), and its cells' half-widths."""
        noisy = self._union_noisy(cplan)
        inputs = [(c.name, Cell(f"c{j}", noisy=True) if noisy[j] else KEY)
                  for j, c in enumerate(cplan.columns)]
        named = _outer_cells(select, inputs)
        threaded = thread_rows(select) if cplan.threaded and named is not None and any(
            c.agg for _, c in named) else None
        sql = _outer_sql(cplan, threaded or select, threaded is not None)
        try:
            out, _ = self.gw.post.run_sql(sql, _frames(cplan, [[] for _ in cplan.branches]))
        except BackendError:
            raise QueryRejected(
                f"the SELECT over the {cplan.kind} cannot be applied to its columns",
                hint="refer to the columns by the names the first SELECT gives them (or *); "
                "the outer SELECT runs over the released rows only", rule=_RULE) from None
        columns = tuple(c for c in out if c.name != ROW_ID)
        if threaded is not None and len(out) != len(columns) + 1:  # cannot happen
            raise InternalError("the row id of a wrapped set operation was lost")
        if named is None or len(named) != len(columns):
            cells = tuple(OPAQUE if any(noisy) else KEY for _ in columns)
        else:
            cells = tuple(c for _, c in named)
        return Outer(sql, select.sql(dialect="duckdb"), columns, cells, threaded is not None)

    def _branch(self, piece: _Piece, i: int, kind: str) -> Branch:
        gw = self.gw
        try:
            plan = gw.plan(piece.sql, dialect=piece.dialect)
            if plan.public_query is not None:
                cols = gw.executor.describe(plan.public_query)
                columns = tuple(Column(n, t) for n, t in cols)
            else:
                columns = tuple(gw.post.describe(plan))
        except QueryRejected as e:
            raise piece.rejection(e, i, kind) from None
        except BackendError:
            raise QueryRejected(
                f"SELECT {i + 1} of the {kind} cannot be post-processed as written",
                hint="check the arithmetic in its SELECT / HAVING / ORDER BY", rule=_RULE,
            ) from None
        noisy = plan.public_query is None and _releases_noise(plan)
        return Branch(piece.sql, plan, columns, noisy, piece)

    def output(self, cplan: CompoundPlan) -> tuple[list[str], list[bool]]:
        """Output names, and per column whether some SELECT computes it from noisy
        aggregates (for a wrapper: the outer SELECT's columns)."""
        if cplan.outer is not None:
            return ([c.name for c in cplan.outer.columns],
                    [c.noisy for c in cplan.outer.cells])
        return [c.name for c in cplan.columns], self._union_noisy(cplan)

    @staticmethod
    def _union_noisy(cplan: CompoundPlan) -> list[bool]:
        noisy = [False] * len(cplan.columns)
        for b in cplan.branches:
            flags = noisy_columns(b.plan)
            if len(flags) == len(noisy):
                noisy = [a or f for a, f in zip(noisy, flags, strict=True)]
        return noisy

    # -- (ε, δ) -----------------------------------------------------------------------------

    def prepare(self, cplan: CompoundPlan, epsilon: float, delta: float, mechanism: str
                ) -> CompoundPrepared:
        key = (cplan.dialect, cplan.sql, epsilon, delta, mechanism)
        found = self._prepared.get(key)
        if found is not None:
            return found
        gw = self.gw
        # Identical branches share one release: the first of them computes it.
        fresh = cplan.fresh
        shares = cplan.shares(epsilon, delta, mechanism)
        preps = []
        for i, (b, (eps, dlt)) in enumerate(zip(cplan.branches, shares, strict=True)):
            try:
                prep = gw.prepare(b.sql, eps, dlt, mechanism, dialect=cplan.dialect)
            except QueryRejected as e:
                raise b.piece.rejection(e, i, cplan.kind) from None
            if prep.cal is not None and prep.from_domains == b.noisy:
                raise InternalError("a branch's calibration disagrees with its plan")
            if b.noisy and dlt == 0 and _cal(prep).delta != 0:
                raise InternalError("a branch spends δ it was not given")
            preps.append(prep)
        first = {cplan.branches[i].sql: i for i in fresh}
        release = tuple(fresh.index(first[b.sql]) if b.noisy else None
                        for b in cplan.branches)
        events = tuple(e for i in fresh for e in _cal(preps[i]).events)
        cost = Cost(_compose(e.epsilon for e in events), _compose(e.delta for e in events),
                    events)
        keys = [preps[i].answer_key or "" for i in fresh]
        answer_key = hashlib.sha256("\x00".join(["compound", *keys]).encode()).hexdigest() \
            if fresh else None
        cprep = CompoundPrepared(key, cplan, tuple(preps), tuple(shares), release, fresh, cost,
                                 answer_key)
        return self._prepared.put(key, cprep)

    # -- answering --------------------------------------------------------------------------

    def query(self, cplan: CompoundPlan, who: Analyst, query_id: str, epsilon: float,
              delta: float, mechanism: str) -> QueryResult:
        gw = self.gw
        cprep = self.prepare(cplan, epsilon, delta, mechanism)
        stored: str | None = None
        charged = False
        if cprep.answer_key is not None:
            stored, charged = gw._paid_release(
                cprep.answer_key, cprep.cost, who, query_id, cplan.sql,
                lambda permit: json.dumps([gw._compute_release(cprep.preps[i], permit)
                                           for i in cprep.fresh]))
        releases = json.loads(stored) if stored is not None else []
        parts = [self._answer(cprep, i, releases) for i in range(len(cplan.branches))]
        columns, rows, ci95 = self._combine(cplan, parts)
        noisy = tuple(any(j < len(p.noisy) and p.noisy[j] for p in parts)
                      for j in range(len(columns)))
        notes = [f"SELECT {i + 1}: {n}" for i, p in enumerate(parts) for n in p.notes]
        notes.append(_split_note(cprep))
        accuracy = _accuracy(cplan, [p.accuracy for p in parts])
        if cplan.outer is not None:
            noisy = tuple(c.noisy for c in cplan.outer.cells)
            notes.extend(_outer_notes(cplan))
            accuracy = _outer_accuracy(cplan, accuracy)
        spent = (cprep.cost.epsilon, cprep.cost.delta) if charged else (0.0, 0.0)
        return QueryResult(query_id, columns, rows, spent[0], spent[1], accuracy,
                           cprep.answer_key is not None and not charged, gw._remaining(who),
                           ci95=ci95, noisy=noisy, notes=notes)

    def _answer(self, cprep: CompoundPrepared, i: int, releases: list[str]) -> _Part:
        """One branch's post-processed answer, from its share of the stored releases."""
        gw, prep = self.gw, cprep.preps[i]
        if prep.cal is None:  # public tables only: read exactly, free
            assert prep.tree is not None
            res = gw.executor.execute(prep.tree, sql=prep.sql,
                                      timeout_s=gw.policy.model.limits.query_timeout_s)
            columns, rows = gw.post.run_public(res.rows(), list(res.names), list(res.types))
            none = tuple(None for _ in columns)
            return _Part(columns, rows, [none] * len(rows), tuple(False for _ in columns), [],
                         [])
        index = cprep.release[i]
        release = from_domains(prep.plan) if index is None else \
            decode_release(releases[index])
        # Tuned bounds: aggregates and intervals of the bounds the release records.
        out, accuracy, notes = gw.finish_release(prep, release)
        return _Part(out.columns, out.rows, list(out.ci95), tuple(out.noisy), accuracy,
                     notes)

    def _combine(self, cplan: CompoundPlan, parts: list[_Part]
                 ) -> tuple[list[Column], list[tuple[Any, ...]], list[tuple[float | None, ...]]]:
        cis: list[tuple[float | None, ...]] = []
        for b, p in zip(cplan.branches, parts, strict=True):
            if len(p.columns) != len(b.columns):  # cannot happen: planned from the same plan
                raise InternalError("a branch's answer does not have its planned columns")
            cis.extend(_align(p.ci95, len(p.rows), len(b.columns)))
        frames = _frames(cplan, [p.rows for p in parts])
        if cplan.outer is not None:
            return _run_outer(self.gw, cplan.outer, frames, cis)
        columns, rows = self.gw.post.run_sql(cplan.combine, frames)
        if not cplan.threaded:
            return columns, rows, [tuple(None for _ in columns)] * len(rows)
        return columns[:-1], [r[:-1] for r in rows], [cis[r[-1]] for r in rows]

    # -- explain ----------------------------------------------------------------------------

    def explain(self, cplan: CompoundPlan, epsilon: float, delta: float, mechanism: str
                ) -> Explanation:
        gw = self.gw
        cprep = self.prepare(cplan, epsilon, delta, mechanism)
        items: list[dict[str, Any]] = []
        aggregates: list[dict[str, Any]] = []
        keys: list[dict[str, Any]] = []
        selections: list[dict[str, Any]] = []
        texts: list[str] = []
        accuracies: list[list[Accuracy]] = []
        for i, (b, (eps, dlt)) in enumerate(zip(cplan.branches, cprep.shares, strict=True)):
            try:
                ex = gw.explain_checked(b.sql, eps, dlt, mechanism, dialect=cplan.dialect)
            except QueryRejected as e:
                raise b.piece.rejection(e, i, cplan.kind) from None
            index = cprep.release[i]
            counted = b.noisy and index is not None and cprep.fresh[index] == i
            item: dict[str, Any] = {
                "branch": i + 1, "sql": b.sql,
                "kind": "dp" if b.noisy else ("public" if b.plan.public_query is not None
                                              else "public_domains"),
                "epsilon_cost": ex.epsilon_cost if counted else 0.0,
                "delta_cost": ex.delta_cost if counted else 0.0,
                "aggregates": ex.aggregates, "group_keys": ex.group_keys,
                "partition_selection": ex.partition_selection,
                "accuracy": [a.to_dict() for a in ex.accuracy],
                "rewritten_sql": ex.rewritten_sql}
            if b.noisy and not counted and index is not None:
                item["same_release_as"] = cprep.fresh[index] + 1
            items.append(item)
            aggregates.extend({"branch": i + 1, **a} for a in ex.aggregates)
            keys.extend({"branch": i + 1, **k} for k in ex.group_keys)
            if ex.partition_selection is not None:
                selections.append({"branch": i + 1, **ex.partition_selection})
            texts.append(f"-- SELECT {i + 1}\n{ex.rewritten_sql}")
            accuracies.append(ex.accuracy)
        texts.append(f"-- {cplan.kind} of the noisy results (post-processing)\n"
                     f"{cplan.combine}")
        accuracy = _accuracy(cplan, accuracies)
        notes = [_split_note(cprep)]
        if cplan.outer is not None:
            texts.append(f"-- the SELECT over the {cplan.kind} (post-processing; "
                         f"__dp_noisy: the rows above)\n{cplan.outer.text}")
            accuracy = _outer_accuracy(cplan, accuracy)
            notes.extend(_outer_notes(cplan))
        ps = {"branches": selections} if selections else None
        return Explanation("\n\n".join(texts), aggregates, ps, cprep.cost.epsilon,
                           cprep.cost.delta, accuracy, keys, notes=notes, branches=items)


@dataclass(frozen=True)
class _Part:
    columns: list[Column]
    rows: list[tuple[Any, ...]]
    ci95: list[tuple[float | None, ...]]
    noisy: tuple[bool, ...]
    accuracy: list[Accuracy]
    notes: list[str]


# -- the shape of the statement -------------------------------------------------------------

def _kind(node: exp.SetOperation) -> str:
    name = {exp.Union: "UNION", exp.Intersect: "INTERSECT", exp.Except: "EXCEPT"}.get(
        type(node), type(node).__name__.upper())
    return name if node.args.get("distinct") else f"{name} ALL"


def _set_nodes(tree: exp.SetOperation) -> Iterator[exp.SetOperation]:
    stack: list[exp.Expr] = [tree]
    while stack:
        node = _unparen(stack.pop())
        if isinstance(node, exp.SetOperation):
            yield node
            stack.extend((node.expression, node.this))


def _unparen(node: exp.Expr) -> exp.Expr:
    """``((q))`` -> ``q`` for a subquery without an alias or modifiers of its own."""
    while isinstance(node, exp.Subquery) and not any(
            v for k, v in node.args.items() if k != "this"):
        node = node.this
    return node


def _leaves(tree: exp.SetOperation) -> list[exp.Select]:
    """The SELECTs of the statement, left to right, without recursion (a chain of
    thousands of UNIONs is refused by its count before anything walks it)."""
    out: list[exp.Select] = []
    stack: list[tuple[exp.Expr, bool]] = [(tree, True)]
    while stack:
        raw, root = stack.pop()
        node = _unparen(raw)
        if isinstance(node, exp.SetOperation):
            for k, v in node.args.items():
                if v and k not in _SET_ARGS:
                    what = "BY NAME" if k == "by_name" else k.upper()
                    raise QueryRejected(
                        f"{_kind(node)} {what} is not supported",
                        hint="list the same columns in the same order in every SELECT",
                        rule=_RULE)
            if node.args.get("with_") is not None and not root:
                raise QueryRejected(
                    "a WITH clause inside a UNION is not supported",
                    hint="put the WITH clause at the start of the statement", rule=_RULE)
            stack.append((node.expression, False))
            stack.append((node.this, False))
        elif isinstance(node, exp.Select):
            out.append(node)
        else:
            raise QueryRejected(
                f"each part of a UNION / INTERSECT / EXCEPT must be a SELECT "
                f"(found {type(node).__name__.upper()})",
                hint="write every part as SELECT ... FROM ...", rule=_RULE)
        if len(out) + len(stack) > MAX_BRANCHES:
            raise QueryRejected(
                f"a statement may combine at most {MAX_BRANCHES} SELECTs",
                hint=f"split it into statements of at most {MAX_BRANCHES} SELECTs (the "
                "budget is split over the SELECTs of one statement)", rule=_RULE)
    return out


def _used_ctes(select: exp.Select, ctes: list[exp.CTE]) -> list[exp.CTE]:
    """The CTEs ``select`` reads, directly or through other CTEs, in their order."""
    by_name = {c.alias_or_name.lower(): c for c in ctes}

    def reads(node: exp.Expr) -> set[str]:
        return {t.name.lower() for t in node.find_all(exp.Table)
                if not t.args.get("db") and t.name.lower() in by_name}

    need = reads(select)
    todo = list(need)
    while todo:
        found = reads(by_name[todo.pop()].this) - need
        need |= found
        todo.extend(found)
    return [c for c in ctes if c.alias_or_name.lower() in need]


# -- a SELECT over a set operation ----------------------------------------------------------

_PAREN_ARGS = frozenset({"this", "order", "limit", "offset", "with_"})
E = TypeVar("E", bound=exp.Expr)


def _parenthesized(sql: str, dialect: str, e: QueryRejected) -> exp.Expr | None:
    """``(<set operation>) ORDER BY ... LIMIT ...``, which :func:`parse_statement` refuses
    as a statement of another kind after its checks of length and nesting passed: the
    set operation (the parentheses are only parentheses), or the parenthesised query
    that a wrapper reads; None for anything else."""
    if e.rule != "statement_kind":
        return None
    try:
        parsed = sqlglot.parse(sql, dialect=dialect)
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError):
        return None
    statements = [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]
    if len(statements) != 1 or not isinstance(statements[0], exp.Subquery):
        return None
    with_ = statements[0].args.get("with_")
    node = _unparen(statements[0].copy())
    inner: exp.Expr = node
    while isinstance(inner, exp.Subquery):
        inner = inner.this
    if not isinstance(inner, exp.SetOperation):
        return None
    if with_ is not None and node.args.get("with_") is None:  # WITH ... (<query>) ...
        node.set("with_", with_.copy())
    return node


def _outermost_sets(tree: exp.Expr) -> list[exp.SetOperation]:
    out = []
    for node in tree.find_all(exp.SetOperation):
        parent = node.parent
        while parent is not None and not isinstance(parent, exp.SetOperation):
            parent = parent.parent
        if parent is None:
            out.append(node)
    return out


def _loose_leaves(tree: exp.SetOperation) -> list[exp.Select]:
    """The SELECTs of a set operation, whatever else it holds (:func:`_leaves` says what
    is refused); enough of them to tell whether any reads raw rows."""
    out: list[exp.Select] = []
    stack: list[exp.Expr] = [tree]
    while stack and len(out) <= 4 * MAX_BRANCHES:
        node = _unparen(stack.pop())
        if isinstance(node, exp.SetOperation):
            stack.extend((node.expression, node.this))
        elif isinstance(node, exp.Subquery):
            stack.append(node.this)
        elif isinstance(node, exp.Select):
            out.append(node)
    return out


def _classify(select: exp.Select, ctes: list[exp.CTE], policy: Any) -> str:
    """What a SELECT of a set operation is: ``"dp"`` (it aggregates protected data, or
    reads public tables only: a DP query of its own), ``"raw"`` (it reads protected rows
    without aggregating them: the set operation would combine raw rows) or ``"other"``
    (no table, unknown ones: the single-query path says what is wrong)."""
    own = select.args.get("with_")
    visible = [*ctes, *(own.expressions if own is not None else [])]
    if aggregates_protected(_spelled(select), [_spelled(c) for c in visible], policy):
        return "dp"
    by_name = {c.alias_or_name.lower(): c.this for c in visible}
    seen: set[str] = set()
    todo: list[exp.Expr] = [select]
    public = other = False
    while todo:
        for table in todo.pop().find_all(exp.Table):
            name = table.name.lower()
            if not table.args.get("db") and name in by_name:
                if name not in seen:
                    seen.add(name)
                    todo.append(by_name[name])
                continue
            spec = policy.table(table.name)
            if spec is not None and not spec.public:
                return "raw"
            public, other = public or spec is not None, other or spec is None
    return "dp" if public and not other else "other"


def _spelled(node: E) -> E:
    """A copy of ``node`` where the aggregates validation renames (``STD(x)``, ``VAR(x)``,
    ``QUANTILE_CONT(x, p)``, ... parsed as plain calls) are aggregate nodes."""
    names = SPREAD_FUNCTIONS.keys() | QUANTILE_FUNCTIONS.keys()
    if not any(n.name.lower() in names for n in node.find_all(exp.Anonymous)):
        return node
    return node.transform(lambda n: exp.Variance(this=n.expressions[0].copy())
                          if isinstance(n, exp.Anonymous) and n.name.lower() in names
                          and n.expressions else n)  # type: ignore[return-value]


def _shape(tree: exp.Select | exp.Subquery
           ) -> tuple[exp.Select, exp.Subquery, tuple[str, ...]] | None:
    """A copy of the statement as an outer SELECT, the derived table in it that holds
    the set operation, and the way to that table's text (:meth:`_Text._descend`); None
    unless each level reads exactly one parenthesised source and nothing else."""
    top = _as_select(tree.copy()) if isinstance(tree, exp.Subquery) else tree.copy()
    if top is None:
        return None
    path = ["paren" if isinstance(tree, exp.Subquery) else "from"]
    level = top
    while True:
        from_ = level.args.get("from_")
        if level.args.get("joins") or (level is not top and level.args.get("with_")) or \
                from_ is None or not isinstance(from_.this, exp.Subquery):
            return None
        sub = from_.this
        inner = _unparen(sub.this)
        if isinstance(inner, exp.SetOperation):
            return top, sub, tuple(path)
        if isinstance(inner, exp.Subquery):  # (<query>) ORDER BY ...: one more level
            below = _as_select(inner)
            if below is None:
                return None
            inner.replace(below)
            level = below
            path.append("paren")
        elif isinstance(inner, exp.Select):
            level = inner
            path.append("from")
        else:
            return None


def _as_select(sub: exp.Subquery) -> exp.Select | None:
    """``(<query>) ORDER BY ... LIMIT ...`` as ``SELECT * FROM (<query>) ORDER BY ...``."""
    args = {k: v for k, v in sub.args.items() if v}
    if set(args) - _PAREN_ARGS:
        return None
    select = exp.Select(expressions=[exp.Star()])
    select.set("from_", exp.From(this=exp.Subquery(this=args["this"])))
    for k in ("order", "limit", "offset", "with_"):
        if k in args:
            select.set(k, args[k])
    return select


def _misplaced(tree: exp.Expr, sets: list[exp.SetOperation], sql: str) -> QueryRejected:
    """Why a set operation of DP SELECTs is refused where it is, and what to write."""
    kind = _kind(sets[0])

    def inside(node: exp.Expr) -> bool:
        parent = node.parent
        while parent is not None and not any(parent is s for s in sets):
            parent = parent.parent
        return parent is not None

    join = next((j for j in tree.find_all(exp.Join) if not inside(j)), None)
    if join is not None:
        return _joined(kind, None if join.find(exp.SetOperation) else span_of(join, sql))
    for s in sets:
        parent = s.parent
        while parent is not None and not isinstance(parent, exp.CTE):
            parent = parent.parent
        if parent is not None:
            return QueryRejected(
                f"a {kind} of DP SELECTs cannot be a CTE",
                hint="select from it in FROM: SELECT ... FROM (SELECT ... UNION ALL "
                "SELECT ...) AS t (a WITH clause at the start of the statement is given "
                "to the SELECTs that read it)", rule=_RULE)
    return QueryRejected(
        f"a {kind} of DP SELECTs may only be the whole statement or the one source of an "
        "outer SELECT (FROM subqueries may nest)",
        hint="e.g. SELECT * FROM (SELECT ... UNION ALL SELECT ...) AS t WHERE ... "
        "ORDER BY ... LIMIT ...", rule=_RULE)


def _joined(kind: str, span: Span | None) -> QueryRejected:
    return QueryRejected(
        f"a SELECT over a {kind} of DP SELECTs may read only its released rows: no join, "
        "no other table or subquery",
        hint=f"select from the {kind} alone (SELECT ... FROM (SELECT ... UNION ALL "
        "SELECT ...) AS t WHERE ... ORDER BY ...), or join inside each of its SELECTs "
        "(each one is a DP query of its own)", rule=_RULE, span=span)


def _outer_cells(select: exp.Select, inputs: list[tuple[str, Cell]]
                 ) -> list[tuple[str, Cell]] | None:
    """Per output column of the outer SELECT, how its half-width follows from the set
    operation's columns (as :func:`gateway.query.cells.output_cells` for a wrapper);
    None when a star with modifiers (EXCLUDE, REPLACE, ...) hides which is which."""
    source = select.args["from_"].this
    if isinstance(source, exp.Subquery):
        inner = _unparen(source.this)
        if not isinstance(inner, exp.Select):
            return None
        below = _outer_cells(inner, inputs)
        if below is None:
            return None
    else:
        below = inputs
    env = {n.lower(): c for n, c in below}
    flat = _aggregating(select)
    out: list[tuple[str, Cell]] = []
    for item in select.expressions:
        if _is_star(item):
            star = item if isinstance(item, exp.Star) else item.this
            if any(star.args.values()):
                return None
            out.extend((n, _flatten(c, flat)) for n, c in below)
            continue
        inner_e = item.this if isinstance(item, exp.Alias) else item
        cell = _linear(inner_e, env)
        out.append((item.alias_or_name, _flatten(cell, flat)))
        env.setdefault(item.alias_or_name.lower(), cell)  # DuckDB's lateral aliases
    return out


def _outer_sql(cplan: CompoundPlan, select: exp.Select, threaded: bool) -> str:
    """The outer SELECT over ``__dp_noisy``: the combination, its columns named as the
    first SELECT names them (and the hidden row id when ``threaded``)."""
    n = len(cplan.columns)
    source = [f"__dp_c{j}" for j in range(n)] + ([_ROW] if cplan.threaded else [])
    items: list[exp.Expr] = [exp.alias_(exp.column(f"__dp_c{j}"), c.name, quoted=True)
                             for j, c in enumerate(cplan.columns)]
    if threaded:
        items.append(exp.alias_(exp.column(_ROW), ROW_ID, quoted=True))
    combined = sqlglot.parse_one(cplan.combine, dialect="duckdb")
    body = exp.select(*items).from_(exp.Subquery(this=combined, alias=exp.TableAlias(
        this=exp.to_identifier("__dp_u"), columns=[exp.to_identifier(c) for c in source])))
    post = select.copy()
    post.set("with_", exp.With(expressions=[
        exp.CTE(this=body, alias=exp.TableAlias(this=exp.to_identifier(NOISY_TABLE)))]))
    return post.sql(dialect="duckdb")


def _run_outer(gw: Gateway, outer: Outer, frames: dict[str, pd.DataFrame],
               cis: list[tuple[float | None, ...]]
               ) -> tuple[list[Column], list[tuple[Any, ...]], list[tuple[float | None, ...]]]:
    """The outer SELECT over the branches' rows; each cell's half-width from the branch
    row it came from (``cis``, by the row ids of :func:`_frames`)."""
    columns, rows = gw.post.run_sql(outer.sql, frames)
    hidden = [i for i, c in enumerate(columns) if c.name == ROW_ID]
    ids: list[int | None] = [None] * len(rows)
    if hidden:
        ids = row_ids([r[hidden[0]] for r in rows])
        columns = [c for i, c in enumerate(columns) if i not in hidden]
        rows = [tuple(v for i, v in enumerate(r) if i not in hidden) for r in rows]
    if len(columns) != len(outer.cells):  # cannot happen: the SQL bound at planning
        raise InternalError("the columns of a wrapped set operation are not the planned ones")
    return columns, rows, [tuple(_half(c, cis, r) for c in outer.cells) for r in ids]


def _half(cell: Cell, cis: list[tuple[float | None, ...]], row: int | None) -> float | None:
    """``|c|·h + rounding`` for a cell ``c·a + b`` of one released value a (as
    :meth:`Cell.half_width`, over the branches' per-cell half-widths)."""
    if cell.agg is None or row is None or not 0 <= row < len(cis):
        return None
    j = int(cell.agg[1:])
    h = cis[row][j] if j < len(cis[row]) else None
    if h is None:
        return None
    out = cell.factor * float(h) + cell.rounding
    return out if math.isfinite(out) else None


def _outer_accuracy(cplan: CompoundPlan, per_column: list[Accuracy]) -> list[Accuracy]:
    """The set operation's per-column accuracy, for the outer columns that pass one of
    its columns through unchanged (as for a wrapper around one SELECT)."""
    assert cplan.outer is not None
    by_name = {a.column: a for a in per_column}
    out = []
    for col, cell in zip(cplan.outer.columns, cplan.outer.cells, strict=True):
        if cell.agg is None or cell.factor != 1.0 or cell.rounding != 0.0:
            continue
        found = by_name.get(cplan.columns[int(cell.agg[1:])].name)
        if found is not None:
            out.append(replace(found, column=col.name))
    return out


def _outer_notes(cplan: CompoundPlan) -> list[str]:
    assert cplan.outer is not None
    notes = [f"the outer SELECT reads only the released rows of the {cplan.kind}: "
             "post-processing, no further charge"]
    notes.extend(f"column {col.name!r} has no per-cell ci95: it is not one released value "
                 f"or a constant scaling of one (e.g. an aggregate over the rows of the "
                 f"{cplan.kind}, or a ratio); see accuracy"
                 for col, cell in zip(cplan.outer.columns, cplan.outer.cells, strict=True)
                 if cell.noisy and cell.agg is None)
    return notes


_OPEN = frozenset({TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE})
_CLOSE = frozenset({TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE})
_SET_WORDS = frozenset({TokenType.UNION, TokenType.INTERSECT, TokenType.EXCEPT})
_TAIL_WORDS = frozenset({TokenType.ORDER_BY, TokenType.LIMIT, TokenType.OFFSET,
                         TokenType.FETCH})


@dataclass(frozen=True)
class _Piece:
    """A SELECT as a query of its own, made of slices of the statement's text (the
    CTEs it reads, then the SELECT itself), so the pipeline reads what the analyst
    wrote; ``parts`` maps its offsets back to the statement's."""

    sql: str
    dialect: str
    statement: str
    parts: tuple[tuple[int, int, int], ...]  # (offset here, offset there, length)

    def rejection(self, e: QueryRejected, i: int, kind: str) -> QueryRejected:
        """The SELECT's refusal, said of the statement, with its span mapped back."""
        span = None
        if e.span is not None:
            for here, there, length in self.parts:
                if here <= e.span.start and e.span.end <= here + length:
                    start = there + e.span.start - here
                    end = start + e.span.end - e.span.start
                    if self.statement[start:end] == e.span.text:
                        span = Span(start, end, e.span.text)
                    break
        return QueryRejected(f"SELECT {i + 1} of the {kind}: {e.message}", hint=e.hint,
                             rule=e.rule, span=span)


class _Text:
    """Where each SELECT and each CTE of the statement is in its text, from sqlglot's own
    tokens (parentheses, strings and comments as the parser sees them)."""

    def __init__(self, sql: str, dialect: str, leaves: int, ctes: int, kind: str,
                 path: tuple[str, ...] = ()) -> None:
        self.sql, self.dialect = sql, dialect
        toks = [t for t in Dialect.get_or_raise(dialect).tokenize(sql)
                if t.token_type != TokenType.SEMICOLON]
        self.toks = toks
        self.match = _matches(toks)
        self.recursive = False
        self.ctes: list[tuple[int, int]] = []  # (start, end) of ``name AS (...)``
        i = self._with(0) if toks and toks[0].token_type == TokenType.WITH else 0
        self.leaves: list[tuple[int, int]] = []  # token ranges [lo, hi)
        found = self._descend(i, len(toks), path)
        if found is not None:
            lo, hi = found
            if lo < hi and toks[lo].token_type == TokenType.WITH:
                lo = self._with(lo)  # the set operation's own WITH, inside (...)
            self._split(lo, hi)
        if len(self.leaves) != leaves or len(self.ctes) != ctes:
            raise QueryRejected(
                f"the SELECTs of this {kind} could not be told apart",
                hint="write each SELECT in full (or in parentheses) between the UNION / "
                "INTERSECT / EXCEPT keywords", rule=_RULE)

    def _with(self, i: int) -> int:
        """Read ``WITH [RECURSIVE] name [(cols)] AS [...] (body), ...``; the index of the
        first token after it."""
        toks = self.toks
        i += 1
        if i < len(toks) and toks[i].token_type == TokenType.RECURSIVE:
            self.recursive = True
            i += 1
        while i < len(toks):
            start = i
            while i < len(toks) and toks[i].token_type != TokenType.ALIAS:
                i = self.match.get(i, i) + 1
            while i < len(toks) and toks[i].token_type not in _OPEN:
                i += 1
            if i >= len(toks) or i not in self.match:
                break
            end = self.match[i]
            self.ctes.append((toks[start].start, toks[end].end + 1))
            i = end + 1
            if i < len(toks) and toks[i].token_type == TokenType.COMMA:
                i += 1
                continue
            break
        return i

    def _strip(self, lo: int, hi: int) -> tuple[int, int]:
        """``(...)`` around the whole range: the parentheses are not the query's."""
        while lo < hi and self.toks[lo].token_type == TokenType.L_PAREN and \
                self.match.get(lo) == hi - 1:
            lo, hi = lo + 1, hi - 1
        return lo, hi

    def _descend(self, lo: int, hi: int, path: tuple[str, ...]) -> tuple[int, int] | None:
        """The token range of the set operation a wrapper reads: per level, ``from`` is
        the parenthesised source after the SELECT's FROM, ``paren`` the parenthesised
        query that an ORDER BY / LIMIT follows.  None when the text does not have that
        shape (then no SELECT is found, and the statement is refused)."""
        toks = self.toks
        for step in path:
            lo, hi = self._strip(lo, hi)
            at = lo
            if step == "from":
                while at < hi:
                    t = toks[at].token_type
                    if t in _OPEN:
                        at = self.match.get(at, hi - 1) + 1
                        continue
                    if t == TokenType.FROM and not (
                            at > lo and toks[at - 1].token_type == TokenType.DISTINCT):
                        break  # (IS DISTINCT FROM is an operator, not the clause)
                    at += 1
                at += 1
            if not (at < hi and toks[at].token_type == TokenType.L_PAREN) or \
                    self.match.get(at, hi) >= hi:
                return None
            lo, hi = at + 1, self.match[at]
        return self._strip(lo, hi)

    def _split(self, lo: int, hi: int) -> None:
        toks = self.toks
        lo, hi = self._strip(lo, hi)  # (SELECT ...): the parentheses are not the SELECT's
        cuts: list[int] = []
        tail = hi
        i = lo
        while i < hi:
            t = toks[i].token_type
            if t in _OPEN:
                i = self.match.get(i, hi - 1) + 1
                continue
            if t in _SET_WORDS and not (t == TokenType.EXCEPT and i > lo and
                                        toks[i - 1].token_type == TokenType.STAR):
                cuts.append(i)
                tail = hi
            elif cuts and t in _TAIL_WORDS and tail == hi:
                tail = i  # ORDER BY / LIMIT after the last SELECT: the set operation's
            i += 1
        if not cuts:
            self.leaves.append((lo, hi))
            return
        start = lo
        for cut in cuts:
            self._split(start, cut)
            start = cut + 1
            while start < tail and toks[start].token_type in (TokenType.ALL, TokenType.DISTINCT):
                start += 1
        self._split(start, tail)

    def branch(self, i: int, ctes: list[int]) -> _Piece:
        """SELECT ``i`` with the statement's CTEs ``ctes`` (indexes) in front of it."""
        lo, hi = self.leaves[i]
        toks = self.toks
        start, end = toks[lo].start, toks[hi - 1].end + 1
        parts: list[tuple[int, int, int]] = []
        text = ""
        if ctes:
            text = "WITH RECURSIVE " if self.recursive else "WITH "
            for n, k in enumerate(ctes):
                if n:
                    text += ", "
                a, b = self.ctes[k]
                parts.append((len(text), a, b - a))
                text += self.sql[a:b]
            if toks[lo].token_type == TokenType.WITH:  # its own CTEs follow the shared ones
                text += ", "
                start = toks[lo + 1].start
            else:
                text += " "
        parts.append((len(text), start, end - start))
        text += self.sql[start:end]
        return _Piece(text, self.dialect, self.sql, tuple(parts))


def _matches(toks: list[Token]) -> dict[int, int]:
    """Index of each opening bracket -> index of its closing one."""
    out: dict[int, int] = {}
    stack: list[int] = []
    for i, t in enumerate(toks):
        if t.token_type in _OPEN:
            stack.append(i)
        elif t.token_type in _CLOSE and stack:
            out[stack.pop()] = i
    return out


# -- types and the combination ------------------------------------------------------------

def _unify(branches: list[Branch], kind: str) -> tuple[Column, ...]:
    first = branches[0].columns
    out: list[Column] = []
    for i, b in enumerate(branches[1:], start=2):
        if len(b.columns) != len(first):
            raise QueryRejected(
                f"SELECT {i} of the {kind} has {len(b.columns)} columns; the first has "
                f"{len(first)}", hint="give every SELECT the same columns, in the same order",
                rule=_RULE)
    for j, col in enumerate(first):
        types = [b.columns[j].type for b in branches]
        t = _common_type(types)
        if t is None:
            bad = next(i for i, x in enumerate(types) if x != types[0])
            raise QueryRejected(
                f"column {j + 1} ({col.name}) of the {kind} is {types[0]} in SELECT 1 but "
                f"{types[bad]} in SELECT {bad + 1}",
                hint="give the column the same type in every SELECT (integers and floats "
                "mix); CAST one side if needed", rule=_RULE)
        out.append(Column(col.name, t))
    return tuple(out)


def _common_type(types: list[str]) -> str | None:
    kinds = set(types)
    if "unknown" in kinds:
        return None
    if len(kinds) == 1:
        return types[0]
    if kinds <= {"int", "float"}:
        return "float"
    if kinds <= {"int[]", "float[]"}:
        return "float[]"
    return None


def _engine_type(t: str) -> str:
    if t.endswith("[]"):
        return CANONICAL[t[:-2]] + "[]"
    return CANONICAL[t]


def _frames(cplan: CompoundPlan, rows: list[list[tuple[Any, ...]]]
            ) -> dict[str, pd.DataFrame]:
    """Each branch's rows as a frame ``__dp_f<i>`` (c0, c1, ..., and a global row id)."""
    frames: dict[str, pd.DataFrame] = {}
    at = 0
    for i, part in enumerate(rows):
        data: dict[str, Any] = {f"c{j}": pd.Series([r[j] for r in part], dtype=object)
                                for j in range(len(cplan.columns))}
        data[_ROW] = pd.Series(range(at, at + len(part)), dtype="int64")
        frames[_frame(i)] = pd.DataFrame(data, index=range(len(part)))
        at += len(part)
    return frames


def _combine(tree: exp.SetOperation, leaves: list[exp.Select], columns: tuple[Column, ...],
             threaded: bool, kind: str) -> str:
    """The set operation with each SELECT replaced by its rows, typed as planned (so the
    output's types never depend on what the rows hold)."""
    n = len(columns)
    for i, leaf in enumerate(leaves):
        typed = sqlglot.parse_one(
            "SELECT " + ", ".join(f"TRY_CAST(c{j} AS {_engine_type(c.type)}) AS c{j}"
                                  for j, c in enumerate(columns))
            + f", {_ROW} FROM {_frame(i)}", dialect="duckdb")
        assert isinstance(typed, exp.Select)
        items: list[exp.Expr] = [exp.column(f"c{j}") for j in range(n)]
        if i == 0:
            items = [exp.alias_(e, columns[j].name, quoted=True) for j, e in enumerate(items)]
        if threaded:
            items.append(exp.column(_ROW))
        leaf.replace(exp.select(*items).from_(typed.subquery(_table(i))))
    tree.set("with_", None)
    for node in _set_nodes(tree):
        _check_tail(node, n, kind)
    return tree.sql(dialect="duckdb")


def _check_tail(node: exp.SetOperation, n: int, kind: str) -> None:
    """ORDER BY output columns (names or positions) and numeric LIMIT / OFFSET only."""
    order = node.args.get("order")
    for item in order.expressions if order is not None else []:
        e = item.this if isinstance(item, exp.Ordered) else item
        position = isinstance(e, exp.Literal) and not e.is_string and e.this.isdigit() and \
            1 <= int(e.this) <= n
        named = isinstance(e, exp.Column) and not e.table and not isinstance(e.this, exp.Star)
        if not (position or named):
            raise QueryRejected(
                f"ORDER BY after a {kind} may only name output columns or positions",
                hint="order by a column of the first SELECT (by name or position 1, 2, ...);"
                " compute expressions inside the SELECTs", rule=_RULE)
    for arg in ("limit", "offset"):
        part = node.args.get(arg)
        if part is None:
            continue
        number = "count" if isinstance(part, exp.Fetch) else "expression"
        value = part.args.get(number)
        options = part.args.get("limit_options")
        if not (isinstance(value, exp.Literal) and not value.is_string and
                value.this.isdigit() and int(value.this) < 2**63) or \
                (options is not None and (options.args.get("percent") or
                                          options.args.get("with_ties"))) or \
                any(v for k, v in part.args.items()
                    if k not in (number, "limit_options", "direction")):
            raise QueryRejected(f"{arg.upper()} after a {kind} must be a number of rows",
                                hint=f"e.g. {arg.upper()} 10", rule=_RULE)


def _align(ci95: list[tuple[float | None, ...]], rows: int, n: int
           ) -> list[tuple[float | None, ...]]:
    none = tuple(None for _ in range(n))
    return list(ci95) if len(ci95) == rows else [none] * rows


# -- budget -------------------------------------------------------------------------------

def _releases_noise(plan: Plan) -> bool:
    """Does calibrating ``plan`` give it any event (as :func:`gateway.query.noise.calibrate`
    splits ε: noisy statistics, quantile ranks, partition selection)?"""
    return plan.partition_selection or bool(plan.quantiles) or any(
        s.sensitivity(plan.max_rows, plan.max_groups)[0] > 0 for s in plan.stats)


def share(total: float, k: int) -> float:
    """total / k, rounded down so that k shares never add up to more than total."""
    if k <= 1:
        return total
    share = total / k
    while Decimal(repr(share)) * k > Decimal(repr(total)):
        share = math.nextafter(share, 0.0)
    return share


def _compose(values: Iterator[float] | Any) -> float:
    """Basic composition, exact in decimal (as :attr:`Calibration.epsilon`)."""
    return float(sum((Decimal(repr(float(v))) for v in values), Decimal(0)))


def _cal(prep: Prepared) -> Any:
    assert prep.cal is not None
    return prep.cal


def _split_note(cprep: CompoundPrepared) -> str:
    k = len(cprep.fresh)
    if k == 0:
        return "no SELECT releases noisy statistics: answered without a charge"
    return (f"the statement's epsilon is split equally over the {k} SELECT(s) that release "
            f"noisy statistics (delta over those that use it); one charge of their "
            f"composition: epsilon={cprep.cost.epsilon:g}, delta={cprep.cost.delta:g}")


def _accuracy(cplan: CompoundPlan, per_branch: list[list[Accuracy]]) -> list[Accuracy]:
    """Per output column, the least accurate branch's entry (the 95% half-width that
    holds for every row of the column); explain itemises every branch."""
    out: list[Accuracy] = []
    for j, col in enumerate(cplan.columns):
        found = []
        for b, acc in zip(cplan.branches, per_branch, strict=True):
            by_name = {a.column: a for a in acc}
            a = by_name.get(b.columns[j].name)
            if a is not None:
                found.append(a)
        if found:
            worst = max(found, key=lambda a: (a.ci95 is None, a.ci95 or 0.0,
                                              a.rank_error95 or 0.0, a.noise_scale or 0.0))
            out.append(replace(worst, column=col.name))
    return out
