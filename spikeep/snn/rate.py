r"""The rate approximation: the firing rate of :class:`spikeep.snn.neuron.Neuron` under a constant
current ``I`` (threshold units per step), in spikes per step.

Integrate-and-fire (``decay = 1``). The membrane is bounded (clipped to [0, 2]), so the resets
balance the input: over ``T`` steps the spike count is ``sum_t I - (v_T - v_0)``, and the rate is
exactly

    rho(I) = clip(I, 0, 1)                                          (the hard sigmoid)

to within ``2 / T``: spikeep's ``hard_sigmoid`` activation, so the spiking and rate engines share
one energy. ``hard_sigmoid_half`` is the same neuron driven by ``I = s / 2``.

Leaky (``decay = b < 1``, leak ``l = 1 - b``). Below ``I = l`` the membrane settles under the
threshold and never fires. Above, with snntorch's delayed reset the step after a spike starts from
``b v* + I - 1 ~ I - l`` (``v* ~ 1`` the crossing value), as if the membrane had restarted from
``-l^2 / b``; it then rises as ``I / l + b^k (-l^2 / b - I / l)`` and reaches 1 after

    n(I) = ln((I - l) / (I + l^2 / b)) / ln(b)     steps,     rho_b(I) = min(1, 1 / n(I)),

which tends to ``clip(I, 0, 1)`` as ``b -> 1``. The measured rate is a staircase around it (a
discrete-time neuron's period is a whole number of steps and the reset's remainder carries over):
measured over 4000 steps on a grid of 401 currents in [-0.5, 1.5], ``max |measured - rho_b|`` is
0.0049 (b = 0.99), 0.023 (0.95), 0.049 (0.9) and 0.10 (0.8), about ``(1 - b) / 2``
(``tests/test_snn.py`` checks this bound; :func:`measure` gives the staircase itself). ``rho_b`` is
not registered in :mod:`spikeep.activations`: the spiking fixed point differs from ``rho_b``'s by
the staircase, so no rate energy reproduces a leaky spiking network exactly. It is kept here
(:func:`leaky_activation` builds an unregistered :class:`~spikeep.activations.Activation`) and the
spiking engine's gradient checks use ``decay = 1``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..activations import Activation
from .neuron import Neuron, NeuronState

__all__ = ["transfer", "dtransfer", "leaky_activation", "measure"]


def _check_decay(decay) -> float:
    if not (isinstance(decay, int | float) and not isinstance(decay, bool) and 0 < decay <= 1):
        raise ValueError(f"decay must be a number in (0, 1] (1: integrate-and-fire), got {decay!r}")
    return float(decay)


def transfer(current: Tensor, decay: float = 1.0) -> Tensor:
    """``rho_b(I)``: spikes per step of a neuron with membrane decay ``decay`` under the constant
    current ``current`` (any shape, threshold units per step)."""
    b = _check_decay(decay)
    if b == 1.0:
        return current.clamp(0.0, 1.0)
    leak = 1.0 - b
    above = current > leak
    safe = torch.where(above, current, torch.ones_like(current))  # keeps the log finite
    n = _steps_to_threshold(safe, b)
    return torch.where(above, (1.0 / n).clamp(max=1.0), torch.zeros_like(current))


def _steps_to_threshold(current: Tensor, b: float) -> Tensor:
    """``n(I)`` of the module docstring, for ``I > 1 - b``."""
    leak = 1.0 - b
    return torch.log((current - leak) / (current + leak * leak / b)) / math.log(b)


def dtransfer(current: Tensor, decay: float = 1.0) -> Tensor:
    """``rho_b'(I)``, closed form (0 where the rate is 0 or saturated at 1)."""
    b = _check_decay(decay)
    if b == 1.0:
        return ((current >= 0) & (current <= 1)).to(current.dtype)
    leak = 1.0 - b
    above = current > leak
    safe = torch.where(above, current, torch.ones_like(current))
    n = _steps_to_threshold(safe, b)
    dn = (1.0 / (safe - leak) - 1.0 / (safe + leak * leak / b)) / math.log(b)
    d = -dn / (n * n)  # d(1/n)/dI
    return torch.where(above & (n >= 1.0), d, torch.zeros_like(current))


def leaky_activation(decay: float) -> Activation:
    """``rho_b`` as an (unregistered) :class:`~spikeep.activations.Activation` named
    ``leaky_<decay>``; ``decay = 1`` gives a copy of ``hard_sigmoid``'s maths."""
    b = _check_decay(decay)
    return Activation(
        f"leaky_{b:g}",
        rho=lambda s: transfer(s, b),
        drho=lambda s: dtransfer(s, b),
        holomorphic=False,
        box=(0.0, 1.0) if b == 1.0 else None,
        slope=1.0 if b == 1.0 else None,
    )


@torch.no_grad()
def measure(current: Tensor, decay: float = 1.0, steps: int = 2000, settle: int = 200) -> Tensor:
    """The measured rate: spikes per step of :class:`~spikeep.snn.neuron.Neuron` (``decay``) under
    the constant ``current`` (any shape), counted over ``steps`` steps after ``settle`` steps."""
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (isinstance(settle, int) and settle >= 0):
        raise ValueError(f"settle must be an integer >= 0, got {settle!r}")
    neuron = Neuron(decay)
    state = NeuronState(torch.zeros_like(current))
    count = torch.zeros_like(current)
    for t in range(settle + steps):
        z, state = neuron.step(current, state)
        if t >= settle:
            count += z
    return count / steps
