"""The points of a fidelity study: one gradient estimate each, or the reason it does not apply.

:func:`expand` turns a protocol into :class:`Point` s: for every model, every engine the model
runs on, every estimator (and, on the spiking engines, every learning rule), the *base* point
(the engine section's values) and, for every sweep axis that concerns the estimator, one point
per listed value other than the base value, with every other key at its base value.

A combination that cannot exist is one point with ``na`` set to the reason, run nowhere and
recorded with ``status = "n/a"``: the holomorphic estimator (or the complex oscillation) on a
network that is not holomorphic, snntorch's STDP rule (snntorch has no STDP rule: its estimates
are products of windowed spike counts, the endpoint rule), the snntorch engine on an activation
no integrate-and-fire neuron has, the Brian2 engine on a spec without a ``[spiking]`` section
(Brian2 is dense-only).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .. import engine as engines
from ..energy import Network
from .protocol import SWEEPS, FidelityProtocol

__all__ = ["Point", "expand", "concerns", "not_applicable"]

_PHASED_AXES = {"nudged_steps", "settle", "window"}
_OSCILLATION_AXES = {"steps_per_period", "period", "periods"}


@dataclass(frozen=True)
class Point:
    """One estimate to make.

    Attributes:
        model: index of the model in the protocol's ``models``.
        engine: ``rate``, ``snntorch`` or ``brian2``.
        estimator: the estimator's name in that engine.
        rule: the spiking engines' learning rule (``endpoint``, ``stdp``); None for ``rate``.
        settings: the engine's keys at this point, as ``(key, value)`` pairs.
        sweep: ``"base"``, or the axis this point varies.
        na: why the combination does not apply (None: it does).
    """

    model: int
    engine: str
    estimator: str
    rule: str | None
    settings: tuple[tuple[str, Any], ...]
    sweep: str = "base"
    na: str | None = None

    @property
    def label(self) -> str:
        """``engine estimator`` plus ``stdp`` for the STDP rule: one line of a figure."""
        return f"{self.engine} {self.estimator}" + (" stdp" if self.rule == "stdp" else "")

    @property
    def value(self):
        """The swept axis's value (None at the base point)."""
        return None if self.sweep == "base" else dict(self.settings)[self.sweep]


def concerns(axis: str, estimator: str) -> bool:
    """Whether sweeping ``axis`` changes ``estimator``'s estimate."""
    if axis == "points":
        return estimator == "holomorphic"
    if axis in _OSCILLATION_AXES:
        return estimator == "oscillation"
    if axis in _PHASED_AXES:
        return estimator != "oscillation"
    return True


def not_applicable(net: Network, engine: str, estimator: str, rule, settings: dict) -> str | None:
    """Why ``estimator`` (with ``rule``) cannot run on ``net`` in ``engine``; None if it can."""
    return engines.get(engine).not_applicable(net, estimator, rule, settings)


def expand(protocol: FidelityProtocol, nets: list[Network]) -> list[Point]:
    """Every point of ``protocol`` (module docstring), models in order; ``nets[i]`` is model i."""
    out = []
    for m, (model, net) in enumerate(zip(protocol.models, nets, strict=True)):
        for engine in model.engines:
            section = protocol.engine(engine)
            base = {
                f.name: getattr(section, f.name)
                for f in fields(section)
                if f.name not in ("estimators", "rules", "sweep")
            }
            rules = getattr(section, "rules", (None,))
            for estimator in section.estimators:
                for rule in rules:
                    na = not_applicable(net, engine, estimator, rule, base)
                    point = Point(m, engine, estimator, rule, tuple(base.items()), na=na)
                    out.append(point)
                    if na:
                        continue
                    for axis in SWEEPS[engine]:
                        if axis not in section.sweep or not concerns(axis, estimator):
                            continue
                        for value in section.sweep[axis]:
                            if value == base[axis]:
                                continue
                            settings = tuple({**base, axis: value}.items())
                            out.append(Point(m, engine, estimator, rule, settings, axis))
    return out
