"""The Brian2 spiking engine: the model spec's energy realised by spiking neurons, continuous time.

    lowering     spec + parameters -> Brian2 NeuronGroups and Synapses (generated equations)
    neurons      neuron models (IF, LIF) and rho in Brian2's expression language
    schedules    one sample's schedule: free, one-sided, symmetric, or one oscillation
    rules        local learning rules: endpoint (rate traces) and STDP-like (spike events)
    gradcheck    the spiking estimate against the rate engine's implicit gradient
    standalone   cpp_standalone: a chunk of samples compiled once, rerun with new data and weights
    kernels      hand-written C++ of the standalone fast path (input layer, spikes, thresholder)
    engine       spikeep train with [train] engine = "brian2": online learning, chunk by chunk
    calibrate    a neuron model's measured rate transfer function against rho
    plots        raster, rate-versus-fixed-point and calibration figures

``docs/spiking.md`` explains the model and the rules.
"""

from .lowering import SpikingNetwork, build
from .schedules import Schedule

__all__ = ["SpikingNetwork", "Schedule", "build"]
