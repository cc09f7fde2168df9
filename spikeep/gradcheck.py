"""Compare an estimator's gradient with the exact implicit reference on a random batch.

``gradcheck(...)`` returns the dict that ``spikeep gradcheck --json`` prints: ``model``,
``estimator``, ``beta``, ``points``, ``reference``, ``cosine``, ``rel_error``
(``|g - g_ref| / |g_ref|`` over all parameters), ``sign_agreement`` (the fraction of entries
whose sign matches the reference's, the reference's exact zeros left out), ``per_param``
(name -> cosine, rel_error, sign_agreement), ``free_residual``, ``nudged_residuals``,
``bias_order``, ``noise``, and the oscillation's ``steps_per_period``, ``periods``, ``warmup``,
``real``, ``from_free``, ``hold`` (``None`` for the other estimators; for ``oscillation``
``nudged_residuals`` holds the state's change over the last period), and the cost: ``wall_s``
(free phase and estimate, seconds) and ``relaxation_steps`` (dynamics steps per sample, free
phase included).

With ``noise > 0`` the free phase and the estimator's phases are noisy (one generator, seeded with
``seed``); the reference is the noise-free system's gradient.

:func:`problem` computes what every engine's check compares against, once: the parameters, the
batch, the free fixed point and the implicit gradient, all float64 (a :class:`Problem`); each
``gradcheck`` (rate, :mod:`spikeep.brian2.gradcheck`, :mod:`spikeep.snn.gradcheck`) takes one
through ``problem=`` instead of recomputing it.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from . import estimators, reference, spec
from ._dtypes import DTYPES
from .dynamics import Relaxed, relax
from .energy import Network

__all__ = [
    "cosine",
    "rel_error",
    "sign_agreement",
    "loglog_slope",
    "compare",
    "random_batch",
    "Problem",
    "problem",
    "gradcheck",
    "spiking_record",
]


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two tensors (flattened); 1.0 when both are zero."""
    a, b = a.flatten().double(), b.flatten().double()
    na, nb = float(a.norm()), float(b.norm())
    if na == 0 and nb == 0:
        return 1.0
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0


def rel_error(a: Tensor, b: Tensor) -> float:
    """``|a - b| / |b|`` (0 when both are zero, inf when only ``b`` is)."""
    a, b = a.flatten().double(), b.flatten().double()
    nb, nd = float(b.norm()), float((a - b).norm())
    if nb == 0:
        return 0.0 if nd == 0 else math.inf
    return nd / nb


def sign_agreement(a: Tensor, b: Tensor) -> float:
    """The fraction of entries of ``a`` whose sign is that of ``b``, over the entries where ``b``
    is not exactly zero (1.0 when ``b`` is all zeros)."""
    a, b = a.flatten().double(), b.flatten().double()
    nonzero = b != 0
    n = int(nonzero.sum())
    if n == 0:
        return 1.0
    return int((torch.sign(a[nonzero]) == torch.sign(b[nonzero])).sum()) / n


def loglog_slope(x, y) -> float:
    """The least-squares slope of ``log y`` against ``log x``: the order ``p`` of ``y ~ x^p``
    (an estimator's bias order when ``x`` is ``|beta|`` and ``y`` its error)."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def compare(g: dict[str, Tensor], ref: dict[str, Tensor]) -> dict:
    """Cosine, relative error and sign agreement overall and per parameter."""
    flat = lambda d: torch.cat([d[k].flatten() for k in ref])  # noqa: E731

    def metrics(a, b):
        return {
            "cosine": cosine(a, b),
            "rel_error": rel_error(a, b),
            "sign_agreement": sign_agreement(a, b),
        }

    return {**metrics(flat(g), flat(ref)), "per_param": {k: metrics(g[k], ref[k]) for k in ref}}


def random_batch(net: Network, batch: int, seed: int, dtype=torch.float64):
    """Inputs uniform in [0, 1) and one-hot targets of random classes, seeded."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, *net.layers[0].shape), generator=g, dtype=torch.float64)
    n_out = net.layers[-1].size
    labels = torch.randint(0, n_out, (batch,), generator=g)
    y = torch.nn.functional.one_hot(labels, n_out).to(torch.float64)
    return x.to(dtype), y.to(dtype)


class Problem(NamedTuple):
    """One model's check, float64: parameters ``params`` (``init_params(seed)``), the batch ``x``
    ``(B, *input shape)`` and one-hot ``y`` ``(B, n_out)``, the free fixed point ``free`` and the
    implicit gradient ``grads`` (name -> tensor, shapes of ``params``)."""

    params: dict[str, Tensor]
    x: Tensor
    y: Tensor
    free: Relaxed
    grads: dict[str, Tensor]


def problem(net: Network, batch: int, seed: int, free_steps: int = 300) -> Problem:
    """Parameters, a random batch (:func:`random_batch`), the free fixed point after
    ``free_steps`` steps and :func:`spikeep.reference.implicit_gradient` there, all float64."""
    params = net.init_params(seed, dtype=torch.float64)
    x, y = random_batch(net, batch, seed)
    free = relax(net, params, x, steps=free_steps)
    grads = reference.implicit_gradient(net, params, x, y, s_star=free.s)
    return Problem(params, x, y, free, grads)


def gradcheck(
    model: str | spec.ModelSpec,
    estimator: str,
    beta: float,
    points: int = 4,
    batch: int = 16,
    seed: int = 0,
    dtype: str | None = None,
    free_steps: int = 300,
    nudged_steps: int = 300,
    lr: float = 1e-6,
    noise: float = 0.0,
    steps_per_period: int = 100,
    periods: int = 2,
    warmup: int = 1,
    real: bool = False,
    from_free: bool = True,
    problem: Problem | None = None,
    hold: int = 1,
) -> dict:
    """Run ``estimator`` once on a random batch and compare it with the implicit gradient.

    The reference is always computed in float64 from the same parameters and batch; pass
    ``problem`` (:func:`problem`, for the same ``batch`` and ``seed``) to reuse one. The
    estimator's own free phase always relaxes here, for ``free_steps`` steps.
    """
    model_spec = model if isinstance(model, spec.ModelSpec) else spec.load(model)
    net = Network(model_spec)
    dtype = dtype or model_spec.dtype
    if problem is None:
        params64 = net.init_params(seed, dtype=torch.float64)
        x64, y64 = random_batch(net, batch, seed)
        ref = reference.implicit_gradient(net, params64, x64, y64, steps=free_steps)
    else:
        params64, x64, y64, _, ref = problem

    torch_dtype = DTYPES[dtype]
    params = {k: v.to(torch_dtype) for k, v in params64.items()}
    x, y = x64.to(torch_dtype), y64.to(torch_dtype)
    oscillating = estimator == "oscillation"
    est = estimators.make(
        estimator,
        beta,
        nudged_steps,
        points=points,
        lr=lr,
        noise=noise,
        steps_per_period=steps_per_period,
        periods=periods,
        warmup=warmup,
        real=real,
        free=from_free,
        hold=hold,
    )
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    free = relax(net, params, x, steps=free_steps, noise=noise, generator=g)
    out = est.estimate(net, params, x, y, free, generator=g)
    wall = time.perf_counter() - start
    result = compare(out.grads, ref)
    if oscillating:
        steps = free_steps + steps_per_period * (periods + warmup)
    else:
        steps = free_steps + nudged_steps * len(out.betas)
    return {
        "model": model_spec.source,
        "estimator": estimator,
        "beta": beta,
        "points": points if estimator == "holomorphic" else None,
        "steps_per_period": steps_per_period if oscillating else None,
        "periods": periods if oscillating else None,
        "warmup": warmup if oscillating else None,
        "real": real if oscillating else None,
        "from_free": from_free if oscillating else None,
        "hold": hold if oscillating else None,
        "noise": noise,
        "bias_order": est.bias_order,
        "reference": "implicit",
        "dtype": dtype,
        "batch": batch,
        "seed": seed,
        **result,
        "free_residual": float(free.residual),
        "nudged_residuals": out.residuals,
        "wall_s": wall,
        "relaxation_steps": steps,
    }


def spiking_record(
    model_spec: spec.ModelSpec,
    engine: str,
    estimator: str,
    beta: float,
    bias_order: int,
    batch: int,
    seed: int,
    grads: dict[str, Tensor],
    ref: dict[str, Tensor],
    free_residual: float,
    rate_error: float | None,
    oscillation: dict | None = None,
) -> dict:
    """The keys of :func:`gradcheck`'s dict for a spiking engine's estimate ``grads`` against the
    float64 implicit reference ``ref``. ``oscillation`` holds ``steps_per_period``, ``periods``
    and ``warmup`` when the estimate came from the real cosine teaching signal (no free phase);
    ``rate_error`` is the largest gap between the spiking free rates and the rate engine's.
    ``relaxation_steps`` is None (a spiking engine's cost is its spikes and simulated time)."""
    osc = oscillation or {}
    return {
        "model": model_spec.source,
        "engine": engine,
        "estimator": estimator,
        "beta": beta,
        "points": None,
        "steps_per_period": osc.get("steps_per_period"),
        "periods": osc.get("periods"),
        "warmup": osc.get("warmup"),
        "real": True if oscillation else None,
        "from_free": False if oscillation else None,
        "hold": 1 if oscillation else None,
        "noise": 0.0,
        "bias_order": bias_order,
        "reference": "implicit",
        "dtype": "float64",
        "batch": batch,
        "seed": seed,
        **compare(grads, ref),
        "free_residual": free_residual,
        "nudged_residuals": [],
        "rate_error": rate_error,
        "wall_s": None,  # the engine's gradcheck sets its own
        "relaxation_steps": None,  # a rate-engine count: spiking engines count spikes and time
    }
