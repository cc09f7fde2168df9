"""The figures of docs/spiking.md: calibration, raster, spiking rates against the fixed point.

    OMP_NUM_THREADS=1 python benchmarks/brian2_figures.py [--out docs/results]

Uses ``models/spiking_small.toml`` (numpy target, seeds 0): the IF and LIF (2 ms refractory)
transfer functions over 1 s per level; one free phase of 8 inputs (settle 0.2 s, window 0.8 s)
against the rate engine's fixed point; a raster of one one-sided EP sample (beta = 0.5).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import brian2 as b2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikeep import spec  # noqa: E402
from spikeep.brian2 import build, plots, schedules  # noqa: E402
from spikeep.brian2.calibrate import transfer  # noqa: E402
from spikeep.dynamics import relax  # noqa: E402
from spikeep.energy import Network  # noqa: E402
from spikeep.gradcheck import random_batch  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "results"))
    out = Path(p.parse_args(argv).out)
    out.mkdir(parents=True, exist_ok=True)
    b2.prefs.codegen.target = "numpy"
    small = spec.load(ROOT / "models" / "spiking_small.toml")
    lif = dataclasses.replace(
        small, spiking=dataclasses.replace(small.spiking, neuron="lif", refractory=0.002)
    )
    curves = {"if": transfer(small), "lif (t_ref 2 ms)": transfer(lif)}
    for name, c in curves.items():
        print(
            f"calibration {name}: max |measured - rho| {np.abs(c['measured'] - c['rho']).max():.4f}"
        )
    print(plots.calibration(curves, out / "spiking_calibration.png", "rate / rate_max vs rho"))

    net = Network(small)
    params = net.init_params(0)
    x, y = random_batch(net, 8, 0)
    fixed = [r.numpy() for r in relax(net, params, x, steps=300).s]
    sn = build(small, params, x, schedule=schedules.free(small.spiking, settle=0.2, window=0.8))
    sn.run()
    rates = sn.rates("rho0")[1:]
    err = max(float(np.abs(a - f).max()) for a, f in zip(rates, fixed, strict=True))
    print(f"free rates, 0.8 s window: max |rate - fixed point| {err:.4f}")
    print(
        plots.rates_vs_fixed_point(
            rates,
            fixed,
            ["h", "y"],
            out / "spiking_rates.png",
            f"free phase, 0.8 s window (max error {err:.3f})",
        )
    )

    x1, y1 = random_batch(net, 1, 0)
    sched = schedules.one_sided(0.5, small.spiking, settle=0.15, window=0.25)
    sn = build(small, params, x1, y1, sched)
    mons = {name: b2.SpikeMonitor(g) for name, g in zip(["h", "y"], sn.groups[1:], strict=True)}
    sn.network.add(*mons.values())
    sn.run()
    print(
        plots.raster(
            mons,
            out / "spiking_raster.png",
            "one-sided EP sample: free 0-0.4 s, nudged (beta 0.5) 0.4-0.8 s",
            0.8,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
