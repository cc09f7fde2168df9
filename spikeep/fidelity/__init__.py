"""Gradient fidelity studies: every engine's and estimator's gradient against the exact one.

``spikeep fidelity PROTOCOL --out DIR`` (:mod:`spikeep.cli`) runs a study::

    protocol   spikeep.fidelity.protocol   the TOML format: models, engines, estimators, sweeps
    points     spikeep.fidelity.points     the estimates a protocol asks for (or why not)
    reference  spikeep.fidelity.reference  the exact gradient once per model, and its self-check
    sweep      spikeep.fidelity.sweep      one estimate per point, in parallel, failures recorded
    report     spikeep.fidelity.report     results.csv, results.json, figures
    study      spikeep.fidelity.study      all of it, in order
"""

from .protocol import FidelityProtocol, ProtocolError, load
from .study import study

__all__ = ["FidelityProtocol", "ProtocolError", "load", "study"]
