"""The small measurements behind ``docs/benchmarks.md``'s explanations of the rate engine's time.

    python benchmarks/micro.py [--rounds 300]

- the small products of the ``mlp_784_500_10`` step (batch 100): ``r_1 W_2^T`` (100x500 @
  500x10), the same computed as ``W_2 r_1^T`` (states stored transposed), ``r_2 W_2`` (100x10 @
  10x500);
- an Euler step of the energy dynamics (``lerp`` then ``clamp_``) into a new tensor and into a
  buffer;
- setting up a buffered phase (``spikeep.dynamics._PlanarRun``) for ``mnist_mlp``'s model,
  batch 20;
- the training loop's finiteness check on the 784-500-10 gradients: an ``isfinite`` pass per
  tensor (before) and one sum per tensor with one synchronisation (``spikeep.train._finite``);
- the first conv's weight gradient of ``conv_mnist_ce`` for two nudged points, per point (before)
  and summed first (after): their relative difference in float32 and float64.

Every variant runs in turn, round by round, on this process's torch threads; medians in us.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikeep import _threads, spec  # noqa: E402
from spikeep import dynamics as D  # noqa: E402
from spikeep.energy import Network  # noqa: E402
from spikeep.gradcheck import random_batch  # noqa: E402
from spikeep.train import _finite  # noqa: E402


def timings(rounds: int) -> dict:
    g = torch.Generator().manual_seed(0)
    r1, r2 = torch.rand(100, 500, generator=g), torch.rand(100, 10, generator=g)
    W2, b2 = torch.rand(10, 500, generator=g), torch.rand(10, generator=g)
    s1, S1 = torch.rand(100, 500, generator=g), torch.rand(100, 500, generator=g)
    h, out, outT = torch.rand(100, 500), torch.empty(100, 500), torch.empty(10, 100)
    o10 = torch.empty(100, 10)
    net = Network(spec.load(ROOT / "models" / "mlp_784_500_10_ce.toml"))
    params = net.init_params(0)
    x, y = random_batch(net, 20, 0, torch.float32)
    free = D.relax(net, params, x, steps=30)
    grads = {
        "W1": torch.rand(500, 784, generator=g),
        "b1": torch.rand(500, generator=g),
        "W2": torch.rand(10, 500, generator=g),
        "b2": torch.rand(10, generator=g),
    }
    fns = {
        "r1 W2^T (100x500 @ 500x10), into a buffer": lambda: torch.addmm(b2, r1, W2.T, out=o10),
        "the same as W2 r1^T (states transposed)": lambda: torch.mm(W2, r1.T, out=outT),
        "r2 W2 (100x10 @ 10x500), into a buffer": lambda: torch.addmm(S1, r2, W2, out=out),
        "lerp + clamp_, new tensor": lambda: torch.lerp(s1, h, 0.5).clamp_(0, 1),
        "lerp + clamp_, into a buffer": lambda: torch.lerp(s1, h, 0.5, out=out).clamp_(0, 1),
        "buffered phase set-up (mnist_mlp, batch 20)": lambda: D._PlanarRun(
            net, params, y, [1.0], [False], free.static, free.s
        ),
        "finiteness: isfinite per tensor (before)": lambda: all(
            bool(torch.isfinite(v).all()) for v in grads.values()
        ),
        "finiteness: one sum per tensor (after)": lambda: _finite(grads.values()),
    }
    names = list(fns)
    times = {k: [] for k in names}
    with torch.no_grad():
        for i in range(rounds + 10):
            for j in range(len(names)):
                k = names[(i + j) % len(names)]
                t = time.perf_counter()
                fns[k]()
                if i >= 10:
                    times[k].append(time.perf_counter() - t)
    return {k: 1e6 * statistics.median(ts) for k, ts in times.items()}


def conv_difference() -> dict:
    """Relative difference of the first conv's weight gradient, per point against summed."""
    net = Network(spec.load(ROOT / "models" / "conv_mnist_ce.toml"))
    out = {}
    for dtype in (torch.float32, torch.float64):
        params = net.init_params(0, dtype=dtype)
        x, _ = random_batch(net, 20, 0, dtype)
        s = D.relax(net, params, x, steps=30).s
        g = torch.Generator().manual_seed(1)
        pairs = [(x, torch.randn(s[0].shape, generator=g, dtype=dtype)) for _ in range(2)]
        c, W = net.couplings[0], params["W1"]
        summed = c.weight_grad(W, pairs)
        each = sum(c.weight_grad(W, [p]) for p in pairs)
        out[str(dtype).removeprefix("torch.")] = float(
            (summed - each).abs().max() / each.abs().max()
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    try:
        threads = _threads.apply(_threads.choose(None)[0])
    except ValueError as err:
        ap.error(str(err))
    load = os.getloadavg()[0]
    print(f"{threads} torch thread(s), load average {load:.1f}, median of {args.rounds} rounds")
    for k, us in timings(args.rounds).items():
        print(f"  {k:<46} {us:9.1f} us")
    for dtype, d in conv_difference().items():
        print(f"  first conv's weight gradient, summed points against per point, {dtype}: {d:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
