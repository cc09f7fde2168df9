r"""Training with the brian2 engine: a protocol with ``[train] engine = "brian2"``.

The epoch loop of :mod:`spikeep.train`, with the Brian2 simulation in place of the rate engine's
relaxations. One :class:`~spikeep.brian2.standalone.Chunk` of ``[brian2] chunk`` samples of the
estimator's schedule is compiled once; each run of it takes the next ``chunk`` samples of the
epoch's shuffled training set, the weights and the learning rates (``run_args``), and learns
**online**: after each sample the rule moves every parameter,

    theta <- theta - eta_l g(sample)            (eta_l = optimizer.lr of coupling l, per sample)

with ``g`` the rule's in-simulation estimate of ``+dL/dtheta`` (:mod:`spikeep.brian2.rules`). An
epoch is the ``floor(N / chunk)`` whole chunks of the shuffled set (the rest is left out, as the
rate path leaves out a last partial batch). Each run starts from rest; within a run each sample
starts where the previous one ended (continuous time: the settling time covers it).

The parameters are the rate engine's (``W1, b1, ...``, the spec's dtype), in the same
:class:`~spikeep.train.TrainState` and checkpoint, so ``spikeep eval``, ``spikeep plot`` and
``--resume`` work as for the rate engine. A checkpoint is written after every epoch and every
``checkpoint_every`` chunks; a resumed run restarts at the chunk it stopped at and reaches the
weights of an uninterrupted run (the simulation is deterministic for a given seed).

Metrics per epoch (``metrics.jsonl``), from the spiking network unless named ``_rate``:

- ``loss``, ``train_error``: the output's free-phase rates of each training sample, before its
  update (``C = 1/2 |r_out - y|^2``);
- ``test_error``, ``test_loss``: the spiking free phase on the test set, through the same
  compiled chunk with ``eta = 0`` and targets 0 (no label reaches the network);
- ``test_error_rate``, ``test_loss_rate``: the rate engine's free phase on the same parameters
  (``eval_free_steps``), which is what ``spikeep eval`` measures;
- ``spikes_per_sample``, ``ms_per_sample`` (wall time of the compiled runs), ``lr``, ``wall_s``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import checkpoint, data, spec
from .. import train as rate
from .._dtypes import DTYPES
from ..energy import Network
from ..protocol import Protocol, ProtocolError, check_against_model, refuse
from . import schedules
from .standalone import Chunk

__all__ = ["train", "check", "eval_schedule", "spiking_test"]


def check(protocol: Protocol, model: spec.ModelSpec, device: str | None = None) -> None:
    """Refuse, in one line, what the brian2 engine cannot train."""
    src, est = protocol.source, protocol.estimator

    def fail(key: str, msg: str):
        raise ProtocolError(f"{src}: {key}: {msg}")

    if model.spiking is None:
        fail(
            "train.engine",
            f"'brian2' needs a model with a [spiking] section (dense couplings, mse cost); "
            f"{model.source} has none",
        )
    if est.name not in schedules.ESTIMATORS:
        fail(
            "estimator.name",
            f"the brian2 engine has {list(schedules.ESTIMATORS)}, not {est.name!r}",
        )
    if est.name == "oscillation" and not est.real:
        fail("estimator.real", "the brian2 oscillation is the real beta cos(wt): set real = true")
    refused = {
        "train.batch_size": (protocol.train.batch_size != 1, "learns online: set 1"),
        "train.persistent": (protocol.train.persistent, "has no stored free states: set false"),
        "optimizer.momentum": (protocol.optimizer.momentum != 0, "has no momentum: set 0"),
        "optimizer.weight_decay": (protocol.optimizer.weight_decay != 0, "has none: set 0"),
        "estimator.noise": (est.noise != 0, "spikes are its noise: set 0"),
        "data.augment": (protocol.data.augment, "has no augmentation: set false"),
        "data.normalize": (
            protocol.data.normalize and model.spiking.input == "poisson",
            "Poisson input needs rates in [0, 1]: set false",
        ),
    }
    refuse(protocol, "brian2", refused)
    name = device or protocol.train.device
    if name not in ("auto", "cpu"):
        fail("train.device", f"the brian2 engine runs on the CPU: set auto or cpu, got {name!r}")
    if rate._world() > 1:
        fail("train.engine", "the brian2 engine runs in one process, not under torchrun")
    test = eval_schedule(protocol, model.spiking)
    if test is not None:
        try:
            test.grid(model.spiking.dt)
        except ValueError as err:
            fail("brian2.eval_settle", str(err))


def _schedule(protocol: Protocol, cfg) -> schedules.Schedule:
    est = protocol.estimator
    return schedules.for_estimator(est.name, est.beta, cfg, periods=est.periods, warmup=est.warmup)


def _inputs(net, ds, idx, normalize, chunk: int):
    """Inputs ``(chunk, n_0)`` and one-hot targets ``(chunk, n_L)`` (float64) of the examples
    ``idx``, padded with zeros to ``chunk`` rows."""
    x, y = rate.prepare_batch(
        net, ds.images[idx], ds.labels[idx], ds.classes, normalize, torch.float64
    )
    pad = chunk - len(idx)
    if pad:
        x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
        y = torch.cat([y, y.new_zeros(pad, *y.shape[1:])])
    return x, y


def _score(net, params, rates, labels, y) -> tuple[float, float]:
    """Summed cost and number of wrong predictions of the output rates ``(B, n_L)``."""
    r = (rates.to(y.dtype),)
    cost = float(net.cost(params, r, y).sum())
    wrong = float((net.output(params, r).argmax(1) != labels).sum())
    return cost, wrong


def eval_schedule(protocol: Protocol, cfg) -> schedules.Schedule | None:
    """The spiking test pass's free phase (``[brian2] eval_settle``, ``eval_window``), or
    ``None``: the test runs the training schedule."""
    b = protocol.brian2
    return schedules.free(cfg, b.eval_settle, b.eval_window) if b.eval_window > 0 else None


def spiking_test(
    model: spec.ModelSpec, params, ds, normalize, schedule: schedules.Schedule, chunk: int = 100
) -> dict:
    """Error (%) and mean cost on ``ds`` of the spiking free phase of ``schedule`` (a free
    schedule, :func:`spikeep.brian2.schedules.free`), in compiled chunks of ``chunk`` samples."""
    with Chunk(model, schedule, chunk) as c:
        return _spiking_test(Network(model), c, params, ds, normalize)


def _spiking_test(net, chunk: Chunk, params, ds, normalize) -> dict:
    """Error (%) and mean cost of the spiking free phase on ``ds``: ``chunk`` with ``eta = 0`` and
    targets 0 (the training chunk: its nudged windows run but nothing learns)."""
    C = chunk.samples
    cost, wrong = 0.0, 0.0
    for start in range(0, len(ds.labels), C):
        idx = torch.arange(start, min(start + C, len(ds.labels)))
        x, y = _inputs(net, ds, idx, normalize, C)
        out = chunk.run(x, torch.zeros_like(y), params, eta=0.0)
        c, w = _score(net, params, out["rates"][: len(idx)], ds.labels[idx], y[: len(idx)])
        cost, wrong = cost + c, wrong + w
    n = len(ds.labels)
    return {"error": 100.0 * wrong / n, "loss": cost / n}


def _train_chunk(net, chunk: Chunk, state, ds, idx, normalize, eta, sums) -> None:
    """One run of the compiled chunk on the examples ``idx``: the parameters move online."""
    x, y = _inputs(net, ds, idx, normalize, chunk.samples)
    out = chunk.run(x, y, state.params, eta=eta)
    dtype = next(iter(state.params.values())).dtype
    params = {k: v.to(dtype) for k, v in out["params"].items()}
    if not all(bool(torch.isfinite(v).all()) for v in params.values()):
        raise rate.TrainingError(
            f"epoch {state.epoch + 1}, chunk {state.batch + 1}: non-finite weights; lower the "
            f"learning rates or beta. The last good checkpoint is kept."
        )
    cost, wrong = _score(net, state.params, out["rates"], ds.labels[idx], y)  # before the update
    state.params = params
    sums["loss"] += cost
    sums["wrong"] += wrong
    sums["count"] += len(idx)
    sums["spikes"] += out["spikes"] * len(idx)
    sums["run_s"] += out["run_s"]


def train(
    protocol: Protocol, out: Path, resume=False, data_dir=None, device=None, progress=None, log=None
) -> dict:
    """Run ``protocol`` with the brian2 engine (module docstring); the outputs and the summary
    are those of :func:`spikeep.train.train`."""
    log = log or rate._default_log()
    model = spec.load(protocol.model)
    check(protocol, model, device)
    net = Network(model)
    check_against_model(protocol, len(net.couplings))
    dtype = DTYPES[model.dtype]
    data_dir = data_dir or protocol.data.dir
    train_set = rate._subset(
        data.load(protocol.data.name, "train", data_dir), protocol.data.train_subset
    )
    test_set = rate._subset(
        data.load(protocol.data.name, "test", data_dir), protocol.data.test_subset
    )
    rate._check_data(net, train_set, protocol)
    normalize = rate.normalization(
        protocol.data.name, protocol.data.normalize, protocol.data.std_scale
    )
    C = protocol.brian2.chunk
    n_chunks = len(train_set.labels) // C
    if n_chunks == 0:
        raise ProtocolError(
            f"{protocol.source}: brian2.chunk: {C} is larger than the "
            f"{len(train_set.labels)} training examples"
        )
    state = rate._start(protocol, net, out, resume, dtype, torch.device("cpu"), log)
    out.mkdir(parents=True, exist_ok=True)
    rate._truncate_metrics(out / rate.METRICS, state.epoch)

    schedule = _schedule(protocol, model.spiking)

    def open_chunk() -> Chunk:
        t_build = time.perf_counter()
        chunk = Chunk(model, schedule, C, rule=protocol.brian2.rule, seed=protocol.train.seed)
        how = "compiled" if chunk.compiled else "from the cache"
        log(
            f"brian2: {schedule.name} EP, {protocol.brian2.rule} rule, "
            f"{schedule.duration * 1e3:g} ms per sample, chunks of {C}: {how} in "
            f"{time.perf_counter() - t_build:.1f} s ({chunk.directory})"
        )
        return chunk

    last = _epochs(
        protocol,
        net,
        open_chunk,
        state,
        train_set,
        test_set,
        normalize,
        n_chunks,
        out,
        progress,
        log,
    )
    return rate._summary(protocol, state, out, last)


def _epochs(
    protocol, net, open_chunk, state, train_set, test_set, normalize, n_chunks, out, progress, log
):
    """The epochs from ``state`` on. ``open_chunk()`` opens the compiled training chunk; with an
    eval schedule it is closed for each test pass (one standalone project at a time)."""
    C = protocol.brian2.chunk
    test_schedule = eval_schedule(protocol, net.spec.spiking)
    chunk = None
    eval_steps = protocol.estimator.eval_free_steps or protocol.estimator.free_steps
    show = rate._progress_bar(progress, True, log, unit="chunk")
    last = None
    try:
        for epoch in range(state.epoch, protocol.train.epochs):
            t_epoch = time.perf_counter()
            lrs = rate._lr(protocol, epoch)
            eta = {k: rate._layer_lr(lrs, k) for k in state.params}
            perm = torch.randperm(
                len(train_set.labels), generator=rate._epoch_generator(protocol.train.seed, epoch)
            )
            sums = state.sums or {
                "loss": 0.0,
                "wrong": 0.0,
                "count": 0.0,
                "spikes": 0.0,
                "run_s": 0.0,
            }
            chunk = chunk or open_chunk()
            for c in show(range(state.batch, n_chunks), epoch, protocol.train.epochs, n_chunks):
                _train_chunk(
                    net, chunk, state, train_set, perm[c * C : (c + 1) * C], normalize, eta, sums
                )
                state.batch = c + 1
                every = protocol.train.checkpoint_every
                if every and state.batch % every == 0 and state.batch < n_chunks:
                    state.sums = dict(sums)
                    state.wall_s += time.perf_counter() - t_epoch
                    t_epoch = time.perf_counter()
                    checkpoint.save(state.to_checkpoint(protocol), out / rate.CHECKPOINT)
            if test_schedule is None:
                spiking = _spiking_test(net, chunk, state.params, test_set, normalize)
            else:
                chunk.close()
                chunk = None
                spiking = spiking_test(
                    net.spec, state.params, test_set, normalize, test_schedule, C
                )
            rated = rate.evaluate(net, state.params, test_set, eval_steps, normalize)
            state.wall_s += time.perf_counter() - t_epoch
            n = sums["count"]
            last = {
                "epoch": epoch + 1,
                "engine": "brian2",
                "loss": sums["loss"] / n,
                "train_error": 100.0 * sums["wrong"] / n,
                "test_error": spiking["error"],
                "test_loss": spiking["loss"],
                "test_error_rate": rated["error"],
                "test_loss_rate": rated["loss"],
                "spikes_per_sample": sums["spikes"] / n,
                "ms_per_sample": 1e3 * sums["run_s"] / n,
                "lr": list(lrs),
                "wall_s": state.wall_s,
            }
            state.epoch, state.batch, state.generator, state.sums = epoch + 1, 0, None, None
            rate._record_epoch(protocol, state, out, last)
            log(
                f"epoch {epoch + 1}/{protocol.train.epochs}  loss {last['loss']:.4f}  train error "
                f"{last['train_error']:.2f}%  test error {last['test_error']:.2f}% (spiking), "
                f"{last['test_error_rate']:.2f}% (rate)  {last['ms_per_sample']:.1f} ms/sample  "
                f"{state.wall_s:.1f} s"
            )
    finally:
        if chunk is not None:
            chunk.close()
    return last
