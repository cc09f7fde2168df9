r"""The brian2 engine: a protocol with ``[train] engine = "brian2"``, trained online.

The loop of :mod:`spikeep.train`, with the Brian2 simulation in place of the rate engine's
relaxations. One :class:`~spikeep.brian2.standalone.Chunk` of ``[brian2] chunk`` samples of the
estimator's schedule is compiled once; each :meth:`Brian2Engine.step` runs it on the next
``chunk`` samples of the epoch's shuffled training set, with the weights and the learning rates
(``run_args``), and learns **online**: after each sample the rule moves every parameter,

    theta <- theta - eta_l g(sample)            (eta_l = optimizer.lr of coupling l, per sample)

with ``g`` the rule's in-simulation estimate of ``+dL/dtheta`` (:mod:`spikeep.brian2.rules`). An
epoch is the ``floor(N / chunk)`` whole chunks of the shuffled set (the rest is left out, as the
rate path leaves out a last partial batch). Each run starts from rest; within a run each sample
starts where the previous one ended (continuous time: the settling time covers it).

The parameters are the rate engine's (``W1, b1, ...``, the spec's dtype), in the same
:class:`~spikeep.checkpoint.TrainState` and checkpoint, so ``spikeep eval``, ``spikeep plot`` and
``--resume`` work as for the rate engine; a resumed run restarts at the chunk it stopped at and
reaches the weights of an uninterrupted run (the simulation is deterministic for a given seed).

Metrics per epoch (``metrics.jsonl``), from the spiking network unless named ``_rate``:

- ``loss``, ``train_error``: the output's free-phase rates of each training sample, before its
  update (``C = 1/2 |r_out - y|^2``);
- ``test_error``, ``test_loss``: the spiking free phase on the test set, through the same
  compiled chunk with ``eta = 0`` and targets 0 (no label reaches the network), or through a
  compiled free phase of ``[brian2] eval_settle + eval_window`` seconds;
- ``test_error_rate``, ``test_loss_rate``: the rate engine's free phase on the same parameters
  (``eval_free_steps``);
- ``spikes_per_sample``, ``ms_per_sample`` (wall time of the compiled runs), ``lr``, ``wall_s``.
"""

from __future__ import annotations

import time

import torch

from .. import _dist, spec
from ..batches import prepare_batch
from ..energy import Network
from ..engine import Engine, Step, evaluate
from ..protocol import Protocol, ProtocolError, refuse
from . import schedules
from .standalone import Chunk

__all__ = ["Brian2Engine", "check", "check_model", "eval_schedule", "spiking_test"]

ESTIMATORS = {"one-sided": "1", "symmetric": "2", "oscillation": "2 (real cosine)"}


def check_model(protocol: Protocol, model: spec.ModelSpec) -> None:
    """Refuse a model that has no spiking realisation (what evaluation needs too)."""
    if model.spiking is None:
        raise ProtocolError(
            f"{protocol.source}: train.engine: 'brian2' needs a model with a [spiking] section "
            f"(dense couplings, mse cost); {model.source} has none"
        )


def check(protocol: Protocol, model: spec.ModelSpec) -> None:
    """Refuse, in one line, what the brian2 engine cannot train (the estimator outside its
    table is refused by :meth:`Engine.check_estimator`)."""
    src, est = protocol.source, protocol.estimator

    def fail(key: str, msg: str):
        raise ProtocolError(f"{src}: {key}: {msg}")

    check_model(protocol, model)
    if est.name == "oscillation" and not est.real:
        fail("estimator.real", "the brian2 oscillation is the real beta cos(wt): set real = true")
    refused = {
        "train.batch_size": (protocol.train.batch_size != 1, "learns online: set 1"),
        "train.persistent": (protocol.train.persistent, "has no stored free states: set false"),
        "optimizer.momentum": (protocol.optimizer.momentum != 0, "has no momentum: set 0"),
        "optimizer.weight_decay": (protocol.optimizer.weight_decay != 0, "has none: set 0"),
        "estimator.noise": (est.noise != 0, "spikes are its noise: set 0"),
        "estimator.hold": (est.hold != 1, "turns beta at every step: set 1"),
        "data.augment": (protocol.data.augment, "has no augmentation: set false"),
        "data.normalize": (
            protocol.data.normalize and model.spiking.input != "current",
            "Poisson input needs rates in [0, 1]: set false",
        ),
    }
    refuse(protocol, "brian2", refused)
    check_device(protocol, protocol.train.device)
    if _dist.world() > 1:
        fail("train.engine", "the brian2 engine runs in one process, not under torchrun")
    test = eval_schedule(protocol, model.spiking)
    if test is not None:
        on_grid(protocol, test, model.spiking.dt)


def check_device(protocol: Protocol, name: str) -> None:
    """Refuse a torch device other than the CPU (``auto`` means the CPU here)."""
    if name not in ("auto", "cpu"):
        raise ProtocolError(
            f"{protocol.source}: train.device: the brian2 engine runs on the CPU: set auto or cpu, "
            f"got {name!r}"
        )


def _schedule(protocol: Protocol, cfg) -> schedules.Schedule:
    est = protocol.estimator
    return schedules.for_estimator(est.name, est.beta, cfg, periods=est.periods, warmup=est.warmup)


def _inputs(net, ds, idx, normalize, chunk: int):
    """Inputs ``(chunk, n_0)`` and one-hot targets ``(chunk, n_L)`` (float64) of the examples
    ``idx``, padded with zeros to ``chunk`` rows."""
    x, y = prepare_batch(net, ds.images[idx], ds.labels[idx], ds.classes, normalize, torch.float64)
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


def on_grid(protocol: Protocol, schedule: schedules.Schedule, dt: float) -> schedules.Schedule:
    """``schedule``, refused in one line naming ``brian2.eval_settle`` unless its phases are
    whole numbers of steps of ``dt``."""
    try:
        schedule.grid(dt)
    except ValueError as err:
        raise ProtocolError(f"{protocol.source}: brian2.eval_settle: {err}") from None
    return schedule


def eval_schedule(protocol: Protocol, cfg) -> schedules.Schedule | None:
    """The spiking test pass's free phase (``[brian2] eval_settle``, ``eval_window``), or
    ``None``: the test runs the training schedule."""
    b = protocol.brian2
    return schedules.free(cfg, b.eval_settle, b.eval_window) if b.eval_window > 0 else None


def spiking_test(
    model: spec.ModelSpec, params, ds, normalize, schedule: schedules.Schedule, chunk: int = 100
) -> dict:
    """Error (%), mean cost and spikes per sample on ``ds`` of the spiking free phase of
    ``schedule`` (a free schedule, :func:`spikeep.brian2.schedules.free`), in compiled chunks of
    ``chunk`` samples."""
    with Chunk(model, schedule, chunk) as c:
        return _spiking_test(Network(model), c, params, ds, normalize)


def _spiking_test(net, chunk: Chunk, params, ds, normalize) -> dict:
    """Error (%), mean cost and spikes per sample (all layers, every simulated sample: a last
    chunk's zero padding included) of the spiking free phase on ``ds``: ``chunk`` with
    ``eta = 0`` and targets 0 (the training chunk: its nudged windows run but nothing learns)."""
    C = chunk.samples
    cost, wrong, spikes, runs = 0.0, 0.0, 0.0, 0
    for start in range(0, len(ds.labels), C):
        idx = torch.arange(start, min(start + C, len(ds.labels)))
        x, y = _inputs(net, ds, idx, normalize, C)
        out = chunk.run(x, torch.zeros_like(y), params, eta=0.0)
        c, w = _score(net, params, out["rates"][: len(idx)], ds.labels[idx], y[: len(idx)])
        cost, wrong, spikes, runs = cost + c, wrong + w, spikes + out["spikes"], runs + 1
    n = len(ds.labels)
    return {"error": 100.0 * wrong / n, "loss": cost / n, "spikes_per_sample": spikes / runs}


class Brian2Engine(Engine):
    """Spiking populations in a compiled Brian2 simulation, learning online (module docstring)."""

    name = "brian2"
    estimators = ESTIMATORS
    online = True
    spiking = True
    unit = "chunk"
    eval_settings = {"settle": "brian2.eval_settle", "window": "brian2.eval_window"}

    def __init__(self, protocol: Protocol, net: Network, training: bool = True):
        super().__init__(protocol, net, training)  # training: check() below
        if not training:
            check_model(protocol, net.spec)
        self._chunk = None
        # what score() runs, built (and a bad eval_settle or eval_window refused) before any run
        self._scored = None if training else self._score_free()
        est = protocol.estimator
        self.eval_steps = est.eval_free_steps or est.free_steps

    def check(self, protocol: Protocol, net: Network) -> None:
        check(protocol, net.spec)

    def device(self, override: str | None) -> torch.device:
        check_device(self.protocol, override or self.protocol.train.device)
        return torch.device("cpu")

    def samples_per_step(self) -> tuple[int, str]:
        return self.protocol.brian2.chunk, "brian2.chunk"

    def _training_chunk(self):
        """The compiled training chunk, opened (compiled, or read from the cache) when first
        needed and kept until an evaluation of another schedule or :meth:`close`."""
        if self._chunk is None:
            p = self.protocol
            schedule = _schedule(p, self.net.spec.spiking)
            t = time.perf_counter()
            self._chunk = Chunk(
                self.net.spec, schedule, p.brian2.chunk, rule=p.brian2.rule, seed=p.train.seed
            )
            how = "compiled" if self._chunk.compiled else "from the cache"
            self.log(
                f"brian2: {schedule.name} EP, {p.brian2.rule} rule, "
                f"{schedule.duration * 1e3:g} ms per sample, chunks of {p.brian2.chunk}: {how} in "
                f"{time.perf_counter() - t:.1f} s ({self._chunk.directory})"
            )
        return self._chunk

    def step(self, net, params, x, y, s0, g, rank, lr) -> Step:
        out = self._training_chunk().run(x.to(torch.float64), y.to(torch.float64), params, eta=lr)
        dtype = next(iter(params.values())).dtype
        moved = {k: v.to(dtype) for k, v in out["params"].items()}
        extra = {"spikes_per_sample": out["spikes"], "ms_per_sample": 1e3 * out["run_s"] / len(x)}
        return Step((out["rates"].to(y.dtype),), None, None, extra, moved)

    def evaluate(self, net, params, ds, normalize, shard, epoch) -> dict:
        test = eval_schedule(self.protocol, net.spec.spiking)
        if test is None:
            spiking = _spiking_test(net, self._training_chunk(), params, ds, normalize)
        else:  # one standalone project at a time: the training chunk reopens at the next step
            self.close()
            spiking = spiking_test(
                net.spec, params, ds, normalize, test, self.protocol.brian2.chunk
            )
        rated = evaluate(net, params, ds, self.eval_steps, normalize)
        return {
            "test_error": spiking["error"],
            "test_loss": spiking["loss"],
            "test_error_rate": rated["error"],
            "test_loss_rate": rated["loss"],
        }

    @classmethod
    def eval_defaults(cls, raw: dict, net: Network) -> dict:
        """The free phase of the run's test pass, else the model's settle and window."""
        b, cfg = raw.get("brian2", {}), net.spec.spiking
        if cfg is None:
            return {}
        return {
            "brian2.eval_settle": b.get("eval_settle") or cfg.settle,
            "brian2.eval_window": b.get("eval_window") or cfg.window,
        }

    def _score_free(self) -> schedules.Schedule:
        """The free phase :meth:`score` runs: the run's test pass, else the model's."""
        cfg = self.net.spec.spiking
        schedule = eval_schedule(self.protocol, cfg) or schedules.free(cfg)
        return on_grid(self.protocol, schedule, cfg.dt)

    def score(self, net, params, ds, normalize) -> dict:
        schedule = self._scored or self._score_free()
        (free,) = schedule.phases
        params = {k: v.to(torch.float64) for k, v in params.items()}
        chunk = max(1, min(self.protocol.brian2.chunk, len(ds.labels)))
        return {
            **spiking_test(net.spec, params, ds, normalize, schedule, chunk),
            "settle": free.settle,
            "window": free.window,
        }

    def close(self) -> None:
        if self._chunk is not None:
            self._chunk.close()
            self._chunk = None

    gradcheck_estimators = tuple(ESTIMATORS)

    @classmethod
    def gradcheck(cls, model, args) -> dict:
        from .gradcheck import gradcheck

        return gradcheck(
            model,
            args.estimator,
            args.beta,
            args.rule,
            args.batch,
            args.seed,
            args.settle,
            args.window,
            args.period,
            args.periods,
            args.warmup,
            args.free_steps,
        )

    @classmethod
    def gradcheck_header(cls, r: dict) -> str:
        return (
            f"engine brian2 ({r['neuron']}, {r['input']} input)  {r['estimator']}  rule "
            f"{r['rule']}  beta {r['beta']}  batch {r['batch']}  {r['biological_s']:g} s per sample"
        )

    @classmethod
    def fidelity_point(cls, point, model_spec, s, problem, batch, seed) -> dict:
        import gc

        from ..fidelity.sweep import metrics, spiking_variant
        from .gradcheck import gradcheck

        model_spec = spiking_variant(model_spec, s["dt"], s["rate_max"])
        try:
            r = gradcheck(
                model_spec,
                point.estimator,
                s["beta"],
                point.rule,
                batch,
                seed,
                s["settle"] or None,
                s["window"] or None,
                s["period"] or None,
                s["periods"],
                s["warmup"],
                target=s["target"],
                problem=problem,
            )
        finally:
            gc.unfreeze()  # brian2's build freezes the heap; let this network's garbage go
            gc.collect()
        out = metrics(r)
        out.update(
            settle=r["settle"],
            window=r["window"],
            period=r["period"],
            dt=model_spec.spiking.dt,
            rate_max=model_spec.spiking.rate_max,
        )
        return out

    @classmethod
    def not_applicable(cls, net, estimator: str, rule, settings: dict) -> str | None:
        if net.spec.spiking is None:
            return f"{net.spec.name} has no [spiking] section (the Brian2 engine is dense-only)"
        return None
