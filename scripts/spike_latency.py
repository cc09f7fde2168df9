"""Spiking test error against simulated time: how many steps a trained network needs in spikes.

For a checkpoint (any engine's run; the network's activation must be an integrate-and-fire
neuron's rate, ``hard_sigmoid`` or ``hard_sigmoid_half``), runs the snntorch engine's free phase
on the test set and, for every number of steps per phase ``T`` in ``--steps``, counts the spikes
of steps ``[settle_T, T)`` with ``settle_T = round(--settle-fraction * T)`` (default: the run's
``eval_settle / (eval_settle + eval_window)``, else 0.2): the rates a phase of ``settle_T +
window_T`` steps would give. Every ``T`` comes from one simulation of the longest phase (the free
phase does not depend on when spikes are counted), cut where the windows begin and end, so the
rates are exactly those of :func:`spikeep.snn.phase` with that settle and window (current input).

Prints, per ``T``: the spiking test error (%), its agreement with the rate engine's predictions
(its free phase of the run's ``eval_free_steps``), the images only one of the two engines gets
right (spikes only, rates only) with the exact McNemar test's two-sided p-value for "neither
engine is the better on these weights", and the spikes per test image (all layers, the whole
phase of ``T`` steps); optionally writes the table as JSON and a figure (error and spikes
per image against ``T``). Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/spike_latency.py OUT/checkpoint.pt \
        [--steps 10 20 40 80 160 320] [--settle-fraction 0.3] [--tau 4] [--test-subset 2000] \
        [--json FILE] [--figure FILE.png] [--title TEXT]

``--tau`` and ``--decay`` default to the run's ``[snntorch]`` values (else the engine's).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path

import torch
from scipy.stats import binomtest

from spikeep import batches, checkpoint, data
from spikeep.dynamics import relax
from spikeep.energy import Network
from spikeep.protocol import Snntorch, eval_free_steps
from spikeep.snn import SNNConfig
from spikeep.snn.phases import gain, init_state, simulate


def mcnemar_p(a: int, b: int) -> float:
    """Exact two-sided McNemar p-value for ``a`` and ``b`` discordant pairs (the binomial test
    of ``a`` in ``a + b`` draws at 1/2); 1 when there are none."""
    return binomtest(a, a + b).pvalue if a + b else 1.0


def windows(steps: list[int], fraction: float) -> list[tuple[int, int]]:
    """``(settle_T, T)`` for every ``T`` in ``steps`` (sorted, distinct; at least one counted
    step each)."""
    out = []
    for T in sorted(set(steps)):
        settle = min(round(fraction * T), T - 1)
        out.append((settle, T))
    return out


@torch.no_grad()
def sweep_rates(net, params, x, config: SNNConfig, cuts: list[tuple[int, int]]):
    """Per ``(settle, T)`` in ``cuts``: the rates (per dynamic layer) of a phase of ``settle``
    steps then ``T - settle`` counted ones, and the spikes per sample of its ``T`` steps; from
    one simulation of ``max T`` steps, in segments between the cut points."""
    points = sorted({0, *(s for s, _ in cuts), *(t for _, t in cuts)})
    state = init_state(net, x, config)
    cumulative = {0: tuple(torch.zeros_like(r) for r in state.r)}  # spikes counted up to t
    spikes = {0: 0.0}
    for a, b in zip(points, points[1:]):
        state, counts, n = simulate(
            net, params, x, None, state, b - a, lambda t: 0.0, config, count_from=0
        )
        cumulative[b] = tuple(c + d for c, d in zip(cumulative[a], counts, strict=True))
        spikes[b] = spikes[a] + float(n)
    out = []
    for settle, T in cuts:
        rates = tuple((e - s) / (T - settle) for e, s in zip(cumulative[T], cumulative[settle]))
        out.append((rates, spikes[T]))
    return out


def latency(
    ckpt_path: str | Path,
    steps: list[int],
    settle_fraction: float | None = None,
    tau: float | None = None,
    decay: float | None = None,
    test_subset: int = 0,
    batch_size: int = 1000,
    data_dir: str | None = None,
) -> dict:
    """The table of the module docstring as a dict: ``rows`` (one per ``T``: ``steps``,
    ``settle``, ``window``, ``error``, ``agreement``, ``spikes_only_right``,
    ``rates_only_right``, ``mcnemar_p``, ``spikes_per_sample``), ``rate_error`` and
    the settings."""
    ckpt = checkpoint.load(ckpt_path)
    net = Network(checkpoint.model_spec(ckpt))
    gain(net)  # refuses an activation no integrate-and-fire neuron has, in one line
    params = ckpt["params"]
    raw = ckpt["protocol"]
    s = {**vars(Snntorch()), **raw.get("snntorch", {})}
    if settle_fraction is None:
        settle_fraction = 0.2
        if s["eval_settle"] and s["eval_window"]:
            settle_fraction = s["eval_settle"] / (s["eval_settle"] + s["eval_window"])
    config = SNNConfig(decay=decay or s["decay"], tau=tau or s["tau"])
    name = raw.get("data", {}).get("name", "mnist-embedded")
    ds = batches.subset(
        data.load(name, "test", data_dir or raw.get("data", {}).get("dir")), test_subset
    )
    normalize = batches.checkpoint_normalization(raw, name)
    cuts = windows(steps, settle_fraction)
    free_steps = eval_free_steps(raw)
    dtype = next(iter(params.values())).dtype
    wrong = [0.0] * len(cuts)
    agree = [0.0] * len(cuts)
    spikes_only = [0] * len(cuts)  # right in spikes, wrong in rates
    rates_only = [0] * len(cuts)
    spikes = [0.0] * len(cuts)
    rate_wrong, n = 0.0, 0
    start = time.perf_counter()
    for i in range(0, len(ds.labels), batch_size):
        images, labels = ds.images[i : i + batch_size], ds.labels[i : i + batch_size]
        x, _ = batches.prepare_batch(net, images, labels, ds.classes, normalize, dtype, "cpu")
        fixed = net.dynamics.rates(net, relax(net, params, x, steps=free_steps).s)
        by_rates = net.output(params, fixed).argmax(1)
        rate_wrong += float((by_rates != labels).sum())
        for k, (rates, count) in enumerate(sweep_rates(net, params, x, config, cuts)):
            pred = net.output(params, rates).argmax(1)
            wrong[k] += float((pred != labels).sum())
            agree[k] += float((pred == by_rates).sum())
            spikes_only[k] += int(((pred == labels) & (by_rates != labels)).sum())
            rates_only[k] += int(((pred != labels) & (by_rates == labels)).sum())
            spikes[k] += count * len(labels)
        n += len(labels)
    rows = [
        {
            "steps": T,
            "settle": settle,
            "window": T - settle,
            "error": 100.0 * wrong[k] / n,
            "agreement": agree[k] / n,
            "spikes_only_right": spikes_only[k],
            "rates_only_right": rates_only[k],
            "mcnemar_p": mcnemar_p(spikes_only[k], rates_only[k]),
            "spikes_per_sample": spikes[k] / n,
        }
        for k, (settle, T) in enumerate(cuts)
    ]
    return {
        "checkpoint": str(ckpt_path),
        "model": net.spec.name,
        "data": name,
        "test_images": n,
        "tau": config.tau,
        "decay": config.decay,
        "settle_fraction": settle_fraction,
        "rate_error": 100.0 * rate_wrong / n,
        "rate_free_steps": free_steps,
        "rows": rows,
        "wall_s": time.perf_counter() - start,
    }


def figure(result: dict, path: str | Path, title: str | None = None) -> Path:
    """Spiking test error (left axis) and spikes per image (right) against steps per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    T = [r["steps"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    ax.plot(T, [r["error"] for r in rows], "o-", color="C0", label="spiking (snntorch)")
    ax.axhline(
        result["rate_error"],
        color="C0",
        ls="--",
        lw=1,
        label=f"rate engine ({result['rate_free_steps']} free steps)",
    )
    ax.set_xscale("log")
    ax.set_xticks(T, [str(t) for t in T])
    ax.minorticks_off()
    ax.set_xlabel(f"steps per phase (the first {result['settle_fraction']:.0%} not counted)")
    ax.set_ylabel("test error (%)", color="C0")
    ax.legend(loc="upper center", fontsize=8)
    right = ax.twinx()
    right.plot(T, [r["spikes_per_sample"] for r in rows], "s:", color="C1")
    right.set_ylabel("spikes per test image", color="C1")
    right.set_ylim(bottom=0)
    title = title or (
        f"{result['model']}: {result['test_images']} {result['data']} test images, "
        f"tau {result['tau']:g} steps"
    )
    ax.set_title(textwrap.fill(title, 80), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40, 80, 160, 320])
    ap.add_argument("--settle-fraction", type=float, default=None)
    ap.add_argument("--tau", type=float, default=None, help="trace time constant (steps)")
    ap.add_argument("--decay", type=float, default=None, help="membrane decay per step")
    ap.add_argument("--test-subset", type=int, default=0, help="first N test images (0: all)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", default=None, help="write the table here (JSON)")
    ap.add_argument("--figure", default=None, help="write the figure here (PNG)")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    if min(args.steps) < 2:
        ap.error(f"--steps: every phase needs at least 2 steps, got {min(args.steps)}")
    if args.settle_fraction is not None and not 0 <= args.settle_fraction < 1:
        ap.error(f"--settle-fraction: expected a number in [0, 1), got {args.settle_fraction}")
    try:
        result = latency(
            args.checkpoint,
            args.steps,
            args.settle_fraction,
            args.tau,
            args.decay,
            args.test_subset,
            data_dir=args.data_dir,
        )
    except (checkpoint.CheckpointError, ValueError) as err:
        print(f"spike_latency: {err}", file=sys.stderr)
        return 2
    print(
        f"{result['checkpoint']}: {result['test_images']} {result['data']} test images, tau "
        f"{result['tau']:g} steps, decay {result['decay']:g}; rate engine "
        f"{result['rate_error']:.2f}% ({result['rate_free_steps']} free steps)"
    )
    print(
        f"{'steps':>6} {'settle':>7} {'window':>7} {'error %':>8} {'agree':>7} "
        f"{'spikes only':>11} {'rates only':>10} {'McNemar p':>9} {'spikes':>10}"
    )
    for r in result["rows"]:
        print(
            f"{r['steps']:>6} {r['settle']:>7} {r['window']:>7} {r['error']:>8.2f} "
            f"{r['agreement']:>7.3f} {r['spikes_only_right']:>11} {r['rates_only_right']:>10} "
            f"{r['mcnemar_p']:>9.3g} {r['spikes_per_sample']:>10.0f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.figure:
        print(figure(result, args.figure, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
