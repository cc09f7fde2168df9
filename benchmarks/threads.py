"""Thread settings side by side under load: which one should spikeep default to?

Each setting runs in a worker process of its own, started with its environment already set
(``OMP_WAIT_POLICY`` is read when torch's OpenMP runtime loads, so it cannot be changed from
inside a running process): one thread; all cores with OpenMP's default wait policy (torch's
default on this machine); all cores with ``OMP_WAIT_POLICY=PASSIVE``. While they run, this script
starts one more CPU-bound process of its own (a Python busy loop; ``--no-load`` leaves it out),
on top of whatever else the machine is running: the load average before and after is printed.

The workloads: the EP step of ``models/mlp_784_500_10.toml`` (batch 100, 20 free + 4 nudged
steps, one-sided, SGD update: :func:`spikeep.bench.ep_step`) and three dynamics steps of the
``mnist_conv`` protocol's model (``models/conv_mnist_ce.toml``, batch 100, from a relaxed
state). The workers take turns, round by round and workload by workload (the order rotating),
so that the machine's drift hits every setting alike; medians (min-max) over the rounds, and
each setting's median over the best one's.

    python benchmarks/threads.py [--rounds 7] [--no-load] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKLOADS = {
    "mlp": "MLP EP step (784-500-10, batch 100, 20+4, one-sided)",
    "conv": "conv dynamics step (conv_mnist_ce, batch 100)",
}
BUSY = "while True: pass"


def settings(cores: int) -> list[tuple[str, dict[str, str], int]]:
    """``(label, environment, threads)`` of every setting measured."""
    return [
        ("1 thread", {"OMP_NUM_THREADS": "1"}, 1),
        (f"{cores} threads (all cores)", {"OMP_NUM_THREADS": str(cores)}, cores),
        (
            f"{cores} threads, OMP_WAIT_POLICY=PASSIVE",
            {"OMP_NUM_THREADS": str(cores), "OMP_WAIT_POLICY": "PASSIVE"},
            cores,
        ),
    ]


# -- the worker: builds the workloads, then times whichever it is asked for -------------------


def worker(threads: int) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from spikeep import estimators, spec
    from spikeep.bench import ep_step
    from spikeep.dynamics import relax
    from spikeep.energy import Network
    from spikeep.gradcheck import random_batch

    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    mlp = Network(spec.load(ROOT / "models" / "mlp_784_500_10.toml"))
    mp = mlp.init_params(0, dtype=torch.float32)
    mx, my = random_batch(mlp, 100, 0, torch.float32)
    est = estimators.make("one-sided", 0.5, 4)
    conv = Network(spec.load(ROOT / "models" / "conv_mnist_ce.toml"))
    cp = conv.init_params(0, dtype=torch.float32)
    cx, _ = random_batch(conv, 100, 0, torch.float32)
    free = relax(conv, cp, cx, steps=5)

    def run(what: str) -> float:
        t0 = time.perf_counter()
        if what == "mlp":
            ep_step(mlp, mp, mx, my, est, 20, 0.01)
        else:
            relax(conv, cp, cx, s=free.s, steps=3, static=free.static)
        return time.perf_counter() - t0

    for what in WORKLOADS:  # warm-up
        run(what)
        run(what)
    print(json.dumps({"ready": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        what = line.strip()
        per = 3 if what == "conv" else 1
        print(json.dumps({"s": run(what) / per}), flush=True)


# -- the driver ---------------------------------------------------------------------------------


def _start(env: dict[str, str], threads: int) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "SPIKEEP_THREADS")}
    full.update(env)
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", str(threads)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=full,
    )


def _ask(proc: subprocess.Popen, what: str) -> float:
    proc.stdin.write(what + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())["s"]


def measure(rounds: int, load: bool) -> dict:
    cores = os.cpu_count() or 1
    chosen = settings(cores)
    before = os.getloadavg()
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load else None
    workers = []
    try:
        for _, env, threads in chosen:
            proc = _start(env, threads)
            ready = json.loads(proc.stdout.readline())["ready"]
            if ready != threads:
                raise RuntimeError(f"a worker asked for {threads} threads runs {ready}")
            workers.append(proc)
        times = {w: [[] for _ in chosen] for w in WORKLOADS}
        for r in range(rounds):
            for what in WORKLOADS:
                for k in range(len(chosen)):
                    j = (k + r) % len(chosen)  # the order rotates round by round
                    times[what][j].append(_ask(workers[j], what))
    finally:
        for proc in workers:
            proc.stdin.close()
            proc.wait()
        if busy is not None:
            busy.terminate()
            busy.wait()
    after = os.getloadavg()
    table = {}
    for what, per_setting in times.items():
        medians = [statistics.median(ts) for ts in per_setting]
        best = min(medians)
        table[what] = [
            {
                "setting": label,
                "threads": threads,
                "ms": 1e3 * m,
                "min_ms": 1e3 * min(ts),
                "max_ms": 1e3 * max(ts),
                "x_best": m / best,
            }
            for (label, _, threads), m, ts in zip(chosen, medians, per_setting, strict=True)
        ]
    return {
        "cores": cores,
        "rounds": rounds,
        "extra_load_process": load,
        "loadavg_before": before[0],
        "loadavg_after": after[0],
        "table": table,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-load", action="store_true", help="start no CPU-bound process")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return 0
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    out = measure(args.rounds, not args.no_load)
    if args.json:
        print(json.dumps(out))
        return 0
    load = "one CPU-bound process started by this script" if out["extra_load_process"] else "none"
    print(
        f"threads under load: {out['cores']} cores; extra load: {load}; load average "
        f"{out['loadavg_before']:.1f} before, {out['loadavg_after']:.1f} after (other jobs "
        f"included); median (min-max) of {out['rounds']} interleaved rounds"
    )
    for what, rows in out["table"].items():
        print(f"{WORKLOADS[what]}:")
        for row in rows:
            print(
                f"  {row['setting']:<36} {row['ms']:9.2f} ms  ({row['min_ms']:.2f}-"
                f"{row['max_ms']:.2f})  {row['x_best']:5.2f}x the best"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
