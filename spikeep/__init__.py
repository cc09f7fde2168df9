"""spikeep: Equilibrium Propagation in spiking and rate-based networks."""

__version__ = "0.1.0"
