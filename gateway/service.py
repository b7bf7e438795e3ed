"""The Gateway: the one core every adapter (HTTP, pgwire, CLI, client) calls.

A query goes through small passes, in this order:

    parse -> validate -> analyze -> calibrate -> rewrite -> reserve (charge)
          -> execute -> perturb -> store answer -> post-process -> release

Nothing computed from data exists before the charge is committed, and the
charge depends only on the SQL, the policy and the requested ε/δ.  The
executor enforces it: it reads protected rows only with the reservation the
ledger returns for a committed charge.  A query that releases no noisy
statistic costs nothing and is answered from public domains, without the engine.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlglot import exp

from gateway.engine import SourceTable, open_executor
from gateway.errors import AuthError, GatewayError, InternalError, InvalidRequest, QueryRejected
from gateway.policy import Policy, load_policy
from gateway.privacy.random import RandomSource, SecureRandom
from gateway.query import accuracy_first
from gateway.query.cells import noisy_columns, output_cells
from gateway.query.compound import Compounds
from gateway.query.noise import Calibration, check_budget_request
from gateway.query.perturb import NoisyStats, finish, from_domains, perturb
from gateway.query.postprocess import PostProcessor, Released, select_targets
from gateway.query.prepared import LRU, Prepared, answer_key
from gateway.query.results import (
    Accuracy,
    Explanation,
    QueryResult,
    decode_release,
    encode_release,
)
from gateway.query.tuning import (
    TunedCalibration,
    calibrate_query,
    choose,
    explain_tuning,
    histogram_query,
    noisy_histogram,
    tuned_note,
    tuned_plan,
)
from gateway.sql.analyze import ROW_ID, Context, analyze
from gateway.sql.domains import DomainFinder
from gateway.sql.parse import parse_statement
from gateway.sql.plan import AggSpec, Plan
from gateway.sql.relations import SALT
from gateway.sql.rewrite import rewrite
from gateway.sql.validate import validate
from gateway.state import keys
from gateway.state.ledger import Analyst, AuditLine, Cost, Ledger, Reservation

if TYPE_CHECKING:
    from gateway.training.model import TrainedModel
    from gateway.training.service import TrainingService

log = logging.getLogger(__name__)

DEFAULT_STATE = Path(".gateway/state.db")
LOCAL_ANALYST = "local"


class Gateway:
    """A policy, its data, its ledger: answers DP queries for analysts."""

    def __init__(self, policy: Policy, state: Path, rng: RandomSource | None = None) -> None:
        self.policy = policy
        self._rng: RandomSource = rng if rng is not None else SecureRandom()
        model = policy.model
        sources = [
            SourceTable(name, spec.source, None if spec.public else
                        {c: s.type for c, s in spec.columns.items()},
                        ROW_ID if spec.is_row_level else None)
            for name, spec in model.tables.items()
        ]
        self.executor = open_executor(policy, sources)
        self.domains = DomainFinder(self.executor.distinct_values, self.executor.scratch,
                                    model.limits.max_groups)
        self._check_public_refs()
        self._check_declared_keys()
        self.post = PostProcessor()
        self.ledger = Ledger(state, policy.dataset,
                             (model.budget.dataset.epsilon, model.budget.dataset.delta),
                             (model.budget.per_analyst.epsilon, model.budget.per_analyst.delta),
                             model.budget.renyi_share)
        self._context = Context(policy, self.executor.table_columns,
                                self.executor.unique_columns, self.domains,
                                self.executor.is_nan, self.executor.guard)
        self._tables = policy.names  # how queries may name the tables
        self._plans: LRU[tuple[str, str], Plan] = LRU(1024)
        self._prepared: LRU[tuple[str, str, float, float, str], Prepared] = LRU(1024)
        # (dialect, sql, grids[, tuned M]) -> the bounded query
        self._rewrites: LRU[tuple[Any, ...], tuple[exp.Expr, str, bool]] = LRU(1024)
        self._answers: LRU[str, str] = LRU(256)
        self._released: LRU[tuple[str, str, float, float, str],
                            tuple[Released, Any, list[str]]] = LRU(256)
        self.compounds = Compounds(self)  # UNION ALL & co: several DP results, one charge
        self._closed = threading.Event()
        self._training_service: TrainingService | None = None
        self._training_lock = threading.Lock()

    @classmethod
    def open(cls, policy: str | Path, state: str | Path | None = None, *,
             rng: RandomSource | None = None) -> Gateway:
        pol = load_policy(policy)
        if state is None:
            state = os.environ.get("GATEWAY_STATE", DEFAULT_STATE)
        return cls(pol, Path(state), rng)

    def _check_public_refs(self) -> None:
        for tname, table in self.policy.tables.items():
            for cname, col in table.columns.items():
                if col.public_values_from is None:
                    continue
                other, _, ocol = col.public_values_from.partition(".")
                other = self.policy.canonical_table_name(other) or other
                if ocol.lower() not in {c.lower() for c in self.executor.table_columns(other)}:
                    raise self.policy.error(
                        f"tables.{tname}.columns.{cname}.public_values_from",
                        f"public table {other!r} has no column {ocol!r}; fix the reference")

    def _check_declared_keys(self) -> None:
        """A public column declared ``key: true`` must be unique: protected tables may join
        on it, and a duplicate would let one protected row meet several public rows."""
        for tname, table in self.policy.tables.items():
            if not table.public:
                continue
            unique = {c.lower() for c in self.executor.unique_columns(tname)}
            for cname, col in table.columns.items():
                if col.key and cname.lower() not in unique:
                    raise self.policy.error(
                        f"tables.{tname}.columns.{cname}.key",
                        f"column {cname!r} of the public table {tname!r} has duplicate values,"
                        f" so it is not a key; remove `key: true` or deduplicate the table")

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.ledger.close()
        self.post.close()
        self.executor.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- planning -----------------------------------------------------------------

    def plan(self, sql: str, *, dialect: str = "duckdb") -> Plan:
        """Parse, validate and analyze: a Plan or a QueryRejected, touching no data."""
        limits = self.policy.model.limits
        try:
            tree = parse_statement(sql, max_length=limits.max_sql_length, dialect=dialect)
            if isinstance(tree, exp.SetOperation):
                # Planned branch by branch (a refusal of any branch is raised here).
                self.compounds.plan(sql, dialect)
                raise QueryRejected(
                    "a statement of several SELECTs has no single plan",
                    hint="answer it with query or explain, which plan each SELECT",
                    rule="statement_kind")
            tree = validate(tree, sql, self._tables, dialect)
            return analyze(tree, sql, self._context)
        except GatewayError:
            raise
        except Exception as e:  # a planner bug; planning reads no data, so nothing leaks
            log.exception("planning bug on %r", sql[:500])
            raise InternalError(f"the gateway failed to plan this query ({type(e).__name__}); "
                                "this is a bug and was logged for the operator") from None

    def _request(self, epsilon: float | None, delta: float | None, mechanism: str | None
                 ) -> tuple[float, float, str]:
        d = self.policy.model.defaults
        eps = d.epsilon if epsilon is None else epsilon
        mech = (mechanism or d.mechanism).lower()
        dlt = (d.delta if delta is None else delta)
        if mech == "gaussian" and delta is None and dlt == 0:
            dlt = self.policy.model.budget.per_analyst.delta or 1e-6
        limits = self.policy.model.limits
        check_budget_request(eps, dlt, mech, min_epsilon=limits.min_epsilon_per_query,
                             max_epsilon=limits.max_epsilon_per_query)
        return float(eps), float(dlt), mech

    # -- queries --------------------------------------------------------------------

    def query(self, sql: str, analyst: str | None = None, epsilon: float | None = None,
              delta: float | None = None, mechanism: str | None = None, *,
              dialect: str = "duckdb", ci95: float | None = None,
              accuracy: float | None = None) -> QueryResult:
        who = self.ledger.ensure_analyst(analyst or LOCAL_ANALYST)
        return self.query_as(who, sql, epsilon, delta, mechanism, dialect=dialect, ci95=ci95,
                             accuracy=accuracy)

    def query_as(self, who: Analyst, sql: str, epsilon: float | None = None,
                 delta: float | None = None, mechanism: str | None = None, *,
                 dialect: str = "duckdb", ci95: float | None = None,
                 accuracy: float | None = None) -> QueryResult:
        """Answer ``sql`` for an authenticated analyst (adapters call this).  ``ci95``
        (alias ``accuracy``) instead of ``epsilon``: the smallest ε whose predicted 95%
        half-width meets it in every noisy column (gateway/query/accuracy_first.py)."""
        if ci95 is not None or accuracy is not None:
            return accuracy_first.query(self, who, sql, ci95, accuracy, epsilon, delta,
                                        mechanism, dialect=dialect)
        query_id = uuid.uuid4().hex
        try:
            eps, dlt, mech = self._request(epsilon, delta, mechanism)
            compound = self.compounds.plan(sql, dialect)
            if compound is not None:
                result = self.compounds.query(compound, who, query_id, eps, dlt, mech)
            else:
                result = self._answer(sql, who, query_id, eps, dlt, mech, dialect)
        except GatewayError as e:
            self.ledger.audit(who.name, "query", sql, 0.0, 0.0, e.code, e.message, query_id)
            raise
        if result.cached or result.epsilon_spent == 0:  # charged answers were audited already
            self.ledger.audit(who.name, "query", sql, 0.0, 0.0,
                              "cached" if result.cached else "ok", None, query_id)
        return result

    def output_columns(self, sql: str, *, dialect: str = "duckdb"
                       ) -> tuple[list[str], list[bool]]:
        """The result's column names and, per column, whether it is computed from noisy
        aggregates ([] for public queries), from planning alone (pgwire's Describe)."""
        compound = self.compounds.plan(sql, dialect)
        if compound is not None:
            return self.compounds.output(compound)
        plan = self.plan(sql, dialect=dialect)
        return [e.alias_or_name for e in plan.post.expressions], noisy_columns(plan)

    def _answer(self, sql: str, who: Analyst, query_id: str, eps: float, dlt: float,
                mech: str, dialect: str) -> QueryResult:
        """One SELECT: over public tables only (free), or a DP release."""
        prep = self.prepare(sql, eps, dlt, mech, dialect=dialect)
        if prep.cal is None:
            return self._public(prep, query_id, who)
        return self._release(prep, who, query_id)

    def prepare(self, sql: str, epsilon: float, delta: float, mechanism: str, *,
                dialect: str = "duckdb") -> Prepared:
        """Plan, calibrate, rewrite and dry-run: everything that needs no data."""
        key = (dialect, sql, epsilon, delta, mechanism)
        found = self._prepared.get(key)
        if found is not None:
            return found
        plan = self._plans.get_or((dialect, sql), lambda: self.plan(sql, dialect=dialect))
        if plan.public_query is not None:
            text = self.executor.render(plan.public_query)
            return self._prepared.put(key, Prepared(key, plan, None, plan.public_query, text,
                                                    None, False))
        cal = self.calibration(plan, epsilon, delta, mechanism)
        # The rewrite depends on ε only through the grids (powers of two), so nearby
        # epsilons share it.
        grids = tuple(sorted((n, g.step, g.integral) for n, g in cal.grids.items()))
        tree, rewritten, salted = self._rewrites.get_or(
            (dialect, sql, grids), lambda: self._rewrite(plan, cal))
        prep = Prepared(key, plan, cal, tree, rewritten,
                        answer_key(self.policy.version, rewritten, cal), salted)
        return self._prepared.put(key, prep)

    def calibration(self, plan: Plan, epsilon: float, delta: float, mechanism: str
                   ) -> Calibration:
        """Noise for every statistic, with a share of ε for tuning an `auto` bound."""
        return calibrate_query(plan, epsilon, delta, mechanism,
                               self.policy.model.limits.tuning_epsilon_share)

    def _rewrite(self, plan: Plan, cal: Calibration) -> tuple[exp.Expr, str, bool]:
        tree = rewrite(plan, cal.grids, self.executor)
        rewritten = self.executor.render(tree)
        salted = any(p.name == SALT for p in tree.find_all(exp.Placeholder))
        self.executor.check(tree, sql=rewritten)
        return tree, rewritten, salted

    def _public(self, prep: Prepared, query_id: str, who: Analyst) -> QueryResult:
        assert prep.tree is not None
        res = self.executor.execute(prep.tree, timeout_s=self.policy.model.limits.query_timeout_s,
                                    sql=prep.sql)
        columns, rows = self.post.run_public(res.rows(), list(res.names), list(res.types))
        return QueryResult(query_id, columns, rows, 0.0, 0.0, [], False,
                           self._remaining(who), [tuple(None for _ in columns)] * len(rows),
                           tuple(False for _ in columns))

    def _release(self, prep: Prepared, who: Analyst, query_id: str) -> QueryResult:
        plan, cal = prep.plan, prep.cal
        assert cal is not None
        # Nothing noisy to release: no charge and no engine run, only public domains.
        stored, charged = (None, False) if prep.from_domains else \
            self._stored_release(prep, who, query_id)
        released = self._released.get(prep.key)
        if released is None:
            release = from_domains(plan) if stored is None else decode_release(stored)
            released = self._released.put(prep.key, self.finish_release(prep, release))
        out, accuracy, notes = released
        spent = (cal.epsilon, cal.delta) if charged else (0.0, 0.0)
        return QueryResult(query_id, out.columns, list(out.rows), spent[0], spent[1],
                           list(accuracy), not charged and not prep.from_domains,
                           self._remaining(who), list(out.ci95), out.noisy, list(notes))

    def finish_release(self, prep: Prepared, release: NoisyStats
                       ) -> tuple[Released, list[Accuracy], list[str]]:
        """The analyst's answer from a release (post-processing only): aggregates, the
        post query, per-column accuracy and the notes (with any tuned bounds)."""
        plan, cal = prep.plan, prep.cal
        used_plan, used_cal = self.release_calibration(prep, release)
        table = finish(used_plan, used_cal, release)
        out = self.post.run(used_plan, table)
        accuracy = self._accuracy(used_plan, used_cal, table, [c.name for c in out.columns])
        notes = [*plan.notes, *_cell_notes(plan, out)]
        if release.tuned:
            assert isinstance(cal, TunedCalibration)
            notes.append(tuned_note(plan, cal, _choice_of(release, cal)))
        return out, accuracy, notes

    @staticmethod
    def release_calibration(prep: Prepared, release: NoisyStats) -> tuple[Plan, Calibration]:
        """The plan and noise a release was made with: for a tuned bound, those of the M
        the release records (its aggregates and intervals are computed from them)."""
        cal = prep.cal
        assert cal is not None
        if not release.tuned or not isinstance(cal, TunedCalibration):
            return prep.plan, cal
        choice = _choice_of(release, cal)
        noise = cal.at(choice)
        assert noise is not None  # it was chosen among the allowed ones
        return tuned_plan(prep.plan, choice), noise

    def _stored_release(self, prep: Prepared, who: Analyst, query_id: str
                        ) -> tuple[str, bool]:
        """The stored release (noisy statistics) of ``prep``, and whether this request paid
        for it: an answer already paid for is read without the ledger's write lock."""
        cal, key = prep.cal, prep.answer_key
        assert cal is not None and key is not None
        return self._paid_release(key, Cost(cal.epsilon, cal.delta, cal.events), who,
                                  query_id, prep.plan.sql,
                                  lambda permit: self._compute_release(prep, permit))

    def _paid_release(self, key: str, cost: Cost, who: Analyst, query_id: str, sql: str,
                      compute: Callable[[Reservation], str]) -> tuple[str, bool]:
        """The release stored under ``key``, or ``compute(permit)`` under one committed
        charge of ``cost`` (the permit is what the executor needs to read protected
        rows); and whether this request paid.  A failure after the charge keeps it."""
        stored = self._answers.get(key) or self.ledger.cached(key)
        if stored is not None:
            return stored, False
        reservation = self.ledger.reserve(who, query_id, "query", sql, cost, key)
        if not reservation.charged:
            assert reservation.cached_result is not None
            return self._answers.put(key, reservation.cached_result), False
        try:
            stored = compute(reservation)
            self.ledger.complete(key, stored, AuditLine(
                who.name, "query", sql, cost.epsilon, cost.delta, "ok", None, query_id))
        except BaseException:
            self.ledger.abandon(key)
            raise
        return self._answers.put(key, stored), True

    def _compute_release(self, prep: Prepared, permit: Reservation) -> str:
        """Run ``prep``'s bounded query under ``permit`` and add its noise: the release."""
        cal = prep.cal
        assert cal is not None and prep.tree is not None
        # A fresh secret salt per execution for the keyed hashes that pick each
        # unit's groups and, before joins of protected tables, rows.
        params = {SALT: secrets.randbits(62)} if prep.salted else None
        timeout = self.policy.model.limits.query_timeout_s
        if isinstance(cal, TunedCalibration):
            return self._tuned_release(prep, cal, permit, params, timeout)
        result = self.executor.execute(prep.tree, permit=permit, params=params,
                                       timeout_s=timeout, sql=prep.sql)
        return encode_release(perturb(prep.plan, cal, result, self._rng))

    def _tuned_release(self, prep: Prepared, cal: TunedCalibration, permit: Reservation,
                       params: dict[str, Any] | None, timeout: float) -> str:
        """Tune M on a DP histogram of rows per unit, then run the query at that M (both
        under the one charge already committed, which covers both)."""
        assert cal.tuning is not None and isinstance(prep.tree, exp.Select)
        hist_tree = histogram_query(prep.tree, cal.tuning)
        hist_sql = self.executor.render(hist_tree)
        self.executor.check(hist_tree, sql=hist_sql)
        hist_salted = any(p.name == SALT for p in hist_tree.find_all(exp.Placeholder))
        counts = self.executor.execute(hist_tree, permit=permit,
                                       params=params if hist_salted else None,
                                       timeout_s=timeout, sql=hist_sql)
        choice = choose(cal, noisy_histogram(counts, cal.tuning, self._rng))
        plan_m, cal_m = tuned_plan(prep.plan, choice), cal.at(choice)
        assert cal_m is not None
        grids = tuple(sorted((n, g.step, g.integral) for n, g in cal_m.grids.items()))
        tree, sql, salted = self._rewrites.get_or(
            (prep.key[0], prep.key[1], grids, choice), lambda: self._rewrite(plan_m, cal_m))
        result = self.executor.execute(
            tree, permit=permit, params={SALT: secrets.randbits(62)} if salted else None,
            timeout_s=timeout, sql=sql)
        release = perturb(plan_m, cal_m, result, self._rng)
        return encode_release(replace(release, tuned={
            "max_rows_per_unit": choice[0], "range_cut": choice[1],
            "max_groups_per_unit": choice[2]}))

    def _accuracy(self, plan: Plan, cal: Calibration, table: Any | None,
                  names: list[str] | None) -> list[Accuracy]:
        """Mechanism, scale and 95% half-width of each output column that is an aggregate
        (passed through a wrapping query unchanged counts too)."""
        post = plan.inner_post if plan.wrapped and plan.inner_post is not None else plan.post
        aggs = {a.name: a for a in plan.aggs}
        base: dict[str, Accuracy] = {}
        for item, target in zip(post.expressions, select_targets(post), strict=True):
            if target is None or target not in aggs:
                continue
            agg = aggs[target]
            if agg.quantile is not None:
                base[item.alias_or_name] = _quantile_accuracy(item.alias_or_name, agg, cal)
                continue
            main = cal.stats[agg.stats[0] if len(agg.stats) == 1 else agg.stats[1]]
            ratio = agg.func not in ("count", "count_units", "count_distinct", "sum")
            # A ratio's half-width depends on its noisy count: the median over the released
            # groups; without any (explain, or nothing released), the widest it can be.
            ci95: float | None = _widest_ratio_ci95(agg) if ratio else main.ci95
            if table is not None:
                ci = table.ci95.get(target)
                if ci is not None and len(ci):
                    ci95 = float(np.median(ci))
            base[item.alias_or_name] = Accuracy(item.alias_or_name, main.kind,
                                                main.value_scale, ci95)
        if not plan.wrapped:
            pairs = [(n, n) for n in base]
        elif plan.outer_names is None:
            pairs = [(n, n) for n in (names or list(base)) if n in base]
        else:
            pairs = [p for p in plan.outer_names if p is not None and p[1] in base]
        return [replace(base[inner], column=out) for out, inner in pairs]

    def explain(self, sql: str, epsilon: float | None = None, delta: float | None = None,
                mechanism: str | None = None, *, dialect: str = "duckdb",
                ci95: float | None = None, accuracy: float | None = None) -> Explanation:
        if ci95 is not None or accuracy is not None:  # accuracy-first, as query_as
            return accuracy_first.explain(self, sql, ci95, accuracy, epsilon, delta,
                                          mechanism, dialect=dialect)
        eps, dlt, mech = self._request(epsilon, delta, mechanism)
        compound = self.compounds.plan(sql, dialect)
        if compound is not None:
            return self.compounds.explain(compound, eps, dlt, mech)
        return self.explain_checked(sql, eps, dlt, mech, dialect=dialect)

    def explain_checked(self, sql: str, eps: float, dlt: float, mech: str, *,
                        dialect: str = "duckdb") -> Explanation:
        """:meth:`explain` of one SELECT at an (ε, δ) already checked (a compound
        statement explains each SELECT at its share)."""
        plan = self.plan(sql, dialect=dialect)
        if plan.public_query is not None:
            return Explanation(self.executor.render(plan.public_query), [], None,
                               0.0, 0.0, [])
        cal = self.calibration(plan, eps, dlt, mech)
        tree = rewrite(plan, cal.grids, self.executor)
        aggregates = []
        for agg in plan.aggs:
            stats = []
            for name in agg.stats:
                spec = next(s for s in plan.stats if s.name == name)
                noise = cal.stats[name]
                l1, l2 = spec.sensitivity(plan.max_rows, plan.max_groups)
                stats.append({"statistic": name, "kind": spec.kind, "moment": spec.power,
                              "bounds": [spec.lo, spec.hi], "sensitivity_l1": l1,
                              "sensitivity_l2": l2, "mechanism": noise.kind,
                              "epsilon": noise.epsilon, "noise_scale": noise.value_scale,
                              "grid": noise.grid.step, "ci95": noise.ci95})
            if agg.quantile is not None:
                q = next(q for q in plan.quantiles if q.name == agg.quantile)
                for qn in cal.quantiles:
                    if qn.quantile == q.name and qn.alpha in agg.alphas:
                        stats.append({
                            "statistic": f"{q.name}@{qn.alpha:g}", "kind": "quantile",
                            "rank": qn.alpha, "bounds": [agg.lo, agg.hi], "bins": q.bins,
                            "bin_width": q.width, "max_values_per_unit": plan.max_rows,
                            "sensitivity": qn.sensitivity,
                            "mechanism": "exponential (McSherry & Talwar 2007)",
                            "epsilon": qn.epsilon, "rank_error95": qn.rank_error95})
            aggregates.append({"aggregate": agg.label, "function": agg.func,
                               "bounds": [agg.lo, agg.hi], "statistics": stats})
        ps = None if cal.partition is None else cal.partition.explain()
        keys = [{"key": k.expr.sql(dialect="duckdb"),
                 "public_domain_size": None if k.domain is None else len(k.domain)}
                for k in plan.keys]
        accuracy = self._accuracy(plan, cal, None, None)
        notes, tuning = list(plan.notes), None
        if isinstance(cal, TunedCalibration):
            assert cal.tuning is not None
            tuning, note = explain_tuning(plan, cal)
            notes.append(note)
        return Explanation(self.executor.render(tree, pretty=True), aggregates, ps,
                           cal.epsilon, cal.delta, accuracy, keys, notes, tuning=tuning)

    # -- analysts and budgets ---------------------------------------------------------

    def add_analyst(self, name: str, epsilon: float | None = None, delta: float | None = None,
                    admin: bool = False) -> str:
        """Create an analyst and return their API key (only its hash is stored)."""
        if not name or len(name) > 64 or not all(c.isalnum() or c in "_-." for c in name):
            raise InvalidRequest(f"invalid analyst name {name!r}",
                                 hint="use letters, digits, '_', '-' or '.' (at most 64)")
        d = self.policy.model.budget.per_analyst
        eps = d.epsilon if epsilon is None else float(epsilon)
        dlt = d.delta if delta is None else float(delta)
        check_budget_request(eps, dlt, "laplace", min_epsilon=0.0, max_epsilon=None)
        key = keys.new_key()
        self.ledger.add_analyst(name, keys.hash_key(key), "admin" if admin else "analyst",
                                eps, dlt, keys.scram_verifier(key).encode())
        return key

    def authenticate(self, key: str | None) -> Analyst:
        if not key:
            raise AuthError("no API key was given", hint="send Authorization: Bearer <key>")
        digest = keys.hash_key(key)
        who = self.ledger.analyst_by_key_hash(digest)
        if who is None or who.key_hash is None or not keys.same_hash(who.key_hash, digest):
            raise AuthError("the API key is not valid",
                            hint="create one with `gateway analyst add NAME`")
        return who

    def analysts(self) -> list[Analyst]:
        return self.ledger.analysts()

    def analyst(self, name: str) -> Analyst:
        return self.ledger.require_analyst(name)

    def _remaining(self, who: Analyst) -> dict[str, float]:
        mine, _ = self.ledger.spent(who)
        return {"epsilon_remaining": mine.epsilon_remaining,
                "delta_remaining": mine.delta_remaining}

    def budget(self, analyst: str | None = None) -> dict[str, Any]:
        who = self.ledger.ensure_analyst(analyst or LOCAL_ANALYST)
        return self.budget_of(who)

    def budget_of(self, who: Analyst) -> dict[str, Any]:
        mine, dataset = self.ledger.spent(who)
        return {"analyst": who.name, **mine.to_dict(), "dataset": dataset.to_dict()}

    def audit(self, analyst: str | None = None, since: float | None = None,
              until: float | None = None, limit: int = 100, offset: int = 0
              ) -> list[dict[str, Any]]:
        return self.ledger.audit_log(analyst, since, until, limit, offset)

    # -- public metadata ------------------------------------------------------------------

    def schema(self) -> dict[str, Any]:
        """Everything an analyst may know about the data: the policy's public part."""
        tables = {}
        for name, spec in self.policy.tables.items():
            if spec.public:
                cols = [{"name": c, "type": t}
                        for c, t in self.executor.table_columns(name).items()]
                tables[name] = {"public": True, "columns": cols}
                if spec.schema_ is not None:
                    tables[name]["schema"] = spec.schema_
                continue
            cols = []
            for cname, c in spec.columns.items():
                entry: dict[str, Any] = {"name": cname, "type": c.type}
                if c.role:
                    entry["role"] = c.role
                if c.auto_bounds:
                    assert c.limits is not None
                    entry["bounds"] = "auto"
                    entry["limits"] = [_plain(b) for b in c.limits]
                elif c.bounds is not None:
                    entry["bounds"] = [_plain(b) for b in c.bounds]
                if c.public_values is not None:
                    entry["public_values"] = [_plain(v) for v in c.public_values]
                if c.public_values_from is not None:
                    t, _, k = c.public_values_from.partition(".")
                    values = self.executor.distinct_values(
                        self.policy.canonical_table_name(t) or t, k,
                        self.policy.model.limits.max_groups)
                    entry["public_values_from"] = c.public_values_from
                    entry["public_values"] = [_plain(v) for v in values or []]
                cols.append(entry)
            tables[name] = {"public": False, "privacy_unit": spec.privacy_unit,
                            "max_rows_per_unit": spec.rows_ceiling,
                            **({"max_rows_per_unit_auto": True} if spec.rows_auto else {}),
                            "max_groups_per_unit": spec.groups_ceiling,
                            **({"max_groups_per_unit_auto": True} if spec.groups_auto else {}),
                            "columns": cols}
            if spec.schema_ is not None:
                tables[name]["schema"] = spec.schema_
        return {"dataset": self.policy.dataset, "policy_version": self.policy.version,
                "tables": tables}

    # -- training (DP-SGD) --------------------------------------------------------------
    # Thin delegation to gateway/training (DESIGN §1.2-1.3).

    def _training(self) -> TrainingService:
        """Training's port into the core (created on first use: it imports more)."""
        with self._training_lock:
            if self._training_service is None:
                from gateway.training.service import TrainingPort, TrainingService

                self._training_service = TrainingService(TrainingPort(
                    self.policy, self.ledger, self.executor, self._context, self._tables,
                    self._rng))
            return self._training_service

    def train(self, sql: str, label: str, model: str = "logistic",
              epsilon: float | None = None, delta: float | None = None,
              analyst: str | None = None, **hyper: Any) -> TrainedModel:
        """Train a DP model on the rows ``sql`` selects; blocks until it is trained."""
        who = self.ledger.ensure_analyst(analyst or LOCAL_ANALYST)
        return self.train_as(who, sql, label, model, epsilon, delta, **hyper)

    def train_as(self, who: Analyst, sql: str, label: str, model: str = "logistic",
                 epsilon: float | None = None, delta: float | None = None,
                 progress: Any = None, **hyper: Any) -> TrainedModel:
        """Train for an authenticated analyst; ``progress(fraction)`` is called as it runs."""
        return self._training().train(who, sql, label, model, epsilon, delta, hyper, progress)

    def submit_training(self, who: Analyst, sql: str, label: str, model: str = "logistic",
                        epsilon: float | None = None, delta: float | None = None,
                        **hyper: Any) -> str:
        """Validate and charge now, train in the background; returns the model id."""
        return self._training().submit(who, sql, label, model, epsilon, delta, hyper)

    def models(self, who: Analyst) -> list[dict[str, Any]]:
        """The caller's models (all models for an admin), without raw weight arrays."""
        return [m.to_dict(weights=False) for m in self._training().models(who)]

    def model(self, who: Analyst, model_id: str) -> dict[str, Any]:
        """Status, progress, cost, hyper-parameters, metrics, weights and encoding."""
        return self._training().get(who, model_id).to_dict()

    def predict(self, who: Analyst, model_id: str, rows: list[dict[str, Any]]) -> list[Any]:
        """Predictions for caller-supplied rows: post-processing, so free."""
        return self._training().predict(who, model_id, rows)


def _widest_ratio_ci95(agg: AggSpec) -> float:
    """The largest 95% half-width finish() reports for AVG/VAR/STDDEV (it caps each at
    what the bounds allow), a function of the bounds only."""
    half = (agg.hi - agg.lo) / 2.0
    if agg.func == "avg":
        return half
    if agg.func.startswith("stddev"):
        return half * math.sqrt(2)
    return half * half * 2


def _cell_notes(plan: Plan, out: Released) -> list[str]:
    """Why a column computed from noisy aggregates has no per-cell half-width (a function
    of the query only)."""
    cells = output_cells(plan)
    if len(cells) != len(out.columns):
        return []
    return [f"column {col.name!r} has no per-cell ci95: it is not one aggregate or a "
            f"constant scaling of one (e.g. a ratio of two aggregates); see accuracy"
            for col, cell in zip(out.columns, cells, strict=True)
            if cell.noisy and cell.agg is None]


def _quantile_accuracy(column: str, agg: AggSpec, cal: Calibration) -> Accuracy:
    """A quantile's error is stated in ranks: the exponential mechanism's 95% bound."""
    mine = [q for q in cal.quantiles if q.quantile == agg.quantile and q.alpha in agg.alphas]
    worst = max(mine, key=lambda q: q.rank_error95)
    return Accuracy(column, "exponential", 2.0 * worst.sensitivity / worst.epsilon, None,
                    worst.rank_error95)


def _plain(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


def _choice_of(release: NoisyStats, cal: TunedCalibration) -> tuple[int, int, int]:
    """The tuned bounds a release records (M, range cut, L0)."""
    assert cal.tuning is not None
    t = release.tuned
    return (t["max_rows_per_unit"], t.get("range_cut", 0),
            t.get("max_groups_per_unit", cal.tuning.group_choices[-1]))
