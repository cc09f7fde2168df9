"""The Brian2 engine's EP estimate on real MNIST images, against the rate engine's.

For a checkpoint of a 784-500-10 network (any engine's; its ``params``) and ``--batch`` embedded
MNIST test images, prints per parameter the cosine of

- the rate engine's EP estimate with ``--steps`` free and nudged steps (converged) against the
  exact implicit gradient (EP's own bias at ``beta``);
- the spiking estimate (``B`` copies of the network in runtime mode, numpy target, one sample of
  the estimator's schedule) against the exact gradient and against the converged rate estimate
  (the spiking error: settling, rate resolution, shot noise);

and the largest distance between the spiking free rates and the rate fixed point. ``--rate-max``,
``--settle`` and ``--window`` override the model's ``[spiking]`` values. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/brian2_mnist_estimate.py CHECKPOINT \
        [--estimator one-sided|symmetric] [--beta 0.5] [--settle 0.055] [--window 0.02] \
        [--rate-max 1000] [--model models/spiking_784_500_10.toml]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import brian2 as b2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikeep import Network, data, estimators, load_spec, reference  # noqa: E402
from spikeep.brian2 import schedules  # noqa: E402
from spikeep.brian2.lowering import build  # noqa: E402
from spikeep.dynamics import relax  # noqa: E402
from spikeep.gradcheck import compare  # noqa: E402


def cosines(g, ref) -> str:
    per = compare(g, ref)["per_param"]
    return "  ".join(f"{k} {v['cosine']:+.3f}" for k, v in per.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--model", default=str(ROOT / "models/spiking_784_500_10.toml"))
    ap.add_argument("--estimator", choices=["one-sided", "symmetric"], default="symmetric")
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--settle", type=float, default=None, help="s (default: the model's)")
    ap.add_argument("--window", type=float, default=None, help="s (default: the model's)")
    ap.add_argument("--rate-max", type=float, default=None, help="Hz (default: the model's)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300, help="rate engine steps per phase")
    args = ap.parse_args(argv)

    spec = load_spec(args.model)
    if args.rate_max is not None:
        spec = dataclasses.replace(
            spec, spiking=dataclasses.replace(spec.spiking, rate_max=args.rate_max)
        )
    net = Network(spec)
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    params = {k: v.to(torch.float64) for k, v in ckpt["params"].items()}
    test = data.load("mnist-embedded", "test")
    B = args.batch
    x = data.to_float(test.images[:B]).reshape(B, -1).to(torch.float64)
    y = torch.nn.functional.one_hot(test.labels[:B].long(), 10).to(torch.float64)

    free = relax(net, params, x, steps=args.steps)
    exact = reference.implicit_gradient(net, params, x, y, s_star=free.s)
    est = estimators.make(args.estimator, args.beta, args.steps)
    ep = est.estimate(net, params, x, y, free).grads
    print(f"{args.estimator} beta {args.beta}, {B} MNIST test images, {spec.source}")
    print(f"  rate EP ({args.steps} steps) vs exact:     {cosines(ep, exact)}")

    schedule = schedules.for_estimator(
        args.estimator, args.beta, spec.spiking, args.settle, args.window
    )
    b2.prefs.codegen.target = "numpy"
    sn = build(spec, params, x, y, schedule)
    sn.run()
    spiking = sn.gradient()
    r_ref = [r.numpy() for r in net.dynamics.rates(net, free.s)]
    gap = max(float(np.abs(a - b).max()) for a, b in zip(sn.rates("rho0")[1:], r_ref))
    phase = schedule.phases[0]
    print(
        f"  spiking (rate_max {spec.spiking.rate_max:g} Hz, settle {phase.settle * 1e3:g} ms, "
        f"window {phase.window * 1e3:g} ms, {schedule.duration * 1e3:g} ms per sample)"
    )
    print(f"    vs exact:                   {cosines(spiking, exact)}")
    print(f"    vs rate EP:                 {cosines(spiking, ep)}")
    print(f"    free rates' largest gap from the fixed point: {gap:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
