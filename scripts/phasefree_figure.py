"""The phase-free rule on one MNIST sample: the teaching current and one synapse's demodulated
weight change over the sample (``docs/results/phasefree_teaching.png``).

One copy of the network in runtime mode (numpy target), the oscillation schedule of the model's
``[spiking] period`` (``--warmup`` discarded + ``--periods`` demodulated periods), learning rate 0.
The sample follows another test image without a reset, as in a training chunk. Shown over the
sample: the teaching current ``|beta| cos(omega t) (y - r_out)`` of the target's output unit and
of the most active other one; their spike traces ``r`` (units of ``r_max``); and, for the ``W2``
synapse with the largest exact gradient on this image, the ``stdp`` rule's running estimate
``g(t)`` (``-dw / eta``: each spike adds ``-G(t) r_other / (2 r_max)``, ``G`` the demodulation
gate ``2 cos(omega t) / (T_d |beta|)``, 0 during the warm-up), against what the ``endpoint`` rule
computes once at the sample's end, the rate engine's oscillation estimate and the exact
gradient. The image is the first of the embedded MNIST test images whose exact gradient is not
zero. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/phasefree_figure.py CHECKPOINT|init \
        [--model models/spiking_784_500_10_osc.toml] [--beta 0.5] [--warmup 1 --periods 1] \
        [--out docs/results/phasefree_teaching.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import brian2 as b2
import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikeep import Network, checkpoint, data, estimators, load_spec, reference  # noqa: E402
from spikeep.brian2 import schedules  # noqa: E402
from spikeep.brian2.lowering import build  # noqa: E402
from spikeep.dynamics import relax  # noqa: E402


def informative(net, params, x, y, steps: int = 300) -> int:
    """The index of the first image whose exact gradient is not zero."""
    free = relax(net, params, x, steps=steps)
    for k in range(len(x)):
        g = reference.implicit_gradient(
            net, params, x[k : k + 1], y[k : k + 1], s_star=tuple(s[k : k + 1] for s in free.s)
        )
        if any(float(v.abs().max()) > 0 for v in g.values()):
            return k
    raise SystemExit("no image with a non-zero exact gradient among those searched")


def simulate(spec, params, x, y, schedule, rule: str, synapse: int | None = None):
    """Two samples (the previous image, then the image) in one copy; returns the sample's
    estimate of ``W2`` and, when ``synapse`` is given, the monitors."""
    b2.prefs.codegen.target = "numpy"
    sn = build(spec, params, x[:, None], y[:, None], schedule, rule=rule)
    out = sn.groups[-1]
    mons = {}
    if synapse is not None:
        every = 5 * spec.spiking.dt * b2.second
        mons["out"] = b2.StateMonitor(out, ["I_teach", "r"], record=True, dt=every)
        mons["g"] = b2.StateMonitor(sn.synapses[1], "g", record=[synapse], dt=every)
        sn.network.add(*mons.values())
    sn.run(1)
    first = np.asarray(sn.synapses[1].g[:]).copy()
    sn.run(1)
    return np.asarray(sn.synapses[1].g[:]) - first, first, mons


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a checkpoint, or 'init' (init_params(0))")
    ap.add_argument("--model", default=str(ROOT / "models/spiking_784_500_10_osc.toml"))
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--periods", type=int, default=1)
    ap.add_argument("--search", type=int, default=64, help="test images searched")
    ap.add_argument("--out", default=str(ROOT / "docs/results/phasefree_teaching.png"))
    args = ap.parse_args(argv)

    spec = load_spec(args.model)
    net = Network(spec)
    if args.checkpoint == "init":
        params = net.init_params(0, dtype=torch.float64)
    else:
        loaded = checkpoint.load(args.checkpoint)["params"]
        params = {k: v.to(torch.float64) for k, v in loaded.items()}
    test = data.load("mnist-embedded", "test")
    n = args.search
    xs = data.to_float(test.images[:n]).reshape(n, -1).to(torch.float64)
    ys = torch.nn.functional.one_hot(test.labels[:n].long(), 10).to(torch.float64)
    k = informative(net, params, xs, ys)
    prev = k - 1 if k > 0 else k + 1
    x, y = xs[[prev, k]], ys[[prev, k]]

    one = (x[1:], y[1:])
    free = relax(net, params, *one[:1], steps=300)
    exact = reference.implicit_gradient(net, params, *one, s_star=free.s)["W2"]
    osc = estimators.make(
        "oscillation", args.beta, steps_per_period=300, periods=2, warmup=1, real=True
    )
    rate = osc.estimate(net, params, *one, free).grads["W2"]
    target = int(y[1].argmax())
    n_pre = spec.layers[1].size
    j = int(exact[target].abs().argmax())
    synapse = target * n_pre + j

    schedule = schedules.oscillation(args.beta, spec.spiking, args.periods, args.warmup)
    g_stdp, _, mons = simulate(spec, params, x, y, schedule, "stdp", synapse)
    g_end, _, _ = simulate(spec, params, x, y, schedule, "endpoint")
    T = schedule.duration
    t = np.asarray(mons["out"].t / b2.second)
    inside = t >= T  # the image's sample (the previous image's before)
    ts = (t[inside] - T) * 1e3
    I_teach = np.asarray(mons["out"].I_teach)[:, inside]
    r = np.asarray(mons["out"].r)[:, inside]
    others = [u for u in range(r.shape[0]) if u != target]
    other = others[int(r[others].mean(1).argmax())]
    g = np.asarray(mons["g"].g)[0, inside]
    g = g - g[0]
    warm = args.warmup * schedule.period * 1e3

    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(8, 7))
    ax = axes[0]
    ax.plot(
        ts, args.beta * np.cos(schedule.omega * (t[inside])), "k:", lw=1, label="|beta| cos(wt)"
    )
    ax.plot(ts, I_teach[target], color="C0", lw=1, label=f"I_teach, target unit {target}")
    ax.plot(ts, I_teach[other], color="C1", lw=1, label=f"I_teach, unit {other}")
    ax.set_ylabel("teaching current")
    ax.legend(fontsize=7, loc="upper right")
    ax = axes[1]
    ax.plot(ts, r[target], color="C0", lw=1, label=f"r, target unit {target}")
    ax.plot(ts, r[other], color="C1", lw=1, label=f"r, unit {other}")
    ax.set_ylabel("output trace r / r_max")
    ax.legend(fontsize=7, loc="upper right")
    ax = axes[2]
    ax.plot(ts, g, color="C2", lw=1.2, label="stdp: running g (dw = -eta g)")
    ax.axhline(float(g_end[synapse]), color="C3", ls="--", lw=1, label="endpoint rule (once)")
    ax.axhline(float(rate[target, j]), color="C4", ls="-.", lw=1, label="rate engine, oscillation")
    ax.axhline(float(exact[target, j]), color="k", ls=":", lw=1, label="exact dL/dW")
    ax.set_ylabel(f"W2[{target}, {j}] estimate")
    ax.set_xlabel("time in the sample (ms)")
    ax.legend(fontsize=7, loc="upper left")
    for ax in axes:
        ax.axvspan(0, warm, color="0.9", zorder=0)
    axes[0].set_title(
        f"phase-free EP on MNIST test image {k} (label {target}; after image {prev}): "
        f"period {schedule.period * 1e3:g} ms, |beta| {args.beta:g}, warm-up shaded",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(
        f"image {k} (label {target}), synapse W2[{target}, {j}]: stdp {g_stdp[synapse]:+.4g}, "
        f"endpoint {g_end[synapse]:+.4g}, rate oscillation {float(rate[target, j]):+.4g}, "
        f"exact {float(exact[target, j]):+.4g}"
    )
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
