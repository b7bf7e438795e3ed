"""Training runs for the Gateway: select → charge → read → train → register.

The order is the privacy argument:

1. The SQL is analysed and the encoding built from the policy alone; a
   rejected query costs nothing.
2. Before any row is read, the *whole* cost is committed in one charge: exactly
   when the analyst gives a public estimate of the number of units, otherwise
   the requested ε with the DP-SGD share held as an (ε, δ) bound.  The
   executor refuses to read without that charge; a failure after it keeps it.
3. The rows are read and the noisy unit count released *inside the gateway*;
   from it (post-processing) follow q, the steps and σ (solved so DP-SGD never
   costs more than its share), and the charge is settled to the exact events
   (never more than was reserved).
4. Training runs (in a background thread for ``submit``) and only the model and
   public metadata are stored in the registry.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlglot import exp

from gateway.engine.base import Executor
from gateway.errors import BudgetExceeded, GatewayError, InvalidRequest, NotFound
from gateway.policy import Policy
from gateway.privacy.events import ApproxDpEvent
from gateway.privacy.random import RandomSource
from gateway.privacy.samplers import bernoulli, discrete_laplace
from gateway.query.noise import check_budget_request
from gateway.sql.names import TableNames
from gateway.sql.relations import SALT, Context
from gateway.sql.selection import Selection, select_training_rows
from gateway.state.ledger import Analyst, Cost, Ledger, Reservation
from gateway.training import accounting
from gateway.training.dpsgd import SGDConfig, UnitData, prepare_units, train
from gateway.training.encoding import Encoding, build_encoding
from gateway.training.evaluate import dp_evaluate
from gateway.training.hyper import Hyper
from gateway.training.model import TrainedModel, weights_to_json
from gateway.training.models import Network, network_for
from gateway.training.registry import Registry

log = logging.getLogger(__name__)

Progress = Callable[[float], None]
PROGRESS_EVERY_S = 0.25


@dataclass
class _Job:
    """A charged run, ready to train (holds private rows: never leaves the process)."""

    model_id: str
    who: Analyst
    selection: Selection
    encoding: Encoding
    net: Network
    hyper: Hyper
    sgd: accounting.SGDPrivacy
    train_data: UnitData
    eval_data: UnitData | None
    eval_epsilon: float
    count_epsilon: float

    @property
    def epsilon(self) -> float:
        """Everything this run was charged (basic composition of its parts)."""
        return self.count_epsilon + self.sgd.epsilon + self.eval_epsilon


@dataclass(frozen=True)
class TrainingPort:
    """What training needs from the core, and nothing more: the policy, the ledger
    (charges and the model registry's table), the executor, the analysis context
    for training SQL, the policy's table names and the secure random source."""

    policy: Policy
    ledger: Ledger
    executor: Executor
    context: Context
    tables: TableNames
    rng: RandomSource


class TrainingService:
    """Training runs and the model registry of one Gateway."""

    def __init__(self, gw: TrainingPort) -> None:
        self.gw = gw
        self.registry = Registry(gw.ledger)
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    # -- requests -------------------------------------------------------------------------

    def train(self, who: Analyst, sql: str, label: str, model: str, epsilon: float | None,
              delta: float | None, hyper: Mapping[str, Any],
              progress: Progress | None = None) -> TrainedModel:
        job = self.prepare(who, sql, label, model, epsilon, delta, hyper)
        return self.run(job, progress)

    def submit(self, who: Analyst, sql: str, label: str, model: str, epsilon: float | None,
               delta: float | None, hyper: Mapping[str, Any]) -> str:
        job = self.prepare(who, sql, label, model, epsilon, delta, hyper)
        thread = threading.Thread(target=self._run_quietly, args=(job,),
                                  name=f"train-{job.model_id[:8]}", daemon=True)
        with self._lock:
            self._threads[job.model_id] = thread
        thread.start()
        return job.model_id

    def wait(self, model_id: str, timeout: float | None = None) -> bool:
        """Block until a submitted run ends (tests, CLI); True if it has ended."""
        with self._lock:
            thread = self._threads.get(model_id)
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def get(self, who: Analyst, model_id: str) -> TrainedModel:
        rec = self.registry.get(model_id) if isinstance(model_id, str) else None
        if rec is None or (rec.analyst != who.name and not who.is_admin):
            raise NotFound(f"no model {model_id!r}",
                           hint="list your models with GET /v1/models or gw.models()")
        return TrainedModel.from_record(rec)

    def models(self, who: Analyst) -> list[TrainedModel]:
        recs = self.registry.models(None if who.is_admin else who.name)
        return [TrainedModel.from_record(r) for r in recs]

    def predict(self, who: Analyst, model_id: str, rows: Sequence[Mapping[str, Any]]
                ) -> list[Any]:
        return self.get(who, model_id).predict(rows)

    # -- preparing a run (synchronous: validates and charges) ------------------------------

    def prepare(self, who: Analyst, sql: str, label: str, model: str, epsilon: float | None,
                delta: float | None, raw_hyper: Mapping[str, Any]) -> _Job:
        gw = self.gw
        model_id = uuid.uuid4().hex
        try:
            job = self._prepare(model_id, who, sql, label, model, epsilon, delta, raw_hyper)
        except GatewayError as e:
            gw.ledger.audit(who.name, "train", sql if isinstance(sql, str) else None, 0.0, 0.0,
                            e.code, e.message, model_id)
            raise
        gw.ledger.audit(who.name, "train", sql, job.epsilon, job.sgd.delta, "ok", None,
                        model_id)
        return job

    def _prepare(self, model_id: str, who: Analyst, sql: str, label: str, model: str,
                 epsilon: float | None, delta: float | None, raw_hyper: Mapping[str, Any]
                 ) -> _Job:
        gw = self.gw
        pol = gw.policy.model
        hyper = Hyper.parse(model, raw_hyper)
        if delta is None:  # DP-SGD needs δ > 0; well below 1/N unless the policy says
            delta = pol.defaults.delta or min(pol.budget.per_analyst.delta or 1e-6, 1e-6)
        if epsilon is None and hyper.noise_multiplier is None:
            epsilon = pol.defaults.epsilon
        if epsilon is None and hyper.units is None:
            raise InvalidRequest(
                "with noise_multiplier and no epsilon the cost of the run would depend on the "
                "number of units, which is only known after reading rows; the whole cost must "
                "be committed before any row is read",
                hint="give epsilon (the noise is then solved for it), or a public estimate "
                "`units` of the number of privacy units")
        check_budget_request(epsilon if epsilon is not None else 1.0, delta, "gaussian",
                             min_epsilon=pol.limits.min_epsilon_per_query,
                             max_epsilon=pol.limits.max_epsilon_per_query)
        shares = accounting.split_epsilon(epsilon, hyper)
        selection = select_training_rows(sql, label, gw.context, gw.tables,
                                         max_length=pol.limits.max_sql_length)
        encoding = build_encoding(selection, model)
        net = network_for(model, encoding.width, encoding.label.outputs,
                          encoding.label.kind == "binary", hyper.hidden, hyper.activation)
        max_rows = min(selection.max_rows_per_unit, hyper.max_rows_per_unit or 10**9)
        gw.executor.check(selection.query)  # errors that need no data: before charging
        # The whole cost is committed before the first row is read.  With a public unit
        # estimate it is known exactly; otherwise the DP-SGD share is reserved as an
        # (ε, δ) bound, and settled to the (never larger) DP-SGD event once σ is solved
        # from the noisy count.
        evaluation = accounting.evaluation_events(shares.evaluation) if shares.evaluation \
            else ()
        planned: accounting.SGDPrivacy | None = None
        if hyper.units is not None:
            planned = accounting.plan_sgd(float(hyper.units) * (1.0 - hyper.holdout), "public",
                                          hyper, shares.sgd, delta)
            cost = Cost(planned.epsilon + shares.evaluation, delta,
                        (planned.event(), *evaluation))
        else:
            assert epsilon is not None and shares.sgd is not None
            cost = Cost(epsilon, delta, (accounting.count_event(shares.count),
                                         ApproxDpEvent(shares.sgd, delta), *evaluation))
        permit = self._reserve(who, model_id, sql, cost)
        # -- from here on, rows are read; any failure keeps the charge --
        try:
            data = self._read(selection, encoding, max_rows, permit)
            rng = gw.rng
            if planned is None:
                noisy = data.units + int(discrete_laplace(1.0 / shares.count, 1, rng)[0])
                units_est = float(max(noisy, 1)) * (1.0 - hyper.holdout)
                sgd = accounting.plan_sgd(units_est, "dp_count", hyper, shares.sgd, delta)
                gw.ledger.settle(permit, Cost(
                    shares.count + sgd.epsilon + shares.evaluation, delta,
                    (accounting.count_event(shares.count), sgd.event(), *evaluation)))
            else:
                sgd = planned
            eval_data = None
            train_data = data
            if hyper.holdout > 0:
                held = bernoulli(np.full(data.units, hyper.holdout), rng)
                train_data = data.subset(np.flatnonzero(~held))
                eval_data = data.subset(np.flatnonzero(held))
        except GatewayError as e:
            self._record_failed(model_id, who, sql, label, model, cost.epsilon, e)
            raise
        job = _Job(model_id, who, selection, encoding, net, hyper, sgd, train_data, eval_data,
                   shares.evaluation, shares.count if planned is None else 0.0)
        self.registry.create(model_id, who.name, self._spec(job, sql, label, model))
        return job

    def _reserve(self, who: Analyst, model_id: str, sql: str, cost: Cost) -> Reservation:
        try:
            return self.gw.ledger.reserve(who, model_id, "train", sql, cost)
        except BudgetExceeded as e:
            raise BudgetExceeded(e.message.replace("this query", "this training run"),
                                 hint=e.hint) from None

    def _read(self, selection: Selection, encoding: Encoding, max_rows: int,
              permit: Reservation) -> UnitData:
        gw = self.gw
        salted = any(p.name == SALT for p in selection.query.find_all(exp.Placeholder))
        res = gw.executor.execute(selection.query, permit=permit,
                                  params={SALT: secrets.randbits(62)} if salted else None,
                                  timeout_s=gw.policy.model.limits.query_timeout_s)
        cols = res.columns
        y, keep = encoding.encode_label(cols[-1])
        x = encoding.encode_columns([np.asarray(c)[keep] if not isinstance(c, np.ma.MaskedArray)
                                     else c[keep] for c in cols[1:-1]])
        units = np.ma.getdata(cols[0])[keep]
        return prepare_units(units, x, y, max_rows, gw.rng)

    def _spec(self, job: _Job, sql: str, label: str, model: str) -> dict[str, Any]:
        net = job.net
        privacy = job.sgd.to_dict()
        privacy.update({"mechanism": "DP-SGD, Poisson-subsampled Gaussian (user-level: the "
                        "privacy unit is the example)", "accountant": "PLD (dp-accounting); "
                        "RDP cross-check", "max_rows_per_unit": min(
                            job.selection.max_rows_per_unit,
                            job.hyper.max_rows_per_unit or 10**9),
                        "count_epsilon": job.count_epsilon, "eval_epsilon": job.eval_epsilon,
                        "noise_std_of_mean_gradient": job.sgd.noise_multiplier * job.sgd.clip
                        / job.sgd.expected_batch})
        return {"sql": sql, "label": label, "model": model,
                "policy_version": self.gw.policy.version,
                "epsilon_spent": job.epsilon,
                "delta_spent": job.sgd.delta, "privacy": privacy, "hyper": job.hyper.to_dict(model),
                "network": {"inputs": net.inputs, "outputs": net.outputs, "head": net.head,
                            "hidden": list(net.hidden), "activation": net.activation},
                "encoding": job.encoding.to_dict()}

    def _record_failed(self, model_id: str, who: Analyst, sql: str, label: str, model: str,
                       charged: float, e: GatewayError) -> None:
        """The count was charged: keep a failed model row so the spend is explained."""
        spec = {"sql": sql, "label": label, "model": model,
                "policy_version": self.gw.policy.version, "epsilon_spent": charged,
                "delta_spent": 0.0}
        try:
            self.registry.create(model_id, who.name, {**spec, "incomplete": True})
            self.registry.fail(model_id, e.detail)
        except GatewayError:
            pass

    # -- running a run ----------------------------------------------------------------------

    def run(self, job: _Job, progress: Progress | None = None) -> TrainedModel:
        last = [0.0]

        def report(fraction: float) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S or fraction >= 1.0:
                last[0] = now
                self.registry.progress(job.model_id, min(fraction, 0.999))
            if progress is not None:
                progress(fraction)

        try:
            result = self._train(job, report)
        except BaseException as e:
            log.exception("training %s failed", job.model_id)
            self.registry.fail(job.model_id, "training failed inside the gateway; this is a "
                               f"bug if it repeats ({type(e).__name__})")
            raise
        self.registry.finish(job.model_id, result)
        return self.get(job.who, job.model_id)

    def _run_quietly(self, job: _Job) -> None:
        try:
            self.run(job)
        except BaseException:  # already logged and recorded as failed
            pass
        finally:
            with self._lock:
                self._threads.pop(job.model_id, None)

    def _train(self, job: _Job, progress: Progress) -> dict[str, Any]:
        gw, hyper, sgd = self.gw, job.hyper, job.sgd
        self.registry.progress(job.model_id, 0.0)
        seed = gw.rng.words(2)
        init = job.net.init(np.random.default_rng([int(w) for w in seed]))
        cfg = SGDConfig(sgd.noise_multiplier, sgd.sampling_rate, sgd.steps, sgd.clip,
                        sgd.expected_batch, hyper.lr, hyper.optimizer, hyper.momentum,
                        hyper.l2, hyper.average)
        params = train(job.net, init, job.train_data, cfg, gw.rng, progress)
        if not all(np.all(np.isfinite(p)) for p in params):
            # Divergence is a property of the noisy (already private) iterates.
            params = [np.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0) for p in params]
        metrics: dict[str, Any] = {}
        if job.eval_data is not None:
            metrics["dp_holdout"] = dp_evaluate(job.net, params, job.eval_data, job.encoding,
                                                job.eval_epsilon, hyper.holdout, gw.rng)
        return {"weights": weights_to_json(params), "metrics": metrics,
                "finished": math.floor(time.time())}
