"""cpp_standalone: a chunk of samples compiled once, rerun with new data and weights.

:class:`Chunk` lowers the network for ``samples`` consecutive samples of one schedule (one copy of
the network, samples one after the other, the learning rule moving the weights after each), runs
Brian2's code generation and compiles the project once. :meth:`Chunk.run` then executes the binary
with the chunk's inputs and targets (the 2-D ``TimedArray`` s ``x_t`` and ``y_t``), the weights,
the biases and the learning rate passed as ``run_args``: nothing is regenerated or recompiled
between chunks, and each run starts from the weights the previous one returned. Each run also
starts from rest (``s = v = r = 0``); inside a run each sample starts where the last one ended.

Besides the weights, a run returns the output layer's rates of every sample's first window
(``rho0``, the free phase; the mean rate ``m`` when oscillating), recorded once per sample by a
``StateMonitor``: the spiking network's predictions, from which training reads its loss and
error (:mod:`spikeep.brian2.engine`).

The project lives under the cache folder ``$SPIKEEP_CACHE/brian2`` (default
``~/.cache/spikeep/brian2``), in a subfolder named by a hash of everything that shapes the code
(the spec's layers, activation and ``[spiking]`` section, the schedule, the rule, ``samples``,
``fast``): a later process with the same network regenerates identical sources, which Brian2
leaves untouched, so ``make`` has nothing to rebuild. The ``run_args`` arrays of a run are
deleted after it. An open chunk holds its folder (an exclusive ``flock`` on ``.in_use``, let go
by :meth:`Chunk.close` or the process's end): a second process with the same network, say a
second seed, takes the next free folder (``<name>-<hash>-1``, ...) and compiles there, since
rebuilding the binary under a running process makes that process's next run fail.

``fast=True`` (the default) lowers with ``build(fast=True)`` on the device of
:mod:`spikeep.brian2.kernels` (hand-written C++ for the input layer, the spike delivery, the
thresholder and the network loop; the same arithmetic as Brian2's generated code, which
``fast=False`` keeps) and has the binary write its result files to a memory file system
(:data:`RAM`, a folder removed by :meth:`Chunk.close`): on disk, each run truncated the last
run's files and waited for their write-back. ``benchmarks/brian2_sample.py --code both`` times
the two side by side (docs/benchmarks.md).

Brian2's device is global: while a :class:`Chunk` is open the process is in standalone mode.
Use it as a context manager (or call :meth:`Chunk.close`), which returns to runtime mode and
lets go of the chunk's Brian2 objects, so that the next chunk of the process gets the same
code-object names (and the cached sources) instead of ``<name>_1`` and a recompilation.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import brian2 as b2
import numpy as np
import torch

from ..spec import ModelSpec
from . import kernels
from .lowering import build, check_inputs
from .schedules import Schedule

__all__ = ["cache_dir", "claim", "Chunk", "RAM"]

#: Where a fast chunk's binary writes its result files (a memory file system), if it exists.
RAM = Path("/dev/shm")


def cache_dir() -> Path:
    """``$SPIKEEP_CACHE/brian2``, or ``~/.cache/spikeep/brian2``: never the working directory."""
    root = os.environ.get("SPIKEEP_CACHE") or Path.home() / ".cache" / "spikeep"
    return Path(root) / "brian2"


def _key(
    spec: ModelSpec, schedule: Schedule, samples: int, rule: str, seed: int, fast: bool
) -> str:
    shape = [(layer.name, layer.size) for layer in spec.layers]
    # the code's version (2: the output-rate monitor; 3: fast; 4: fast with Poisson input, its
    # spikes listed by kernels)
    version = (4 if spec.spiking.input != "current" else 3) if fast else 2
    text = repr(
        (
            shape,
            spec.activation,
            spec.spiking,
            schedule,
            samples,
            rule,
            seed,
            b2.__version__,
            version,
        )
    )
    threads = b2.prefs.devices.cpp_standalone.openmp_threads
    if threads:  # OpenMP changes every code object (0, the default, keeps the keys as they were)
        text += f" openmp_threads={threads}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def claim(directory: Path, spare: bool = True) -> tuple[Path, int]:
    """The project folder ``directory``, or with ``spare`` the first of ``directory-1``,
    ``directory-2``, ... that no other open chunk holds; created, and held by an exclusive
    ``flock`` on its ``.in_use`` file until the returned descriptor is closed.

    Raises:
        RuntimeError: ``directory`` is held and ``spare`` is false.
    """
    for n in range(1000):
        folder = directory if n == 0 else directory.with_name(f"{directory.name}-{n}")
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".in_use", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if not spare:
                raise RuntimeError(
                    f"the Brian2 project folder {folder} is in use by another process"
                ) from None
            continue
        return folder, fd
    raise RuntimeError(f"1000 copies of the Brian2 project folder {directory} are in use")


class Chunk:
    """``samples`` samples of ``schedule`` compiled into one cpp_standalone binary.

    Args:
        spec: a dense model spec with a ``[spiking]`` section.
        schedule: one sample's time course (:mod:`spikeep.brian2.schedules`).
        samples: samples per chunk (the ``TimedArray`` s have one row per sample).
        rule: ``endpoint`` or ``stdp``.
        seed: Brian2's random seed (Poisson input); part of the compiled code.
        directory: the project folder (default: under :func:`cache_dir`, or a spare copy of it
            while another process holds it, :func:`claim`); an explicit folder in use is an
            error.
        fast: lower with ``build(fast=True)`` (shared clocks, the input layer's hand-written
            C++): the same arithmetic as ``fast=False`` (Brian2's generated code only).

    Attributes:
        build_s: seconds spent generating and compiling (0 when nothing was recompiled).
        directory: the project folder.
    """

    def __init__(
        self,
        spec: ModelSpec,
        schedule: Schedule,
        samples: int,
        rule: str = "endpoint",
        seed: int = 0,
        directory: str | Path | None = None,
        fast: bool = True,
    ):
        if not (isinstance(samples, int) and samples >= 1):
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        self.spec, self.schedule, self.samples = spec, schedule, samples
        key = _key(spec, schedule, samples, rule, seed, fast)
        self.fast = fast
        folder = Path(directory) if directory else cache_dir() / f"{spec.name}-{key}"
        self.directory, self._hold = claim(folder, spare=directory is None)
        sizes = [layer.size for layer in spec.layers]
        params = {}
        for k in range(1, len(sizes)):
            params[f"W{k}"] = np.zeros((sizes[k], sizes[k - 1]))
            params[f"b{k}"] = np.zeros(sizes[k])
        start = time.perf_counter()
        device = kernels.DEVICE if fast else "cpp_standalone"
        b2.set_device(device, build_on_run=False, directory=str(self.directory))
        self._open = True
        try:
            b2.device.reinit()
            b2.device.activate(build_on_run=False, directory=str(self.directory))
            x = np.zeros((samples, 1, sizes[0]))
            y = np.zeros((samples, 1, sizes[-1]))
            self.net = build(
                spec, params, x, y, schedule, rule=rule, seed=seed, freeze=False, fast=fast
            )
            self.counters = [
                b2.SpikeMonitor(g, record=False, name=f"spikes{k}")
                for k, g in enumerate(self.net.groups)
                if "spike" in g.events
            ]
            # after the sample is closed (order 0) and the synapses updated (order 1)
            T = schedule.duration * b2.second
            clock = {"clock": self.net.sample_clock} if self.net.sample_clock else {"dt": T}
            self.monitor = b2.StateMonitor(
                self.net.groups[-1],
                schedule.accumulators[0],
                record=True,
                **clock,
                when="start",
                order=2,
                name="rates_out",
            )
            self.net.network.add(*self.counters, self.monitor)
            self.net.run()
            binary = self.directory / "main"
            before = binary.stat().st_mtime if binary.exists() else None
            b2.device.build(
                directory=str(self.directory), compile=True, run=False, with_output=False
            )
            self.compiled = before is None or binary.stat().st_mtime != before
            if fast and RAM.is_dir() and os.access(RAM, os.W_OK):
                # the binary rewrites every result file at each run: on disk, truncating the last
                # run's files waits for their write-back (most of a chunk's wall time under load)
                self._results = tempfile.mkdtemp(prefix=f"spikeep-{self.directory.name}-", dir=RAM)
                b2.get_device().results_dir = os.path.join(self._results, "")
        except BaseException:
            self.close()
            raise
        self.build_s = time.perf_counter() - start

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Leave standalone mode (back to Brian2's runtime device)."""
        if getattr(self, "_open", False):
            b2.device.reinit()
            b2.set_device("runtime")
            self._open = False
            # Brian2 names a code object "<name>_1" while one of that name is alive: the next
            # Chunk of this process would write new sources and compile them again (40 s here
            # instead of 3) unless these objects are gone first
            self.net = self.monitor = None
            self.counters = []
            gc.collect()
        if getattr(self, "_results", None):
            shutil.rmtree(self._results, ignore_errors=True)
            self._results = None
        self._let_go()

    def _let_go(self) -> None:
        """Release the project folder (:func:`claim`)."""
        if getattr(self, "_hold", None) is not None:
            os.close(self._hold)
            self._hold = None

    @property
    def binary_mtime(self) -> float:
        """Modification time of the compiled binary (unchanged by :meth:`run`)."""
        return (self.directory / "main").stat().st_mtime

    def run(self, x, y, params: dict, eta: float | dict[str, float] = 0.0) -> dict:
        """Run the chunk once.

        Args:
            x: inputs, shape ``(samples, n_0)``; y: targets, shape ``(samples, n_L)``.
            params: ``W1, b1, ...`` at the chunk's start (tensors or arrays).
            eta: learning rate (one, or per parameter name); 0 only measures.

        Returns:
            ``params`` (after the chunk, float64 tensors), ``gradient`` (the rule's estimate
            averaged over the chunk's samples), ``rates`` (the output layer's first-window
            rates per sample, units of ``r_max``, float64 tensor ``(samples, n_L)``), ``spikes``
            (per sample, all layers), ``run_s`` (wall seconds of the binary).
        """
        if not self._open:
            raise RuntimeError("this chunk is closed")
        net = self.net
        sizes = net.sizes
        x = np.asarray(x, dtype=np.float64).reshape(self.samples, sizes[0])
        check_inputs(x, self.spec.spiking)
        y = np.asarray(y, dtype=np.float64).reshape(self.samples, sizes[-1])
        lr = (lambda k: eta.get(k, 0.0)) if isinstance(eta, dict) else (lambda k: eta)  # noqa: E731
        run_args = {net.timed["x_t"]: x, net.timed["y_t"]: y}
        for k, syn in enumerate(net.synapses, start=1):
            b = params[f"b{k}"]
            b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
            run_args[syn.w] = net.to_synapses(k, params[f"W{k}"])
            run_args[net.groups[k].b] = b.astype(np.float64)
            run_args[syn.eta] = float(lr(f"W{k}"))
            run_args[net.groups[k].eta_b] = float(lr(f"b{k}"))
        start = time.perf_counter()
        try:
            b2.device.run(run_args=run_args, with_output=False)
        finally:
            for name in b2.device.run_args_arrays:  # the arrays and Brian2's lock files
                for suffix in ("", ".lock"):
                    (self.directory / "static_arrays" / (name + suffix)).unlink(missing_ok=True)
        run_s = time.perf_counter() - start
        net.done = self.samples
        # row 0 is the state at t = 0; row k + 1 closes sample k
        recorded = np.asarray(getattr(self.monitor, self.schedule.accumulators[0])[:])
        rates = recorded.reshape(sizes[-1], -1)[:, 1 : self.samples + 1].T.copy()
        return {
            "params": net.params(),
            "gradient": net.gradient(),
            "rates": torch.from_numpy(rates),
            "spikes": sum(int(c.num_spikes) for c in self.counters) / self.samples,
            "run_s": run_s,
        }
