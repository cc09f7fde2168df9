"""Running the points of a fidelity study: one estimate each, in parallel, failures recorded.

:func:`evaluate` runs one :class:`~spikeep.fidelity.points.Point` against its model's
:class:`~spikeep.gradcheck.Problem` (the exact reference, computed once) and returns its row:
the point's settings, ``status`` (``"ok"``, ``"error"`` with the error's message, ``"n/a"`` with
the reason), the metrics of :func:`spikeep.gradcheck.compare` overall and per parameter
(``cosine``, ``rel_error``, ``sign_agreement``) and the cost: ``wall_s`` (seconds of the
estimate), ``relaxation_steps`` (rate engine: dynamics steps per sample, free phase included),
``time_steps`` (snntorch, per phase or period), ``biological_s`` (Brian2: simulated seconds per
sample) and ``spikes`` (spiking engines: per sample, all layers).

:func:`run_all` maps :func:`evaluate` over the points on ``jobs`` processes
(``concurrent.futures.ProcessPoolExecutor``, spawned workers with one torch thread each; ``jobs =
1`` runs in this process), with a progress bar on a terminal and one plain line per point
otherwise. A point that raises is recorded with ``status = "error"`` and the sweep goes on.

Rate points run in float64 (the estimator's own bias, not float32 rounding). Brian2 points with
``dt`` or ``rate_max`` set replace the spec's ``[spiking]`` values (checked as the spec would be:
``rate_max * dt <= 1``, every time at least two steps).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from .. import engine as engines
from .. import spec
from ..gradcheck import Problem
from .points import Point

__all__ = ["evaluate", "run_all", "default_jobs"]

SETTINGS = (
    "beta",
    "points",
    "free_steps",
    "nudged_steps",
    "dt",
    "noise",
    "steps_per_period",
    "periods",
    "warmup",
    "oscillation",
    "time_steps",
    "tau",
    "input",
    "settle",
    "window",
    "period",
    "rate_max",
    "target",
)


def default_jobs() -> int:
    """``min(2, os.cpu_count())``."""
    return max(1, min(2, os.cpu_count() or 1))


def evaluate(point: Point, spec_path: Path, problem: Problem, batch: int, seed: int) -> dict:
    """One point's row (module docstring); never raises for a failing estimate."""
    row = _row(point, spec_path)
    if point.na:
        return {**row, "status": "n/a", "message": point.na}
    settings = dict(point.settings)
    try:
        engine_cls = engines.get(point.engine)
        result = engine_cls.fidelity_point(
            point, spec.load(spec_path), settings, problem, batch, seed
        )
    except Exception as err:  # noqa: BLE001 - any failure of a point is recorded, not fatal
        message = f"{type(err).__name__}: {err}".splitlines()[0]
        return {**row, "status": "error", "message": message}
    return {**row, **result, "status": "ok", "message": ""}


def _row(point: Point, spec_path: Path) -> dict:
    settings = dict(point.settings)
    return {
        "model": Path(spec_path).stem,
        "engine": point.engine,
        "estimator": point.estimator,
        "rule": point.rule or "",
        "label": point.label,
        "sweep": point.sweep,
        "value": point.value,
        **{k: settings.get(k) for k in SETTINGS},
    }


def metrics(r: dict) -> dict:
    return {
        k: r.get(k)
        for k in (
            "cosine",
            "rel_error",
            "sign_agreement",
            "bias_order",
            "wall_s",
            "relaxation_steps",
            "spikes",
            "biological_s",
            "rate_error",
            "free_residual",
            "per_param",
        )
    }


def spiking_variant(model_spec: spec.ModelSpec, dt: float, rate_max: float) -> spec.ModelSpec:
    """``model_spec`` with its ``[spiking]`` ``dt`` and ``rate_max`` replaced (0: kept)."""
    cfg = model_spec.spiking
    if cfg is None:
        raise ValueError(f"{model_spec.source}: the brian2 engine needs a [spiking] section")
    cfg = dataclasses.replace(cfg, dt=dt or cfg.dt, rate_max=rate_max or cfg.rate_max)
    if cfg.rate_max * cfg.dt > 1:
        raise ValueError(
            f"a neuron fires at most once per step: rate_max * dt = {cfg.rate_max * cfg.dt:g} "
            f"must be <= 1 (rate_max {cfg.rate_max:g} Hz, dt {cfg.dt:g} s)"
        )
    for key in ("tau_syn", "tau_trace", "tau_mem"):
        if getattr(cfg, key) < 2 * cfg.dt:
            raise ValueError(f"spiking.{key} = {getattr(cfg, key):g} s is under two steps dt")
    return dataclasses.replace(model_spec, spiking=cfg)


# -- the parallel map -------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}  # the worker process's problems (set once by _init_worker)


def _init_worker(problems: dict[int, Problem]) -> None:
    torch.set_num_threads(1)
    _WORKER["problems"] = problems


def _evaluate_in_worker(point: Point, spec_path: Path, batch: int, seed: int) -> dict:
    return evaluate(point, spec_path, _WORKER["problems"][point.model], batch, seed)


def run_all(
    points: list[Point],
    spec_paths: list[Path],
    problems: dict[int, Problem],
    batch: int,
    seed: int,
    jobs: int = 1,
    progress: Callable[[int, int, dict], None] | None = None,
) -> list[dict]:
    """The rows of ``points``, in the points' order. ``problems[i]`` is model ``i``'s reference;
    ``progress(done, total, row)`` is called after every point."""
    rows: list[dict | None] = [None] * len(points)
    todo = [i for i, p in enumerate(points) if not p.na]
    for i, p in enumerate(points):
        if p.na:
            rows[i] = evaluate(p, spec_paths[p.model], problems.get(p.model), batch, seed)
    done = len(points) - len(todo)
    if jobs <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for i in todo:
                p = points[i]
                rows[i] = evaluate(p, spec_paths[p.model], problems[p.model], batch, seed)
                done += 1
                if progress:
                    progress(done, len(points), rows[i])
        finally:
            torch.set_num_threads(threads)
        return rows
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker, initargs=(problems,)
    ) as pool:
        futures = {
            pool.submit(_evaluate_in_worker, points[i], spec_paths[points[i].model], batch, seed): i
            for i in todo
        }
        for future in as_completed(futures):
            i = futures[future]
            try:
                rows[i] = future.result()
            except Exception as err:  # noqa: BLE001 - e.g. a worker killed by the OS
                row = _row(points[i], spec_paths[points[i].model])
                rows[i] = {**row, "status": "error", "message": f"{type(err).__name__}: {err}"}
            done += 1
            if progress:
                progress(done, len(points), rows[i])
    return rows


def progress_printer(stream=None):
    """A ``progress`` callback: a tqdm bar on a terminal, else one plain line per point."""
    stream = stream or sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        bar = {}

        def update(done, total, row):
            if "bar" not in bar:
                bar["bar"] = tqdm(total=total, initial=done - 1, file=stream, unit="point")
            bar["bar"].update(1)
            bar["bar"].set_postfix_str(f"{row['model']} {row['label']} {row['status']}")
            if done == total:
                bar["bar"].close()

        return update

    start = time.perf_counter()

    def line(done, total, row):
        what = f"{row['model']} {row['label']} {row['sweep']}"
        if row["sweep"] != "base":
            what += f"={row['value']}"
        result = (
            f"cos {row['cosine']:.4f} rel {row['rel_error']:.3g}"
            if row["status"] == "ok"
            else row["status"]
        )
        print(
            f"[{done}/{total}] {what}: {result} ({time.perf_counter() - start:.0f} s)",
            file=stream,
            flush=True,
        )

    return line
