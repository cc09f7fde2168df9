"""The snntorch engine against the rate engine on the spiking convnet, before and after the speed
work, side by side in one run.

The problem: ``--model`` (default ``models/snn_conv_mnist_ce.toml``: 1-32-64 convnet, 2x2 average
pooling, hard sigmoid, cross-entropy readout) at its initial weights (seed 0), float32, the first
``--batch`` embedded MNIST training images. One EP training step (free phase + symmetric
estimate, beta 1), as the protocols run it:

- ``rate``: ``relax`` 30 free steps + the symmetric estimator, 10 nudged steps per side
  (``protocols/mnist_conv.toml``): 50 dynamics steps;
- ``snntorch``: three spiking phases of 30 + 50 steps, traces of tau 4 steps
  (``protocols/snn_mnist_conv.toml``): 240 steps.

Each engine runs in two versions of spikeep's code, interleaved round by round:

- ``before``: a conv followed by average pooling as conv, then the pool's windows (reshape and
  copies), the adjoint through the windows; spiking neurons stepped by snntorch's ``Leaky`` with
  new tensors every step (``simulate(..., reference=True)``);
- ``after``: the conv and its 2x2 average pool folded into one stride-2 conv (and its transposed
  conv for the feedback, :class:`spikeep.couplings.Conv`), torch's own pooling where pooling is
  left, the fused in-place neuron, trace and count update (:func:`spikeep.snn.phases._advance`).

Both versions give the same spikes up to the fold's rounding (the neuron update is bitwise
snntorch's). Prints ms per training sample, ms per dynamics step (per batch) and the
snntorch / rate ratio, per version; with ``--fidelity`` also each estimate's cosine with the
converged symmetric EP estimate (rate engine, 400 free and 100 nudged steps per side) and the
spiking estimate at shorter phases. One thread (``OMP_NUM_THREADS=1``); the machine's load moves
times by 2x, so read the ratios::

    OMP_NUM_THREADS=1 python benchmarks/snn_conv.py [--batch 100] [--repeats 3] [--fidelity]

``--settings`` instead times, interleaved with the working tree's code, the rate engine's step
and the spiking step at each of :data:`SETTINGS` (trace tau, the free phase's settle + window,
the nudged phases' ``nudged_settle`` + ``nudged_window``), with each estimate's cosine with the
converged one on ``--batches`` batches (the first ``--batch`` images, the next, ...), at the
initial weights or a run's (``--checkpoint``)::

    OMP_NUM_THREADS=1 python benchmarks/snn_conv.py --settings [--batches 3] [--checkpoint CKPT]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikeep import checkpoint, data, estimators, pooling, spec  # noqa: E402
from spikeep.dynamics import relax  # noqa: E402
from spikeep.energy import Network  # noqa: E402
from spikeep.gradcheck import compare  # noqa: E402
from spikeep.snn import SNNConfig, phases  # noqa: E402
from spikeep.snn import estimators as snn_estimators  # noqa: E402

MODEL = ROOT / "models" / "snn_conv_mnist_ce.toml"
RATE = (30, 10)  # free, nudged steps per side (mnist_conv)
SNN = (4.0, 30, 50)  # tau, settle, window per phase (snn_mnist_conv)
SHORTER = [(4.0, 15, 25), (2.0, 10, 20)]  # --fidelity: shorter spiking phases
# --settings: (tau, settle, window, nudged_settle, nudged_window); None: the free phase's
SETTINGS = [
    (4.0, 30, 50, None, None),  # the protocol (snn_mnist_conv)
    (4.0, 15, 25, None, None),
    (1.0, 30, 50, None, None),
    (4.0, 30, 10, 0, 50),
    (1.0, 20, 10, 0, 50),
    (1.0, 20, 10, 0, 40),
    (1.0, 20, 10, 5, 45),
    (2.0, 20, 10, 0, 40),
]


def _windows_pool(z, kind, k):
    """Average pooling as spikeep did it before: the windows as a copy, then their mean."""
    if kind == "avg":
        return pooling._windows(z, k).mean(dim=-1)
    return _pool(z, kind, k)


def _windows_adjoint(g, kind, k, z=None, shape=None):
    if kind == "avg":
        spread = g.unsqueeze(-1).expand(*g.shape, k * k) / (k * k)
        return pooling._unwindows(spread, k, shape)
    return _adjoint(g, kind, k, z=z, shape=shape)


_pool, _adjoint, _simulate = pooling.pool, pooling.adjoint, phases.simulate


@contextlib.contextmanager
def before(net):
    """spikeep's code before the speed work (module docstring), for the duration."""
    folds = [getattr(c, "folds", False) for c in net.couplings]
    for c in net.couplings:
        c.folds = False
    pooling.pool, pooling.adjoint = _windows_pool, _windows_adjoint
    phases.simulate = functools.partial(_simulate, reference=True)
    try:
        yield
    finally:
        pooling.pool, pooling.adjoint, phases.simulate = _pool, _adjoint, _simulate
        for c, f in zip(net.couplings, folds, strict=True):
            c.folds = f


def _rate_step(net, params, x, y, free_steps, nudged_steps):
    est = estimators.make("symmetric", 1.0, nudged_steps)
    free = relax(net, params, x, steps=free_steps)
    return est.estimate(net, params, x, y, free).grads


def _snn_step(net, params, x, y, tau, settle, window, nudged_settle=None, nudged_window=None):
    config = SNNConfig(
        tau=tau,
        settle=settle,
        window=window,
        nudged_settle=nudged_settle,
        nudged_window=nudged_window,
    )
    return snn_estimators.estimate("symmetric", net, params, x, y, 1.0, config).grads


def _label(tau, settle, window, nudged_settle=None, nudged_window=None) -> str:
    if nudged_settle is None and nudged_window is None:
        return f"tau {tau:g}, 3 x ({settle} + {window})"
    return f"tau {tau:g}, free {settle} + {window}, nudged 2 x ({nudged_settle} + {nudged_window})"


def _steps(tau, settle, window, nudged_settle=None, nudged_window=None) -> int:
    ns = settle if nudged_settle is None else nudged_settle
    nw = window if nudged_window is None else nudged_window
    return settle + window + 2 * (ns + nw)


def _batch(ds, net, i, B):
    x = (ds.images[i * B : (i + 1) * B].float() / 255).reshape(B, *net.spec.layers[0].shape)
    y = F.one_hot(ds.labels[i * B : (i + 1) * B], net.spec.layers[-1].shape[0]).float()
    return x, y


def settings_table(net, params, ds, B: int, repeats: int, batches: int) -> dict:
    """``--settings``: the rate engine's step and the spiking step at each of :data:`SETTINGS`,
    timed interleaved on the first batch (median of ``repeats`` rounds after a warm-up round; wall
    and the process's CPU time, which the other jobs on the machine hit less);
    each estimate's cosine with the converged one on ``batches`` batches of ``B`` images."""
    x, y = _batch(ds, net, 0, B)
    runs = {"rate": lambda: _rate_step(net, params, x, y, *RATE)}
    for s in SETTINGS:
        runs[s] = lambda s=s: _snn_step(net, params, x, y, *s)
    times = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    grads = {}
    for rnd in range(repeats + 1):
        for key, run in runs.items():
            start, c = time.perf_counter(), time.process_time()
            grads[key] = run()
            if rnd:
                times[key].append(time.perf_counter() - start)
                cpu[key].append(time.process_time() - c)
    ms = {k: 1e3 * statistics.median(v) / B for k, v in times.items()}
    cpu_ms = {k: 1e3 * statistics.median(v) / B for k, v in cpu.items()}
    ref = _rate_step(net, params, x, y, 400, 100)
    cosines = {k: [compare(g, ref)["cosine"]] for k, g in grads.items()}
    for i in range(1, batches):
        xi, yi = _batch(ds, net, i, B)
        ref = _rate_step(net, params, xi, yi, 400, 100)
        cosines["rate"].append(compare(_rate_step(net, params, xi, yi, *RATE), ref)["cosine"])
        for s in SETTINGS:
            cosines[s].append(compare(_snn_step(net, params, xi, yi, *s), ref)["cosine"])
    rows = [
        {
            "engine": "rate" if k == "rate" else "snntorch",
            "setting": "30 + 2 x 10" if k == "rate" else _label(*k),
            "steps": RATE[0] + 2 * RATE[1] if k == "rate" else _steps(*k),
            "cosines": cosines[k],
            "cosine_mean": statistics.mean(cosines[k]),
            "cosine_min": min(cosines[k]),
            "ms_per_sample": ms[k],
            "ratio_to_rate": ms[k] / ms["rate"],
            "cpu_ms_per_sample": cpu_ms[k],
            "cpu_ratio_to_rate": cpu_ms[k] / cpu_ms["rate"],
        }
        for k in runs
    ]
    return {"batches": batches, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fidelity", action="store_true", help="cosines with the converged estimate")
    ap.add_argument("--settings", action="store_true", help="the spiking phases' lengths")
    ap.add_argument("--batches", type=int, default=3, help="--settings: batches for the cosines")
    ap.add_argument("--checkpoint", help="--settings: a run's weights (default: initial)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    net = Network(spec.load(args.model))
    params = net.init_params(0, dtype=torch.float32)
    if args.checkpoint:
        saved = checkpoint.load(args.checkpoint)["params"]
        params = {k: v.to(torch.float32) for k, v in saved.items()}
    ds = data.load("mnist-embedded", "train")
    B = args.batch
    if args.settings:
        return _print_settings(args, settings_table(net, params, ds, B, args.repeats, args.batches))
    x = (ds.images[:B].float() / 255).reshape(B, *net.spec.layers[0].shape)
    y = F.one_hot(ds.labels[:B], net.spec.layers[-1].shape[0]).float()
    steps = {"rate": RATE[0] + 2 * RATE[1], "snntorch": 3 * (SNN[1] + SNN[2])}
    runs = {
        "rate": lambda: _rate_step(net, params, x, y, *RATE),
        "snntorch": lambda: _snn_step(net, params, x, y, *SNN),
    }
    times = {(v, e): [] for v in ("before", "after") for e in runs}
    grads = {}
    for rnd in range(args.repeats + 1):  # round 0 warms up
        for version in ("before", "after"):
            ctx = before(net) if version == "before" else contextlib.nullcontext()
            with ctx:
                for name, run in runs.items():
                    start = time.perf_counter()
                    g = run()
                    wall = time.perf_counter() - start
                    if rnd:
                        times[version, name].append(wall)
                    grads[version, name] = g
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    rows = []
    for version in ("before", "after"):
        for name in runs:
            rows.append(
                {
                    "version": version,
                    "engine": name,
                    "ms_per_sample": ms[version, name] / B,
                    "ms_per_step": ms[version, name] / steps[name],
                    "steps": steps[name],
                    "ratio_to_rate": ms[version, name] / ms[version, "rate"],
                }
            )
    result = {
        "model": str(Path(args.model).resolve().relative_to(ROOT)),
        "batch": B,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "repeats": args.repeats,
        "rows": rows,
        "speedup": {n: ms["before", n] / ms["after", n] for n in runs},
    }
    if args.fidelity:
        ref = _rate_step(net, params, x, y, 400, 100)
        cos = {f"{v} {n}": compare(grads[v, n], ref)["cosine"] for v, n in grads}
        for tau, settle, window in SHORTER:
            start = time.perf_counter()
            g = _snn_step(net, params, x, y, tau, settle, window)
            wall = time.perf_counter() - start
            key = f"after snntorch tau {tau:g}, {settle} + {window}"
            cos[key] = compare(g, ref)["cosine"]
            cos[key + " ms/sample"] = 1e3 * wall / B
        result["cosine"] = cos
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['model']}, batch {B}, symmetric EP, beta 1, float32, "
        f"{result['threads']} thread(s), median of {args.repeats} interleaved rounds"
    )
    head = f"{'version':8s} {'engine':9s} {'steps':>6s} {'ms/sample':>10s} {'ms/step':>9s}"
    print(head + f" {'x rate':>7s}")
    for r in rows:
        print(
            f"{r['version']:8s} {r['engine']:9s} {r['steps']:6d} {r['ms_per_sample']:10.2f} "
            f"{r['ms_per_step']:9.2f} {r['ratio_to_rate']:7.2f}"
        )
    print(
        "speed-up after/before: " + ", ".join(f"{n} {s:.2f}x" for n, s in result["speedup"].items())
    )
    for k, v in result.get("cosine", {}).items():
        print(f"cosine {k}: {v:.4f}" if "ms/sample" not in k else f"  {k}: {v:.2f}")
    return 0


def _print_settings(args, result) -> int:
    result |= {"batch": args.batch, "threads": os.environ.get("OMP_NUM_THREADS")}
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{Path(args.model).name}, {args.checkpoint or 'initial'} weights, batch {args.batch}, "
        f"symmetric EP, beta 1, float32, {result['threads']} thread(s), median of {args.repeats} "
        f"interleaved rounds; "
        f"cosine with the converged estimate (rate, 400 + 2 x 100) on {result['batches']} batches"
    )
    print(
        f"{'setting':52s} {'steps':>5s} {'cosines':>22s} {'mean':>6s} {'ms/sample':>9s} "
        f"{'x rate':>6s} {'CPU ms':>7s} {'x rate':>6s}"
    )
    for r in result["rows"]:
        cos = " ".join(f"{c:.3f}" for c in r["cosines"])
        print(
            f"{r['engine'] + ' ' + r['setting']:52s} {r['steps']:5d} {cos:>22s} "
            f"{r['cosine_mean']:6.4f} {r['ms_per_sample']:9.2f} {r['ratio_to_rate']:6.2f} "
            f"{r['cpu_ms_per_sample']:7.2f} {r['cpu_ratio_to_rate']:6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
