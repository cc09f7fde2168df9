"""A neuron model's rate transfer function, measured, against ``rho``.

:func:`transfer` clamps the state ``s`` of a row of neurons at ``levels`` (one neuron per level:
``s`` held constant, no synapses), simulates ``duration`` seconds and returns each neuron's rate
divided by ``r_max``: the measured ``rho``. For ``neuron = "if"`` it equals ``rho(s)`` up to one
spike per window; for ``"lif"`` it bends away (a threshold at ``r_max rho(s) tau_mem = 1``, a
ceiling at ``1 / refractory``) and matches the analytic rate of
:attr:`spikeep.brian2.neurons.NeuronModel.rate`. The rate engine can take the measured curve in
place of ``rho`` (``numpy.interp`` over ``levels``) when the two must share one energy.
"""

from __future__ import annotations

import brian2 as b2
import numpy as np
import torch

from .. import activations
from ..spec import ModelSpec
from . import neurons

__all__ = ["transfer"]


def transfer(
    spec: ModelSpec, levels=None, duration: float = 1.0, target: str = "numpy"
) -> dict[str, np.ndarray]:
    """Measure the transfer function of ``spec``'s neuron model.

    Args:
        spec: a model spec with a ``[spiking]`` section (its neuron model, activation, times).
        levels: the clamped states ``s``, shape ``(n,)`` (default 101 levels over [-0.25, 1.25]).
        duration: seconds simulated.
        target: Brian2 runtime code generation target.

    Returns:
        ``s`` (the levels), ``measured`` (rate / ``r_max``), ``rho`` (the activation),
        ``predicted`` (the model's analytic rate / ``r_max``), all shape ``(n,)``.
    """
    cfg = spec.spiking
    if cfg is None:
        raise ValueError(f"{spec.source}: calibration needs a [spiking] section")
    s = np.linspace(-0.25, 1.25, 101) if levels is None else np.asarray(levels, dtype=float)
    model = neurons.get(cfg.neuron)
    b2.prefs.codegen.target = target
    eqs = "s : 1\n" + model.equations.format(rho=neurons.rho_expression(spec.activation))
    ns = {
        "r_max": cfg.rate_max * b2.Hz,
        "tau_mem": cfg.tau_mem * b2.second,
    }
    group = b2.NeuronGroup(
        s.size,
        eqs,
        threshold=model.threshold,
        reset=model.reset,
        refractory=cfg.refractory * b2.second if model.refractory else False,
        method="euler",
        dt=cfg.dt * b2.second,
        namespace=ns,
    )
    group.s = s
    spikes = b2.SpikeMonitor(group, record=False)
    b2.Network(group, spikes).run(duration * b2.second, namespace={})
    measured = np.asarray(spikes.count[:], dtype=float) / (cfg.rate_max * duration)
    rho = activations.get(spec.activation).rho(torch.from_numpy(s)).numpy()
    predicted = model.rate(cfg.rate_max * rho, cfg) / cfg.rate_max if model.rate else None
    return {"s": s, "measured": measured, "rho": rho, "predicted": predicted}
