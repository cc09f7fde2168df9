r"""Training with EP: the loop that turns a protocol into trained weights and metrics.

One training step on a batch ``(x, y)``::

    free  = relax(net, theta, x, steps=T_free, s=persistent states or zeros)
    g     = estimator.estimate(net, theta, x, y, free)          (estimates +dL/dtheta)
    v     = momentum v + g + weight_decay theta                 (per parameter)
    theta = theta - lr_l v                                      (lr per coupling l, cosine-annealed)

Everything the loop carries is in :class:`TrainState` (parameters, momentum buffers, the epoch and
batch reached, the random generator's state, persistent free states, running sums), and a
checkpoint is exactly that state: a run resumed from a checkpoint reaches the same weights as one
that never stopped (same seed, CPU). Checkpoints are written atomically at the end of every epoch
(and every ``checkpoint_every`` batches); a non-finite loss or state stops the run with
:class:`TrainingError` and leaves the last good checkpoint in place.

Under ``torchrun --nproc_per_node=N`` every process takes its share of each batch
(``batch[rank::N]``) and the estimates are all-reduced (weighted by shard size), so N processes
reach the weights of one process with the same global batch, up to summation order.

State noise (``[estimator] noise``): every relaxation of a training step (free and nudged) adds
Gaussian noise to the states at every step, drawn from a generator seeded per batch from the
epoch's generator (:func:`_noise_generator`), so a resumed run draws the same noise. Evaluation
uses ``eval_noise`` (default: ``noise``) from a generator seeded by the seed and the epoch. With
several processes each rank draws its own noise (statistically the same run, not bit-for-bit).

The loop is the same for every batched engine: an :class:`Engine` supplies each batch's free
rates and gradient estimate (:meth:`Engine.step`) and the test metrics (:meth:`Engine.evaluate`).
:class:`RateEngine` relaxes the rate dynamics; ``[train] engine = "snntorch"`` plugs in
:class:`spikeep.snn.engine.SNNEngine` (spiking phases). ``"brian2"`` has its own online loop
(:mod:`spikeep.brian2.engine`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from . import checkpoint, data, estimators, spec
from ._dtypes import DTYPES
from .dynamics import DivergenceError, relax
from .energy import Network
from .protocol import Protocol, ProtocolError, check_against_model

__all__ = [
    "protocol_changes",
    "TrainingError",
    "TrainState",
    "Engine",
    "RateEngine",
    "Step",
    "train",
    "evaluate",
    "score",
    "prepare_batch",
    "normalization",
]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
PROGRESS_EVERY_S = 60.0  # off a terminal, a progress line at most this often within an epoch


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss or state)."""


@dataclass
class TrainState:
    """All that a run carries from one batch to the next."""

    params: dict[str, torch.Tensor]
    momentum: dict[str, torch.Tensor]
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed in the current epoch
    generator: torch.Tensor | None = None  # state of the epoch's generator, mid-epoch
    persistent: list[torch.Tensor] | None = None  # free states per training example
    sums: dict[str, float] | None = None  # running sums of the current epoch
    wall_s: float = 0.0  # wall time of the run so far

    def to_checkpoint(self, protocol: Protocol) -> dict:
        return {
            "format": "spikeep-checkpoint",
            "version": 1,
            "protocol": protocol.raw,
            "protocol_source": protocol.source,
            "model_source": str(protocol.model),
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "momentum": {k: v.detach().cpu() for k, v in self.momentum.items()},
            "epoch": self.epoch,
            "batch": self.batch,
            "generator": self.generator,
            "persistent": None if self.persistent is None else [p.cpu() for p in self.persistent],
            "sums": self.sums,
            "wall_s": self.wall_s,
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict, device) -> TrainState:
        return cls(
            params={k: v.to(device) for k, v in ckpt["params"].items()},
            momentum={k: v.to(device) for k, v in ckpt["momentum"].items()},
            epoch=ckpt["epoch"],
            batch=ckpt["batch"],
            generator=ckpt["generator"],
            persistent=ckpt["persistent"],
            sums=ckpt["sums"],
            wall_s=ckpt["wall_s"],
        )


# -- data --------------------------------------------------------------------------------


def prepare_batch(
    net: Network,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    normalize=None,
    dtype=torch.float32,
    device="cpu",
):
    """uint8 images ``(B, C, H, W)`` and labels -> model inputs and one-hot targets."""
    x = data.to_float(images.to(device), normalize).to(dtype)
    shape = net.layers[0].shape
    x = x.reshape(x.shape[0], *shape)
    y = data.one_hot(labels.to(device), classes).to(dtype)
    return x, y


def _check_data(net: Network, ds: data.Dataset, protocol: Protocol):
    n_in, n_out = net.layers[0].size, net.layers[-1].size
    sample = ds.images[0].numel()
    if sample != n_in:
        raise ProtocolError(
            f"{protocol.source}: data {ds.name!r} has {tuple(ds.images.shape[1:])} images "
            f"({sample} values) but model {protocol.model.name} expects {n_in} inputs"
        )
    if ds.classes != n_out:
        raise ProtocolError(
            f"{protocol.source}: data {ds.name!r} has {ds.classes} classes but model "
            f"{protocol.model.name} has {n_out} outputs"
        )


def _subset(ds: data.Dataset, n: int) -> data.Dataset:
    if n == 0 or n >= len(ds.labels):
        return ds
    return data.Dataset(ds.images[:n], ds.labels[:n], ds.name, ds.split, ds.classes)


def normalization(name: str, normalize: bool, std_scale: float = 1.0):
    """``(mean, std)`` per channel for dataset ``name``, or None when not normalising."""
    if not normalize:
        return None
    mean, std = data.STATS[name]
    return mean, tuple(std_scale * s for s in std)


def checkpoint_normalization(raw: dict, name: str):
    """:func:`normalization` of dataset ``name`` as the run whose protocol table (a checkpoint's
    ``"protocol"``) is ``raw`` normalised its inputs."""
    d = raw.get("data", {})
    return normalization(name, d.get("normalize", False), d.get("std_scale", 1.0))


def checkpoint_eval_steps(raw: dict) -> int:
    """The free steps with which the run whose protocol table is ``raw`` evaluated."""
    est = raw.get("estimator", {})
    return est.get("eval_free_steps") or est.get("free_steps", 20)


# -- evaluation --------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    net: Network,
    params,
    ds: data.Dataset,
    free_steps: int,
    normalize=None,
    batch_size: int = 1000,
    shard: tuple[int, int] = (0, 1),
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict:
    """Error (%) and mean cost of the free phase's predictions on ``ds`` (or a shard of it),
    with state noise ``noise`` drawn from ``generator`` (none by default)."""

    def free(x):
        relaxed = relax(net, params, x, steps=free_steps, noise=noise, generator=generator)
        return net.dynamics.rates(net, relaxed.s)

    return score(net, params, ds, free, normalize, batch_size, shard)


@torch.no_grad()
def score(
    net: Network,
    params,
    ds: data.Dataset,
    free,
    normalize=None,
    batch_size: int = 1000,
    shard: tuple[int, int] = (0, 1),
) -> dict:
    """Error (%) and mean cost on ``ds`` (or a shard of it) of the free rates that ``free(x)``
    gives for each batch of inputs ``x`` (any engine's free phase)."""
    dtype = next(iter(params.values())).dtype
    device = next(iter(params.values())).device
    rank, world = shard
    idx = torch.arange(rank, len(ds.labels), world)
    wrong, cost, count = 0.0, 0.0, 0
    for start in range(0, len(idx), batch_size):
        i = idx[start : start + batch_size]
        x, y = prepare_batch(net, ds.images[i], ds.labels[i], ds.classes, normalize, dtype, device)
        rates = free(x)
        wrong += float((net.output(params, rates).argmax(1) != ds.labels[i].to(device)).sum())
        cost += float(net.cost(params, rates, y).sum())
        count += len(i)
    totals = _all_reduce([wrong, cost, float(count)], world)
    return {"error": 100.0 * totals[0] / totals[2], "loss": totals[1] / totals[2]}


# -- engines ------------------------------------------------------------------------------


class Step(NamedTuple):
    """One batch's work: the free phase's ``rates`` (per dynamic layer, for the loss and the
    training error), the estimate ``grads`` of ``+dL/dtheta``, the free states ``s`` (kept for
    persistent training; ``None`` when the engine has none) and ``extra``: per-batch means that
    the epoch's metrics average over batches, under these names."""

    rates: tuple[torch.Tensor, ...]
    grads: dict[str, torch.Tensor]
    s: tuple[torch.Tensor, ...] | None
    extra: dict[str, float]


class Engine:
    """What the training loop asks of an engine, per batch and per epoch."""

    tag: dict = {}  # keys written into every metrics line

    def step(self, net, params, x, y, s0, g: torch.Generator, rank: int) -> Step:
        """The free phase (from ``s0``, or zeros) and the gradient estimate on ``(x, y)``;
        random draws come from ``g``, the epoch's generator (checkpointed)."""
        raise NotImplementedError

    def evaluate(self, net, params, ds, normalize, shard, epoch: int) -> dict:
        """``test_error``, ``test_loss`` and any further test metrics after ``epoch``."""
        raise NotImplementedError


class RateEngine(Engine):
    """The rate dynamics: ``relax`` and a registered estimator (:mod:`spikeep.estimators`)."""

    def __init__(self, protocol: Protocol, net: Network):
        cfg = protocol.estimator
        _check_complex(protocol, net)
        self.est = estimators.make(
            cfg.name,
            cfg.beta,
            cfg.nudged_steps,
            points=cfg.points,
            # C-EP moves the weights inside the estimator, at the protocol's initial learning rates
            lr={k: _layer_lr(protocol.optimizer.lr, k) for k in net.param_names()},
            noise=cfg.noise,
            steps_per_period=cfg.steps_per_period,
            periods=cfg.periods,
            warmup=cfg.warmup,
            real=cfg.real,
        )
        self.free_steps, self.noise = cfg.free_steps, cfg.noise
        self.eval_steps = cfg.eval_free_steps or cfg.free_steps
        self.eval_noise = cfg.noise if cfg.eval_noise is None else cfg.eval_noise
        self.seed = protocol.train.seed

    def step(self, net, params, x, y, s0, g, rank) -> Step:
        noise = self.noise
        # noise-free runs draw as they always did
        gen = _noise_generator(g, x.device, rank) if noise else g
        free = relax(net, params, x, steps=self.free_steps, s=s0, noise=noise, generator=gen)
        rates = net.dynamics.rates(net, free.s)
        grads = self.est.estimate(net, params, x, y, free, generator=gen).grads
        return Step(rates, grads, free.s, {"free_residual": float(free.residual)})

    def evaluate(self, net, params, ds, normalize, shard, epoch) -> dict:
        dev = next(iter(params.values())).device
        gen = _eval_generator(self.seed, epoch, dev, shard[0]) if self.eval_noise else None
        e = evaluate(
            net,
            params,
            ds,
            self.eval_steps,
            normalize,
            shard=shard,
            noise=self.eval_noise,
            generator=gen,
        )
        return {"test_error": e["error"], "test_loss": e["loss"]}


def _engine(protocol: Protocol, net: Network) -> Engine:
    if protocol.train.engine == "snntorch":  # spiking phases: spikeep/snn/engine.py
        from .snn.engine import SNNEngine

        return SNNEngine(protocol, net)
    return RateEngine(protocol, net)


# -- the loop ----------------------------------------------------------------------------


def _device(protocol: Protocol, override: str | None) -> torch.device:
    name = override or protocol.train.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ProtocolError(f"device {name!r} requested but no CUDA device is available")
    if name.startswith("cuda") and _world() > 1:
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(name)


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _all_reduce(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _noise_generator(g: torch.Generator, device, rank: int) -> torch.Generator:
    """A generator on ``device`` for one batch's state noise, seeded by a draw from the epoch
    generator ``g`` (checkpointed, so a resumed run draws the same noise) and the rank."""
    seed = int(torch.randint(0, 2**62, (1,), generator=g)) + rank
    return torch.Generator(device=device).manual_seed(seed)


def _eval_generator(seed: int, epoch: int, device, rank: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch + 7_919 * (rank + 1))


def _lr(protocol: Protocol, epoch: int) -> tuple[float, ...]:
    opt = protocol.optimizer
    if not opt.cosine:
        return opt.lr
    t_max = opt.t_max or protocol.train.epochs
    f = 0.5 * (1 + math.cos(math.pi * min(epoch, t_max) / t_max))
    return tuple(opt.eta_min + (lr - opt.eta_min) * f for lr in opt.lr)


def _layer_lr(lrs: tuple[float, ...], name: str) -> float:
    i = int(name[1:]) - 1  # W3 and b3 belong to coupling 3
    return lrs[0] if len(lrs) == 1 else lrs[i]


def train(
    protocol: Protocol,
    out: str | Path,
    resume: bool = False,
    data_dir: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
    log=None,
) -> dict:
    """Run ``protocol``, writing ``out/metrics.jsonl`` and ``out/checkpoint.pt``.

    Returns the summary dict (``test_error``, ``train_error``, ``epochs``, ``wall_s``, ``out``).
    ``log(line)`` gets one line per epoch (default: stderr); within an epoch ``progress`` picks a
    tqdm bar (True; None on a terminal), a plain line through ``log`` every minute (None off a
    terminal) or nothing (False). ``[train] engine = "brian2"`` hands the run to
    :func:`spikeep.brian2.engine.train`.
    """
    if protocol.train.engine == "brian2":  # spiking neurons: spikeep/brian2/engine.py
        from .brian2.engine import train as train_brian2

        return train_brian2(protocol, Path(out), resume, data_dir, device, progress, log)
    owns_group = _world() > 1 and not torch.distributed.is_initialized()
    if owns_group:
        backend = "nccl" if (device or protocol.train.device).startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
    # a process that exits with gloo's threads still running aborts ("terminate called without
    # an active exception"), so the group is torn down explicitly, after every rank is done
    try:
        summary = _train(protocol, Path(out), resume, data_dir, device, progress, log)
    except BaseException:
        if owns_group:  # no barrier: the other ranks may be waiting in a collective
            torch.distributed.destroy_process_group()
        raise
    if owns_group:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary


def _train(protocol, out, resume, data_dir, device, progress, log) -> dict:
    world, rank = _world(), _rank()
    main_process = rank == 0
    log = log or _default_log()
    net = Network(spec.load(protocol.model))
    check_against_model(protocol, len(net.couplings))
    dev = _device(protocol, device)
    dtype = DTYPES[net.spec.dtype]
    engine = _engine(protocol, net)
    data_dir = data_dir or protocol.data.dir
    train_set = _subset(
        data.load(protocol.data.name, "train", data_dir), protocol.data.train_subset
    )
    test_set = _subset(data.load(protocol.data.name, "test", data_dir), protocol.data.test_subset)
    _check_data(net, train_set, protocol)
    normalize = normalization(protocol.data.name, protocol.data.normalize, protocol.data.std_scale)
    if protocol.train.persistent and world > 1:
        raise ProtocolError("persistent free states are not supported with more than one process")

    state = _start(protocol, net, out, resume, dtype, dev, log)
    if protocol.train.persistent and state.persistent is None:
        n = len(train_set.labels)
        state.persistent = [
            torch.zeros(n, *layer.shape, dtype=dtype) for layer in net.spec.dynamic_layers
        ]
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(out / METRICS, state.epoch)

    B = protocol.train.batch_size
    n_batches = len(train_set.labels) // B
    if n_batches == 0:
        raise ProtocolError(
            f"batch_size {B} is larger than the {len(train_set.labels)} training examples"
        )
    show = _progress_bar(progress, main_process, log)
    last = None
    for epoch in range(state.epoch, protocol.train.epochs):
        t_epoch = time.perf_counter()
        lrs = _lr(protocol, epoch)
        g = _epoch_generator(protocol.train.seed, epoch)
        perm = torch.randperm(len(train_set.labels), generator=g)
        if state.batch > 0 and state.generator is not None:
            g.set_state(state.generator)
        sums = state.sums or {"loss": 0.0, "wrong": 0.0, "count": 0.0}
        if "residual" in sums:  # a mid-epoch checkpoint of an older spikeep
            sums["free_residual"] = sums.pop("residual")
        bar = show(range(state.batch, n_batches), epoch, protocol.train.epochs, n_batches)
        for b in bar:
            batch_idx = perm[b * B : (b + 1) * B]
            _train_step(
                net,
                state,
                engine,
                protocol,
                train_set,
                batch_idx,
                g,
                lrs,
                normalize,
                dtype,
                dev,
                sums,
                rank,
                world,
            )
            state.batch = b + 1
            every = protocol.train.checkpoint_every
            if every and state.batch % every == 0 and state.batch < n_batches:
                state.generator, state.sums = g.get_state(), dict(sums)
                state.wall_s += time.perf_counter() - t_epoch
                t_epoch = time.perf_counter()
                if main_process:
                    checkpoint.save(state.to_checkpoint(protocol), out / CHECKPOINT)
        evaluation = engine.evaluate(net, state.params, test_set, normalize, (rank, world), epoch)
        keys = sorted(sums)  # the same keys on every rank
        totals = dict(zip(keys, _all_reduce([sums[k] for k in keys], world), strict=True))
        state.wall_s += time.perf_counter() - t_epoch
        n = totals["count"]
        extra = {
            k: totals[k] / max(1.0, n / B) for k in keys if k not in ("loss", "wrong", "count")
        }
        last = {
            "epoch": epoch + 1,
            **engine.tag,
            "loss": totals["loss"] / n,
            "train_error": 100.0 * totals["wrong"] / n,
            **evaluation,
            **extra,
            "lr": list(lrs),
            "wall_s": state.wall_s,
        }
        state.epoch, state.batch, state.generator, state.sums = epoch + 1, 0, None, None
        if main_process:
            _record_epoch(protocol, state, out, last)
            log(_epoch_line(protocol, last))
    return _summary(protocol, state, out, last)


def _epoch_line(protocol: Protocol, m: dict) -> str:
    line = (
        f"epoch {m['epoch']}/{protocol.train.epochs}  loss {m['loss']:.4f}  "
        f"train error {m['train_error']:.2f}%  test error {m['test_error']:.2f}%"
    )
    if "test_error_rate" in m:
        line += f" (spiking), {m['test_error_rate']:.2f}% (rate)"
    if "free_residual" in m:
        line += f"  residual {m['free_residual']:.1e}"
    if "spikes_per_sample" in m:
        line += f"  {m['spikes_per_sample']:.3g} spikes/sample"
    return line + f"  {m['wall_s']:.1f} s"


def _default_log():
    """Print to stderr, from the first process only."""
    return lambda msg: print(msg, file=sys.stderr) if _rank() == 0 else None


def _start(protocol: Protocol, net: Network, out: Path, resume: bool, dtype, dev, log):
    """The state to train from: ``out``'s checkpoint when resuming (and there is one), else
    fresh parameters (``train.seed``) and zero momentum."""
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.is_file():
        ckpt = checkpoint.load(ckpt_path)
        engine = ckpt["protocol"].get("train", {}).get("engine", "rate")
        if engine != protocol.train.engine:
            raise ProtocolError(
                f"{ckpt_path}: written by the {engine!r} engine, but {protocol.source} trains "
                f"with train.engine = {protocol.train.engine!r}"
            )
        state = TrainState.from_checkpoint(ckpt, dev)
        log(f"resuming {ckpt_path} at epoch {state.epoch + 1}, batch {state.batch}")
        changed = protocol_changes(ckpt["protocol"], protocol.raw)
        if changed:  # allowed (e.g. more epochs), but never silent
            log(f"the protocol differs from the checkpoint's: {'; '.join(changed)}")
        return state
    if resume:
        log(f"no checkpoint in {out}: starting afresh")
    params = net.init_params(protocol.train.seed, dtype=dtype, device=dev)
    return TrainState(params, {k: torch.zeros_like(v) for k, v in params.items()})


def protocol_changes(old: dict, new: dict, where: str = "") -> list[str]:
    """``"section.key: old -> new"`` for every value that differs between two raw protocols
    (``None`` where a key is absent), in sorted key order."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{where}{key}"
        if isinstance(a, dict) or isinstance(b, dict):
            out += protocol_changes(a or {}, b or {}, f"{name}.")
        elif a != b:
            out.append(f"{name}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


def _record_epoch(protocol: Protocol, state: TrainState, out: Path, row: dict) -> None:
    """Append the epoch's metrics line, then checkpoint (a crash in between only repeats the
    epoch's line, which a resumed run truncates)."""
    with open(out / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")
    checkpoint.save(state.to_checkpoint(protocol), out / CHECKPOINT)


def _summary(protocol: Protocol, state: TrainState, out: Path, last: dict | None) -> dict:
    if last is None:  # resumed a finished run: report its last metrics
        last = _last_metrics(out / METRICS) or {}
    return {
        "protocol": protocol.name,
        "test_error": last.get("test_error"),
        "train_error": last.get("train_error"),
        "epochs": state.epoch,
        "wall_s": state.wall_s,
        "out": str(out),
        "paper": protocol.paper,
    }


def _check_complex(protocol: Protocol, net: Network):
    """Refuse, before training, an estimator that needs complex states on a network that is not
    holomorphic (it would fail at the first batch)."""
    est = protocol.estimator
    complex_states = (est.name == "holomorphic" and est.points > 2) or (
        est.name == "oscillation" and not est.real
    )
    if complex_states and not net.holomorphic:
        fix = "points = 2" if est.name == "holomorphic" else "real = true"
        raise ProtocolError(
            f"{protocol.source}: estimator.name: {est.name!r} needs complex states, but model "
            f"{protocol.model.name} uses {net.not_holomorphic}; set estimator.{fix} or use a "
            f"holomorphic model (sigmoid4, holotanh or tanh; softmax or avg pooling)"
        )


def _train_step(
    net, state, engine, protocol, train_set, idx, g, lrs, normalize, dtype, dev, sums, rank, world
):
    p = state.params
    B = len(idx)
    shard = idx[rank::world]
    images = train_set.images[idx]
    if protocol.data.augment:  # on the raw images: the padding is black, before normalisation
        # every process draws for the whole batch, so the generator stays in step across them
        images = data.augment(images, g, protocol.data.crop_padding, protocol.data.flip)
    images = images[rank::world]
    x, y = prepare_batch(
        net, images, train_set.labels[shard], train_set.classes, normalize, dtype, dev
    )
    s0 = None
    if state.persistent is not None:
        s0 = tuple(t[shard].to(dev) for t in state.persistent)
    with torch.no_grad():
        try:
            rates, grads, s, extra = engine.step(net, p, x, y, s0, g, rank)
            cost = net.cost(p, rates, y)
            wrong = (net.output(p, rates).argmax(1) != train_set.labels[shard].to(dev)).sum()
        except DivergenceError as err:
            raise TrainingError(
                f"epoch {state.epoch + 1}, batch {state.batch + 1}: {err}"
            ) from None
        if world > 1:  # mean over the global batch: weight each shard's mean by its size
            for v in grads.values():
                v.mul_(len(shard) / B)
                torch.distributed.all_reduce(v)
        loss = float(cost.sum())
        if not math.isfinite(loss) or not all(
            bool(torch.isfinite(v).all()) for v in grads.values()
        ):
            raise TrainingError(
                f"epoch {state.epoch + 1}, batch {state.batch + 1}: non-finite loss or gradient "
                f"(loss {loss}); lower the learning rates or beta. The last good checkpoint is "
                f"kept."
            )
        mu, wd = protocol.optimizer.momentum, protocol.optimizer.weight_decay
        for k, v in p.items():
            d = grads[k] if wd == 0 else grads[k].add(v, alpha=wd)
            buf = state.momentum[k]
            buf.mul_(mu).add_(d) if mu else buf.copy_(d)
            v.add_(buf, alpha=-_layer_lr(lrs, k))
    if state.persistent is not None:
        for table, si in zip(state.persistent, s):
            table[shard] = si.to(table.device, table.dtype)
    sums["loss"] += loss
    sums["wrong"] += float(wrong)
    sums["count"] += len(shard)
    for k, v in extra.items():  # batch means, averaged over the epoch's batches
        sums[k] = sums.get(k, 0.0) + v * len(shard) / B


def _progress_bar(
    progress: bool | None,
    main_process: bool,
    log,
    unit: str = "batch",
    every_s: float = PROGRESS_EVERY_S,
    clock=time.monotonic,
):
    """How an epoch's loop shows its progress: a tqdm bar on a terminal (``progress`` None or
    True); elsewhere (``progress`` None, not a terminal) a plain line through ``log`` at most every
    ``every_s`` seconds with the rate and the time the epoch's training has left; nothing with
    ``progress=False`` or off the first process. The rate is the one since the last line, so a
    change of load shows at once. The loop logs one line per epoch either way."""
    if progress is False or not main_process:
        return lambda it, *a: it
    if progress is None and not sys.stderr.isatty():

        def lines(it, epoch, epochs, n):
            last, done = clock(), it.start
            for b in it:
                yield b
                now = clock()
                if now - last >= every_s and b + 1 < n:
                    per = (now - last) / (b + 1 - done)  # the rate since the last line
                    log(
                        f"epoch {epoch + 1}/{epochs}  {unit} {b + 1}/{n}  {per:.3g} s/{unit}  "
                        f"about {_duration(per * (n - b - 1))} of training left in the epoch"
                    )
                    last, done = now, b + 1

        return lines
    from tqdm import tqdm

    def bar(it, epoch, epochs, n):
        return tqdm(
            it,
            total=n,
            initial=it.start,
            desc=f"epoch {epoch + 1}/{epochs}",
            unit=unit,
            leave=False,
            dynamic_ncols=True,
        )

    return bar


def _duration(seconds: float) -> str:
    """``seconds`` as ``1 h 05 min``, ``4 min 12 s`` or ``37 s``."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def _truncate_metrics(path: Path, epochs_done: int):
    """Keep the metric lines of the epochs the checkpoint covers (a resumed run redoes the rest)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln).get("epoch", 0) <= epochs_done]
    if len(kept) != len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        os.replace(tmp, path)


def _last_metrics(path: Path) -> dict | None:
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else None
