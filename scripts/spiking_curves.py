"""The Brian2 learners side by side: test error in spikes per epoch, and training error.

Each argument is ``LABEL=RUN`` (a ``spikeep train`` output folder or a ``metrics.jsonl``).
Left panel: ``test_error`` (the spiking engine's own free phase, full test set) and, dashed,
``test_error_rate`` (the rate engine's free phase on the same weights); right panel:
``train_error``. A horizontal line marks each ``--target`` (%; the option repeats). Prints one
line per epoch and run.
Usage::

    .venv/bin/python scripts/spiking_curves.py \
        endpoint=docs/results/spiking_mnist.metrics.jsonl \
        stdp=/work/runs/spiking_mnist_stdp phase-free=/work/runs/spiking_mnist_phasefree \
        --target 2.5 --out docs/results/spiking_rules.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from spikeep.plots import read_metrics


def metrics_of(run: str) -> list[dict]:
    """The per-epoch rows of a run folder or of a ``metrics.jsonl`` file (a copy kept in docs)."""
    path = Path(run)
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        rows = read_metrics(path)
    return [r for r in rows if "epoch" in r and "test_error" in r]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="LABEL=RUN")
    ap.add_argument(
        "--target", type=float, action="append", default=[], help="a target test error (%%)"
    )
    ap.add_argument("--out", default="spiking_rules.png")
    args = ap.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, run = item.partition("=")
        if not sep or not run:
            print(f"spiking_curves: expected LABEL=RUN, got {item!r}", file=sys.stderr)
            return 2
        if not Path(run).exists():
            print(f"spiking_curves: {run!r} does not exist", file=sys.stderr)
            return 2
        runs[label] = metrics_of(run)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_test, ax_train) = plt.subplots(1, 2, figsize=(10, 4))
    lowest = 2.0  # the panel's floor unless a curve goes below it
    for label, rows in runs.items():
        epochs = [r["epoch"] for r in rows]
        (line,) = ax_test.plot(epochs, [r["test_error"] for r in rows], "o-", ms=3, label=label)
        if all("test_error_rate" in r for r in rows):
            rate = [r["test_error_rate"] for r in rows]
            ax_test.plot(epochs, rate, "--", color=line.get_color(), lw=1)
        ax_train.plot(epochs, [r["train_error"] for r in rows], "o-", ms=3, label=label)
        for r in rows:
            rate = r.get("test_error_rate", float("nan"))
            lowest = min(lowest, r["test_error"], lowest if math.isnan(rate) else rate)
            print(
                f"{label:>12}  epoch {r['epoch']:>2}  test {r['test_error']:.2f}% "
                f"(rate {rate:.2f}%)  train {r['train_error']:.2f}%"
            )
    for target, style in zip(args.target, [":", "-."] * len(args.target)):
        ax_test.axhline(target, color="k", lw=0.8, ls=style, label=f"target {target}%")
    ax_test.set(
        xlabel="epoch",
        ylabel="test error (%)",
        title="test error in spikes (dashed: rate free phase)",
        ylim=(max(0.0, lowest - 0.2), 5.5),
    )
    ax_train.set(xlabel="epoch", ylabel="training error (%)", title="training error", yscale="log")
    for ax in (ax_test, ax_train):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
