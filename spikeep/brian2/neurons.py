r"""Neuron models: how a neuron turns its state ``s`` (its synaptic current) into spikes.

Every model is Brian2 equation text for ``v`` that fires at ``v > 1``: ``if`` and ``lif`` around
``{rho}``, the activation of the spec in Brian2's expression language (:data:`RHO`); ``lif_bio``
around the state ``s`` itself (its rate function is measured, and the spec's activation fits it).
Constants the equations may use: ``r_max`` (the spec's ``rate_max``, Hz), ``tau_mem``, ``t_ref``
(``refractory``) and the step ``dt``:

``if`` (non-leaky integrate-and-fire, subtractive reset)::

    dv/dt = r_max rho(s),   v > 1  ->  v -= 1          rate = r_max rho(s)   (exactly, on average)

``lif`` (leaky, reset to 0, refractory ``t_ref``)::

    dv/dt = r_max rho(s) - v / tau_mem,   v > 1  ->  v = 0
    rate  = 1 / (t_ref + tau_mem ln(a tau_mem / (a tau_mem - 1))),   a = r_max rho(s) > 1/tau_mem

``lif_bio`` (leaky, driven by the synaptic current itself; the biological regime)::

    tau_mem dv/dt = u(s) - v,   u(s) = 1 + (u_1 - 1) clip(s, -1, 1),   v > 1  ->  v = 0, t_ref
    u_1 = 1 / (1 - (1 - dt / tau_mem)^(N - 1/2)),   N = 1 / (r_max dt) - t_ref / dt + 1
    rate = 1 / (t_ref - dt + n(s) dt),   n(s) = ceil(ln(1 - 1 / u(s)) / ln(1 - dt / tau_mem)),
           0 for s <= 0

``v`` is the membrane potential in units of the threshold above rest, ``u(s)`` the synaptic drive
in the same units: at ``s = 0`` the neuron sits at threshold (the rheobase; the bias ``b`` moves
it), and the drive saturates at ``s = +-1`` (as a conductance does near its reversal potential).
The rate is that of the Euler steps Brian2 takes: ``n(s)`` steps from reset to threshold after
the ``t_ref / dt - 1`` steps a refractory neuron is held; as ``dt -> 0`` it is the classical
``1 / (t_ref + tau_mem ln(u / (u - 1)))``. The gain ``u_1`` puts ``N - 1/2`` steps of
integration at ``s = 1``, so the interval there is exactly ``1 / r_max`` (needs
``t_ref < 1 / r_max``) and a neuron never fires faster than ``r_max``: ``rate / r_max`` is in
[0, 1]. The curve does not use the spec's ``rho``: its rate function, measured
(:mod:`spikeep.brian2.calibrate`, smoothed by the fluctuations of ``s``) and fitted, is the
activation ``lif_rate`` of :mod:`spikeep.activations`, which the rate twin uses.

The ``if`` model is the spiking twin of the hard sigmoid: the clip sits in the drive (a current that
saturates), so a neuron fires at most ``r_max`` and never below 0, and its rate divided by ``r_max``
*is* ``rho(s)``; ``rate_max * dt <= 1`` keeps it to one spike per step. The ``lif`` rate bends
away from ``rho`` (threshold, saturation at ``1 / t_ref``): :mod:`spikeep.brian2.calibrate`
measures it.

Adding a neuron model: write its :class:`NeuronModel` (equations for ``v``, threshold, reset,
refractory, and its analytic :attr:`~NeuronModel.rate` if it has one), add it to :data:`MODELS` and
its name to ``spikeep.spec.NEURONS``; ``tests/test_brian2.py`` calibrates every registered model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import activations
from ..spec import Spiking

__all__ = ["RHO", "NeuronModel", "MODELS", "rho_expression", "get", "lif_bio_drive"]

#: ``rho`` of each activation that a spiking neuron can realise (rates are never negative), in
#: Brian2 syntax with ``{s}`` for the state. The torch versions are in :mod:`spikeep.activations`.
RHO: dict[str, str] = {
    "hard_sigmoid": "clip({s}, 0, 1)",
    "hard_sigmoid_half": "clip({s} / 2, 0, 1)",
    "sigmoid4": "1 / (1 + exp(2 - 4 * {s}))",
    "holotanh": "(log(1 + exp(2 * {s})) - log(1 + exp(2 * {s} - 4))) / 4",
}


def _softplus(x: str) -> str:
    return f"(({x}) + abs({x})) / 2 + log(1 + exp(-abs({x})))"


def _lif_rate() -> str:
    p = activations.LIF_RATE
    g, k, a = p["g"], p["k"], p["a"]
    z = f"{g!r} * ({_softplus('{s} / ' + repr(g))})"
    q = f"exp(-({_softplus(f'-{k!r} * log({z})')}) / {k!r})"
    r1 = p["t_ref"] + p["tau_mem"] * math.log1p(1 / a)
    rate = f"{r1!r} / ({p['t_ref']!r} + {p['tau_mem']!r} * log(1 + 1 / ({a!r} * {q})))"
    return f"{rate} / (1 + exp(-({{s}} - ({p['c']!r})) / {p['w']!r}))"


RHO["lif_rate"] = _lif_rate()


def rho_expression(activation: str, s: str = "s") -> str:
    """``rho`` of ``activation`` as a Brian2 expression of the variable ``s``."""
    if activation not in RHO:
        raise ValueError(
            f"activation {activation!r} has no spiking rate function; expected one of {list(RHO)}"
        )
    return "(" + RHO[activation].format(s=s) + ")"


@dataclass(frozen=True)
class NeuronModel:
    """One spiking neuron model.

    Attributes:
        name: as written in the spec's ``[spiking] neuron``.
        equations: Brian2 equation lines for ``v`` with ``{rho}`` (the rate function of ``s``).
        threshold, reset: Brian2 code; the reset is completed by the learning rule's spike code.
        refractory: whether the spec's ``refractory`` applies.
        rate: ``rate(s, rho, cfg)``, the analytic firing rate (Hz) at a constant state ``s``
            whose activation is ``rho = rho(s)`` (numpy in and out); ``None`` if there is none.
    """

    name: str
    equations: str
    threshold: str
    reset: str
    refractory: bool
    rate: Callable[[np.ndarray, np.ndarray, Spiking], np.ndarray] | None = None


def _if_rate(s: np.ndarray, rho: np.ndarray, cfg: Spiking) -> np.ndarray:
    return cfg.rate_max * np.asarray(rho, dtype=float)


def _lif_rate(s: np.ndarray, rho: np.ndarray, cfg: Spiking) -> np.ndarray:
    a = cfg.rate_max * np.asarray(rho, dtype=float) * cfg.tau_mem
    out = np.zeros_like(a)
    on = a > 1
    out[on] = 1.0 / (cfg.refractory + cfg.tau_mem * np.log(a[on] / (a[on] - 1)))
    return out


def lif_bio_drive(s: np.ndarray, cfg: Spiking) -> np.ndarray:
    """``u(s) = 1 + (u_1 - 1) clip(s, -1, 1)``, the drive of ``lif_bio`` (threshold units)."""
    h = cfg.dt / cfg.tau_mem
    n = 1.0 / (cfg.rate_max * cfg.dt) - cfg.refractory / cfg.dt + 1
    if not n > 1:
        raise ValueError(
            f"lif_bio needs refractory < 1 / rate_max, got {cfg.refractory:g} s and "
            f"{cfg.rate_max:g} Hz"
        )
    u1 = 1.0 / (1.0 - (1.0 - h) ** (n - 0.5))
    return 1.0 + (u1 - 1.0) * np.clip(np.asarray(s, dtype=float), -1.0, 1.0)


def _lif_bio_rate(s: np.ndarray, rho: np.ndarray, cfg: Spiking) -> np.ndarray:
    u = lif_bio_drive(s, cfg)
    out = np.zeros_like(u)
    on = u > 1
    steps = np.ceil(np.log1p(-1.0 / u[on]) / math.log1p(-cfg.dt / cfg.tau_mem))
    out[on] = 1.0 / (cfg.refractory - cfg.dt + steps * cfg.dt)
    return out


MODELS: dict[str, NeuronModel] = {
    "if": NeuronModel(
        "if",
        equations="dv/dt = r_max * {rho} : 1",
        threshold="v > 1",
        reset="v -= 1",
        refractory=False,
        rate=_if_rate,
    ),
    "lif": NeuronModel(
        "lif",
        equations="dv/dt = r_max * {rho} - v / tau_mem : 1 (unless refractory)",
        threshold="v > 1",
        reset="v = 0",
        refractory=True,
        rate=_lif_rate,
    ),
    "lif_bio": NeuronModel(
        "lif_bio",
        equations="dv/dt = (1 + (u_1 - 1) * clip(s, -1, 1) - v) / tau_mem : 1 (unless refractory)\n"
        "u_1 = 1 / (1 - (1 - dt / tau_mem) ** (1 / (r_max * dt) - t_ref / dt + 0.5)) : 1 (shared)",
        threshold="v > 1",
        reset="v = 0",
        refractory=True,
        rate=_lif_bio_rate,
    ),
}


def get(name: str) -> NeuronModel:
    """The registered neuron model ``name``."""
    if name not in MODELS:
        raise ValueError(f"unknown neuron model {name!r}; expected one of {list(MODELS)}")
    return MODELS[name]
