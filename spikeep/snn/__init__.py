"""The snntorch spiking engine: the model spec's energy realised by snntorch neurons, discrete time,
batched in torch (dense and conv specs, CPU or GPU).

    neuron       snntorch ``Leaky``, subtractive reset, membrane clipped to [0, 2], explicit state
    rate         the rate approximation: IF fires at ``clip(I, 0, 1)`` per step, leaky at ``rho_b``
    config       :class:`SNNConfig`: decay, trace time constant, settle and window (steps), input
    phases       spiking phases: currents ``dPhi/dr`` of the traces (the rate engine's closed form)
    estimators   one-sided, symmetric and oscillation EP estimates from the spike rates
    gradcheck    the spiking estimate against the rate engine's implicit gradient
    export       NIR graphs of dense spiking networks, and back (optional extra ``nir``)
    engine       the engine for ``spikeep train`` (``[train] engine = "snntorch"``)

``docs/snn.md`` explains the engine and the measured figures.
"""

from .config import SNNConfig
from .neuron import Neuron, NeuronState
from .phases import Phase, SNNState, phase, simulate

__all__ = ["SNNConfig", "Neuron", "NeuronState", "Phase", "SNNState", "phase", "simulate"]
