"""Gradient error against |beta|: one-sided, symmetric and holomorphic EP (and the oscillation).

On ``models/tiny_holo.toml`` in float64 (a random batch of 16, seed 0, free phase and every nudged
phase relaxed for ``--steps`` steps), the relative error ``|g - g_ref| / |g_ref|`` of each
estimator against the implicit reference, for |beta| log-spaced over ``[--low, --high]``. Writes
``docs/results/holo_sweep.png`` (log-log) and prints the fitted log-log slope of each curve over
the points above ``FLOOR`` (where float64 rounding takes over). Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/holo_sweep.py [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikeep import Network, estimators, load_spec, reference  # noqa: E402
from spikeep.dynamics import relax  # noqa: E402
from spikeep.gradcheck import loglog_slope, random_batch, rel_error  # noqa: E402

FLOOR = 1e-12  # below this the relaxation's and the solver's rounding dominate
CURVES = [  # label, estimator, options
    ("one-sided", "one-sided", {}),
    ("symmetric (N=2)", "symmetric", {}),
    ("holomorphic N=3", "holomorphic", {"points": 3}),
    ("holomorphic N=4", "holomorphic", {"points": 4}),
    ("holomorphic N=6", "holomorphic", {"points": 6}),
    ("holomorphic N=10", "holomorphic", {"points": 10}),
    ("oscillation, real cos, K=400", "oscillation", {"steps_per_period": 400, "real": True}),
    ("oscillation, complex, K=400", "oscillation", {"steps_per_period": 400}),
]


def sweep(betas, steps: int, batch: int = 16, seed: int = 0) -> dict[str, list[float]]:
    net = Network(load_spec(ROOT / "models" / "tiny_holo.toml"))
    params = net.init_params(seed, dtype=torch.float64)
    x, y = random_batch(net, batch, seed)
    free = relax(net, params, x, steps=steps)
    ref = reference.implicit_gradient(net, params, x, y, s_star=free.s)
    print(f"free residual {float(free.residual):.1e}")
    flat = lambda g: torch.cat([g[k].flatten() for k in ref])  # noqa: E731
    errors = {}
    for label, name, options in CURVES:
        errors[label] = []
        for beta in betas:
            est = estimators.make(name, float(beta), steps, periods=1, **options)
            g = est.estimate(net, params, x, y, free, generator=torch.Generator())
            errors[label].append(rel_error(flat(g.grads), flat(ref)))
    return errors


def slope(betas, errors) -> tuple[float, float, float]:
    """Fitted log-log slope over the points above FLOOR, and the |beta| range used."""
    keep = [(b, e) for b, e in zip(betas, errors) if e > FLOOR]
    if len(keep) < 3:
        return float("nan"), float("nan"), float("nan")
    b, e = np.array(keep).T
    return loglog_slope(b, e), float(b.min()), float(b.max())


def plot(betas, errors, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), constrained_layout=True)
    for label, errs in errors.items():
        s, _, _ = slope(betas, errs)
        style = "--" if label.startswith("oscillation") else "-"
        ax.loglog(betas, errs, style, marker="o", ms=3, label=f"{label} (slope {s:.2f})")
    ax.axhline(FLOOR, color="black", lw=0.8, ls=":", label="fit floor (float64 rounding below)")
    ax.set(
        xlabel="|beta|",
        ylabel="relative error |g - g_ref| / |g_ref|",
        title="EP gradient error vs |beta|: tiny_holo, float64, implicit reference",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "holo_sweep.png"))
    p.add_argument("--low", type=float, default=0.01)
    p.add_argument("--high", type=float, default=1.0)
    p.add_argument("--points", type=int, default=13)
    p.add_argument("--steps", type=int, default=150)
    args = p.parse_args(argv)
    betas = np.geomspace(args.low, args.high, args.points)
    errors = sweep(betas, args.steps)
    print(f"{'estimator':<30}{'slope':>7}  fitted over |beta| in")
    for label, errs in errors.items():
        s, lo, hi = slope(betas, errs)
        print(f"{label:<30}{s:>7.2f}  [{lo:.3g}, {hi:.3g}]")
    print("|beta|  " + "  ".join(f"{b:.3g}" for b in betas))
    for label, errs in errors.items():
        print(f"{label:<30}" + " ".join(f"{e:.1e}" for e in errs))
    plot(betas, errors, Path(args.out))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
