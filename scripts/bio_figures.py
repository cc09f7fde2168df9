"""The biological regime's figures: the lif_bio neuron's rate function and the rates it fires at.

``transfer``: measures the rate function of the ``lif_bio`` neuron of
``models/spiking_784_500_10_bio.toml`` with :func:`spikeep.brian2.calibrate.transfer` (numpy
target), with ``s`` held constant (against the neuron's closed-form rate) and with ``s``
fluctuating around each level (an Ornstein-Uhlenbeck process of standard deviation ``--noise``
and correlation time ``tau_syn``, the diffusion approximation of a synaptic current fed by spike
trains), ``--repeats`` neurons per level for ``--duration`` s each; fits the soft LIF
(:func:`spikeep.activations.soft_lif`, parameters ``g, k, a, c, w``) to the fluctuating curve of
the first ``--noise`` by least squares; prints the fit and its largest error, and the largest
error of the registered activation ``lif_rate``; writes ``docs/results/bio_transfer.png``.

``rates CHECKPOINT``: the free phase (``--settle`` + ``--window``, the model's by default) of the
checkpoint's network on ``--images`` MNIST test images (``B`` copies side by side, numpy target,
Poisson input); prints each layer's rates (mean, quantiles, largest) and the standard deviation
over time of each neuron's ``s`` in the window (the fluctuation that the fit assumes); writes
``docs/results/bio_rates.png``, a histogram of the rates per layer. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bio_figures.py transfer [--noise 0.1 0.05 0.15]
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bio_figures.py rates CHECKPOINT [--images 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikeep import Network, activations, checkpoint, data, load_spec  # noqa: E402

MODEL = ROOT / "models" / "spiking_784_500_10_bio.toml"
RESULTS = ROOT / "docs" / "results"
FIT = ("g", "k", "a", "c", "w")


def fit_soft_lif(s: np.ndarray, measured: np.ndarray, p0: dict) -> dict:
    """Least-squares ``(g, k, a, c, w)`` of :func:`spikeep.activations.soft_lif` (``t_ref`` and
    ``tau_mem`` fixed at ``p0`` 's)."""
    from scipy.optimize import least_squares

    fixed = {k: v for k, v in p0.items() if k not in FIT}
    st = torch.from_numpy(s)

    def residual(p):
        return activations.soft_lif(st, *p, **fixed).numpy() - measured

    lo, hi = [1e-3, 1.0, 0.5, -1.0, 1e-3], [1.0, 100.0, 50.0, 1.0, 1.0]
    out = least_squares(residual, [p0[k] for k in FIT], bounds=(lo, hi))
    return {**dict(zip(FIT, (float(v) for v in out.x), strict=True)), **fixed}


def transfer(args) -> None:
    from spikeep.brian2.calibrate import transfer as measure

    spec = load_spec(args.model)
    cfg = spec.spiking
    levels = np.linspace(-0.6, 1.4, 101)
    curves = {}
    for noise in [0.0, *args.noise]:
        start = time.perf_counter()
        rep = 1 if noise == 0 else args.repeats
        c = measure(spec, np.repeat(levels, rep), args.duration, noise=noise, seed=args.seed)
        m = c["measured"].reshape(-1, rep)
        curves[noise] = (m.mean(1), m.std(1) / np.sqrt(rep) if rep > 1 else 0 * levels)
        if noise == 0:
            predicted = c["predicted"]
        wall = time.perf_counter() - start
        print(f"noise {noise}: {rep} x {args.duration} s per level, {wall:.0f} s")
    det = curves[0.0][0]
    print(
        f"s constant: largest |measured - closed form| {np.abs(det - predicted).max():.4f} "
        f"(one spike in {args.duration} s: {1 / (cfg.rate_max * args.duration):.4f}); "
        f"largest rate {det.max() * cfg.rate_max:.1f} Hz"
    )
    sigma = args.noise[0]
    y, se = curves[sigma]
    p = fit_soft_lif(levels, y, activations.LIF_RATE)
    st = torch.from_numpy(levels)
    fitted = activations.soft_lif(st, **p).numpy()
    registered = activations.get("lif_rate").rho(st).numpy()
    fit_err, reg_err = np.abs(fitted - y), np.abs(registered - y)
    result = {
        "noise": sigma,
        "fit": {k: round(v, 4) for k, v in p.items()},
        "fit_max_error": float(fit_err.max()),
        "fit_rms_error": float(np.sqrt((fit_err**2).mean())),
        "registered": activations.LIF_RATE,
        "registered_max_error": float(reg_err.max()),
        "registered_max_error_at": float(levels[reg_err.argmax()]),
        "registered_rms_error": float(np.sqrt((reg_err**2).mean())),
        "measurement_se_max": float(se.max()),
    }
    print(json.dumps(result, indent=1))

    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(6.4, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]}
    )
    ax.plot(levels, predicted, "k-", lw=1, label="closed form, s constant")
    ax.plot(levels, det, "k.", ms=3, label="measured, s constant")
    for noise in args.noise:
        ax.plot(levels, curves[noise][0], ".", ms=3, label=f"measured, s fluctuating (sd {noise})")
    ax.plot(levels, registered, "r-", lw=1.2, label=f"lif_rate (fit to sd {sigma:g})")
    ax.set_ylabel("rate / r_max")
    ax.set_title(
        f"lif_bio: tau_mem {cfg.tau_mem * 1e3:g} ms, refractory {cfg.refractory * 1e3:g} ms, "
        f"r_max {cfg.rate_max:g} Hz, dt {cfg.dt * 1e3:g} ms",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax2.plot(levels, registered - y, "r-", lw=1)
    ax2.fill_between(levels, -2 * se, 2 * se, color="0.8", label="2 s.e. of the measurement")
    ax2.axhline(0, color="k", lw=0.5)
    ax2.set_xlabel("s (synaptic current, mean)")
    ax2.set_ylabel("fit - measured")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out or RESULTS / "bio_transfer.png", dpi=120)
    print("wrote", args.out or RESULTS / "bio_transfer.png")


def rates(args) -> None:
    import brian2 as b2

    from spikeep.brian2 import schedules
    from spikeep.brian2.lowering import build

    spec = load_spec(args.model)
    cfg = spec.spiking
    net = Network(spec)
    state = checkpoint.load(args.checkpoint)
    params = {k: v.to(torch.float64) for k, v in state["params"].items()}
    test = data.load(args.data, "test")
    B = args.images
    x = data.to_float(test.images[:B]).reshape(B, -1).to(torch.float64)
    schedule = schedules.free(cfg, args.settle, args.window)
    b2.prefs.codegen.target = "numpy"
    sn = build(spec, params, x, None, schedule, seed=args.seed)
    start, stop = schedule.phases[0].settle, schedule.duration
    counts = [b2.SpikeMonitor(g, record=True) for g in sn.groups]
    states = [b2.StateMonitor(g, "s", record=True, dt=1e-3 * b2.second) for g in sn.groups[1:]]
    sn.network.add(*counts, *states)
    t0 = time.perf_counter()
    sn.run()
    print(
        f"{B} images, free phase {start * 1e3:g} + {(stop - start) * 1e3:g} ms: "
        f"{time.perf_counter() - t0:.0f} s"
    )
    names = [layer.name for layer in spec.layers]
    per_layer = {}
    for k, mon in enumerate(counts):
        t, i = np.asarray(mon.t / b2.second), np.asarray(mon.i[:])
        n = np.bincount(i[t >= start], minlength=B * sizes(spec)[k])
        per_layer[names[k]] = n / (stop - start)
    out = {}
    for k, (name, r) in enumerate(per_layer.items()):
        row = {
            "mean_hz": float(r.mean()),
            "median_hz": float(np.median(r)),
            "q90_hz": float(np.quantile(r, 0.9)),
            "q99_hz": float(np.quantile(r, 0.99)),
            "max_hz": float(r.max()),
            "silent_fraction": float((r == 0).mean()),
        }
        if k >= 1:
            s = np.asarray(states[k - 1].s[:])[:, int(round(start / 1e-3)) :]
            sd = s.std(1)
            row.update(
                s_sd_median=float(np.median(sd)),
                s_sd_q10=float(np.quantile(sd, 0.1)),
                s_sd_q90=float(np.quantile(sd, 0.9)),
            )
        out[name] = row
    rate_twin = net.dynamics.rates(net, _relax(net, params, x).s)
    out["rate_twin_mean_hz"] = [float(r.mean()) * cfg.rate_max for r in rate_twin]
    print(json.dumps(out, indent=1))

    fig, axes = plt.subplots(1, len(per_layer), figsize=(4 * len(per_layer), 3.2))
    bins = np.linspace(0, max(cfg.rate_max * 1.2, max(r.max() for r in per_layer.values())), 41)
    for k, (ax, (name, r)) in enumerate(zip(axes, per_layer.items(), strict=True)):
        ax.hist(r, bins=bins, color="0.4")
        ax.axvline(r.mean(), color="r", lw=1, label=f"mean {r.mean():.1f} Hz")
        ax.axvline(cfg.rate_max, color="k", ls="--", lw=1, label=f"r_max {cfg.rate_max:g} Hz")
        ax.set_yscale("log")
        ax.set_xlabel("rate (Hz)")
        what = "Poisson at r_max x: counts" if k == 0 else "LIF"
        ax.set_title(f"{name}: {len(r) // B} x {B} images ({what})", fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("neurons")
    fig.suptitle(
        f"free phase, window {(stop - start) * 1e3:g} ms after {start * 1e3:g} ms: "
        f"{Path(args.checkpoint).parent.name}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(args.out or RESULTS / "bio_rates.png", dpi=120)
    print("wrote", args.out or RESULTS / "bio_rates.png")


def sizes(spec) -> list[int]:
    return [layer.size for layer in spec.layers]


def _relax(net, params, x):
    from spikeep.dynamics import relax

    return relax(net, params, x, steps=300)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("transfer")
    t.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.05, 0.15])
    t.add_argument("--repeats", type=int, default=40)
    t.add_argument("--duration", type=float, default=2.0)
    r = sub.add_parser("rates")
    r.add_argument("checkpoint")
    r.add_argument("--images", type=int, default=32)
    r.add_argument("--data", default="mnist-embedded")
    r.add_argument("--settle", type=float, default=None)
    r.add_argument("--window", type=float, default=None)
    for p in (t, r):
        p.add_argument("--model", default=str(MODEL))
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    {"transfer": transfer, "rates": rates}[args.command](args)


if __name__ == "__main__":
    main()
