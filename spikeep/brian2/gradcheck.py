"""The spiking EP estimate against the rate engine's exact gradient of the same parameters.

:func:`gradcheck` lowers a ``[spiking]`` model with the rate engine's parameters (``init_params``
with ``seed``), runs one sample of the estimator's schedule on ``batch`` copies of the network (one
random input each, :func:`spikeep.gradcheck.random_batch`), reads the learning rule's in-simulation
estimate (``eta = 0``: nothing moves), and compares it with
:func:`spikeep.reference.implicit_gradient` in float64. It returns the dict of
:func:`spikeep.gradcheck.gradcheck` (``model, estimator, beta, reference, cosine, rel_error,
per_param, ...``) with the engine's own keys: ``engine``, ``rule``, ``settle``, ``window``,
``period``, ``biological_s`` (simulated seconds per sample), ``spikes`` (per sample, all layers),
``wall_s``, ``target``, and ``rate_error`` (max over units of the free-phase rates' distance from
the rate engine's fixed point, phased estimators only).
"""

from __future__ import annotations

import time

import brian2 as b2
import numpy as np

from .. import spec
from ..energy import Network
from ..gradcheck import Problem, spiking_record
from ..gradcheck import problem as make_problem
from . import schedules
from .lowering import build

__all__ = ["gradcheck", "BIAS_ORDER"]

BIAS_ORDER = {"one-sided": 1, "symmetric": 2, "oscillation": 2}


def gradcheck(
    model: str | spec.ModelSpec,
    estimator: str,
    beta: float,
    rule: str = "endpoint",
    batch: int = 16,
    seed: int = 0,
    settle: float | None = None,
    window: float | None = None,
    period: float | None = None,
    periods: int = 4,
    warmup: int = 1,
    free_steps: int = 300,
    target: str = "numpy",
    problem: Problem | None = None,
) -> dict:
    """Run the spiking estimator once and compare it with the implicit gradient.

    Args:
        model: a model spec (or its path) with a ``[spiking]`` section.
        estimator: ``one-sided``, ``symmetric`` or ``oscillation``.
        beta: nudging strength (``|beta|`` for the oscillation).
        rule: ``endpoint`` or ``stdp`` (:mod:`spikeep.brian2.rules`).
        settle, window: seconds per phase (default: the spec's).
        period, periods, warmup: the oscillation's period (s), demodulated and discarded periods.
        free_steps: rate-engine steps for the reference's fixed point.
        problem: a precomputed :class:`~spikeep.gradcheck.Problem` (parameters, batch, free
            fixed point, implicit gradient; same ``batch`` and ``seed``), reused instead of
            recomputed.
        target: Brian2 runtime code generation target, ``numpy`` or ``cython``.
    """
    model_spec = model if isinstance(model, spec.ModelSpec) else spec.load(model)
    if model_spec.spiking is None:
        raise ValueError(f"{model_spec.source}: the brian2 engine needs a [spiking] section")
    if target not in ("numpy", "cython"):
        raise ValueError(f"target must be 'numpy' or 'cython', got {target!r}")
    cfg = model_spec.spiking
    schedule = schedules.for_estimator(
        estimator, beta, cfg, settle, window, periods, warmup, period
    )
    net = Network(model_spec)
    params, x, y, free, ref = problem or make_problem(net, batch, seed, free_steps)

    b2.prefs.codegen.target = target
    start = time.perf_counter()
    sn = build(model_spec, params, x, y, schedule, rule=rule, seed=seed)
    counters = [b2.SpikeMonitor(g, record=False) for g in sn.groups if "v" in g.variables]
    sn.network.add(*counters)
    sn.run()
    wall = time.perf_counter() - start
    rate_error = None
    if not schedule.oscillating:
        r_ref = [r.numpy() for r in net.dynamics.rates(net, free.s)]
        rates = sn.rates("rho0")[1:]
        rate_error = max(float(np.abs(a - b).max()) for a, b in zip(rates, r_ref, strict=True))
    phase = schedule.phases[0] if schedule.phases else None
    osc = {"periods": periods, "warmup": warmup} if schedule.oscillating else None
    return {
        **spiking_record(
            model_spec,
            "brian2",
            estimator,
            beta,
            BIAS_ORDER[estimator],
            batch,
            seed,
            sn.gradient(),
            ref,
            float(free.residual),
            rate_error,
            osc,
        ),
        "rule": rule,
        "settle": phase.settle if phase else None,
        "window": phase.window if phase else None,
        "period": schedule.period if schedule.oscillating else None,
        "biological_s": schedule.duration,
        "spikes": int(sum(int(c.num_spikes) for c in counters)) / batch,
        "wall_s": wall,
        "target": target,
        "neuron": cfg.neuron,
        "input": cfg.input,
    }
