"""The snntorch engine's settings: one frozen dataclass, times in steps (snntorch's discrete time).

Every field is validated on construction; a bad value raises a ValueError naming the field, the
value and what was expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = ["SNNConfig", "INPUTS"]

INPUTS = ("current", "rate")


def _fail(key, value, expected):
    raise ValueError(f"snntorch engine: {key} must be {expected}, got {value!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class SNNConfig:
    """Settings of a spiking run.

    Attributes:
        decay: membrane decay per step, in (0, 1]; 1 is integrate-and-fire, whose rate is the
            hard sigmoid (:mod:`spikeep.snn.rate`).
        tau: time constant of the spike traces, in steps (> 0): ``r <- r + (z - r) / tau``. The
            traces are the rate estimates that drive the other layers (the synaptic current).
        settle: steps of each phase before its rates are counted (>= 0).
        window: steps over which each phase's rates are counted (>= 1): the rate estimate is the
            spike count divided by ``window``.
        input: ``"current"`` (``x`` drives layer 1 as the constant current ``c_1(W_1, x)``) or
            ``"rate"`` (``x`` coded as Bernoulli spike trains by ``snntorch.spikegen.rate``,
            filtered by the same trace).
        seed: seed of the input spike trains (``input = "rate"``).
        nudged_settle, nudged_window: ``settle`` and ``window`` of the nudged phases of EP,
            which start from the free phase's final state (membranes and traces carried over);
            None: ``settle`` and ``window``. With 0 the nudged phases count from their first
            step (docs/snn.md, "Speed": as close to the converged estimate in fewer steps).
    """

    decay: float = 1.0
    tau: float = 10.0
    settle: int = 200
    window: int = 800
    input: str = "current"
    seed: int = 0
    nudged_settle: int | None = None
    nudged_window: int | None = None

    def __post_init__(self):
        d = self.decay
        if not (isinstance(d, int | float) and not isinstance(d, bool) and 0 < d <= 1):
            _fail("decay", d, "a number in (0, 1] (1: integrate-and-fire)")
        t = self.tau
        if not (isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)):
            _fail("tau", t, "a finite number of steps >= 1")
        if t < 1:
            _fail("tau", t, "a finite number of steps >= 1")
        if not (_is_int(self.settle) and self.settle >= 0):
            _fail("settle", self.settle, "an integer number of steps >= 0")
        if not (_is_int(self.window) and self.window >= 1):
            _fail("window", self.window, "an integer number of steps >= 1")
        if self.input not in INPUTS:
            _fail("input", self.input, f"one of {list(INPUTS)}")
        if not (_is_int(self.seed) and self.seed >= 0):
            _fail("seed", self.seed, "a non-negative integer")
        n = self.nudged_settle
        if not (n is None or (_is_int(n) and n >= 0)):
            _fail("nudged_settle", n, "an integer number of steps >= 0, or None (settle)")
        n = self.nudged_window
        if not (n is None or (_is_int(n) and n >= 1)):
            _fail("nudged_window", n, "an integer number of steps >= 1, or None (window)")

    @property
    def steps(self) -> int:
        """Steps per phase, ``settle + window``."""
        return self.settle + self.window

    @property
    def nudged(self) -> SNNConfig:
        """The settings of the nudged phases: ``nudged_settle`` and ``nudged_window`` as their
        ``settle`` and ``window`` (this config itself when neither is set)."""
        if self.nudged_settle is None and self.nudged_window is None:
            return self
        settle = self.settle if self.nudged_settle is None else self.nudged_settle
        window = self.window if self.nudged_window is None else self.nudged_window
        return replace(self, settle=settle, window=window, nudged_settle=None, nudged_window=None)
