"""The snntorch engine's spiking test pass, per test image: spikeep before and after a change, side
by side in one run.

What the rates-to-spikes protocols (``protocols/snn_mnist_conv_rates.toml``,
``snn_fmnist_conv_rates.toml``) run every epoch on the 10,000 test images: the spiking free phase
of ``[snntorch] eval_settle + eval_window`` steps (40 + 100, traces of tau 4 steps, current
input) on ``--model`` (default ``models/snn_conv_half_ce.toml``) at its initial weights (seed 0)
or a checkpoint's (``--checkpoint``), float32, the first ``--images`` embedded MNIST test images,
normalised as the protocols do. ``before`` is the package as committed at ``--before`` (extracted
with ``git archive``, imported as ``spikeep_before``), run in batches of 1000 as its engine did;
``after`` is the working tree in batches of each ``--batch``. Rounds interleave the versions.

Prints ms per test image (median over rounds; wall and the process's CPU time) and, per
``after`` batch size, whether its spike counts equal ``before``'s bit for bit and how many
predictions differ. One thread::

    OMP_NUM_THREADS=1 python benchmarks/snn_eval.py [--before REV] [--batch 100 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from table1_epoch import load_before  # noqa: E402

from spikeep import data, protocol, spec  # noqa: E402
from spikeep.batches import prepare_batch  # noqa: E402
from spikeep.energy import Network  # noqa: E402

MODEL = ROOT / "models" / "snn_conv_half_ce.toml"
PROTOCOL = ROOT / "protocols" / "snn_mnist_conv_rates.toml"
BEFORE = "5bd9850"  # the snntorch engine before the test pass's speed work (issue 19)
BEFORE_BATCH = 1000  # the batch the engine tested in before (spikeep.batches.score's default)


def _free(package: str, net, params, x, config, batch: int) -> tuple[list, tuple[float, float]]:
    """The spiking free phase of ``package`` on ``x`` in batches of ``batch``: the window's spike
    counts per layer (all images), and the wall and CPU time (the process's, which the other
    jobs on the machine hit less)."""
    phases = importlib.import_module(f"{package}.snn.phases")
    counts = []
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, x.shape[0], batch):
        out = phases.phase(net, params, x[i : i + batch], config=config)
        counts.append(out.rates)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return [torch.cat(c) for c in zip(*counts, strict=True)], (wall, cpu)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--checkpoint", default=None, help="weights of a run (default: initial)")
    ap.add_argument("--before", default=BEFORE, help="git revision to compare against")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    s = protocol.load(PROTOCOL).snntorch
    net = Network(spec.load(args.model))
    params = net.init_params(0, dtype=torch.float32)
    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        params = {k: v.to(torch.float32) for k, v in state["params"].items()}
    ds = data.load("mnist-embedded", "test")
    n = args.images
    x, _ = prepare_batch(
        net, ds.images[:n], ds.labels[:n], ds.classes, "mnist", torch.float32, "cpu"
    )
    with tempfile.TemporaryDirectory() as tmp:
        load_before(args.before, Path(tmp))
        from spikeep.snn import SNNConfig

        Before = importlib.import_module("spikeep_before.snn.config").SNNConfig
        settings = (s.decay, s.tau, s.eval_settle, s.eval_window, s.input)
        versions = {("before", BEFORE_BATCH): ("spikeep_before", Before(*settings))}
        for b in args.batch:
            versions["after", b] = ("spikeep", SNNConfig(*settings))
        times = {k: [] for k in versions}
        counts = {}
        for rnd in range(args.repeats + 1):  # round 0 warms up
            for key, (package, config) in versions.items():
                counts[key], wall = _free(package, net, params, x, config, key[1])
                if rnd:
                    times[key].append(wall)
    ms = {k: 1e3 * statistics.median(w for w, _ in t) / n for k, t in times.items()}
    cpu = {k: 1e3 * statistics.median(c for _, c in t) / n for k, t in times.items()}
    ref = counts["before", BEFORE_BATCH]
    pred = net.output(params, ref).argmax(1)
    rows = [
        {
            "version": v,
            "batch": b,
            "ms_per_image": ms[v, b],
            "x_before": ms[v, b] / ms["before", BEFORE_BATCH],
            "cpu_ms_per_image": cpu[v, b],
            "cpu_x_before": cpu[v, b] / cpu["before", BEFORE_BATCH],
            "same_counts": all(torch.equal(a, c) for a, c in zip(counts[v, b], ref, strict=True)),
            "predictions_differ": int((net.output(params, counts[v, b]).argmax(1) != pred).sum()),
        }
        for v, b in versions
    ]
    result = {
        "model": str(Path(args.model).resolve().relative_to(ROOT)),
        "weights": args.checkpoint or "initial (seed 0)",
        "before": args.before,
        "images": n,
        "steps": s.eval_settle + s.eval_window,
        "tau": s.tau,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "repeats": args.repeats,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['model']} ({result['weights']}), {n} test images, {result['steps']} steps "
        f"(tau {s.tau:g}), float32, {result['threads']} thread(s), median of {args.repeats} "
        f"interleaved rounds; before = {args.before}"
    )
    print(
        f"{'version':8s} {'batch':>6s} {'ms/image':>9s} {'x before':>9s} {'CPU ms':>7s} "
        f"{'x before':>9s}  same counts  differ"
    )
    for r in rows:
        print(
            f"{r['version']:8s} {r['batch']:6d} {r['ms_per_image']:9.3f} {r['x_before']:9.3f} "
            f"{r['cpu_ms_per_image']:7.3f} {r['cpu_x_before']:9.3f}  "
            f"{str(r['same_counts']):11s}  {r['predictions_differ']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
