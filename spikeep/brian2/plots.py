"""Figures of a spiking run: raster, rates against the rate engine's fixed point, calibration.

Each function writes one PNG and returns its path; matplotlib runs headless (``Agg``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["raster", "rates_vs_fixed_point", "calibration"]


def raster(monitors: dict, path: str | Path, title: str = "", t_max: float | None = None) -> Path:
    """Spike raster: ``monitors`` maps a layer name to a ``brian2.SpikeMonitor`` (recording)."""
    fig, axes = plt.subplots(len(monitors), 1, sharex=True, figsize=(8, 1.6 * len(monitors) + 1))
    axes = np.atleast_1d(axes)
    for ax, (name, mon) in zip(axes, monitors.items(), strict=True):
        t = np.asarray(mon.t[:]) if not hasattr(mon.t, "dim") else np.asarray(mon.t / 1.0)
        ax.plot(t, np.asarray(mon.i[:]), "|", markersize=2, color="k")
        ax.set_ylabel(f"{name}\nneuron")
        if t_max:
            ax.set_xlim(0, t_max)
    axes[-1].set_xlabel("time (s)")
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def rates_vs_fixed_point(
    measured: list[np.ndarray], fixed: list[np.ndarray], names: list[str], path, title: str = ""
) -> Path:
    """Scatter of spiking rates (units of ``r_max``) against the rate engine's fixed point."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for m, f, name in zip(measured, fixed, names, strict=True):
        ax.plot(np.ravel(f), np.ravel(m), ".", label=name, alpha=0.7)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("rate engine fixed point rho(s*)")
    ax.set_ylabel("spiking rate / rate_max")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def calibration(curves: dict[str, dict], path, title: str = "") -> Path:
    """Measured transfer functions (:func:`spikeep.brian2.calibrate.transfer`) against ``rho``."""
    fig, ax = plt.subplots(figsize=(5, 4))
    first = next(iter(curves.values()))
    ax.plot(first["s"], first["rho"], "k-", lw=2, label="rho (rate engine)")
    for name, c in curves.items():
        ax.plot(c["s"], c["measured"], "o", ms=3, label=f"{name}: measured")
        if c.get("predicted") is not None:
            ax.plot(c["s"], c["predicted"], "--", lw=1, label=f"{name}: analytic")
    ax.set_xlabel("state s (synaptic current)")
    ax.set_ylabel("rate / rate_max")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
