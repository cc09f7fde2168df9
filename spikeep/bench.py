"""Timing of the whole EP training step: free phase, nudged phase(s), parameter update.

``bench_ep_step`` times, after warm-up, ``repeats`` EP steps on random inputs in the model's
dtype and reports the median as ``ms_per_batch`` and ``samples_per_s``, together with the median
time of the free phase alone divided by its steps (``ms_per_free_step``), and the threads it ran
with (``threads``, ``omp_wait_policy``).
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from . import estimators, spec
from ._dtypes import DTYPES
from .dynamics import relax
from .energy import Network
from .gradcheck import random_batch

__all__ = ["ep_step", "bench_ep_step"]


def ep_step(net, params, x, y, est, free_steps: int, lr: float) -> None:
    """One whole EP step in place: free phase from zeros, the estimate, an SGD update."""
    free = relax(net, params, x, steps=free_steps)
    g = est.estimate(net, params, x, y, free).grads
    for k, v in params.items():
        v.add_(g[k], alpha=-lr)


def bench_ep_step(
    model: str | spec.ModelSpec,
    batch: int = 100,
    free_steps: int = 20,
    nudged_steps: int = 4,
    estimator: str = "one-sided",
    beta: float = 0.5,
    lr: float = 0.01,
    repeats: int = 20,
    warmup: int = 3,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Median wall time of one EP step (``torch.no_grad``; synchronised on CUDA)."""
    model_spec = model if isinstance(model, spec.ModelSpec) else spec.load(model)
    net = Network(model_spec)
    dtype = DTYPES[model_spec.dtype]
    params = net.init_params(seed, dtype=dtype, device=device)
    x, y = random_batch(net, batch, seed, dtype)
    x, y = x.to(device), y.to(device)
    est = estimators.make(estimator, beta, nudged_steps)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step():
        ep_step(net, params, x, y, est, free_steps, lr)

    def free_phase():
        relax(net, params, x, steps=free_steps)

    step_times, free_times = [], []
    with torch.no_grad():
        for i in range(warmup + repeats):
            for fn, times in ((step, step_times), (free_phase, free_times)):
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(step_times)
    return {
        "model": model_spec.source,
        "estimator": estimator,
        "batch": batch,
        "free_steps": free_steps,
        "nudged_steps": nudged_steps,
        "dtype": model_spec.dtype,
        "device": device,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "repeats": repeats,
        "ms_per_batch": ms,
        "samples_per_s": batch / (ms / 1e3),
        "ms_per_free_step": 1e3 * statistics.median(free_times) / free_steps,
    }
