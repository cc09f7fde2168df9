"""Average the parameters of a run's checkpoints (weight averaging over its last epochs).

Writes a checkpoint whose ``params`` are the element-wise mean of the given checkpoints'
``params``: the last checkpoint given with its parameters replaced (and its momentum zeroed), plus
``averaged_from``, the files averaged. Every checkpoint must come from the same model spec, with
the same parameter names and shapes. The result is for ``spikeep eval`` (on the validation split
first: ``--split val``) and ``spikeep export``; resuming training from it is refused by nothing
but means little. Usage::

    .venv/bin/python scripts/average_checkpoints.py EPOCHS/epoch_16.pt ... EPOCHS/epoch_20.pt \\
        --out averaged.pt

A run keeps its last epochs' end-of-epoch checkpoints as ``OUT/epochs/epoch_E.pt`` with
``[train] keep_epochs`` (``docs/training.md``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from spikeep import checkpoint


def average(paths: list[Path]) -> dict:
    """The last of ``paths``' checkpoints with ``params`` the mean over all of them."""
    ckpts = [checkpoint.load(p) for p in paths]
    last = ckpts[-1]
    ref = {k: tuple(v.shape) for k, v in last["params"].items()}
    for path, c in zip(paths, ckpts, strict=True):
        if c.get("model_spec") != last.get("model_spec"):
            raise checkpoint.CheckpointError(f"{path}: another model spec than {paths[-1]}'s")
        shapes = {k: tuple(v.shape) for k, v in c["params"].items()}
        for k in sorted(shapes.keys() | ref.keys()):
            if shapes.get(k) != ref.get(k):
                raise checkpoint.CheckpointError(
                    f"{path}: parameter {k} is {shapes.get(k)}, in {paths[-1]} {ref.get(k)}"
                )
    mean = {k: torch.stack([c["params"][k] for c in ckpts]).mean(dim=0) for k in last["params"]}
    return {
        **last,
        "params": mean,
        "momentum": {k: torch.zeros_like(v) for k, v in last["momentum"].items()},
        "averaged_from": [str(p) for p in paths],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoints to average")
    parser.add_argument("--out", type=Path, required=True, help="the averaged checkpoint")
    args = parser.parse_args(argv)
    if len(args.checkpoints) < 2:
        parser.error(f"expected at least two checkpoints to average, got {len(args.checkpoints)}")
    try:
        averaged = average(args.checkpoints)
    except checkpoint.CheckpointError as err:
        print(f"average_checkpoints: {err}", file=sys.stderr)
        return 2
    checkpoint.save(averaged, args.out)
    print(f"{args.out}: the mean of {len(args.checkpoints)} checkpoints' parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
