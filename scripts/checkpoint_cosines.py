"""How good is a training run's EP estimate on its own trained network?

For a checkpoint of a rate-engine run, on the first ``--batch`` training images of its protocol's
data (normalised as it trained, float64), prints the cosine with the exact gradient of every
weight's symmetric EP estimate, for each combination of free steps, beta and nudged steps given.
The exact gradient is the implicit one at the free fixed point (``--ref-steps`` steps of the
model's dynamics, then the adjoint solved iteratively, :func:`spikeep.reference.implicit_gradient`).
How settled that free phase is gets printed first, so an unsettled reference shows: its last-step
residual, how many units still moved by more than 1e-3 in the last step, and the largest change
over the last two steps (near 0 while the last step's is large: a period-2 cycle). Also printed:
backprop through the first ``free`` steps (BPTT) against the same reference, which says how far
the truncated free phase itself is from its fixed point. Each cosine is followed by the norm of
the estimate over the reference's (x1.00 when equal). Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/checkpoint_cosines.py OUT/checkpoint.pt \
        [--batch 32] [--free 30 60 200] [--beta 1 0.5 0.2] [--nudged 10 20] \
        [--dynamics alternating]

``--dynamics`` replaces the model's dynamics for every phase and the reference, e.g. to see
whether the alternating ones settle where the prototypical ones cycle (same fixed points).

About 2.5 minutes for the reference of the Fashion-MNIST convnet on 32 images, one thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from spikeep import checkpoint, data, estimators, spec
from spikeep.dynamics import relax
from spikeep.energy import Network
from spikeep.gradcheck import cosine
from spikeep.reference import bptt_gradient, implicit_gradient
from spikeep.train import checkpoint_normalization, prepare_batch


def cosines(g: dict, ref: dict) -> str:
    """Each weight's cosine with the reference and, in brackets, its norm over the reference's."""
    return "  ".join(
        f"{k} {cosine(g[k], ref[k]):.3f} (x{float(g[k].norm() / ref[k].norm()):.2f})"
        for k in ref
        if k.startswith("W")
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--free", type=int, nargs="+", default=[30, 60, 200])
    ap.add_argument("--beta", type=float, nargs="+", default=[1.0, 0.5, 0.2])
    ap.add_argument("--nudged", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--ref-steps", type=int, default=1000)
    ap.add_argument("--dynamics", choices=spec.DYNAMICS, help="default: the model's own")
    args = ap.parse_args(argv)
    ckpt = checkpoint.load(args.checkpoint)
    model = spec.load(ckpt["model_source"])
    if args.dynamics:
        model = dataclasses.replace(model, dynamics=args.dynamics)
    net = Network(model)
    raw = ckpt["protocol"]
    name = raw.get("data", {}).get("name", "mnist-embedded")
    ds = data.load(name, "train", raw.get("data", {}).get("dir"))
    norm = checkpoint_normalization(raw, name)
    params = {k: v.double() for k, v in ckpt["params"].items()}
    B = args.batch
    x, y = prepare_batch(net, ds.images[:B], ds.labels[:B], ds.classes, norm, torch.float64)

    t0 = time.perf_counter()
    before = relax(net, params, x, steps=args.ref_steps - 2)  # then two more, to see a cycle
    last2 = relax(net, params, x, s=before.s, steps=1, static=before.static)
    free = relax(net, params, x, s=last2.s, steps=1, static=before.static)
    moving = sum(int(((a - b).abs() > 1e-3).sum()) for a, b in zip(free.s, last2.s))
    two_step = max(float((a - b).abs().max()) for a, b in zip(free.s, before.s))
    ref = implicit_gradient(
        net, params, x, y, s_star=free.s, solver="iterative", tol=1e-8, max_iter=3000
    )
    print(
        f"{args.checkpoint} (epoch {ckpt['epoch']}), {B} {name} training images, "
        f"{model.dynamics} dynamics: reference "
        f"after {args.ref_steps} free steps, residual {float(free.residual):.1e}, {moving} "
        f"units moving, change over two steps {two_step:.1e}; {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    for n_free in args.free:
        bptt = bptt_gradient(net, params, x, y, n_free)
        print(f"BPTT through {n_free} free steps: {cosines(bptt, ref)}")
        relaxed = relax(net, params, x, steps=n_free)
        for beta in args.beta:
            for n_nudged in args.nudged:
                est = estimators.make("symmetric", beta, n_nudged)
                g = est.estimate(net, params, x, y, relaxed).grads
                print(
                    f"free {n_free}  beta {beta}  nudged {n_nudged}: {cosines(g, ref)}", flush=True
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
