"""How many of a trained network's units the hard sigmoid clips at the free fixed point.

A unit whose rate is clipped at 0 or 1 has ``rho' = 0``: no gradient passes through it, in EP or in
backprop. For a checkpoint of a rate-engine run, on the first ``--images`` images of a split of its
protocol's data (normalised as it trained), this relaxes the free phase for ``--free-steps``
steps (default: the protocol's ``eval_free_steps``) and prints, for each dynamic layer, the share
of rates at the lower bound, at the upper bound and in between, the share of units clipped at the
same bound for every image (units that no image moves: dead for the batch), and the mean rate.
Needs an activation with a box (``hard_sigmoid``, ``hard_sigmoid_half``). Usage::

    OMP_NUM_THREADS=2 .venv/bin/python scripts/saturation.py OUT/checkpoint.pt \
        [--split test] [--images 1000] [--free-steps 30]
"""

from __future__ import annotations

import argparse
import sys

import torch

from spikeep import checkpoint, data, spec
from spikeep.dynamics import relax
from spikeep.energy import Network
from spikeep.train import checkpoint_eval_steps, checkpoint_normalization, prepare_batch


@torch.no_grad()
def saturation(net: Network, params: dict, x: torch.Tensor, steps: int) -> list[dict]:
    """Per dynamic layer, the shares (fractions) of the free rates after ``steps`` steps that sit
    at the rate's lower bound (``low``), at its upper bound (``high``), in between (``inside``),
    of units at one bound for every input of ``x`` (``dead_low``, ``dead_high``), and the mean."""
    act = net.act
    if act.box is None:
        raise ValueError(f"activation {net.spec.activation!r} has no box: nothing is clipped")
    lo, hi = (float(act.rho(torch.tensor(b))) for b in act.box)
    rates = net.dynamics.rates(net, relax(net, params, x, steps=steps).s)
    rows = []
    for r in rates:
        shape, r = tuple(r.shape[1:]), r.flatten(1)  # r: (images, units)
        at_lo, at_hi = r <= lo, r >= hi
        rows.append(
            {
                "shape": shape,
                "low": float(at_lo.double().mean()),
                "high": float(at_hi.double().mean()),
                "inside": float((~(at_lo | at_hi)).double().mean()),
                "dead_low": float(at_lo.all(0).double().mean()),
                "dead_high": float(at_hi.all(0).double().mean()),
                "mean": float(r.double().mean()),
            }
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--split", choices=("train", "test"), default="test")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--free-steps", type=int, help="default: the protocol's eval_free_steps")
    args = ap.parse_args(argv)
    ckpt = checkpoint.load(args.checkpoint)
    model = spec.load(ckpt["model_source"])
    net = Network(model)
    raw = ckpt["protocol"]
    name = raw.get("data", {}).get("name", "mnist-embedded")
    steps = args.free_steps or checkpoint_eval_steps(raw)
    ds = data.load(name, args.split, raw.get("data", {}).get("dir"))
    n = min(args.images, len(ds.labels))
    params = ckpt["params"]
    dtype = next(iter(params.values())).dtype
    x, _ = prepare_batch(
        net, ds.images[:n], ds.labels[:n], ds.classes, checkpoint_normalization(raw, name), dtype
    )
    print(
        f"{args.checkpoint} (epoch {ckpt['epoch']}), {n} {name} {args.split} images, "
        f"{steps} free steps, {model.activation}"
    )
    names = [layer.name for layer in model.dynamic_layers]
    for layer, row in zip(names, saturation(net, params, x, steps), strict=True):
        print(
            f"  {layer} {row['shape']}: at 0 {row['low']:.1%}  at 1 {row['high']:.1%}  "
            f"between {row['inside']:.1%}  units at 0 for every image {row['dead_low']:.1%}, "
            f"at 1 {row['dead_high']:.1%}  mean rate {row['mean']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
