"""A neuron model's rate transfer function, measured, against ``rho``.

:func:`transfer` clamps the state ``s`` of a row of neurons at ``levels`` (one neuron per level:
``s`` held constant, no synapses), simulates ``duration`` seconds and returns each neuron's rate
divided by ``r_max``: the measured ``rho``. For ``neuron = "if"`` it equals ``rho(s)`` up to one
spike per window; for ``"lif"`` it bends away (a threshold at ``r_max rho(s) tau_mem = 1``, a
ceiling at ``1 / refractory``) and matches the analytic rate of
:attr:`spikeep.brian2.neurons.NeuronModel.rate`. The rate engine can take the measured curve in
place of ``rho`` (``numpy.interp`` over ``levels``) when the two must share one energy.

``noise``: in a network ``s`` is a filtered spike train, and fluctuates around its mean; with
``noise = sigma`` the clamped level becomes the mean of an Ornstein-Uhlenbeck process of standard
deviation ``sigma`` and correlation time ``tau_syn`` (the diffusion approximation of the synaptic
current), and the measured curve is the rate averaged over those fluctuations: the smoothed rate
function that ``lif_bio``'s activation ``lif_rate`` fits (docs/spiking.md, "A biological regime").
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
    spec: ModelSpec,
    levels=None,
    duration: float = 1.0,
    target: str = "numpy",
    noise: float = 0.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Measure the transfer function of ``spec``'s neuron model.

    Args:
        spec: a model spec with a ``[spiking]`` section (its neuron model, activation, times).
        levels: the clamped states ``s``, shape ``(n,)`` (default 101 levels over [-0.25, 1.25]).
        duration: seconds simulated.
        target: Brian2 runtime code generation target.
        noise: standard deviation of the fluctuations of ``s`` around each level (an
            Ornstein-Uhlenbeck process with correlation time ``tau_syn``); 0: ``s`` held constant.
        seed: Brian2's random seed (with ``noise``).

    Returns:
        ``s`` (the levels), ``measured`` (rate / ``r_max``), ``rho`` (the activation),
        ``predicted`` (the model's analytic rate / ``r_max`` at the constant level, without
        ``noise``), all shape ``(n,)``.
    """
    cfg = spec.spiking
    if cfg is None:
        raise ValueError(f"{spec.source}: calibration needs a [spiking] section")
    s = np.linspace(-0.25, 1.25, 101) if levels is None else np.asarray(levels, dtype=float)
    model = neurons.get(cfg.neuron)
    b2.prefs.codegen.target = target
    if noise > 0:
        eqs = "ds/dt = (level - s) / tau_syn + sigma * sqrt(2 / tau_syn) * xi : 1\nlevel : 1\n"
    else:
        eqs = "s : 1\n"
    eqs += model.equations.format(rho=neurons.rho_expression(spec.activation))
    ns = {
        "r_max": cfg.rate_max * b2.Hz,
        "tau_mem": cfg.tau_mem * b2.second,
        "t_ref": cfg.refractory * b2.second,
        "tau_syn": cfg.tau_syn * b2.second,
        "sigma": float(noise),
    }
    b2.seed(seed)
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
    if noise > 0:
        group.level = s
    spikes = b2.SpikeMonitor(group, record=False)
    b2.Network(group, spikes).run(duration * b2.second, namespace={})
    measured = np.asarray(spikes.count[:], dtype=float) / (cfg.rate_max * duration)
    rho = activations.get(spec.activation).rho(torch.from_numpy(s)).numpy()
    predicted = model.rate(s, rho, cfg) / cfg.rate_max if model.rate else None
    return {"s": s, "measured": measured, "rho": rho, "predicted": predicted}
