"""spikeep: Equilibrium Propagation in spiking and rate-based networks.

The public names, each from the module of its concept (see ``docs/conventions.md``)::

    load_spec, ModelSpec, SpecError   spikeep.spec        model specs from TOML
    Network                           spikeep.energy      the energy, Phi and their derivatives
    relax, Relaxed, DivergenceError   spikeep.dynamics    relaxation phases
    estimators                        spikeep.estimators  EP gradient estimators (one interface)
    reference                         spikeep.reference   implicit and BPTT gradients
    gdu                               spikeep.gdu         step-by-step EP versus BPTT
    gradcheck                         spikeep.gradcheck   estimator-versus-reference comparison
"""

from . import activations, estimators, reference
from .dynamics import DivergenceError, Relaxed, relax
from .energy import Network
from .gdu import gdu
from .gradcheck import gradcheck
from .spec import ModelSpec, SpecError
from .spec import load as load_spec

__version__ = "0.1.0"

__all__ = [
    "activations",
    "estimators",
    "reference",
    "DivergenceError",
    "Relaxed",
    "relax",
    "Network",
    "gdu",
    "gradcheck",
    "ModelSpec",
    "SpecError",
    "load_spec",
    "__version__",
]
