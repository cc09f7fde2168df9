"""The snntorch engine's EP estimate against the rate engine's exact gradient (same parameters).

:func:`gradcheck` draws the rate engine's parameters (``init_params(seed)``) and a random batch
(:func:`spikeep.gradcheck.random_batch`), runs the spiking estimator on it, and compares the result
with :func:`spikeep.reference.implicit_gradient` in float64. It returns the dict of
:func:`spikeep.gradcheck.gradcheck` (``model, estimator, beta, reference, cosine, rel_error,
per_param, ...``) with the engine's keys: ``engine`` (``"snntorch"``), ``time_steps``, ``settle``,
``window``, ``tau``, ``decay``, ``input``, ``spikes`` (per sample, whole run, all layers),
``wall_s`` and ``rate_error`` (max over units of the free phase's spike rates' distance from the
rate engine's fixed point; ``None`` for an oscillation started from zeros).

``time_steps`` ``T`` sets the length of the run: for ``one-sided`` and ``symmetric`` each phase has
``T`` steps (``settle = T // 5``, ``window = T - settle``); for ``oscillation`` a period has ``T``
steps (``warmup`` periods discarded, ``periods`` demodulated).
"""

from __future__ import annotations

import time

import torch

from .. import spec
from ..energy import Network
from ..gradcheck import Problem, spiking_record
from ..gradcheck import problem as make_problem
from .config import SNNConfig
from .estimators import BIAS_ORDER, estimate
from .phases import gain

__all__ = ["gradcheck"]


def gradcheck(
    model: str | spec.ModelSpec,
    estimator: str,
    beta: float,
    time_steps: int = 1000,
    batch: int = 16,
    seed: int = 0,
    tau: float = 10.0,
    decay: float = 1.0,
    input: str = "current",
    periods: int = 2,
    warmup: int = 1,
    free_steps: int = 500,
    problem: Problem | None = None,
) -> dict:
    """Run the spiking estimator once and compare it with the implicit gradient (float64).

    Args:
        model: a model spec or its path (dense or conv; hard-sigmoid activation).
        estimator: ``one-sided``, ``symmetric`` or ``oscillation``.
        beta: nudging strength (``|beta|`` for the oscillation).
        time_steps: steps per phase, or per period of the oscillation (>= 5).
        tau, decay, input: :class:`~spikeep.snn.config.SNNConfig` (``decay`` must be 1 for the
            spiking fixed point to be the rate engine's).
        periods, warmup: the oscillation's demodulated and discarded periods.
        free_steps: rate-engine steps for the reference's fixed point.
        problem: a precomputed :class:`~spikeep.gradcheck.Problem` (parameters, batch, free
            fixed point, implicit gradient; same ``batch`` and ``seed``), reused instead of
            recomputed.
    """
    if estimator not in BIAS_ORDER:
        raise ValueError(
            f"unknown snntorch estimator {estimator!r}; expected one of {list(BIAS_ORDER)}"
        )
    if not (isinstance(time_steps, int) and not isinstance(time_steps, bool) and time_steps >= 5):
        raise ValueError(f"time_steps must be an integer >= 5, got {time_steps!r}")
    model_spec = model if isinstance(model, spec.ModelSpec) else spec.load(model)
    net = Network(model_spec)
    gain(net)  # refuses a network whose activation no integrate-and-fire neuron has
    oscillating = estimator == "oscillation"
    settle = time_steps // 5
    config = SNNConfig(decay, tau, settle, time_steps - settle, input, seed)
    params, x, y, free, ref = problem or make_problem(net, batch, seed, free_steps)

    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    options = (
        {"steps_per_period": time_steps, "periods": periods, "warmup": warmup}
        if oscillating
        else {}
    )
    out = estimate(estimator, net, params, x, y, beta, config, generator, **options)
    wall = time.perf_counter() - start
    rate_error = None
    if out.free is not None:
        r_ref = net.dynamics.rates(net, free.s)
        rate_error = max(
            float((a - b).abs().max()) for a, b in zip(out.free.rates, r_ref, strict=True)
        )
    osc = (
        {"steps_per_period": time_steps, "periods": periods, "warmup": warmup}
        if oscillating
        else None
    )
    return {
        **spiking_record(
            model_spec,
            "snntorch",
            estimator,
            beta,
            BIAS_ORDER[estimator],
            batch,
            seed,
            out.grads,
            ref,
            float(free.residual),
            rate_error,
            osc,
        ),
        "time_steps": time_steps,
        "settle": None if oscillating else config.settle,
        "window": None if oscillating else config.window,
        "tau": tau,
        "decay": decay,
        "input": input,
        "spikes": out.spikes,
        "wall_s": wall,
    }
