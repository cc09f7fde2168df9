r"""What one training sample runs: free, nudged and symmetric phases, or one oscillation.

A :class:`Schedule` is the time course of one sample, repeated for every sample of a run. It is
plain data: :mod:`spikeep.brian2.lowering` turns it into piecewise-constant ``TimedArray`` tables
of the run's time (``beta_t``, ``win<k>_t``, ``gate_t``, ``demod_t``) and into the expressions the
neurons and the learning rules read.

**Phased** (``phases``): each :class:`Phase` holds the teaching strength ``beta_k`` for
``settle + window`` seconds; the rates are the spike counts in the window, divided by
``r_max window``. Like the rate engine's ``Network.dF_dtheta`` points, phase ``k`` carries a
coefficient ``c_k``, and the estimate of ``+dL/dtheta`` is ``sum_k c_k dF/dtheta(r_k, beta_k)``
(with ``dF/dW_ij = -r_i r_j``, ``dF/db_i = -r_i``):

- :func:`free`:      one free phase (``c = 0``): rates only;
- :func:`one_sided`: free (``c = -1/beta``), then ``+beta`` (``c = 1/beta``) from the free state;
- :func:`symmetric`: free (``c = 0``, to settle), ``+beta`` (``c = 1/(2 beta)``), then ``-beta``
  (``c = -1/(2 beta)``). The ``-beta`` phase follows the ``+beta`` one (continuous time has no
  "restore"): it relaxes from ``s^beta`` instead of ``s^0``, which a settling time covers when
  the fixed point is unique.

**Oscillating** (:func:`oscillation`; no phases): the teaching strength is
``beta(t) = |beta| cos(omega t)``, ``omega = 2 pi / period``, for ``warmup + periods`` periods;
the first ``warmup`` are discarded and the last ``periods`` demodulated (``T_d = periods period``):

    dL/dtheta ~ (2 / (T_d |beta|)) int dF/dtheta(r(t)) cos(omega t) dt

The gate ``G(t)`` is the weight each spike gets in a rule's accumulators: phased,
``G = c_k / window_k`` inside window ``k`` (0 while settling); oscillating,
``G = 2 cos(omega t) / (T_d |beta|)`` while demodulating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..spec import Spiking

__all__ = [
    "Phase",
    "Schedule",
    "free",
    "one_sided",
    "symmetric",
    "oscillation",
    "for_estimator",
    "ESTIMATORS",
]

ESTIMATORS = ("one-sided", "symmetric", "oscillation")


@dataclass(frozen=True)
class Phase:
    """``settle + window`` seconds at teaching strength ``beta``; the rates averaged over the
    window enter the gradient estimate with the coefficient ``c``."""

    beta: float
    settle: float
    window: float
    c: float = 0.0

    @property
    def duration(self) -> float:
        return self.settle + self.window


@dataclass(frozen=True)
class Schedule:
    """One sample's time course (module docstring). Times in seconds.

    Attributes:
        phases: the phases in order (empty when oscillating).
        beta: ``|beta|`` of the oscillation (0 when phased).
        period: the oscillation period; ``periods`` demodulated after ``warmup`` discarded.
        name: the estimator it realises.
    """

    phases: tuple[Phase, ...] = ()
    beta: float = 0.0
    period: float = 0.0
    periods: int = 0
    warmup: int = 0
    name: str = "free"

    @property
    def oscillating(self) -> bool:
        return not self.phases

    @property
    def duration(self) -> float:
        """Seconds per sample."""
        if self.oscillating:
            return (self.warmup + self.periods) * self.period
        return sum(p.duration for p in self.phases)

    @property
    def omega(self) -> float:
        """The oscillation's angular frequency (rad/s); 0 when phased."""
        return 2 * math.pi / self.period if self.oscillating else 0.0

    @property
    def accumulators(self) -> tuple[str, ...]:
        """Per-neuron rate accumulators: ``rho<k>`` per phase, or the oscillation's mean ``m`` and
        first cosine coefficient ``q`` (both in units of ``r_max``)."""
        return ("m", "q") if self.oscillating else tuple(f"rho{k}" for k in range(len(self.phases)))

    def grid(self, dt: float) -> float:
        """The tables' resolution: the largest multiple of ``dt`` dividing every duration."""
        spans = [self.period] if self.oscillating else []
        for p in self.phases:
            spans += [p.settle, p.window]
        steps = [round(x / dt) for x in spans if x > 0]
        for x, n in zip([x for x in spans if x > 0], steps, strict=True):
            if n < 1 or abs(n * dt - x) > 1e-9 * max(1.0, x):
                raise ValueError(f"duration {x} s is not a whole number of steps dt = {dt} s")
        return math.gcd(*steps) * dt

    def tables(self, dt: float, samples: int) -> dict[str, np.ndarray]:
        """The piecewise-constant tables for ``samples`` samples, one row per :meth:`grid` step
        and one trailing row of zeros (the step that closes the last sample): ``beta_t``,
        ``gate_t`` (``G``) and ``win<k>_t`` (``1/window_k`` inside window ``k``) when phased,
        ``demod_t`` (``1/T_d`` while demodulating) when oscillating."""
        g = self.grid(dt)
        n = lambda x: round(x / g)  # noqa: E731
        if self.oscillating:
            demod = np.zeros(n(self.duration))
            T_d = self.periods * self.period
            demod[n(self.warmup * self.period) :] = 1.0 / T_d
            one = {"demod_t": demod}
        else:
            beta, gate = [], []
            wins = [[] for _ in self.phases]
            for k, p in enumerate(self.phases):
                inside = np.r_[np.zeros(n(p.settle)), np.ones(n(p.window))]
                beta.append(np.full(inside.size, p.beta))
                gate.append(inside * p.c / p.window)
                for j in range(len(self.phases)):
                    wins[j].append(inside / p.window if j == k else np.zeros(inside.size))
            one = {"beta_t": np.concatenate(beta), "gate_t": np.concatenate(gate)}
            one.update({f"win{k}_t": np.concatenate(w) for k, w in enumerate(wins)})
        return {k: np.r_[np.tile(v, samples), 0.0] for k, v in one.items()}

    def check(self, cfg: Spiking) -> None:
        """Refuse durations that are not whole numbers of the simulation step."""
        self.grid(cfg.dt)


def _check_beta(beta: float) -> float:
    if not (isinstance(beta, int | float) and math.isfinite(beta) and beta != 0):
        raise ValueError(f"beta must be a finite non-zero number, got {beta!r}")
    return float(beta)


def free(cfg: Spiking, settle: float | None = None, window: float | None = None) -> Schedule:
    """One free phase: settle, then average the rates over the window (seconds; the spec's
    ``[spiking]`` values by default)."""
    return Schedule((Phase(0.0, settle or cfg.settle, window or cfg.window),), name="free")


def one_sided(beta: float, cfg: Spiking, settle=None, window=None) -> Schedule:
    """Free, then nudged at ``+beta`` from the free state (Scellier & Bengio 2017)."""
    b = _check_beta(beta)
    s, w = settle or cfg.settle, window or cfg.window
    return Schedule((Phase(0.0, s, w, -1 / b), Phase(b, s, w, 1 / b)), name="one-sided")


def symmetric(beta: float, cfg: Spiking, settle=None, window=None) -> Schedule:
    """Free (settling only), ``+beta``, then ``-beta`` (Laborieux et al. 2021)."""
    b = _check_beta(beta)
    s, w = settle or cfg.settle, window or cfg.window
    return Schedule(
        (Phase(0.0, s, w, 0.0), Phase(b, s, w, 1 / (2 * b)), Phase(-b, s, w, -1 / (2 * b))),
        name="symmetric",
    )


def oscillation(
    beta: float, cfg: Spiking, periods: int = 4, warmup: int = 1, period: float | None = None
) -> Schedule:
    """One oscillating teaching current ``|beta| cos(omega t)``; ``warmup`` periods discarded,
    ``periods`` demodulated; ``period`` in seconds (the spec's by default)."""
    b = abs(_check_beta(beta))
    if not (isinstance(periods, int) and periods >= 1):
        raise ValueError(f"periods must be a positive integer, got {periods!r}")
    if not (isinstance(warmup, int) and warmup >= 0):
        raise ValueError(f"warmup periods must be an integer >= 0, got {warmup!r}")
    return Schedule(
        beta=b,
        period=period or cfg.period,
        periods=periods,
        warmup=warmup,
        name="oscillation",
    )


def for_estimator(
    name: str,
    beta: float,
    cfg: Spiking,
    settle: float | None = None,
    window: float | None = None,
    periods: int = 4,
    warmup: int = 1,
    period: float | None = None,
) -> Schedule:
    """The schedule of the estimator ``name`` (one of :data:`ESTIMATORS`)."""
    if name == "one-sided":
        return one_sided(beta, cfg, settle, window)
    if name == "symmetric":
        return symmetric(beta, cfg, settle, window)
    if name == "oscillation":
        return oscillation(beta, cfg, periods, warmup, period)
    raise ValueError(f"the brian2 engine has no estimator {name!r}; expected one of {ESTIMATORS}")
