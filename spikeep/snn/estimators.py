r"""EP gradient estimates from spiking rates: the rate engine's update, fed the spike counts.

With the phases of :mod:`spikeep.snn.phases` (``r^0`` the free phase's rates, ``r^beta`` a nudged
phase's, each started from the free phase's final state) the estimates of ``+dL/dtheta`` are
:meth:`spikeep.energy.Network.dF_dtheta` of the weighted points (the same formulas as
:mod:`spikeep.estimators`):

The free phase runs ``config``'s ``settle + window`` steps, the nudged ones ``config.nudged``'s
(``nudged_settle``, ``nudged_window``).

- ``one-sided`` (bias O(beta)): ``[(r^beta, beta, 1/beta), (r^0, 0, -1/beta)]``;
- ``symmetric`` (O(beta^2)): ``[(r^beta, beta, 1/(2 beta)), (r^-beta, -beta, -1/(2 beta))]``,
  both nudged phases from the free state (explicit state, passed back in);
- ``oscillation`` (O(beta^2), real): no phases. The teaching current is
  ``|beta| cos(2 pi t / K) (y - r_out)`` (``K`` steps per period); after ``warmup`` periods the
  traces ``r_t`` of ``periods`` periods are demodulated with
  :class:`spikeep.oscillation.Demodulator`: ``(2 / (n |beta|)) sum_t dF/dtheta(r_t, beta_t)
  cos(2 pi t / K)``, ``n = periods K``.

The spike counts' error is at most about ``1 / window`` per unit (:mod:`spikeep.snn.rate`), and EP
divides a difference of rates by ``beta``: the estimate's noise falls as ``1 / (beta window)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from torch import Tensor

from ..oscillation import Demodulator, teaching_signal
from .config import SNNConfig
from .phases import Phase, init_state, phase, simulate

__all__ = ["SNNEstimate", "one_sided", "symmetric", "oscillation", "ESTIMATORS", "BIAS_ORDER"]

BIAS_ORDER = {"one-sided": 1, "symmetric": 2, "oscillation": 2}
_FOLD = 16  # oscillation samples folded into one dF/dtheta call


class SNNEstimate(NamedTuple):
    """A spiking estimate of ``+dL/dtheta`` (``grads``, shapes of the parameters), the free phase
    it started from (``None`` for an oscillation started from zeros) and the spikes per sample
    of the whole run."""

    grads: dict[str, Tensor]
    free: Phase | None
    spikes: float


def _check_beta(beta) -> float:
    if not (
        isinstance(beta, int | float)
        and not isinstance(beta, bool)
        and math.isfinite(beta)
        and beta != 0
    ):
        raise ValueError(f"beta must be a finite non-zero real number, got {beta!r}")
    return float(beta)


def one_sided(net, params, x, y, beta: float, config: SNNConfig, generator=None) -> SNNEstimate:
    """Free phase, then a phase at ``+beta`` from the free state."""
    beta = _check_beta(beta)
    free = phase(net, params, x, config=config, generator=generator)
    nudged = phase(net, params, x, y, beta, free.state, config.nudged, generator)
    points = [(nudged.rates, beta, 1 / beta), (free.rates, 0.0, -1 / beta)]
    return SNNEstimate(net.dF_dtheta(params, x, y, points), free, free.spikes + nudged.spikes)


def symmetric(net, params, x, y, beta: float, config: SNNConfig, generator=None) -> SNNEstimate:
    """Free phase, then phases at ``+beta`` and ``-beta``, each from the free state."""
    b = _check_beta(beta)
    free = phase(net, params, x, config=config, generator=generator)
    plus = phase(net, params, x, y, b, free.state, config.nudged, generator)
    minus = phase(net, params, x, y, -b, free.state, config.nudged, generator)
    points = [(plus.rates, b, 1 / (2 * b)), (minus.rates, -b, -1 / (2 * b))]
    spikes = free.spikes + plus.spikes + minus.spikes
    return SNNEstimate(net.dF_dtheta(params, x, y, points), free, spikes)


def oscillation(
    net,
    params,
    x,
    y,
    beta: float,
    config: SNNConfig,
    generator=None,
    steps_per_period: int = 1000,
    periods: int = 2,
    warmup: int = 1,
    from_free: bool = False,
) -> SNNEstimate:
    """The cosine teaching current, ``warmup + periods`` periods of ``steps_per_period`` steps
    each, the last ``periods`` demodulated; starts from zeros, or after a free phase of
    ``config.steps`` steps (``from_free``)."""
    a = abs(_check_beta(beta))
    K = steps_per_period
    if not (isinstance(K, int) and not isinstance(K, bool) and K >= 3):
        raise ValueError(f"steps per period must be an integer >= 3, got {K!r}")
    if not (isinstance(periods, int) and not isinstance(periods, bool) and periods >= 1):
        raise ValueError(f"periods must be a positive integer, got {periods!r}")
    if not (isinstance(warmup, int) and not isinstance(warmup, bool) and warmup >= 0):
        raise ValueError(f"warmup periods must be an integer >= 0, got {warmup!r}")
    free = phase(net, params, x, config=config, generator=generator) if from_free else None
    state = free.state if free else init_state(net, x, config)
    demod = Demodulator()
    fold: list = []
    start = warmup * K

    def observe(t, r, beta_t):
        if t < start:
            return
        phi, _ = teaching_signal(a, K, t, real=True)
        fold.append((r, beta_t, 2 * demod.reference(phi).real / a))
        if len(fold) == _FOLD:
            demod.add_folded(net.dF_dtheta(params, x, y, fold), len(fold))
            fold.clear()

    _, _, spikes = simulate(
        net,
        params,
        x,
        y,
        state,
        (warmup + periods) * K,
        lambda t: teaching_signal(a, K, t, real=True)[1],
        config,
        generator,
        observe=observe,
    )
    if fold:
        demod.add_folded(net.dF_dtheta(params, x, y, fold), len(fold))
    total = float(spikes) + (free.spikes if free else 0.0)
    return SNNEstimate(demod.coefficient(), free, total)


ESTIMATORS = {"one-sided": one_sided, "symmetric": symmetric, "oscillation": oscillation}


def estimate(name: str, net, params, x, y, beta, config, generator=None, **options):
    """The estimator ``name`` (a key of :data:`ESTIMATORS`); ``options`` go to ``oscillation``
    only (``steps_per_period``, ``periods``, ``warmup``, ``from_free``)."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown snntorch estimator {name!r}; expected one of {list(ESTIMATORS)}")
    if name == "oscillation":
        return oscillation(net, params, x, y, beta, config, generator, **options)
    return ESTIMATORS[name](net, params, x, y, beta, config, generator)
