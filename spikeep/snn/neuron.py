r"""The spiking neuron: snntorch's ``Leaky`` with subtractive reset, its membrane floored.

One step, in snntorch's discrete time (``decay`` is snntorch's ``beta``, threshold 1)::

    v_t   = clip(decay v_{t-1} + I_t - H(v_{t-1} - 1), 0, 2)        (H: Heaviside, H(0) = 0)
    z_t   = H(v_t - 1)                                                (the spike, 0 or 1)

``decay = 1`` is integrate-and-fire (IF), ``decay < 1`` leaky. The reset is snntorch's default
delayed subtraction: a spike at ``t`` lowers the membrane by the threshold at ``t + 1``. The clip is
spikeep's: without the floor at 0 a negative current drives the membrane to minus infinity and the
neuron never fires again once the current turns positive (a memory of every past inhibition); the
ceiling at 2 (twice the threshold) forgets excess drive the same way (a current above 1 fires every
step, and ``v`` can stay below 2 for every current in [0, 1]). Neither bound changes the rate of a
constant current (:mod:`spikeep.snn.rate`).

State is explicit (:class:`NeuronState`), never snntorch's ``init_hidden``; surrogate gradients are
disabled (EP needs no gradient through a spike).
"""

from __future__ import annotations

from typing import NamedTuple

import snntorch
from torch import Tensor

__all__ = ["NeuronState", "Neuron", "V_MAX"]

V_MAX = 2.0  # ceiling of the membrane, in units of the threshold


class NeuronState(NamedTuple):
    """The membrane potentials ``v`` of a layer, shape ``(B, *layer.shape)``, in threshold units."""

    v: Tensor


class Neuron:
    """A population of snntorch ``Leaky`` neurons (subtractive reset, threshold 1) with the
    membrane clipped to ``[0, V_MAX]``. ``decay`` in (0, 1] is the membrane's decay per step."""

    def __init__(self, decay: float = 1.0):
        if not (isinstance(decay, int | float) and not isinstance(decay, bool) and 0 < decay <= 1):
            raise ValueError(
                f"decay must be a number in (0, 1] (1: integrate-and-fire), got {decay!r}"
            )
        self.decay = float(decay)
        self._leaky = snntorch.Leaky(
            beta=self.decay, threshold=1.0, reset_mechanism="subtract", surrogate_disable=True
        )
        # the decay snntorch multiplies by (its beta is a float32 buffer): the fused step's
        self.beta = float(self._leaky.beta.clamp(0, 1))

    def step(self, current: Tensor, state: NeuronState) -> tuple[Tensor, NeuronState]:
        """``(z, state)``: the spikes (0/1, shape and dtype of ``current``) and the new state,
        after one step with input ``current`` (threshold units per step)."""
        z, v = self._leaky(current, state.v)
        return z.to(current.dtype), NeuronState(v.clamp_(0.0, V_MAX))

    def __repr__(self):
        return f"Neuron(decay={self.decay})"
