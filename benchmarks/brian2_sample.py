"""Wall time per training sample of the Brian2 engine in cpp_standalone, 784-500-10.

One chunk of ``--samples`` MNIST training images (the embedded subset) is compiled once
(:class:`spikeep.brian2.standalone.Chunk`) and run ``--chunks`` times, each run with the next
images and the weights the previous one returned (learning on: one-sided EP, ``beta = 0.5``).
The biological times are ``models/spiking_784_500_10.toml``'s: per sample a free phase
(55 ms settling + 20 ms window) and a nudged phase (55 + 20 ms), 150 ms, at ``dt = 0.1`` ms,
non-leaky IF neurons at up to 500 Hz, ``tau_syn = 10`` ms.

    OMP_NUM_THREADS=1 python benchmarks/brian2_sample.py [--input current|poisson]
        [--rule endpoint|stdp] [--samples 100] [--chunks 3] [--dt 1e-4] [--json]

Prints the compile time (0-ish when the cache folder already holds the project), milliseconds of
wall time per sample (median over chunks, the binary's run including its start and the result
files), and spikes per sample (all layers, input spikes included under Poisson input).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikeep import data, spec  # noqa: E402
from spikeep.brian2 import schedules  # noqa: E402
from spikeep.brian2.standalone import Chunk  # noqa: E402
from spikeep.energy import Network  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "spiking_784_500_10.toml"))
    p.add_argument("--input", choices=["current", "poisson"], default="current")
    p.add_argument("--rule", choices=["endpoint", "stdp"], default="endpoint")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--chunks", type=int, default=3)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--estimator", choices=["symmetric", "one-sided"], default="symmetric")
    p.add_argument("--dt", type=float, default=None, help="simulation step in s (the model's)")
    p.add_argument("--rate-max", type=float, default=None, help="Hz (the model's)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    model = spec.load(args.model)
    cfg = dataclasses.replace(
        model.spiking,
        input=args.input,
        dt=args.dt or model.spiking.dt,
        rate_max=args.rate_max or model.spiking.rate_max,
    )
    model = dataclasses.replace(model, spiking=cfg)
    cfg = model.spiking
    net = Network(model)
    params = net.init_params(0, dtype=torch.float64)
    train = data.load("mnist-embedded", "train")
    n = args.samples
    schedule = schedules.for_estimator(args.estimator, args.beta, cfg)
    eta = {"W1": 0.1 / 20, "b1": 0.1 / 20, "W2": 0.05 / 20, "b2": 0.05 / 20}
    times, spikes = [], []
    with Chunk(model, schedule, n, rule=args.rule) as chunk:
        for c in range(args.chunks):
            images = train.images[c * n : (c + 1) * n].flatten(1).double() / 255
            y = torch.nn.functional.one_hot(train.labels[c * n : (c + 1) * n], 10).double()
            out = chunk.run(images, y, params, eta=eta)
            params = out["params"]
            times.append(out["run_s"] / n)
            spikes.append(out["spikes"])
        build_s, compiled = chunk.build_s, chunk.compiled
    result = {
        "model": model.source,
        "input": args.input,
        "rule": args.rule,
        "estimator": args.estimator,
        "rate_max_hz": cfg.rate_max,
        "samples_per_chunk": n,
        "chunks": args.chunks,
        "biological_ms_per_sample": round(schedule.duration * 1e3, 3),
        "dt_ms": cfg.dt * 1e3,
        "build_s": round(build_s, 1),
        "compiled": compiled,
        "ms_per_sample": round(1e3 * statistics.median(times), 3),
        "ms_per_sample_each_chunk": [round(1e3 * t, 3) for t in times],
        "spikes_per_sample": round(statistics.mean(spikes), 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['model']}  input {args.input}  rule {args.rule}  {args.estimator}  "
            f"rate_max {cfg.rate_max:g} Hz  "
            f"{result['biological_ms_per_sample']:g} ms per sample at dt {result['dt_ms']:g} ms"
        )
        print(
            f"build {result['build_s']} s (compiled: {compiled})  "
            f"ms_per_sample {result['ms_per_sample']}  spikes_per_sample "
            f"{result['spikes_per_sample']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
