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
  post-processing too.  A set operation *inside* a FROM or a CTE combines raw
  rows before they are aggregated (one unit's rows could count in several
  branches), which cannot be attributed; :mod:`gateway.sql.validate` refuses it.

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
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.tokens import Token, TokenType

from gateway.engine.duckdb import CANONICAL
from gateway.errors import BackendError, InternalError, QueryRejected, Span
from gateway.query.cells import noisy_columns
from gateway.query.perturb import finish, from_domains
from gateway.query.postprocess import Column
from gateway.query.prepared import LRU, Prepared
from gateway.query.results import Accuracy, Explanation, QueryResult, decode_release
from gateway.sql.parse import parse_statement
from gateway.sql.plan import Plan
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
        try:
            tree = parse_statement(sql, max_length=self.gw.policy.model.limits.max_sql_length,
                                   dialect=dialect)
        except QueryRejected:
            tree = None
        if not isinstance(tree, exp.SetOperation):
            self._statements.put(key, False)
            return None
        cplan = self._plan(tree, sql, dialect)
        self._statements.put(key, cplan)
        return cplan

    def _plan(self, tree: exp.SetOperation, sql: str, dialect: str) -> CompoundPlan:
        _leaves(tree)  # the shape and the number of SELECTs are checked first
        tree = tree.copy()
        leaves = _leaves(tree)
        with_ = tree.args.get("with_")
        ctes = list(with_.expressions) if with_ is not None else []
        kinds = sorted({_kind(n) for n in _set_nodes(tree)})
        kind = kinds[0] if len(kinds) == 1 else " / ".join(kinds)
        text = _Text(sql, dialect, len(leaves), len(ctes), kind)
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
        aggregates."""
        noisy = [False] * len(cplan.columns)
        for b in cplan.branches:
            flags = noisy_columns(b.plan)
            if len(flags) == len(noisy):
                noisy = [a or f for a, f in zip(noisy, flags, strict=True)]
        return [c.name for c in cplan.columns], noisy

    # -- (ε, δ) -----------------------------------------------------------------------------

    def prepare(self, cplan: CompoundPlan, epsilon: float, delta: float, mechanism: str
                ) -> CompoundPrepared:
        key = (cplan.dialect, cplan.sql, epsilon, delta, mechanism)
        found = self._prepared.get(key)
        if found is not None:
            return found
        gw = self.gw
        # Identical branches share one release: the first of them computes it.
        first: dict[str, int] = {}
        for i, b in enumerate(cplan.branches):
            if b.noisy:
                first.setdefault(b.sql, i)
        fresh = tuple(first.values())
        with_delta = [i for i in fresh if cplan.branches[i].uses_delta(mechanism)]
        eps_each = _share(epsilon, len(fresh))
        delta_each = _share(delta, len(with_delta)) if with_delta else 0.0
        preps, shares = [], []
        for i, b in enumerate(cplan.branches):
            if b.noisy:
                share = (eps_each, delta_each if b.uses_delta(mechanism) else 0.0)
            else:  # costs nothing whatever it is given
                share = (epsilon, delta)
            try:
                prep = gw.prepare(b.sql, share[0], share[1], mechanism, dialect=cplan.dialect)
            except QueryRejected as e:
                raise b.piece.rejection(e, i, cplan.kind) from None
            if prep.cal is not None and prep.from_domains == b.noisy:
                raise InternalError("a branch's calibration disagrees with its plan")
            if b.noisy and share[1] == 0 and _cal(prep).delta != 0:
                raise InternalError("a branch spends δ it was not given")
            preps.append(prep)
            shares.append(share)
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
        spent = (cprep.cost.epsilon, cprep.cost.delta) if charged else (0.0, 0.0)
        return QueryResult(query_id, columns, rows, spent[0], spent[1],
                           _accuracy(cplan, [p.accuracy for p in parts]),
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
        plan, cal = prep.plan, prep.cal
        index = cprep.release[i]
        release = from_domains(plan) if index is None else decode_release(releases[index])
        table = finish(plan, cal, release)
        out = gw.post.run(plan, table)
        accuracy = gw._accuracy(plan, cal, table, [c.name for c in out.columns])
        return _Part(out.columns, out.rows, list(out.ci95), tuple(out.noisy), accuracy,
                     list(getattr(plan, "notes", ())))

    def _combine(self, cplan: CompoundPlan, parts: list[_Part]
                 ) -> tuple[list[Column], list[tuple[Any, ...]], list[tuple[float | None, ...]]]:
        cis: list[tuple[float | None, ...]] = []
        for b, p in zip(cplan.branches, parts, strict=True):
            if len(p.columns) != len(b.columns):  # cannot happen: planned from the same plan
                raise InternalError("a branch's answer does not have its planned columns")
            cis.extend(_align(p.ci95, len(p.rows), len(b.columns)))
        columns, rows = self.gw.post.run_sql(cplan.combine,
                                             _frames(cplan, [p.rows for p in parts]))
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
        ps = {"branches": selections} if selections else None
        return Explanation("\n\n".join(texts), aggregates, ps, cprep.cost.epsilon,
                           cprep.cost.delta, _accuracy(cplan, accuracies), keys,
                           notes=[_split_note(cprep)], branches=items)


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

    def __init__(self, sql: str, dialect: str, leaves: int, ctes: int, kind: str) -> None:
        self.sql, self.dialect = sql, dialect
        toks = [t for t in Dialect.get_or_raise(dialect).tokenize(sql)
                if t.token_type != TokenType.SEMICOLON]
        self.toks = toks
        self.match = _matches(toks)
        self.recursive = False
        self.ctes: list[tuple[int, int]] = []  # (start, end) of ``name AS (...)``
        i = self._with(0) if toks and toks[0].token_type == TokenType.WITH else 0
        self.leaves: list[tuple[int, int]] = []  # token ranges [lo, hi)
        self._split(i, len(toks))
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

    def _split(self, lo: int, hi: int) -> None:
        toks = self.toks
        while lo < hi and toks[lo].token_type == TokenType.L_PAREN and \
                self.match.get(lo) == hi - 1:
            lo, hi = lo + 1, hi - 1  # (SELECT ...): the parentheses are not the SELECT's
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


def _share(total: float, k: int) -> float:
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
