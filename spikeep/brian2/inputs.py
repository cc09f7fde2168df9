r"""Frozen Poisson input: one realisation of the input spike trains, replayed in every phase.

Under ``[spiking] input = "poisson"`` each input neuron fires with probability ``x r_max dt`` per
step from a fresh random stream, so the free, ``+beta`` and ``-beta`` phases of a sample see
different spike trains: the difference of the hidden rates between the nudged windows, which is
the EP estimate, carries the difference of two independent input noises. At 200 Hz this noise
swamps the estimate (``docs/spiking.md``, "A biological regime": cosine of the spiking ``W_1``
estimate with the exact gradient 0.15 on MNIST images, 0.66 with the same spikes in every phase).

``input = "poisson_frozen"`` draws the uniform numbers once: a table ``u`` of ``L / dt + 1`` rows
(one per step of a phase of ``L`` seconds, the last row a copy of the first) and one column per
input neuron, from ``numpy.random.default_rng(seed)``. Input neuron ``j`` fires at step ``t`` when

    u[(t mod L) / dt, j] < x_j r_max dt

so each input is a Poisson (Bernoulli per step) spike train at ``r_max x_j`` within a phase, and
every phase of every sample replays the same realisation (common random numbers: only the
teaching current differs between the nudged phases). ``L`` is a phased schedule's phase
(``settle + window``; its phases must be equally long) or an oscillating schedule's period. The
first rows do not depend on ``L`` (the table is drawn row by row), so a test pass with another
phase length replays the beginning of the same realisation. The wrapped last row makes the step
that ``t mod L`` rounds to either end of the phase read the same number.
"""

from __future__ import annotations

import brian2 as b2
import numpy as np

from ..spec import Spiking
from .schedules import Schedule

__all__ = ["THRESHOLD", "replay_length", "frozen_table", "frozen_poisson"]

#: The input neurons' threshold condition under ``input = "poisson_frozen"``.
THRESHOLD = "u_t(t % t_replay, i % n_input) < x * r_max * dt"


def replay_length(schedule: Schedule) -> float:
    """``L`` (s): the phase of a phased schedule, the period of an oscillating one."""
    if schedule.oscillating:
        return schedule.period
    lengths = {round(p.settle + p.window, 12) for p in schedule.phases}
    if len(lengths) != 1:
        raise ValueError(
            f"input 'poisson_frozen' replays one phase's spikes; the phases of {schedule.name!r} "
            f"last {sorted(lengths)} s"
        )
    return lengths.pop()


def frozen_table(cfg: Spiking, schedule: Schedule, n: int, seed: int) -> np.ndarray:
    """The table ``u`` for ``n`` input neurons, shape ``(L / dt + 1, n)`` (module docstring)."""
    steps = round(replay_length(schedule) / cfg.dt)
    u = np.random.default_rng(seed).random((steps + 1, n))
    u[-1] = u[0]
    return u


def frozen_poisson(cfg: Spiking, schedule: Schedule, n: int, seed: int) -> dict:
    """The namespace entries of :data:`THRESHOLD` for ``n`` input neurons: the table ``u_t``
    (a 2-D ``TimedArray``), ``t_replay`` (``L``) and ``n_input``."""
    return {
        "u_t": b2.TimedArray(
            frozen_table(cfg, schedule, n, seed), dt=cfg.dt * b2.second, name="u_t"
        ),
        "t_replay": replay_length(schedule) * b2.second,
        "n_input": n,
    }
