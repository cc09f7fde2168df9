r"""Training with EP: the one loop that turns a protocol into trained weights and metrics.

One training step on a batch ``(x, y)`` of a batched engine::

    free  = the engine's free phase (from persistent states or zeros)
    g     = the engine's estimate of +dL/dtheta on (x, y)
    v     = momentum v + g + weight_decay theta                 (per parameter)
    theta = theta - lr_l v                                      (lr per coupling l, cosine-annealed)

An online engine (``Engine.online``, e.g. Brian2) takes a chunk of examples per step and moves
the parameters itself, sample by sample, with the same per-coupling learning rates; the loop keeps
its returned parameters. The loop never knows which engine runs: it builds the protocol's
``[train] engine`` from the registry (:mod:`spikeep.engine`) and asks it for steps, test metrics
and, at the end, to close.

Everything the loop carries is in :class:`~spikeep.checkpoint.TrainState` (parameters, momentum
buffers, the epoch and batch reached, the random generator's state, persistent free states,
running sums), and a checkpoint is exactly that state: a run resumed from a checkpoint reaches the
same weights as one that never stopped (same seed, CPU). Checkpoints are written atomically at the
end of every epoch (and every ``checkpoint_every`` steps); a non-finite loss, state or parameter
stops the run with :class:`TrainingError` and leaves the last good checkpoint in place.

Under ``torchrun --nproc_per_node=N`` every process takes its share of each batch
(``batch[rank::N]``) and the estimates are all-reduced (weighted by shard size), so N processes
reach the weights of one process with the same global batch, up to summation order.

State noise (``[estimator] noise``, rate engine): every relaxation of a training step (free and
nudged) adds Gaussian noise to the states at every step, drawn from a generator seeded per batch
from the epoch's generator, so a resumed run draws the same noise. Evaluation uses ``eval_noise``
(default: ``noise``) from a generator seeded by the seed and the epoch. With several processes
each rank draws its own noise (statistically the same run, not bit-for-bit).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from . import _dist, checkpoint, data, spec
from . import engine as engines
from ._dtypes import DTYPES
from .batches import (
    check_data,
    checkpoint_normalization,
    normalization,
    prepare_batch,
    score,
    subset,
)
from .checkpoint import TrainState
from .dynamics import DivergenceError
from .energy import Network
from .engine import Engine, RateEngine, Step, evaluate
from .protocol import (
    Protocol,
    ProtocolError,
    Train,
    check_against_model,
    eval_free_steps,
    layer_lr,
    learning_rates,
    protocol_changes,
)

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
    "checkpoint_normalization",
    "checkpoint_eval_steps",
]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
PROGRESS_EVERY_S = 60.0  # off a terminal, a progress line at most this often within an epoch

checkpoint_eval_steps = eval_free_steps  # the name scripts know


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, state or parameters)."""


def train(
    protocol: Protocol,
    out: str | Path,
    resume: bool = False,
    data_dir: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
    log=None,
) -> dict:
    """Run ``protocol`` with its engine, writing ``out/metrics.jsonl`` and ``out/checkpoint.pt``.

    Returns the summary dict (``test_error``, ``train_error``, ``epochs``, ``wall_s``, ``out``).
    ``log(line)`` gets one line per epoch (default: stderr); within an epoch ``progress`` picks a
    tqdm bar (True; None on a terminal), a plain line through ``log`` every minute (None off a
    terminal) or nothing (False).
    """
    log = log or _default_log()
    net = Network(spec.load(protocol.model))
    engine = engines.get(protocol.train.engine)(protocol, net)  # refuses what it cannot train
    engine.log = log  # what the engine reports (a compilation, say) goes where the epochs go
    check_against_model(protocol, len(net.couplings))
    owns_group = _dist.world() > 1 and not torch.distributed.is_initialized()
    if owns_group:
        backend = "nccl" if (device or protocol.train.device).startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
    # a process that exits with gloo's threads still running aborts ("terminate called without
    # an active exception"), so the group is torn down explicitly, after every rank is done
    try:
        summary = _run(protocol, net, engine, Path(out), resume, data_dir, device, progress, log)
    except BaseException:
        if owns_group:  # no barrier: the other ranks may be waiting in a collective
            torch.distributed.destroy_process_group()
        raise
    finally:
        engine.close()
    if owns_group:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary


def _run(protocol, net, engine, out, resume, data_dir, device, progress, log) -> dict:
    world, rank = _dist.world(), _dist.rank()
    main_process = rank == 0
    dev = engine.device(device)
    dtype = DTYPES[net.spec.dtype]
    data_dir = data_dir or protocol.data.dir
    train_set = subset(data.load(protocol.data.name, "train", data_dir), protocol.data.train_subset)
    test_set = subset(data.load(protocol.data.name, "test", data_dir), protocol.data.test_subset)
    check_data(net, train_set, protocol)
    normalize = normalization(protocol.data.name, protocol.data.normalize, protocol.data.std_scale)
    if protocol.train.persistent and world > 1:
        raise ProtocolError("persistent free states are not supported with more than one process")
    B, key = engine.samples_per_step()
    n_batches = len(train_set.labels) // B
    if n_batches == 0:
        raise ProtocolError(
            f"{protocol.source}: {key}: {B} is larger than the {len(train_set.labels)} training "
            f"examples"
        )

    state = _start(protocol, net, out, resume, dtype, dev, log)
    if protocol.train.persistent and state.persistent is None:
        n = len(train_set.labels)
        state.persistent = [
            torch.zeros(n, *layer.shape, dtype=dtype) for layer in net.spec.dynamic_layers
        ]
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(out / METRICS, state.epoch)

    show = _progress_bar(progress, main_process, log, unit=engine.unit)
    last = None
    for epoch in range(state.epoch, protocol.train.epochs):
        t_epoch = time.perf_counter()
        lrs = learning_rates(protocol, epoch)
        g = _epoch_generator(protocol.train.seed, epoch)
        perm = torch.randperm(len(train_set.labels), generator=g)
        if state.batch > 0 and state.generator is not None:
            g.set_state(state.generator)
        sums = _sums(state.sums, B)
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
        totals = dict(zip(keys, _dist.all_reduce([sums[k] for k in keys], world), strict=True))
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


def _sums(saved: dict | None, B: int) -> dict:
    """The epoch's running sums: fresh, or a mid-epoch checkpoint's (older spikeeps named some
    differently: the rate engine's ``residual``, the Brian2 loop's spike and time totals)."""
    sums = saved or {"loss": 0.0, "wrong": 0.0, "count": 0.0}
    if "residual" in sums:
        sums["free_residual"] = sums.pop("residual")
    if "run_s" in sums:  # totals over samples -> sums of per-chunk means
        sums["ms_per_sample"] = 1e3 * sums.pop("run_s") / B
        sums["spikes_per_sample"] = sums.pop("spikes") / B
    return sums


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


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
    if "ms_per_sample" in m:
        line += f"  {m['ms_per_sample']:.3g} ms/sample"
    return line + f"  {m['wall_s']:.1f} s"


def _default_log():
    """Print to stderr, from the first process only."""
    return lambda msg: print(msg, file=sys.stderr) if _dist.rank() == 0 else None


def _start(protocol: Protocol, net: Network, out: Path, resume: bool, dtype, dev, log):
    """The state to train from: ``out``'s checkpoint when resuming (and there is one), else
    fresh parameters (``train.seed``) and zero momentum."""
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.is_file():
        ckpt = checkpoint.load(ckpt_path)
        engine = ckpt["protocol"].get("train", {}).get("engine", Train.engine)
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
    where = f"epoch {state.epoch + 1}, {engine.unit} {state.batch + 1}"
    with torch.no_grad():
        try:
            lr = {k: layer_lr(lrs, k) for k in p}
            step = engine.step(net, p, x, y, s0, g, rank, lr)
            cost = net.cost(p, step.rates, y)
            wrong = (net.output(p, step.rates).argmax(1) != train_set.labels[shard].to(dev)).sum()
        except DivergenceError as err:
            raise TrainingError(f"{where}: {err}") from None
        loss = float(cost.sum())
        if step.params is not None:  # an online engine moved the parameters itself
            if not all(bool(torch.isfinite(v).all()) for v in step.params.values()):
                raise TrainingError(
                    f"{where}: non-finite weights; lower the learning rates or beta. The last "
                    f"good checkpoint is kept."
                )
            state.params = p = step.params
        else:
            _descend(state, step.grads, protocol, lrs, loss, where, len(shard) / B, world)
    if state.persistent is not None:
        for table, si in zip(state.persistent, step.s):
            table[shard] = si.to(table.device, table.dtype)
    sums["loss"] += loss
    sums["wrong"] += float(wrong)
    sums["count"] += len(shard)
    for k, v in step.extra.items():  # step means, averaged over the epoch's steps
        sums[k] = sums.get(k, 0.0) + v * len(shard) / B


def _descend(state, grads, protocol, lrs, loss, where, share, world) -> None:
    """Momentum SGD with weight decay on the all-reduced estimate ``grads`` (this process's
    ``share`` of the batch)."""
    if world > 1:  # mean over the global batch: weight each shard's mean by its size
        for v in grads.values():
            v.mul_(share)
            torch.distributed.all_reduce(v)
    if not math.isfinite(loss) or not all(bool(torch.isfinite(v).all()) for v in grads.values()):
        raise TrainingError(
            f"{where}: non-finite loss or gradient (loss {loss}); lower the learning rates or "
            f"beta. The last good checkpoint is kept."
        )
    mu, wd = protocol.optimizer.momentum, protocol.optimizer.weight_decay
    for k, v in state.params.items():
        d = grads[k] if wd == 0 else grads[k].add(v, alpha=wd)
        buf = state.momentum[k]
        buf.mul_(mu).add_(d) if mu else buf.copy_(d)
        v.add_(buf, alpha=-layer_lr(lrs, k))


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
