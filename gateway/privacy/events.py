"""Privacy events: what was released, in a form every accountant understands.

An event is a small frozen (hashable) value recorded by the ledger for each
release.  It carries its *nominal* (ε, δ), used for exact basic composition,
plus the mechanism parameters a privacy-loss-distribution (PLD) accountant
needs for tight composition.  Events serialise to JSON through
:meth:`PrivacyEvent.to_dict` / :func:`event_from_dict`, so a ledger can store
them and rebuild an accountant later.

The DP-SGD helpers live here because they compute the nominal ε of a
:class:`SubsampledGaussianEvent`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

from gateway.privacy import _lazy

if TYPE_CHECKING:
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

from gateway.privacy.calibration import gaussian_delta

__all__ = [
    "ApproxDpEvent",
    "DiscreteLaplaceEvent",
    "GaussianEvent",
    "LaplaceEvent",
    "PrivacyEvent",
    "SubsampledGaussianEvent",
    "dp_sgd_epsilon",
    "dp_sgd_epsilon_rdp",
    "event_from_dict",
    "solve_noise_multiplier",
]


def _float(name: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0.0 or (positive and v == 0.0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def _delta(value: Any) -> float:
    v = _float("delta", value, positive=False)
    if v >= 1.0:
        raise ValueError(f"delta must be < 1, got {value!r}")
    return v


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


# Rényi orders the privacy filter tracks (gateway.privacy.accountant): from just
# above 1 (where pure-ε-like events are cheap) to 256 (where the filter is within
# log(|orders|/δ)/255 of basic composition for large events).
ORDERS: tuple[float, ...] = (1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0,
                             16.0, 20.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0)


def pure_rdp(epsilon: float, alpha: float) -> float:
    """Rényi divergence bound of any ε-DP mechanism at order α: min(ε, α ε²/2)
    (Mironov 2017, Prop. 3; Bun & Steinke 2016, Prop. 1.4 via zCDP)."""
    return min(epsilon, alpha * epsilon * epsilon / 2.0)


class PrivacyEvent:
    """Base of all events.  Subclasses are frozen dataclasses with a ``kind``."""

    kind: ClassVar[str]
    epsilon: float
    delta: float

    def rdp(self) -> tuple[float, ...]:
        """Rényi-DP bound at each of ORDERS, for the privacy filter.  The default, for
        mechanisms known by their (ε, δ) only, is the bound of an ε-DP mechanism; their
        δ is composed apart (the filter caps Σδ)."""
        return tuple(pure_rdp(self.epsilon, a) for a in ORDERS)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with a ``"kind"`` key; inverse of :func:`event_from_dict`."""
        return {"kind": self.kind, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    def to_pld(self, value_discretization_interval: float) -> pld_lib.PrivacyLossDistribution:
        """Pessimistic PLD of this event (cached per event and interval)."""
        return _cached_pld(self, float(value_discretization_interval))

    def _build_pld(self, vdi: float) -> pld_lib.PrivacyLossDistribution:
        raise NotImplementedError

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)


@dataclass(frozen=True)
class LaplaceEvent(PrivacyEvent):
    """Laplace noise (continuous or grid-rounded) with scale Δ1/ε: pure ε-DP."""

    kind: ClassVar[str] = "laplace"
    epsilon: float

    def __post_init__(self) -> None:
        self._set("epsilon", _float("epsilon", self.epsilon))

    @property
    def delta(self) -> float:  # type: ignore[override]
        return 0.0

    def rdp(self) -> tuple[float, ...]:
        # Exact for Laplace noise (Mironov 2017, Table II / Prop. 6):
        # D_α = 1/(α−1) · log(α/(2α−1)·e^{(α−1)ε} + (α−1)/(2α−1)·e^{−αε}).
        out = []
        for a in ORDERS:
            terms = (math.log(a / (2 * a - 1)) + (a - 1) * self.epsilon,
                     math.log((a - 1) / (2 * a - 1)) - a * self.epsilon)
            top = max(terms)
            value = (top + math.log(sum(math.exp(t - top) for t in terms))) / (a - 1)
            out.append(min(value, self.epsilon))
        return tuple(out)

    def _build_pld(self, vdi: float) -> pld_lib.PrivacyLossDistribution:
        # Laplace(b) on sensitivity 1 with b = 1/ε (Koskela et al. / Doroshenko et
        # al., "Connect the dots", PoPETs 2022 for the pessimistic discretisation).
        return _lazy.pld().from_laplace_mechanism(
            parameter=1.0 / self.epsilon, sensitivity=1, value_discretization_interval=vdi
        )


@dataclass(frozen=True)
class DiscreteLaplaceEvent(PrivacyEvent):
    """Two-sided geometric noise, parameter a = ε/Δ, on integer data with integer Δ."""

    kind: ClassVar[str] = "discrete_laplace"
    epsilon: float
    sensitivity: int = 1

    def __post_init__(self) -> None:
        self._set("epsilon", _float("epsilon", self.epsilon))
        self._set("sensitivity", _int("sensitivity", self.sensitivity))

    @property
    def delta(self) -> float:  # type: ignore[override]
        return 0.0

    def _build_pld(self, vdi: float) -> pld_lib.PrivacyLossDistribution:
        return _lazy.pld().from_discrete_laplace_mechanism(
            parameter=self.epsilon / self.sensitivity,
            sensitivity=self.sensitivity,
            value_discretization_interval=vdi,
        )


@dataclass(frozen=True)
class GaussianEvent(PrivacyEvent):
    """Gaussian noise with σ/Δ2 = ``noise_multiplier``, nominally (ε, δ)-DP.

    The nominal pair is checked against the exact Gaussian δ(ε) (Balle & Wang
    2018), so an event can never claim less than its noise provides.
    """

    kind: ClassVar[str] = "gaussian"
    noise_multiplier: float
    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        self._set("noise_multiplier", _float("noise_multiplier", self.noise_multiplier))
        self._set("epsilon", _float("epsilon", self.epsilon))
        self._set("delta", _delta(self.delta))
        actual = gaussian_delta(self.noise_multiplier, self.epsilon, 1.0)
        if actual > self.delta * (1.0 + 1e-9) + 1e-300:
            raise ValueError(
                f"noise_multiplier={self.noise_multiplier} only gives delta={actual:.3g} at "
                f"epsilon={self.epsilon}, more than the stated delta={self.delta}"
            )

    def rdp(self) -> tuple[float, ...]:
        # Gaussian with σ/Δ2 = m: D_α = α / (2 m²) (Mironov 2017, Prop. 7).
        return tuple(a / (2.0 * self.noise_multiplier ** 2) for a in ORDERS)

    def _build_pld(self, vdi: float) -> pld_lib.PrivacyLossDistribution:
        return _lazy.pld().from_gaussian_mechanism(
            standard_deviation=self.noise_multiplier,
            sensitivity=1,
            value_discretization_interval=vdi,
        )


@dataclass(frozen=True)
class ApproxDpEvent(PrivacyEvent):
    """Any (ε, δ)-DP mechanism known only by its guarantee (e.g. partition selection).

    Its PLD is the worst case over all (ε, δ)-DP mechanisms (Meiser & Mohammadi
    2018; dp_accounting's ``from_privacy_parameters``).
    """

    kind: ClassVar[str] = "approx_dp"
    epsilon: float
    delta: float = 0.0

    def __post_init__(self) -> None:
        self._set("epsilon", _float("epsilon", self.epsilon, positive=False))
        self._set("delta", _delta(self.delta))
        if self.epsilon == 0.0 and self.delta == 0.0:
            raise ValueError("an ApproxDpEvent needs epsilon > 0 or delta > 0")

    def _build_pld(self, vdi: float) -> pld_lib.PrivacyLossDistribution:
        params = _lazy.pld_common().DifferentialPrivacyParameters(self.epsilon, self.delta)
        return _lazy.pld().from_privacy_parameters(params, value_discretization_interval=vdi)


@dataclass(frozen=True)
class ExponentialEvent(PrivacyEvent):
    """The exponential mechanism with utilities of sensitivity Δ sampled at
    exp(ε u / (2Δ)): ε-DP, and ε-bounded-range, hence (ε²/8)-zCDP (Cesar & Rogers
    2021, "Bounding, concentrating, and truncating", Lemma 3.2), so its Rényi bound
    at order α is min(ε, α ε²/8).  The PLD is the worst case for an ε-DP mechanism.
    """

    kind: ClassVar[str] = "exponential"
    epsilon: float

    def __post_init__(self) -> None:
        self._set("epsilon", _float("epsilon", self.epsilon))

    @property
    def delta(self) -> float:  # type: ignore[override]
        return 0.0

    def rdp(self) -> tuple[float, ...]:
        return tuple(min(self.epsilon, a * self.epsilon * self.epsilon / 8.0) for a in ORDERS)

    def _build_pld(self, vdi: float) -> pld_lib.PrivacyLossDistribution:
        params = _lazy.pld_common().DifferentialPrivacyParameters(self.epsilon, 0.0)
        return _lazy.pld().from_privacy_parameters(params, value_discretization_interval=vdi)


@dataclass(frozen=True)
class SubsampledGaussianEvent(PrivacyEvent):
    """DP-SGD: ``steps`` Poisson-subsampled Gaussian steps, nominally (ε, δ)-DP.

    ``epsilon`` must come from :func:`dp_sgd_epsilon` or
    :func:`solve_noise_multiplier` (checking it here would cost a PLD
    computation per event).
    """

    kind: ClassVar[str] = "subsampled_gaussian"
    noise_multiplier: float
    sampling_rate: float
    steps: int
    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        self._set("noise_multiplier", _float("noise_multiplier", self.noise_multiplier))
        rate = _float("sampling_rate", self.sampling_rate)
        if rate > 1.0:
            raise ValueError(f"sampling_rate must be in (0, 1], got {self.sampling_rate!r}")
        self._set("sampling_rate", rate)
        self._set("steps", _int("steps", self.steps))
        self._set("epsilon", _float("epsilon", self.epsilon))
        self._set("delta", _delta(self.delta))

    def rdp(self) -> tuple[float, ...]:
        return _dp_sgd_rdp(self.noise_multiplier, self.sampling_rate, self.steps)

    def _build_pld(self, vdi: float) -> pld_lib.PrivacyLossDistribution:
        return _dp_sgd_pld(self.noise_multiplier, self.sampling_rate, self.steps, vdi)


_KINDS: dict[str, type[PrivacyEvent]] = {
    cls.kind: cls
    for cls in (
        LaplaceEvent,
        DiscreteLaplaceEvent,
        GaussianEvent,
        ApproxDpEvent,
        ExponentialEvent,
        SubsampledGaussianEvent,
    )
}


def event_from_dict(d: Mapping[str, Any]) -> PrivacyEvent:
    """Rebuild an event from :meth:`PrivacyEvent.to_dict` output (validating it)."""
    if not isinstance(d, Mapping) or "kind" not in d:
        raise ValueError(f"a privacy event needs a 'kind' key, got {d!r}")
    cls = _KINDS.get(d["kind"]) if isinstance(d["kind"], str) else None
    if cls is None:
        raise ValueError(f"unknown privacy event kind {d['kind']!r}; known: {sorted(_KINDS)}")
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    given = set(d) - {"kind"}
    if given - fields:
        raise ValueError(f"unexpected keys for {d['kind']} event: {sorted(given - fields)}")
    required = {
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING
    }
    if required - given:
        raise ValueError(f"missing keys for {d['kind']} event: {sorted(required - given)}")
    return cls(**{k: d[k] for k in given})


@lru_cache(maxsize=1024)
def _cached_pld(event: PrivacyEvent, vdi: float) -> pld_lib.PrivacyLossDistribution:
    if not vdi > 0.0:
        raise ValueError(f"value_discretization_interval must be > 0, got {vdi!r}")
    return event._build_pld(vdi)


# --------------------------------------------------------------------------- DP-SGD


def _check_sgd(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> None:
    _float("noise_multiplier", noise_multiplier)
    rate = _float("sampling_rate", sampling_rate)
    if rate > 1.0:
        raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}")
    _int("steps", steps)
    if _delta(delta) == 0.0:
        raise ValueError("delta must be > 0 for DP-SGD accounting")


@lru_cache(maxsize=256)
def _dp_sgd_rdp(noise_multiplier: float, sampling_rate: float, steps: int
                ) -> tuple[float, ...]:
    """RDP of DP-SGD at ORDERS (Mironov, Talwar & Zhang 2019, via dp-accounting)."""
    accountant = _lazy.rdp().RdpAccountant(list(ORDERS))
    event = _lazy.dp_event().PoissonSampledDpEvent(
        sampling_rate, _lazy.dp_event().GaussianDpEvent(noise_multiplier))
    accountant.compose(event, steps)
    return tuple(float(v) for v in accountant._rdp)  # per-order values, in ORDERS' order


def _dp_sgd_pld(
    noise_multiplier: float, sampling_rate: float, steps: int, vdi: float
) -> pld_lib.PrivacyLossDistribution:
    # Poisson-subsampled Gaussian (Abadi et al., "Deep learning with differential
    # privacy", CCS 2016), PLD by connect-the-dots (Doroshenko et al., PoPETs 2022).
    single = _lazy.pld().from_gaussian_mechanism(
        standard_deviation=noise_multiplier,
        sensitivity=1,
        sampling_prob=sampling_rate,
        use_connect_dots=True,
        value_discretization_interval=vdi,
    )
    return single.self_compose(steps) if steps > 1 else single


def dp_sgd_epsilon_rdp(
    noise_multiplier: float, sampling_rate: float, steps: int, delta: float
) -> float:
    """ε of DP-SGD by Rényi DP (Mironov 2017; Mironov, Talwar & Zhang 2019).

    Looser than the PLD bound as a rule; used as a cross-check and to pick the
    PLD discretisation.
    """
    _check_sgd(noise_multiplier, sampling_rate, steps, delta)
    accountant = _lazy.rdp().RdpAccountant()
    event = _lazy.dp_event().PoissonSampledDpEvent(
        sampling_rate, _lazy.dp_event().GaussianDpEvent(noise_multiplier)
    )
    # dp_accounting logs a warning for every Rényi order whose series does not
    # converge; those orders are skipped, which only makes the bound looser.
    logger = logging.getLogger("absl")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        accountant.compose(event, steps)
        return float(accountant.get_epsilon(delta))
    finally:
        logger.setLevel(previous)


def dp_sgd_epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    value_discretization_interval: float | None = None,
) -> float:
    """ε of DP-SGD at ``delta`` from the PLD of the Poisson-subsampled Gaussian.

    The pessimistic PLD is a valid upper bound for any discretisation; its
    looseness grows with interval/ε, so by default the interval is ε_RDP/2000
    (clipped to [1e-6, 1e-2]), which keeps the cost around 10-100 ms.
    """
    _check_sgd(noise_multiplier, sampling_rate, steps, delta)
    if value_discretization_interval is None:
        rough = dp_sgd_epsilon_rdp(noise_multiplier, sampling_rate, steps, delta)
        vdi = min(1e-2, max(1e-6, rough / 2000.0)) if math.isfinite(rough) else 1e-2
    else:
        vdi = _float("value_discretization_interval", value_discretization_interval)
    pld = _dp_sgd_pld(noise_multiplier, sampling_rate, steps, vdi)
    return float(pld.get_epsilon_for_delta(delta))


_SIGMA_MIN = 0.1
_SIGMA_MAX = 1e5


def solve_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    rtol: float = 1e-3,
) -> float:
    """Smallest noise multiplier (to ``rtol``) whose DP-SGD ε is at most the target.

    Bisection on log σ with the invariant "hi meets the target": the returned
    σ = hi was evaluated with :func:`dp_sgd_epsilon` and never overshoots.
    σ is searched in [0.1, 1e5]; if 0.1 already meets the target it is returned.
    """
    target = _float("target_epsilon", target_epsilon)
    _check_sgd(1.0, sampling_rate, steps, delta)
    tol = _float("rtol", rtol)

    def ok(sigma: float) -> bool:
        return dp_sgd_epsilon(sigma, sampling_rate, steps, delta) <= target

    hi = 1.0
    if ok(hi):
        lo = hi
        while lo > _SIGMA_MIN:
            lo = max(_SIGMA_MIN, lo / 4.0)
            if not ok(lo):
                break
            hi = lo
        else:
            return hi
    else:
        lo = hi
        while True:
            hi = lo * 4.0
            if hi > _SIGMA_MAX:
                raise ValueError(
                    f"no noise multiplier up to {_SIGMA_MAX:g} reaches epsilon={target} "
                    f"at delta={delta} with sampling_rate={sampling_rate}, steps={steps}"
                )
            if ok(hi):
                break
            lo = hi
    while hi / lo - 1.0 > tol:
        mid = math.sqrt(lo * hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi
