r"""Neuron models: how a neuron turns its state ``s`` (its synaptic current) into spikes.

Every model is written as Brian2 equation text around ``{rho}``, the activation of the spec in
Brian2's expression language (:data:`RHO`), and fires at ``v > 1``. With ``r_max`` the spec's
``rate_max`` (Hz):

``if`` (non-leaky integrate-and-fire, subtractive reset)::

    dv/dt = r_max rho(s),   v > 1  ->  v -= 1          rate = r_max rho(s)   (exactly, on average)

``lif`` (leaky, reset to 0, refractory ``t_ref``)::

    dv/dt = r_max rho(s) - v / tau_mem,   v > 1  ->  v = 0
    rate  = 1 / (t_ref + tau_mem ln(a tau_mem / (a tau_mem - 1))),   a = r_max rho(s) > 1/tau_mem

The ``if`` model is the spiking twin of the hard sigmoid: the clip sits in the drive (a current that
saturates), so a neuron fires at most ``r_max`` and never below 0, and its rate divided by ``r_max``
*is* ``rho(s)``; ``rate_max * dt <= 1`` keeps it to one spike per step. The ``lif`` rate bends
away from ``rho`` (threshold, saturation at ``1 / t_ref``): :mod:`spikeep.brian2.calibrate`
measures it.

Adding a neuron model: write its :class:`NeuronModel` (equations with ``{rho}``, threshold, reset,
refractory, and its analytic :attr:`~NeuronModel.rate` if it has one), add it to :data:`MODELS` and
its name to ``spikeep.spec.NEURONS``; ``tests/test_brian2.py`` calibrates every registered model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..spec import Spiking

__all__ = ["RHO", "NeuronModel", "MODELS", "rho_expression", "get"]

#: ``rho`` of each activation that a spiking neuron can realise (rates are never negative), in
#: Brian2 syntax with ``{s}`` for the state. The torch versions are in :mod:`spikeep.activations`.
RHO: dict[str, str] = {
    "hard_sigmoid": "clip({s}, 0, 1)",
    "hard_sigmoid_half": "clip({s} / 2, 0, 1)",
    "sigmoid4": "1 / (1 + exp(2 - 4 * {s}))",
    "holotanh": "(log(1 + exp(2 * {s})) - log(1 + exp(2 * {s} - 4))) / 4",
}


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
        rate: ``rate(drive, cfg)``, the analytic firing rate (Hz) for a constant drive
            ``r_max rho(s)`` (Hz), numpy in and out; ``None`` if there is none.
    """

    name: str
    equations: str
    threshold: str
    reset: str
    refractory: bool
    rate: Callable[[np.ndarray, Spiking], np.ndarray] | None = None


def _if_rate(drive: np.ndarray, cfg: Spiking) -> np.ndarray:
    return np.asarray(drive, dtype=float)


def _lif_rate(drive: np.ndarray, cfg: Spiking) -> np.ndarray:
    a = np.asarray(drive, dtype=float) * cfg.tau_mem
    out = np.zeros_like(a)
    on = a > 1
    out[on] = 1.0 / (cfg.refractory + cfg.tau_mem * np.log(a[on] / (a[on] - 1)))
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
}


def get(name: str) -> NeuronModel:
    """The registered neuron model ``name``."""
    if name not in MODELS:
        raise ValueError(f"unknown neuron model {name!r}; expected one of {list(MODELS)}")
    return MODELS[name]
