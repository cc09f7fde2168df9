"""Samples per second of the rate, snntorch and brian2 engines computing one EP gradient on
784-500-10, at comparable gradient fidelity.

The problem: ``models/spiking_784_500_10.toml`` (hard sigmoid, squared error, its ``[spiking]``
section for Brian2) at its initial weights (seed 0), the first ``--batch`` embedded MNIST
training images. Two references, float64: the EP estimate itself, the same estimator at the same
``beta`` on converged rate phases (1000 free, 500 nudged steps), which every engine approximates
(``cosine``: an engine's fidelity); and the implicit gradient at the free fixed point
(:func:`spikeep.reference.implicit_gradient`; ``cosine_true``, which adds EP's own bias in beta:
on MNIST images the hard sigmoid's kinks make that bias large, cosine 0.40 at beta 0.5 and 0.87
at 0.01, symmetric, measured). Each engine computes the ``--estimator`` estimate (free + nudged
phases) at ``--beta`` on the same images and weights:

- ``rate``: :mod:`spikeep.estimators` after ``relax``, batched (``--dtype``, default float32),
  settings ``free_steps/nudged_steps``;
- ``snntorch``: :mod:`spikeep.snn.estimators`, batched (``--dtype``), IF neurons, settings
  ``tau/settle/window`` in steps;
- ``brian2``: one cpp_standalone :class:`~spikeep.brian2.standalone.Chunk` of ``--batch``
  samples run in sequence with learning off (``eta = 0``), its ``gradient`` the rule's estimate
  averaged over the samples (what training applies, sample by sample); settings ``settle/window``
  in ms of biological time at the spec's ``dt``; float64 C++. The wall time is the binary's run
  (``run_s``); the compile (tens of seconds, cached) is not counted.

For every engine a ladder of settings is measured (cosine with the EP estimate); each engine then
takes the cheapest setting whose cosine reaches ``--target`` (default: the lowest of the engines'
best cosines, so that every engine can reach it), and the chosen settings are timed side by side,
interleaved, ``--repeats`` rounds (median). One thread (``OMP_NUM_THREADS=1``) for all.

    OMP_NUM_THREADS=1 python benchmarks/engines.py [--batch 100] [--estimator symmetric]
        [--beta 0.5] [--repeats 5] [--target 0.99] [--no-brian2] [--json]

Prints the ladder, then a table: engine, settings, cosine, samples/s, ratio to the rate engine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikeep import _threads, data, estimators, reference, spec  # noqa: E402
from spikeep._dtypes import DTYPES  # noqa: E402
from spikeep.dynamics import relax  # noqa: E402
from spikeep.energy import Network  # noqa: E402
from spikeep.gradcheck import compare  # noqa: E402
from spikeep.snn import SNNConfig  # noqa: E402
from spikeep.snn import estimators as snn_estimators  # noqa: E402

MODEL = ROOT / "models" / "spiking_784_500_10.toml"
RATE_LADDER = [(5, 2), (10, 3), (20, 4), (40, 8), (80, 16), (200, 50)]
SNN_LADDER = [(2, 10, 20), (4, 20, 40), (4, 40, 80), (8, 80, 160), (10, 200, 400)]
BRIAN2_LADDER = [(25.0, 10.0), (55.0, 20.0)]  # ms: settle, window per phase


class Engine:
    """One engine at one setting: ``run()`` returns the gradient estimate and its wall time;
    ``open()`` and ``close()`` bracket the runs (Brian2's standalone device holds one project at
    a time, so its chunks are opened one after the other)."""

    def __init__(self, name: str, label: str, run, open=None, close=None):
        self.name, self.label, self.run = name, label, run
        self.open = open or (lambda: None)
        self.close = close or (lambda: None)


def _rate(net, params, x, y, estimator, beta, free_steps, nudged_steps) -> Engine:
    est = estimators.make(estimator, beta, nudged_steps)

    def run():
        start = time.perf_counter()
        free = relax(net, params, x, steps=free_steps)
        grads = est.estimate(net, params, x, y, free).grads
        return grads, time.perf_counter() - start

    return Engine("rate", f"free {free_steps} + nudged {nudged_steps} steps", run)


def _snn(net, params, x, y, estimator, beta, tau, settle, window) -> Engine:
    config = SNNConfig(tau=tau, settle=settle, window=window)

    def run():
        start = time.perf_counter()
        out = snn_estimators.estimate(estimator, net, params, x, y, beta, config)
        return out.grads, time.perf_counter() - start

    return Engine("snntorch", f"tau {tau:g}, {settle} + {window} steps per phase", run)


def _brian2(model, x, y, params, estimator, beta, settle_ms, window_ms) -> Engine:
    from spikeep.brian2 import schedules
    from spikeep.brian2.standalone import Chunk

    schedule = schedules.for_estimator(
        estimator, beta, model.spiking, settle_ms / 1e3, window_ms / 1e3
    )
    held = {}

    def open_():  # compiled once, from the cache afterwards
        held["chunk"] = Chunk(model, schedule, x.shape[0], rule="endpoint")

    def close():
        held.pop("chunk").close()

    def run():
        out = held["chunk"].run(x, y, params, eta=0.0)
        return out["gradient"], out["run_s"]

    label = f"{settle_ms:g} + {window_ms:g} ms per phase, dt {model.spiking.dt * 1e3:g} ms"
    return Engine("brian2", label, run, open_, close)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--estimator", choices=["one-sided", "symmetric"], default="symmetric")
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--target", type=float, default=None, help="cosine to reach (see above)")
    p.add_argument("--no-brian2", action="store_true", help="leave the brian2 engine out")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:  # spikeep's thread setting: $SPIKEEP_THREADS, else one
        _threads.apply(_threads.choose(None)[0])
    except ValueError as err:
        p.error(str(err))

    model = spec.load(MODEL)
    net = Network(model)
    params64 = net.init_params(0, dtype=torch.float64)
    ds = data.load("mnist-embedded", "train")
    x64 = ds.images[: args.batch].flatten(1).double() / 255
    y64 = torch.nn.functional.one_hot(ds.labels[: args.batch], 10).double()
    free = relax(net, params64, x64, steps=1000)
    true = reference.implicit_gradient(net, params64, x64, y64, s_star=free.s)
    ref = estimators.make(args.estimator, args.beta, 500).estimate(net, params64, x64, y64, free)
    ref = ref.grads
    dtype = DTYPES[args.dtype]
    params = {k: v.to(dtype) for k, v in params64.items()}
    x, y = x64.to(dtype), y64.to(dtype)

    ladders = {
        "rate": [_rate(net, params, x, y, args.estimator, args.beta, *s) for s in RATE_LADDER],
        "snntorch": [_snn(net, params, x, y, args.estimator, args.beta, *s) for s in SNN_LADDER],
    }
    if not args.no_brian2:
        ladders["brian2"] = [
            _brian2(model, x64, y64, params64, args.estimator, args.beta, *s) for s in BRIAN2_LADDER
        ]
    held = None
    try:
        measured = {}
        for name, ladder in ladders.items():
            rows = []
            for engine in ladder:
                engine.open()
                held = engine
                engine.run()  # warm-up
                grads, wall = engine.run()
                engine.close()
                held = None
                g64 = {k: v.double() for k, v in grads.items()}
                cos = compare(g64, ref)["cosine"]
                rows.append((engine, cos, wall, compare(g64, true)["cosine"]))
                if not args.json:
                    print(
                        f"ladder  {name:9s} {engine.label:42s} cosine {cos:.4f} "
                        f"(true {rows[-1][3]:.4f})  {args.batch / wall:9.1f} samples/s (one run)"
                    )
            measured[name] = rows
        target = args.target
        if target is None:
            target = min(max(r[1] for r in rows) for rows in measured.values())
        chosen = {}
        for name, rows in measured.items():
            ok = [r for r in rows if r[1] >= target - 1e-4]
            chosen[name] = min(ok, key=lambda r: r[2]) if ok else max(rows, key=lambda r: r[1])
        times = {name: [] for name in chosen}
        if "brian2" in chosen:
            held = chosen["brian2"][0]
            held.open()
        for _ in range(args.repeats):  # interleaved, round by round
            for name, (engine, *_) in chosen.items():
                times[name].append(engine.run()[1])
    finally:
        if held is not None:
            held.close()

    sps = {name: args.batch / statistics.median(t) for name, t in times.items()}
    table = [
        {
            "engine": name,
            "settings": engine.label,
            "cosine": round(cos, 4),
            "cosine_true": round(cos_true, 4),
            "samples_per_s": round(sps[name], 1),
            "ratio_to_rate": round(sps[name] / sps["rate"], 4),
        }
        for name, (engine, cos, _, cos_true) in chosen.items()
    ]
    result = {
        "model": str(MODEL.relative_to(ROOT)),
        "batch": args.batch,
        "estimator": args.estimator,
        "beta": args.beta,
        "dtype_torch_engines": args.dtype,
        "target_cosine": round(target, 4),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "table": table,
        "ladder": {
            name: [
                {"settings": e.label, "cosine": round(c, 4), "cosine_true": round(t, 4)}
                for e, c, _, t in rows
            ]
            for name, rows in measured.items()
        },
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"\n{result['model']}, batch {args.batch}, {args.estimator} EP, beta {args.beta}, "
        f"target cosine {target:.4f}, median of {args.repeats} interleaved rounds, "
        f"{result['threads']} torch thread(s)"
    )
    head = f"{'engine':9s} {'settings':42s} {'cosine':>7s} {'true':>7s} {'samples/s':>10s}"
    print(head + f" {'x rate':>8s}")
    for r in table:
        print(
            f"{r['engine']:9s} {r['settings']:42s} {r['cosine']:7.4f} {r['cosine_true']:7.4f} "
            f"{r['samples_per_s']:10.1f} {r['ratio_to_rate']:8.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
