"""What a training run costs, in events the ledger's accountant composes.

A run releases up to three things, each a privacy event:

* the number of units N̂, when no public estimate is given: a discrete-Laplace
  count (sensitivity 1: one unit joins or leaves), charged *before* the rows are
  read, because the sampling rate and step count are chosen from it;
* the DP-SGD iterates: ``steps`` Poisson-subsampled Gaussian mechanisms with
  rate q and noise multiplier σ (:class:`SubsampledGaussianEvent`), whose ε at
  δ comes from dp-accounting's PLD accountant (RDP reported as a cross-check);
* optionally a DP evaluation on held-out units: a noisy sum and a noisy count
  (Laplace on a grid and discrete Laplace).

With ``epsilon`` as a target, ε is split by basic composition (the count gets
2%, the evaluation 10% when asked for, DP-SGD the rest) and σ is solved so the
DP-SGD part never exceeds its share (:func:`solve_noise_multiplier` keeps the
invariant "the returned σ meets the target").  The ledger then composes all of
these with the analyst's queries in the same PLD accountant.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from gateway.errors import InvalidRequest
from gateway.privacy.events import (
    DiscreteLaplaceEvent,
    LaplaceEvent,
    PrivacyEvent,
    SubsampledGaussianEvent,
    dp_sgd_epsilon,
    dp_sgd_epsilon_rdp,
    solve_noise_multiplier,
)
from gateway.training.hyper import MAX_STEPS, Hyper

COUNT_SHARE = 0.02
EVAL_SHARE = 0.10
MIN_BATCH, MAX_BATCH = 64, 4096


@dataclass(frozen=True)
class Shares:
    """How the requested ε is split before anything is read."""

    count: float  # 0 when a public estimate of the number of units is given
    evaluation: float  # 0 without a holdout
    sgd: float | None  # target for DP-SGD; None when σ is given and ε is not


def split_epsilon(epsilon: float | None, hyper: Hyper) -> Shares:
    if hyper.units is not None:
        count = 0.0
    elif hyper.count_epsilon is not None:
        count = hyper.count_epsilon
    else:
        count = COUNT_SHARE * epsilon if epsilon is not None else 0.01
    evaluation = 0.0
    if hyper.holdout > 0:
        if hyper.eval_epsilon is not None:
            evaluation = hyper.eval_epsilon
        else:
            evaluation = EVAL_SHARE * epsilon if epsilon is not None else 0.05
    sgd = None if epsilon is None else epsilon - count - evaluation
    if sgd is not None and sgd <= 0:
        raise InvalidRequest(
            f"epsilon={epsilon:g} leaves nothing for training after the unit count "
            f"({count:g}) and the evaluation ({evaluation:g})",
            hint="raise epsilon or lower count_epsilon/eval_epsilon")
    return Shares(count, evaluation, sgd)


@dataclass(frozen=True)
class SGDPrivacy:
    """Public parameters and cost of the DP-SGD part of a run."""

    noise_multiplier: float
    sampling_rate: float
    steps: int
    clip: float
    expected_batch: float
    units_estimate: float
    units_source: str  # "public" or "dp_count"
    delta: float
    epsilon: float  # PLD
    epsilon_rdp: float  # cross-check, never smaller than the PLD value in practice

    def event(self) -> SubsampledGaussianEvent:
        return SubsampledGaussianEvent(self.noise_multiplier, self.sampling_rate, self.steps,
                                       self.epsilon, self.delta)

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def auto_batch(units: float) -> int:
    """Default expected batch: N̂/20 (≈ 20 steps per epoch) within [64, 4096].

    Larger batches cost less noise per step for the same ε (σ grows roughly
    like √(B·epochs/N) while the noise on the mean gradient shrinks like σ/B).
    """
    return int(min(MAX_BATCH, max(MIN_BATCH, units / 20.0)))


def plan_sgd(units: float, units_source: str, hyper: Hyper, target: float | None,
             delta: float) -> SGDPrivacy:
    """Sampling rate, steps and σ for a run over ~``units`` units (a public or DP number)."""
    units = max(1.0, float(units))
    batch = float(hyper.batch_size or auto_batch(units))
    rate = min(1.0, batch / units)
    steps = max(1, math.ceil(hyper.epochs / rate))
    if steps > MAX_STEPS:
        raise InvalidRequest(f"the run would take {steps} steps (more than {MAX_STEPS})",
                             hint="use fewer epochs or a larger batch_size")
    sigma = hyper.noise_multiplier
    if sigma is None:
        if target is None:
            raise InvalidRequest("give epsilon (a target) or noise_multiplier",
                                 hint="e.g. epsilon=1.0")
        try:
            sigma = solve_noise_multiplier(target, delta, rate, steps)
        except ValueError:
            raise InvalidRequest(
                f"no noise level reaches epsilon={target:g} with {steps} steps at sampling "
                f"rate {rate:.3g}", hint="raise epsilon, or lower epochs") from None
    eps = dp_sgd_epsilon(sigma, rate, steps, delta)
    if target is not None and eps > target * (1 + 1e-12):
        raise InvalidRequest(
            f"noise_multiplier={sigma:g} costs epsilon={eps:.4g} for training, more than "
            f"the {target:.4g} available", hint="raise noise_multiplier or epsilon, or drop "
            "noise_multiplier to have it solved")
    return SGDPrivacy(sigma, rate, steps, hyper.clip, rate * units, units, units_source, delta,
                      eps, dp_sgd_epsilon_rdp(sigma, rate, steps, delta))


def count_event(epsilon: float) -> DiscreteLaplaceEvent:
    return DiscreteLaplaceEvent(epsilon, sensitivity=1)


def evaluation_events(epsilon: float) -> tuple[PrivacyEvent, ...]:
    """Half of the evaluation ε for the noisy sum, half for the noisy count."""
    return (LaplaceEvent(epsilon / 2.0), DiscreteLaplaceEvent(epsilon / 2.0, sensitivity=1))
