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
stops the run with :class:`TrainingError` and leaves the last good checkpoint in place, as
running out of memory does (:class:`OutOfMemory`, which names the batch size to lower).

Under ``torchrun --nproc_per_node=N`` every process takes its share of each batch
(``batch[rank::N]``) and the estimates are all-reduced (weighted by shard size), so N processes
reach the weights of one process with the same global batch, up to summation order.

State noise (``[estimator] noise``, rate engine): every relaxation of a training step (free and
nudged; the free phase only with ``free_noise``, the default) adds Gaussian noise to the states at
every step, independently per sample or, with ``noise_shared``, one draw per neuron and step for
the whole batch, drawn from a generator seeded per batch from the epoch's generator, so a resumed
run draws the same noise. Evaluation uses ``eval_noise``
(default: ``noise``) from a generator seeded by the seed and the epoch. With several processes
each rank draws its own noise (statistically the same run, not bit-for-bit).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from functools import partial
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
    split_train,
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
    "OutOfMemory",
    "OutputError",
    "Interrupted",
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
EPOCHS = "epochs"  # [train] keep_epochs: epoch_E.pt, the checkpoint as it was after epoch E
LOCK = ".lock"  # held by the run writing the folder: "<pid> <host>"
PROGRESS_EVERY_S = 60.0  # off a terminal, a progress line at most this often within an epoch

checkpoint_eval_steps = eval_free_steps  # the name scripts know


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, state or parameters)."""


class Diverged(TrainingError):
    """A step whose relaxation diverged, or whose estimate, loss or moved weights were not finite;
    nothing was updated. It stops the run, or with ``[train] on_divergence = "skip"`` the batch
    is skipped and counted (``skipped`` in ``metrics.jsonl``)."""


class OutOfMemory(TrainingError):
    """The run ran out of memory (CPU or GPU); the message says which, at what batch size, and
    how to go on. The last checkpoint is kept as it was."""


class OutputError(ValueError):
    """An output folder the run may not write: a file, read-only, holding another run (without
    ``resume`` or ``overwrite``), or locked by a run in progress."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM (a scheduler's or a session's stop) stopped the run after its
    last finished step, whose state was saved: ``resume=True`` continues it exactly.
    ``checkpoint`` is the file, ``epoch`` (0-based) and ``batch`` (steps done in it) where the
    run stopped, ``signum`` the signal that asked."""

    def __init__(self, checkpoint: Path, epoch: int, batch: int, signum: int = signal.SIGINT):
        super().__init__(f"interrupted at epoch {epoch + 1}, batch {batch}; saved {checkpoint}")
        self.checkpoint, self.epoch, self.batch = checkpoint, epoch, batch
        self.signum = signum


def train(
    protocol: Protocol,
    out: str | Path,
    resume: bool = False,
    data_dir: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
    log=None,
    overwrite: bool = False,
) -> dict:
    """Run ``protocol`` with its engine, writing ``out/metrics.jsonl`` and ``out/checkpoint.pt``.

    Returns the summary dict (``test_error``, ``train_error``, ``epochs``, ``wall_s``, ``out``).
    ``log(line)`` gets one line per epoch (default: stderr); within an epoch ``progress`` picks a
    tqdm bar (True; None on a terminal), a plain line through ``log`` every minute (None off a
    terminal) or nothing (False).

    ``out`` may not hold another run (a checkpoint or metrics) unless ``resume`` (continue it) or
    ``overwrite`` (start afresh over it); a lock file (``out/.lock``, the writer's pid) refuses a
    second run into the same folder while the first runs. A resumed run uses the model spec
    stored in its checkpoint. Ctrl-C (SIGINT) or SIGTERM (one process) stops the run after the
    step in progress, saves its state and raises :class:`Interrupted`.
    """
    log = log or _default_log()
    out = Path(out)
    lock = _Lock(out, resume, overwrite) if _dist.rank() == 0 else None
    try:
        ckpt = _resumable(out, resume, log)
        model = _model_spec(protocol, ckpt, out, log)
        net = Network(model)
        engine = engines.get(protocol.train.engine)(protocol, net)  # refuses what it cannot train
        engine.log = log  # what the engine reports (a compilation, say) goes where the epochs go
        # [train] eval_engines: the same weights tested by other engines' free phases
        names = [n for n in protocol.train.eval_engines if n != protocol.train.engine]
        others = [engines.get(n)(protocol, net, False) for n in names]
        check_against_model(protocol, len(net.couplings))
        owns_group = _dist.world() > 1 and not torch.distributed.is_initialized()
        if owns_group:
            backend = "nccl" if (device or protocol.train.device).startswith("cuda") else "gloo"
            torch.distributed.init_process_group(backend)
        # a process that exits with gloo's threads still running aborts ("terminate called
        # without an active exception"), so the group is torn down explicitly, after every rank
        # is done
        try:
            summary = _run(
                protocol, net, engine, out, ckpt, data_dir, device, progress, log, overwrite, others
            )
        except BaseException as err:
            if owns_group:  # no barrier: the other ranks may be waiting in a collective
                torch.distributed.destroy_process_group()
            ran_out = _ran_out(err, engine.device(device))
            if ran_out is None:
                raise
            B, key = engine.samples_per_step()
            raise OutOfMemory(
                f"out of {ran_out} with {key} = {B} ({engine.name} engine); lower it (--set "
                f"{key}=N) or use a smaller model. The last checkpoint in {out}, if any, is kept."
            ) from None
        finally:
            for e in (engine, *others):
                e.close()
        if owns_group:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        return summary
    finally:
        if lock is not None:
            lock.release()


_ASKED = re.compile(r"allocate:? (?:(\d+) bytes|([\d.]+ ?[KMGTPE]?i?B))", re.IGNORECASE)


def _ran_out(err: BaseException, dev: torch.device) -> str | None:
    """What ran out when ``err`` is a failed allocation (``"CPU memory (asked for 2.00 GiB)"``):
    Python's or numpy's MemoryError, torch's OutOfMemoryError (CUDA) or its CPU allocator's
    RuntimeError; None for any other error."""
    text = str(err)
    if isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in text.lower()
    ):
        what = f"{dev.type.upper()} memory" if dev.type != "cpu" else "memory"
    elif isinstance(err, RuntimeError) and "can't allocate memory" in text:
        what = "CPU memory"  # torch's CPU allocator
    elif isinstance(err, MemoryError):
        what = "memory"
    else:
        return None
    asked = _ASKED.search(text)
    if asked is None:
        return what
    size = _bytes(int(asked[1])) if asked[1] else asked[2]
    return f"{what} (asked for {size})"


def _bytes(n: int) -> str:
    """``n`` bytes as ``"36.4 TiB"``."""
    units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    k = min(len(units) - 1, max(0, (n.bit_length() - 1) // 10))
    return f"{n / 2 ** (10 * k):.3g} {units[k]}"


def _resumable(out: Path, resume: bool, log) -> dict | None:
    """The checkpoint to resume from (``resume`` and one in ``out``), else None."""
    path = out / CHECKPOINT
    if not resume:
        return None
    if not path.is_file():
        log(f"no checkpoint in {out}: starting afresh")
        return None
    return checkpoint.load(path)


def _model_spec(protocol: Protocol, ckpt: dict | None, out: Path, log) -> spec.ModelSpec:
    """The protocol's model spec, or a resumed run's: the one its checkpoint stores (the file
    named by the protocol is compared with it, one warning line when they differ)."""
    if ckpt is None or not ckpt.get("model_spec"):
        return spec.load(protocol.model)
    return checkpoint.model_spec({**ckpt, "model_source": str(protocol.model)}, log)


class _Lock:
    """``out/.lock``, created exclusively and holding ``"<pid> <host>"``; a lock whose process is
    gone (same host, no such pid) is stale and taken over. Made only after ``out`` is checked
    (:func:`_check_out`), and an output folder this lock created and nothing else filled is
    removed again on release."""

    def __init__(self, out: Path, resume: bool, overwrite: bool):
        _check_out(out, resume, overwrite)
        self.created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"{out}: cannot create the output folder ({_reason(err)})") from None
        self.out, self.path = out, out / LOCK
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _lock_holder(self.path)
                if holder is not None:
                    raise OutputError(
                        f"{out}: another run ({holder}) is writing there (lock {self.path}); wait "
                        f"for it or use another --out (delete the lock if that run is gone)"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except OSError as err:
                self._undo()
                raise OutputError(f"{out}: cannot write there ({_reason(err)})") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
            break
        else:
            raise OutputError(f"{out}: could not take the lock {self.path}")
        # what killed runs left: temporary checkpoints (only this run writes here now)
        checkpoint.remove_temporaries(out / CHECKPOINT)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        self._undo()

    def _undo(self) -> None:
        if self.created:
            try:
                self.out.rmdir()  # only when empty: nothing of the run's is lost
            except OSError:
                pass


def _lock_holder(path: Path) -> str | None:
    """``"pid N on HOST"`` of a live run holding the lock at ``path``; None when it is stale
    (its process is gone, or the file is unreadable or empty)."""
    try:
        pid_text, _, host = path.read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if host and host != socket.gethostname():
        return f"pid {pid} on {host}"  # another machine: cannot tell, so it holds
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return f"pid {pid}"


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an output folder that is a file, or that holds a run neither resumed nor
    overwritten."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: a file, expected a folder")
    held = [name for name in (CHECKPOINT, METRICS) if (out / name).exists()]
    if held and not (resume or overwrite):
        raise OutputError(
            f"{out} already holds a run ({', '.join(held)}); pass --resume to continue it, "
            f"--overwrite to start it again, or another --out"
        )


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _run(
    protocol, net, engine, out, ckpt, data_dir, device, progress, log, overwrite, others=()
) -> dict:
    world, rank = _dist.world(), _dist.rank()
    main_process = rank == 0
    dev = engine.device(device)
    dtype = DTYPES[net.spec.dtype]
    data_dir = data_dir or protocol.data.dir
    train_set, val_set = split_train(
        data.load(protocol.data.name, "train", data_dir),
        protocol.data.validation,
        protocol.data.train_subset,
        protocol.train.seed,
        protocol.source,
    )
    test_set = subset(data.load(protocol.data.name, "test", data_dir), protocol.data.test_subset)
    check_data(net, train_set, protocol)
    normalize = normalization(protocol.data.name, protocol.data.normalize, protocol.data.std_scale)
    if protocol.train.persistent and world > 1:
        raise ProtocolError("persistent free states are not supported with more than one process")
    skip = protocol.train.on_divergence == "skip"
    if skip and world > 1:  # a rank that skips would leave the others waiting in all_reduce
        raise ProtocolError(
            f"{protocol.source}: train.on_divergence: 'skip' is not supported with more than one "
            f"process ({world}); use 'stop'"
        )
    B, key = engine.samples_per_step()
    n_batches = len(train_set.labels) // B
    if n_batches == 0:
        raise ProtocolError(
            f"{protocol.source}: {key}: {B} is larger than the {len(train_set.labels)} training "
            f"examples"
        )

    state = _start(protocol, net, out, ckpt, dtype, dev, log)
    if protocol.train.persistent and state.persistent is None:
        n = len(train_set.labels)
        state.persistent = [
            torch.zeros(n, *layer.shape, dtype=dtype) for layer in net.spec.dynamic_layers
        ]
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is None and overwrite:  # starting again: the old run's files go now
            for name in (CHECKPOINT, METRICS):
                (out / name).unlink(missing_ok=True)
            for kept in (out / EPOCHS).glob("epoch_*.pt"):
                kept.unlink()
        _truncate_metrics(out / METRICS, state.epoch)
    log(
        f"data: {protocol.data.name} ({len(train_set.labels)} training, "
        + (f"{len(val_set.labels)} validation, " if val_set else "")
        + f"{len(test_set.labels)} test images) from {data.location(protocol.data.name, data_dir)}"
    )

    def save(*paths: Path):
        """Write the state once built to each path (default: the run's checkpoint)."""
        ckpt = state.to_checkpoint(protocol, net.spec.raw)
        for path in paths or (out / CHECKPOINT,):
            checkpoint.save(ckpt, path)

    show = _progress_bar(progress, main_process, log, unit=engine.unit)
    last = None
    with _Deferred(world == 1, log) as stop:
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
                try:
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
                except Diverged as err:
                    if not skip:
                        raise
                    sums["skipped"] = sums.get("skipped", 0) + 1
                    log(f"{err}; skipped: no update from this batch (train.on_divergence)")
                state.batch = b + 1
                every = protocol.train.checkpoint_every
                due = every and state.batch % every == 0
                if (due or stop.requested) and state.batch < n_batches:
                    state.generator, state.sums = g.get_state(), dict(sums)
                    state.wall_s += time.perf_counter() - t_epoch
                    t_epoch = time.perf_counter()
                    if main_process:
                        save()
                    if stop.requested:
                        raise Interrupted(out / CHECKPOINT, epoch, state.batch, stop.signum)
            tested = _test_due(protocol, epoch)
            if _plain_lines(progress, main_process) and (tested or val_set is not None):
                log(
                    _testing_line(
                        protocol, epoch, engine, others, test_set if tested else None, val_set
                    )
                )
            t_test = time.perf_counter()
            evaluation = {}
            if tested:  # [train] test_every
                evaluation = engine.evaluate(
                    net, state.params, test_set, normalize, (rank, world), epoch
                )
                for other in others:  # test_error_<engine>, test_loss_<engine>, ...
                    e = other.evaluate(net, state.params, test_set, normalize, (rank, world), epoch)
                    evaluation |= {f"{k}_{other.name}": v for k, v in e.items()}
            if val_set is not None:  # scored as the test images are: val_error, val_loss, ...
                e = engine.evaluate(net, state.params, val_set, normalize, (rank, world), epoch)
                evaluation |= {f"val{k[4:]}": v for k, v in e.items() if k.startswith("test_")}
            test_s = time.perf_counter() - t_test
            keys = sorted(sums)  # the same keys on every rank
            totals = dict(zip(keys, _dist.all_reduce([sums[k] for k in keys], world), strict=True))
            state.wall_s += time.perf_counter() - t_epoch
            n = totals["count"]
            if n == 0:  # only with on_divergence = "skip"
                raise Diverged(f"epoch {epoch + 1}: every batch diverged and was skipped")
            counts = ("loss", "wrong", "count", "skipped")
            extra = {k: totals[k] / max(1.0, n / B) for k in keys if k not in counts}
            if skip:  # batches skipped this epoch (a count, not a mean)
                extra["skipped"] = int(totals.get("skipped", 0))
            last = {
                "epoch": epoch + 1,
                **engine.tag,
                "loss": totals["loss"] / n,
                "train_error": 100.0 * totals["wrong"] / n,
                **evaluation,
                **extra,
                "lr": list(lrs),
                "wall_s": state.wall_s,
                "threads": torch.get_num_threads(),  # per process (spikeep._threads)
            }
            state.epoch, state.batch, state.generator, state.sums = epoch + 1, 0, None, None
            if main_process:
                paths = [out / CHECKPOINT]
                if state.epoch > protocol.train.epochs - protocol.train.keep_epochs:
                    paths.append(out / EPOCHS / f"epoch_{state.epoch}.pt")  # [train] keep_epochs
                _record_epoch(state, out, last, partial(save, *paths))
                log(_epoch_line(protocol, last, test_s))
            if stop.requested and state.epoch < protocol.train.epochs:
                raise Interrupted(out / CHECKPOINT, state.epoch, 0, stop.signum)
    return _summary(protocol, state, out, last)


class _Deferred:
    """While active (one process, the main thread), the first Ctrl-C (SIGINT) or SIGTERM only
    sets ``requested`` (and ``signum``), so the loop finishes its step, saves a consistent state
    and stops; a second one interrupts at once (KeyboardInterrupt, nothing saved beyond the last
    checkpoint)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, active: bool, log):
        self.active = active and threading.current_thread() is threading.main_thread()
        self.log, self.requested, self.signum, self.previous = log, False, None, {}

    def __enter__(self):
        if self.active:
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        self.log(
            f"{signal.Signals(signum).name}: stopping after this step to save it "
            f"(a second one stops at once)"
        )

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False


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


def _epoch_line(protocol: Protocol, m: dict, test_s: float) -> str:
    """The epoch's metrics ``m`` as one line, ending with the run's wall time and how long this
    epoch's test passes took (``test_s``; a spiking pass over 10,000 images takes minutes)."""
    line = (
        f"epoch {m['epoch']}/{protocol.train.epochs}  loss {m['loss']:.4f}  "
        f"train error {m['train_error']:.2f}%  "
        + (f"val error {m['val_error']:.2f}%  " if "val_error" in m else "")
        + (f"test error {m['test_error']:.2f}%" if "test_error" in m else "not tested")
    )
    if "test_error_rate" in m:
        line += f" (spiking), {m['test_error_rate']:.2f}% (rate)"
    for key in sorted(k for k in m if k.startswith("test_error_") and k != "test_error_rate"):
        line += f", {m[key]:.2f}% ({key.removeprefix('test_error_')})"
    if "free_residual" in m:
        line += f"  residual {m['free_residual']:.1e}"
    if m.get("skipped"):
        line += f"  {m['skipped']} diverged batches skipped"
    if "spikes_per_sample" in m:
        line += f"  {m['spikes_per_sample']:.3g} spikes/sample"
    if "ms_per_sample" in m:
        line += f"  {m['ms_per_sample']:.3g} ms/sample"
    return line + f"  {m['wall_s']:.1f} s (testing {_duration(test_s)})"


def _default_log():
    """Print to stderr, from the first process only."""
    return lambda msg: print(msg, file=sys.stderr) if _dist.rank() == 0 else None


def _start(protocol: Protocol, net: Network, out: Path, ckpt: dict | None, dtype, dev, log):
    """The state to train from: the checkpoint ``ckpt`` when resuming, else fresh parameters
    (``train.seed``) and zero momentum."""
    if ckpt is not None:
        ckpt_path = out / CHECKPOINT
        engine = ckpt["protocol"].get("train", {}).get("engine", Train.engine)
        if engine != protocol.train.engine:
            raise ProtocolError(
                f"{ckpt_path}: written by the {engine!r} engine, but {protocol.source} trains "
                f"with train.engine = {protocol.train.engine!r}"
            )
        checkpoint.check_params(ckpt, net, ckpt_path)
        state = TrainState.from_checkpoint(ckpt, dev)
        log(f"resuming {ckpt_path} at epoch {state.epoch + 1}, batch {state.batch}")
        changed = protocol_changes(ckpt["protocol"], protocol.raw)
        if changed:  # allowed (e.g. more epochs), but never silent
            log(f"the protocol differs from the checkpoint's: {'; '.join(changed)}")
        return state
    if protocol.train.init:
        params = _init_params(protocol.train.init, net, dtype, dev, log)
    else:
        params = net.init_params(protocol.train.seed, dtype=dtype, device=dev)
    return TrainState(params, {k: torch.zeros_like(v) for k, v in params.items()})


def _init_params(path: str, net: Network, dtype, dev, log) -> dict:
    """``[train] init``: the parameters of another run's checkpoint (any engine's, e.g. a rate
    run fine-tuned in spikes), which must have the model's shapes; the new run keeps its own
    model spec, momentum starts at zero and the schedule at epoch 1."""
    ckpt = checkpoint.load(path)
    checkpoint.check_params(ckpt, net, path)
    engine = ckpt["protocol"].get("train", {}).get("engine", Train.engine)
    log(f"starting from the parameters of {path} ({engine} engine, epoch {ckpt['epoch']})")
    stored = ckpt.get("model_spec")
    changed = protocol_changes(stored, net.spec.raw) if stored else []
    if changed:  # e.g. max pooling trained, average pooling now: allowed, never silent
        log(f"its model spec differs from this run's: {'; '.join(changed)}")
    return {k: v.to(device=dev, dtype=dtype) for k, v in ckpt["params"].items()}


def _record_epoch(state: TrainState, out: Path, row: dict, save) -> None:
    """Append the epoch's metrics line, then checkpoint (a crash in between only repeats the
    epoch's line, which a resumed run truncates)."""
    with open(out / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")
    save()


def _summary(protocol: Protocol, state: TrainState, out: Path, last: dict | None) -> dict:
    if last is None:  # resumed a finished run: report its last metrics
        last = _last_metrics(out / METRICS) or {}
    return {
        "protocol": protocol.name,
        "test_error": last.get("test_error"),
        "train_error": last.get("train_error"),
        **({"val_error": last["val_error"]} if "val_error" in last else {}),
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
            cost, output = net.cost_and_output(p, step.rates, y)
            wrong = (output.argmax(1) != train_set.labels[shard].to(dev)).sum()
        except DivergenceError as err:
            raise Diverged(f"{where}: {err}") from None
        loss = float(cost.sum())
        if step.params is not None:  # an online engine moved the parameters itself
            if not _finite(step.params.values()):
                raise Diverged(
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
    if not (math.isfinite(loss) and _finite(grads.values())):
        raise Diverged(
            f"{where}: non-finite loss or gradient (loss {loss}); lower the learning rates or "
            f"beta. The last good checkpoint is kept."
        )
    mu, wd = protocol.optimizer.momentum, protocol.optimizer.weight_decay
    for k, v in state.params.items():
        buf = state.momentum[k]
        torch.add(grads[k], buf, alpha=mu, out=buf) if mu else buf.copy_(grads[k])  # one pass
        if wd:
            buf.add_(v, alpha=wd)
        v.add_(buf, alpha=-layer_lr(lrs, k))


def _finite(tensors) -> bool:
    """Whether every element of ``tensors`` is finite, with one sum per tensor and one
    synchronisation (a NaN or an infinity makes a sum non-finite; so would finite elements whose
    sum passes the dtype's largest value, which only a diverged run has)."""
    return math.isfinite(float(torch.stack([v.sum() for v in tensors]).sum()))


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
    if _plain_lines(progress, main_process):

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


def _plain_lines(progress: bool | None, main_process: bool) -> bool:
    """Whether the run shows its progress as plain log lines (off a terminal, the default)."""
    return progress is None and main_process and not sys.stderr.isatty()


def _test_due(protocol: Protocol, epoch: int) -> bool:
    """Whether epoch ``epoch`` (from 0) ends with a pass over the test set: every
    ``[train] test_every``-th epoch, and always the last one (``test_every = 0``: only the last)."""
    every, last = protocol.train.test_every, protocol.train.epochs - 1
    return epoch == last or (every > 0 and (epoch + 1) % every == 0)


def _testing_line(protocol: Protocol, epoch: int, engine, others, test_set, val_set) -> str:
    """The line announcing the epoch's test passes: which engine, on how many images (no test
    pass when ``test_set`` is None)."""
    passes = []
    if test_set is not None:
        n = len(test_set.labels)
        passes = [f"{e.name} on {n:,} test images" for e in (engine, *others)]
    if val_set is not None:
        passes.append(f"{engine.name} on {len(val_set.labels):,} validation images")
    return f"epoch {epoch + 1}/{protocol.train.epochs}  training done; testing: {', '.join(passes)}"


def _duration(seconds: float) -> str:
    """``seconds`` as ``1 h 05 min``, ``4 min 12 s`` or ``37 s``."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def _metric_rows(path: Path) -> list[str]:
    """The complete metric lines of ``path``: a last line cut short (a process killed while
    writing it) is dropped; a damaged line elsewhere is refused in one line."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        try:
            json.loads(ln)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                return lines[:-1]
            raise OutputError(f"{path}: line {i + 1} is not JSON ({ln[:40]!r})") from None
    return lines


def _truncate_metrics(path: Path, epochs_done: int):
    """Keep the metric lines of the epochs the checkpoint covers (a resumed run redoes the rest)."""
    if not path.is_file():
        return
    text = path.read_text()
    lines = _metric_rows(path)
    kept = [ln for ln in lines if json.loads(ln).get("epoch", 0) <= epochs_done]
    if "".join(ln + "\n" for ln in kept) != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        os.replace(tmp, path)


def _last_metrics(path: Path) -> dict | None:
    if not path.is_file():
        return None
    lines = _metric_rows(path)
    return json.loads(lines[-1]) if lines else None
