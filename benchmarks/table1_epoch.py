"""Per-batch time of Laborieux & Zenke 2022's Table 1 recipes, spikeep before and after a change,
side by side, and the epoch time it extrapolates to.

The problem: ``protocols/hep_table1_noise.toml`` (784-256-256-10, sigmoid4, cross-entropy
readout, batch 20; holomorphic EP with N = 10 points on |beta| = 0.4, 200 free steps and 50 per
point, noise 0.04) and, with ``--oscillation``, ``protocols/oscep_table1_noise.toml`` (900
complex steps of the turning nudge), and any other Table 1 protocol named with ``--protocol``
(the one-sided ones: 350 free and 350 nudged steps). One training batch = the free phase plus
the estimate, on the same random batch and the protocol model's initial weights, for each
version of spikeep: ``before`` is the package as committed at ``--before`` (extracted with ``git
archive`` into a temporary folder and imported as ``spikeep_before``), ``after`` the working
tree. The two are interleaved round by round, so that the machine's drift hits both alike
(timings on the shared 2-core machine drift by 2x); medians (min-max) are reported, and their
ratio, of wall times and of the process's CPU times (which the other jobs' share of the cores
hits less). The two versions' gradients on one batch and seed are compared: 0 difference means
the change computed the same numbers, noise draws included.

The noise: the batch's Gaussian draws alone, in the shapes the relaxations draw them. The limit:
the useful floating-point work of a batch (the dynamics' products, 2 FLOPs a
multiply-add; a complex state counts as two real rows, as the batched path computes it) over the
matrix-product throughput measured in the same run on one thread (a 1024^3 sgemm). The epoch:
3000 batches (60,000 images, batch 20) plus the test pass (10,000 images, 200 free steps),
timed once. A protocol that sets keys the ``before`` package does not know (``free_noise``,
``noise_shared``) runs without them in both versions (the output names them).

``--placement`` times instead, with the working tree alone, one hEP batch with the noise placed
three ways, interleaved: a draw per sample with a noisy free phase (``hep_table1_noise``),
shared by the batch with a noisy free phase, and shared with a noise-free free phase
(``hep_table1_noise_shared``, as Laborieux & Zenke's code).

``--hold`` times instead, with the working tree alone, one oscEP batch of
``oscep_table1_noise`` two ways, interleaved: ``beta`` turned and demodulated at every step
(``hold = 1``, the protocol before it held its phases) and held as the protocol holds it (``hold
= 30``: 10 phases of 30 steps, each one's end sampled), with the FLOPs of each.

    OMP_NUM_THREADS=1 python benchmarks/table1_epoch.py [--before REV] [--repeats 7]
        [--oscillation] [--protocol ep_table1_noise_beta04 ...] [--placement] [--hold] [--json]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from io import BytesIO
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BEFORE = "6bae65f"  # spikeep before the batched holomorphic points and the buffered loop
BATCHES = 60_000 // 20
PACKAGES = {"before": "spikeep_before", "after": "spikeep"}


def load_before(rev: str, where: Path):
    """The package ``spikeep`` at git revision ``rev``, imported as ``spikeep_before``."""
    blob = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "spikeep"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(where, filter="data")
    init = where / "spikeep" / "__init__.py"
    found = importlib.util.spec_from_file_location(
        "spikeep_before", init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(found)
    sys.modules["spikeep_before"] = module
    found.loader.exec_module(module)
    return module


class Version:
    """One training batch's free phase and estimate with one version of the package, for the
    protocol table ``raw`` read from ``protocol`` (the noise placed as the rate engine places
    it: ``free_noise``, ``noise_shared``)."""

    def __init__(self, pkg: str, protocol: Path, raw: dict):
        spec = importlib.import_module(f"{pkg}.spec")
        energy = importlib.import_module(f"{pkg}.energy")
        self.dynamics = importlib.import_module(f"{pkg}.dynamics")
        estimators = importlib.import_module(f"{pkg}.estimators")
        module = importlib.import_module(f"{pkg}.protocol")
        proto = module.from_dict(raw, source=str(protocol), base=protocol.parent)
        self.net = energy.Network(spec.load(proto.model))
        cfg = proto.estimator
        # a package before the keys gets no such argument (noise_shared defaults to False)
        self.shared = {"noise_shared": True} if getattr(cfg, "noise_shared", False) else {}
        held = {"hold": cfg.hold} if getattr(cfg, "hold", 1) != 1 else {}  # likewise
        self.est = estimators.make(
            cfg.name,
            cfg.beta,
            cfg.nudged_steps,
            points=cfg.points,
            noise=cfg.noise,
            steps_per_period=cfg.steps_per_period,
            periods=cfg.periods,
            warmup=cfg.warmup,
            real=cfg.real,
            **self.shared,
            **held,
        )
        self.free_steps = cfg.free_steps
        self.noise = cfg.noise if getattr(cfg, "free_noise", True) else 0.0

    def batch(self, params, x, y, seed: int):
        g = torch.Generator().manual_seed(seed)
        free = self.dynamics.relax(
            self.net, params, x, steps=self.free_steps, noise=self.noise, generator=g, **self.shared
        )
        return self.est.estimate(self.net, params, x, y, free, generator=g).grads


def flops_per_batch(cfg, B: int) -> float:
    """Useful FLOPs of one batch of the Table 1 MLP (784-256-256-10): the products of the
    dynamics and of the estimate (2 per multiply-add); complex rows count twice."""
    n1 = n2 = 256
    step = 2 * (2 * n1 * n2 + 2 * n2 * 10)  # h2 forward + h1 feedback, readout and its adjoint
    free = 2 * 784 * n1 + cfg.free_steps * 2 * n1 * n2
    if cfg.name == "holomorphic":
        rows = cfg.points  # N/2 + 1 points, two rows for each complex one: N rows
        nudged = cfg.nudged_steps * rows * step
        grads = rows * 2 * (n1 * n2 + n2 * 10) + 2 * 784 * n1
    elif cfg.name == "one-sided":  # one real nudged phase, the update at its two ends
        nudged = cfg.nudged_steps * step
        grads = 2 * 2 * (n1 * n2 + n2 * 10) + 2 * 784 * n1
    else:  # oscillation: two rows per step and a rank-2B update of W2 per sample (every step,
        # or the end of every held phase)
        steps = cfg.steps_per_period * (cfg.periods + cfg.warmup)
        nudged = steps * 2 * step
        samples = cfg.steps_per_period // getattr(cfg, "hold", 1) * cfg.periods
        grads = samples * 2 * 2 * (n1 * n2 + n2 * 10)
    return B * (free + nudged + grads)


def noise_draws(cfg, B: int) -> list[tuple[int, tuple[int, int]]]:
    """``(count, shape)`` of the Gaussian draws of one batch: per step and layer, the rows that
    carry real parts (the free phase's ``B``; the hEP points' ``(N/2 + 1) B``; the oscillation's
    ``B``)."""
    draws = [(2 * cfg.free_steps, (B, 256))]
    if cfg.name == "holomorphic":
        draws.append((2 * cfg.nudged_steps, ((cfg.points // 2 + 1) * B, 256)))
    elif cfg.name == "one-sided":
        draws.append((2 * cfg.nudged_steps, (B, 256)))
    else:
        draws.append((2 * cfg.steps_per_period * (cfg.periods + cfg.warmup), (B, 256)))
    return draws


def noise_seconds(draws) -> float:
    """The best of three times to draw ``draws`` from a seeded generator."""
    g = torch.Generator().manual_seed(0)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for count, shape in draws:
            for _ in range(count):
                torch.randn(shape, generator=g)
        best = min(best, time.perf_counter() - t)
    return best


def sgemm_gflops() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 1024**3 / best / 1e9


def read(protocol: Path, known=None) -> tuple[dict, list[str]]:
    """The protocol table, less the ``[estimator]`` keys not in ``known`` (all kept if None),
    and the keys left out."""
    raw = tomllib.loads(protocol.read_text())
    est = raw.get("estimator", {})
    dropped = sorted(k for k in est if known is not None and k not in known)
    raw["estimator"] = {k: v for k, v in est.items() if k not in dropped}
    return raw, dropped


def interleave(versions: dict, params, x, y, repeats: int) -> tuple[dict, dict]:
    """``repeats`` rounds of one batch of every version in turn (the noise seeded by the round):
    wall and CPU seconds per version (the process's CPU time is less hit by other jobs)."""
    times = {k: [] for k in versions}
    cpu = {k: [] for k in versions}
    for r in range(repeats):
        for name, v in versions.items():
            t, c = time.perf_counter(), time.process_time()
            v.batch(params, x, y, 10 + r)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    return times, cpu


def measure(protocol: Path, repeats: int, seed: int = 0) -> dict:
    from spikeep import protocol as proto
    from spikeep.dynamics import relax

    known = importlib.import_module("spikeep_before.protocol").Estimator.__dataclass_fields__
    raw, dropped = read(protocol, set(known))
    versions = {name: Version(pkg, protocol, raw) for name, pkg in PACKAGES.items()}
    net = versions["after"].net
    params = net.init_params(seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(20, 784, generator=g)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (20,), generator=g), 10).float()
    grads = {k: v.batch(params, x, y, 5) for k, v in versions.items()}  # warm-up
    cfg = proto.load(protocol).estimator
    same = max(
        float((grads["before"][k] - grads["after"][k]).abs().max() / grads["before"][k].abs().max())
        for k in grads["before"]
    )
    times, cpu = interleave(versions, params, x, y, repeats)
    xt = torch.rand(1000, 784, generator=g)
    t = time.perf_counter()
    relax(net, params, xt, steps=cfg.eval_free_steps or cfg.free_steps)
    test_pass = 10 * (time.perf_counter() - t)
    gflops = sgemm_gflops()
    limit = flops_per_batch(cfg, 20) / (gflops * 1e9)
    out = {"protocol": protocol.name, "test_pass_s": test_pass, "sgemm_gflops": gflops}
    out["keys_left_out"] = dropped
    draws = noise_draws(cfg, 20) if cfg.noise else []
    out["noise_numbers"] = sum(c * s[0] * s[1] for c, s in draws)
    out["noise_ms"] = 1e3 * noise_seconds(draws)
    out["limit_ms"] = 1e3 * limit
    out["limit_epoch_s"] = BATCHES * limit
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {
            "ms": 1e3 * med,
            "min_ms": 1e3 * min(ts),
            "max_ms": 1e3 * max(ts),
            "epoch_s": BATCHES * med + test_pass,
            "cpu_ms": 1e3 * statistics.median(cpu[name]),
        }
    out["speedup"] = out["before"]["ms"] / out["after"]["ms"]
    out["cpu_speedup"] = out["before"]["cpu_ms"] / out["after"]["cpu_ms"]
    # the two versions' gradients on the same batch and seed: 0 when they compute the same
    # numbers, noise draws included (a version that changes the random stream differs by noise)
    out["largest_relative_difference"] = same
    return out


# the noise placements of --placement: (label, free_noise, noise_shared)
PLACEMENTS = [
    ("per sample, noisy free phase", True, False),
    ("shared, noisy free phase", True, True),
    ("shared, noise-free free phase", False, True),
]


def measure_placement(protocol: Path, repeats: int, seed: int = 0) -> dict:
    """One batch of ``protocol`` with the noise placed as each of :data:`PLACEMENTS`, the
    working tree alone, interleaved round by round: medians (min-max) of wall and CPU time."""
    raw, _ = read(protocol)
    versions = {}
    for label, free_noise, shared in PLACEMENTS:
        table = {**raw, "estimator": {**raw["estimator"], "free_noise": free_noise}}
        table["estimator"]["noise_shared"] = shared
        versions[label] = Version("spikeep", protocol, table)
    net = versions[PLACEMENTS[0][0]].net
    params = net.init_params(seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(20, 784, generator=g)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (20,), generator=g), 10).float()
    for v in versions.values():  # warm-up
        v.batch(params, x, y, 5)
    times, cpu = interleave(versions, params, x, y, repeats)
    out = {"protocol": protocol.name, "placements": {}}
    base, base_cpu = (
        statistics.median(times[PLACEMENTS[0][0]]),
        statistics.median(cpu[PLACEMENTS[0][0]]),
    )
    for name in versions:
        row, med, c = _times(times[name], cpu[name])
        out["placements"][name] = {**row, "ratio": med / base, "cpu_ratio": c / base_cpu}
    return out


def _times(wall: list[float], cpu: list[float]) -> tuple[dict, float, float]:
    """One variant's rounds: ``ms`` (median), ``min_ms``, ``max_ms``, ``cpu_ms``; and the wall and
    CPU medians in seconds."""
    med, c = statistics.median(wall), statistics.median(cpu)
    row = {"ms": 1e3 * med, "min_ms": 1e3 * min(wall), "max_ms": 1e3 * max(wall), "cpu_ms": 1e3 * c}
    return row, med, c


def measure_hold(protocol: Path, repeats: int, seed: int = 0) -> dict:
    """One batch of the oscillation ``protocol`` every step (``hold = 1``) and held as the
    protocol says, the working tree alone, interleaved round by round: medians (min-max) of
    wall and CPU time, the FLOPs of each (:func:`flops_per_batch`), and the relative difference
    of the two gradients (two estimators of one gradient: not 0)."""
    from spikeep import protocol as proto

    raw, _ = read(protocol)
    held = raw["estimator"].get("hold", 1)
    labels = {1: "every step (hold = 1)", held: f"held (hold = {held})"}
    versions, flops = {}, {}
    for hold, label in labels.items():
        table = {**raw, "estimator": {**raw["estimator"], "hold": hold}}
        versions[label] = Version("spikeep", protocol, table)
        cfg = proto.from_dict(table, source=str(protocol), base=protocol.parent).estimator
        flops[label] = flops_per_batch(cfg, 20)
    net = versions[labels[1]].net
    params = net.init_params(seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(20, 784, generator=g)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (20,), generator=g), 10).float()
    grads = [v.batch(params, x, y, 5) for v in versions.values()]  # warm-up
    diff = max(float((grads[1][k] - grads[0][k]).norm() / grads[0][k].norm()) for k in grads[0])
    times, cpu = interleave(versions, params, x, y, repeats)
    gflops = sgemm_gflops()
    out = {"protocol": protocol.name, "variants": {}, "relative_difference": diff}
    out["sgemm_gflops"] = gflops
    base, base_cpu = statistics.median(times[labels[1]]), statistics.median(cpu[labels[1]])
    for name in versions:
        row, med, c = _times(times[name], cpu[name])
        out["variants"][name] = {
            **row,
            "speedup": base / med,
            "cpu_speedup": base_cpu / c,
            "gflop": flops[name] / 1e9,
            "limit_ms": flops[name] / gflops / 1e6,
            "epoch_s": BATCHES * med,
        }
    return out


def _rows(r: dict, key: str, args, width: int, tail) -> bool:
    """Print a side-by-side measurement: JSON (then True), or one line per variant of
    ``r[key]``, its times then ``tail(v)``."""
    if args.json:
        print(json.dumps(r, indent=1))
        return True
    print(f"{r['protocol']}: one batch of 20 (free phase + estimate), {args.repeats} rounds")
    for name, v in r[key].items():
        print(
            f"  {name:{width}s} {v['ms']:8.1f} ms ({v['min_ms']:.1f}-{v['max_ms']:.1f}), "
            f"CPU {v['cpu_ms']:.1f} ms;  " + tail(v)
        )
    return False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BEFORE, help="git revision to compare against")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--oscillation", action="store_true", help="also time oscep_table1_noise")
    ap.add_argument(
        "--protocol", action="append", default=[], help="also time protocols/NAME.toml (repeat)"
    )
    ap.add_argument(
        "--placement",
        action="store_true",
        help="time hEP's batch with the noise placed three ways (the working tree alone)",
    )
    ap.add_argument(
        "--hold",
        action="store_true",
        help="time oscEP's batch every step and held (the working tree alone)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.hold:
        r = measure_hold(ROOT / "protocols" / "oscep_table1_noise.toml", args.repeats)
        if _rows(r, "variants", args, 22, lambda v: (
            f"{v['gflop']:.2f} GFLOP (limit {v['limit_ms']:.0f} ms);  {v['speedup']:.2f}x "
            f"(CPU {v['cpu_speedup']:.2f}x) vs the first;  3000 batches {v['epoch_s']:.0f} s"
        )):  # fmt: skip
            return
        print(f"  limit: the FLOPs at the sgemm rate of the run, {r['sgemm_gflops']:.0f} GFLOP/s")
        diff = r["relative_difference"]
        print(f"  the two estimates differ by {diff:.2g} (largest over parameters, in norm)")
        return
    if args.placement:
        r = measure_placement(ROOT / "protocols" / "hep_table1_noise.toml", args.repeats)
        _rows(r, "placements", args, 30, lambda v: (
            f"{v['ratio']:.2f}x (CPU {v['cpu_ratio']:.2f}x) of the first"
        ))  # fmt: skip
        return
    protocols = [ROOT / "protocols" / "hep_table1_noise.toml"]
    if args.oscillation:
        protocols.append(ROOT / "protocols" / "oscep_table1_noise.toml")
    protocols += [ROOT / "protocols" / f"{name}.toml" for name in args.protocol]
    with tempfile.TemporaryDirectory() as tmp:
        load_before(args.before, Path(tmp))
        results = [measure(p, args.repeats) for p in protocols]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    for r in results:
        print(
            f"{r['protocol']}: one batch of 20 (free phase + estimate), {args.repeats} rounds, "
            f"{torch.get_num_threads()} torch thread"
        )
        for name in ("before", "after"):
            v = r[name]
            print(
                f"  {name:6s} {v['ms']:8.1f} ms ({v['min_ms']:.1f}-{v['max_ms']:.1f}), "
                f"CPU {v['cpu_ms']:.1f} ms;  epoch {v['epoch_s']:7.0f} s"
            )
        print(
            f"  speed-up {r['speedup']:.2f}x (CPU time {r['cpu_speedup']:.2f}x); "
            f"limit {r['limit_ms']:.1f} ms a batch, "
            f"{r['limit_epoch_s']:.0f} s an epoch (sgemm {r['sgemm_gflops']:.0f} GFLOP/s); "
            f"test pass {r['test_pass_s']:.1f} s"
        )
        print(
            f"  the batch's noise alone: {r['noise_numbers'] / 1e6:.2f} million Gaussian numbers, "
            f"{r['noise_ms']:.1f} ms to draw"
        )
        if r["keys_left_out"]:
            print(f"  run without {r['keys_left_out']}, which --before's package does not know")
        diff = r["largest_relative_difference"]
        print(
            "  gradients, same batch and seed: "
            + ("bit for bit the same" if diff == 0 else f"largest relative difference {diff:.2g}")
        )


if __name__ == "__main__":
    main()
