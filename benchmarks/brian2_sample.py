"""Wall time per training sample of the Brian2 engine in cpp_standalone, 784-500-10.

One chunk of ``--samples`` MNIST training images (the embedded subset) is compiled once
(:class:`spikeep.brian2.standalone.Chunk`) and run ``--chunks`` times, each run with the next
images and the weights the previous one returned (learning on). The defaults are the
``spiking_mnist`` recipe (``protocols/spiking_mnist.toml``): the biological times of
``models/spiking_784_500_10.toml`` (per sample a free, a +beta and a -beta phase of 55 ms settling
+ 20 ms window: 225 ms, ``dt`` 0.2 ms, non-leaky IF neurons at up to 1000 Hz, ``tau_syn`` 10 ms),
symmetric EP with ``beta = 0.5``, the endpoint rule.

    OMP_NUM_THREADS=1 python benchmarks/brian2_sample.py [--code fast|generated|both]
        [--rounds 3] [--protocol protocols/spiking_mnist_bio.toml] [--input current|poisson|...]
        [--rule endpoint|stdp] [--samples 100] [--chunks 3] [--dt 2e-4] [--threads 0] [--json]

``--protocol`` times a protocol's recipe instead: its model (with the model's input), estimator
and beta, ``[brian2] rule``, its first epoch's learning rates and ``train.seed`` (the frozen Poisson
input's table); ``--samples`` defaults to its ``[brian2] chunk``. The other options override it.

``--code`` picks the lowering: ``fast`` (``Chunk(fast=True)``, the default: the input layer's
hand-written C++, shared clocks, the branch-free thresholder, no unread traces), ``generated``
(``fast=False``: Brian2's generated code only, the code before the speed-up), or ``both``: the
two side by side in one process, ``--rounds`` times in alternation (each round opens each
chunk from its cache folder and runs its ``--chunks`` runs from the same weights and images),
so that the machine's drifting load hits both alike; it also checks that the two return the
same weights bit for bit.

Prints, per code path: the compile time (0-ish when the cache folder already holds the project),
milliseconds of wall time per sample (median over all runs; the binary's run including its
start, the run arguments and the result files), milliseconds of CPU time of the binary per sample
(user + system, from the children's resource usage: robust to waiting for a busy core) and per
simulated time step (``steps_per_sample`` = the sample's biological time / ``dt``), spikes per
sample (all layers, input spikes included under Poisson input), and with ``both`` the ratios
fast / generated. ``--threads`` sets Brian2's ``devices.cpp_standalone.openmp_threads`` (0: no
OpenMP, Brian2's default); the line records it with ``OMP_NUM_THREADS`` and the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikeep import data, protocol, spec  # noqa: E402
from spikeep.brian2 import schedules  # noqa: E402
from spikeep.brian2.standalone import Chunk  # noqa: E402
from spikeep.energy import Network  # noqa: E402

CODES = {"fast": True, "generated": False}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _round(model, schedule, params, train, args, eta, fast: bool) -> dict:
    """Open the chunk (from the cache), run ``--chunks`` runs from ``params``."""
    n = args.samples
    wall, cpu, spikes = [], [], []
    with Chunk(model, schedule, n, rule=args.rule, seed=args.seed, fast=fast) as chunk:
        for c in range(args.chunks):
            images = train.images[c * n : (c + 1) * n].flatten(1).double() / 255
            y = torch.nn.functional.one_hot(train.labels[c * n : (c + 1) * n], 10).double()
            before = _children_cpu()
            out = chunk.run(images, y, params, eta=eta)
            cpu.append((_children_cpu() - before) / n)
            wall.append(out["run_s"] / n)
            spikes.append(out["spikes"])
            params = out["params"]
        result = {
            "build_s": chunk.build_s,
            "compiled": chunk.compiled,
            "wall": wall,
            "cpu": cpu,
            "spikes": spikes,
            "params": params,
        }
    del chunk
    gc.collect()  # the next Chunk's Brian2 objects reuse these names (no "_1" files)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", default=None, help="a brian2 protocol's recipe (TOML)")
    p.add_argument("--model", default=None, help="default: spiking_784_500_10 (the protocol's)")
    p.add_argument("--code", choices=[*CODES, "both"], default="fast")
    p.add_argument("--rounds", type=int, default=None, help="default: 3 with both, else 1")
    p.add_argument("--input", choices=list(spec.SPIKING_INPUTS), default=None, help="the model's")
    p.add_argument("--rule", choices=["endpoint", "stdp"], default=None, help="endpoint")
    p.add_argument("--samples", type=int, default=None, help="100 (the protocol's chunk)")
    p.add_argument("--chunks", type=int, default=3)
    p.add_argument("--beta", type=float, default=None, help="0.5 (the protocol's)")
    p.add_argument(
        "--estimator", choices=["symmetric", "one-sided"], default=None, help="symmetric"
    )
    p.add_argument("--dt", type=float, default=None, help="simulation step in s (the model's)")
    p.add_argument("--rate-max", type=float, default=None, help="Hz (the model's)")
    p.add_argument("--threads", type=int, default=0, help="Brian2 openmp_threads (0: none)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import brian2 as b2

    b2.prefs.devices.cpp_standalone.openmp_threads = args.threads
    # the spiking_mnist recipe's learning rates per sample, a twentieth for a few chunks' timing
    eta = {"W1": 0.1 / 20, "b1": 0.1 / 20, "W2": 0.05 / 20, "b2": 0.05 / 20}
    periods, warmup, args.seed = 2, 1, 0
    if args.protocol:
        try:
            proto = protocol.load(args.protocol)
        except (OSError, ValueError) as e:
            p.error(f"--protocol: {e}")
        if proto.train.engine != "brian2":
            p.error(f"--protocol {args.protocol} trains with {proto.train.engine!r}, not brian2")
        args.model = args.model or str(proto.model)
        args.rule = args.rule or proto.brian2.rule
        args.samples = args.samples or proto.brian2.chunk
        args.estimator = args.estimator or proto.estimator.name
        args.beta = args.beta if args.beta is not None else proto.estimator.beta
        periods, warmup, args.seed = (
            proto.estimator.periods,
            proto.estimator.warmup,
            proto.train.seed,
        )
        lrs = protocol.learning_rates(proto, 0)
        eta = {k: protocol.layer_lr(lrs, k) for k in eta}
    args.model = args.model or str(ROOT / "models" / "spiking_784_500_10.toml")
    args.rule = args.rule or "endpoint"
    args.samples = args.samples or 100
    args.estimator = args.estimator or "symmetric"
    args.beta = 0.5 if args.beta is None else args.beta
    model = spec.load(args.model)
    cfg = dataclasses.replace(
        model.spiking,
        input=args.input or model.spiking.input,
        dt=args.dt or model.spiking.dt,
        rate_max=args.rate_max or model.spiking.rate_max,
    )
    model = dataclasses.replace(model, spiking=cfg)
    cfg = model.spiking
    args.input = cfg.input
    params = Network(model).init_params(0, dtype=torch.float64)
    train = data.load("mnist-embedded", "train")
    schedule = schedules.for_estimator(
        args.estimator, args.beta, cfg, periods=periods, warmup=warmup
    )
    codes = list(CODES) if args.code == "both" else [args.code]
    rounds = args.rounds or (3 if args.code == "both" else 1)
    load = [os.getloadavg()[0]]
    runs = {code: [] for code in codes}
    for _ in range(rounds):
        for code in reversed(codes):  # generated first, then fast
            runs[code].append(_round(model, schedule, params, train, args, eta, CODES[code]))
    load.append(os.getloadavg()[0])

    steps = round(schedule.duration / cfg.dt)
    result = {
        "protocol": args.protocol,
        "model": model.source,
        "input": args.input,
        "rule": args.rule,
        "estimator": args.estimator,
        "rate_max_hz": cfg.rate_max,
        "samples_per_chunk": args.samples,
        "chunks": args.chunks,
        "rounds": rounds,
        "biological_ms_per_sample": round(schedule.duration * 1e3, 3),
        "dt_ms": cfg.dt * 1e3,
        "steps_per_sample": steps,
        "eta": eta,
        "openmp_threads": args.threads,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average": [round(x, 1) for x in load],
        "codes": {},
    }
    for code in codes:
        rs = runs[code]
        wall = [t for r in rs for t in r["wall"]]
        cpu = [t for r in rs for t in r["cpu"]]
        result["codes"][code] = {
            "build_s": round(rs[0]["build_s"], 1),
            "compiled": rs[0]["compiled"],
            "ms_per_sample": round(1e3 * statistics.median(wall), 3),
            "ms_per_sample_each_run": [round(1e3 * t, 3) for t in wall],
            "cpu_ms_per_sample": round(1e3 * statistics.median(cpu), 3),
            "cpu_us_per_step": round(1e6 * statistics.median(cpu) / steps, 3),
            "spikes_per_sample": round(statistics.mean(s for r in rs for s in r["spikes"]), 1),
        }
    if len(codes) == 2:
        new, old = result["codes"]["fast"], result["codes"]["generated"]
        result["ratio_wall"] = round(new["ms_per_sample"] / old["ms_per_sample"], 3)
        result["ratio_cpu"] = round(new["cpu_ms_per_sample"] / old["cpu_ms_per_sample"], 3)
        result["identical_weights"] = all(
            torch.equal(a["params"][k], b["params"][k])
            for a, b in zip(runs["fast"], runs["generated"])
            for k in a["params"]
        )
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{args.protocol or ''}  {result['model']}  input {args.input}  rule {args.rule}  "
        f"{args.estimator} beta {args.beta:g}  rate_max {cfg.rate_max:g} Hz  "
        f"{result['biological_ms_per_sample']:g} ms per sample at dt {result['dt_ms']:g} ms "
        f"({steps} steps)  openmp_threads {args.threads}  OMP_NUM_THREADS "
        f"{result['OMP_NUM_THREADS']}  load average {load[0]:.1f} -> {load[1]:.1f}"
    )
    for code, r in result["codes"].items():
        print(
            f"{code:>9}: build {r['build_s']} s (compiled: {r['compiled']})  ms_per_sample "
            f"{r['ms_per_sample']}  cpu_ms_per_sample {r['cpu_ms_per_sample']}  "
            f"cpu_us_per_step {r['cpu_us_per_step']}  spikes_per_sample {r['spikes_per_sample']}"
        )
    if len(codes) == 2:
        print(
            f"fast / generated: wall {result['ratio_wall']}  cpu {result['ratio_cpu']}  "
            f"identical weights: {result['identical_weights']}  ({rounds} rounds x "
            f"{args.chunks} runs of {args.samples} samples each)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
