"""The results of a fidelity study: ``results.csv``, ``results.json`` and PNG figures.

``results.csv`` has one row per point (:mod:`spikeep.fidelity.sweep`), the per-parameter metrics
flattened into ``cosine:W1``, ``rel_error:W1``, ``sign_agreement:W1``, ... columns.
``results.json`` holds the protocol's name and source, the reference's self-check per model
(:mod:`spikeep.fidelity.reference`), the fitted slopes, and the rows with ``per_param`` nested.

:func:`slopes` fits ``log rel_error = p log |beta| + c`` per model and line (engine, estimator,
rule) over the base point and the ``beta`` sweep (ok rows, at least 3 betas), keeping only the
asymptotic range ``1e-9 <= rel_error <= 0.2`` (:data:`FIT_RANGE`: below, float64 rounding of the
estimate; above, the bias is no longer small): ``p`` near 1 is an O(beta) bias, near 2
O(beta^2), near 0 an error that beta does not set (noise, finite windows, the oscillation's lag).

Figures (matplotlib, Agg), each a panel per model:

- ``error_vs_beta.png``: relative error against ``|beta|``, log-log, one line per estimator;
- ``error_vs_time.png``: the spiking engines' relative error against their simulation length
  (snntorch: ``time_steps``; Brian2: simulated seconds per sample, from the ``window``, ``settle``,
  ``period`` and ``periods`` sweeps);
- ``error_vs_<axis>.png``: every other swept axis (``points``, ``noise``, ``dt``, ...);
- ``per_layer_<model>.png``: heat map of the base points, rows engine/estimator, columns
  parameters, colour the relative error (log scale), text the cosine similarity.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from ..gradcheck import loglog_slope

__all__ = ["write_csv", "write_json", "slopes", "figures", "clean"]

_METRICS = ("cosine", "rel_error", "sign_agreement")
FIT_RANGE = (1e-9, 0.2)  # relative errors the slope is fitted over (module docstring)
_ENGINE_STYLE = {"rate": "-", "snntorch": "--", "brian2": ":"}
_ESTIMATOR_COLOUR = {
    "one-sided": "tab:blue",
    "random-sign": "tab:cyan",
    "symmetric": "tab:orange",
    "holomorphic": "tab:green",
    "continual": "tab:purple",
    "oscillation": "tab:red",
}
_TIME_AXES = {"snntorch": ("time_steps",), "brian2": ("window", "periods")}


def clean(obj):
    """Strict-JSON copy: non-finite floats become None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj


def write_csv(rows: list[dict], path: Path) -> None:
    """One line per row; ``per_param`` flattened to ``metric:param`` columns."""
    params: list[str] = []
    for r in rows:
        for k in r.get("per_param") or {}:
            if k not in params:
                params.append(k)
    base = [k for k in rows[0] if k != "per_param"] if rows else []
    for r in rows:
        base += [k for k in r if k != "per_param" and k not in base]
    columns = base + [f"{m}:{p}" for p in params for m in _METRICS]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        for r in rows:
            flat = {k: r.get(k) for k in base}
            for p, v in (r.get("per_param") or {}).items():
                flat.update({f"{m}:{p}": v[m] for m in _METRICS})
            w.writerow({k: "" if v is None else v for k, v in flat.items()})


def write_json(summary: dict, path: Path) -> None:
    path.write_text(json.dumps(clean(summary), indent=1, allow_nan=False) + "\n")


def _ok(rows):
    return [r for r in rows if r["status"] == "ok"]


def _lines(rows, axes):
    """``{(model, label): [row, ...]}`` of the ok rows on the base point or one of ``axes``
    (a tuple of axis names, or engine -> tuple: then only those engines)."""
    out: dict[tuple[str, str], list[dict]] = {}
    for r in _ok(rows):
        if isinstance(axes, dict):
            if r["engine"] not in axes:
                continue
            of_row = axes[r["engine"]]
        else:
            of_row = axes
        if r["sweep"] == "base" or r["sweep"] in of_row:
            out.setdefault((r["model"], r["label"]), []).append(r)
    return out


def slopes(rows: list[dict]) -> list[dict]:
    """The fitted order ``p`` of the relative error in ``|beta|`` per model and line."""
    out = []
    for (model, label), group in _lines(rows, ("beta",)).items():
        pts = sorted(
            (abs(r["beta"]), r["rel_error"]) for r in group if FIT_RANGE[0] <= r["rel_error"]
        )
        pts = [p for p in pts if p[1] <= FIT_RANGE[1]]
        if len({b for b, _ in pts}) < 3:
            continue
        p = loglog_slope([b for b, _ in pts], [e for _, e in pts])
        out.append(
            {
                "model": model,
                "label": label,
                "slope": p,
                "betas": [p_[0] for p_ in pts],
                "rel_errors": [p_[1] for p_ in pts],
            }
        )
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(plt, models: list[str], width=4.2, height=3.2):
    fig, axes = plt.subplots(
        1, len(models), figsize=(width * len(models), height), squeeze=False, dpi=90
    )
    return fig, dict(zip(models, axes[0], strict=True))


def _x(r, axis: str) -> float:
    if axis == "time":
        # discrete-time engines count steps, continuous-time ones simulated seconds
        return r["time_steps"] if r.get("time_steps") is not None else r["biological_s"]
    return abs(r[axis]) if axis == "beta" else r[axis]


def _plot_axis(plt, rows, axis: str, path: Path, axes_of):
    engines = tuple(axes_of) if isinstance(axes_of, dict) else None
    lines = _lines(rows, axes_of)
    # keep only lines that actually vary along the axis
    lines = {k: v for k, v in lines.items() if len({_x(r, axis) for r in v}) >= 2}
    if not lines:
        return None
    models = sorted({m for m, _ in lines}, key=[r["model"] for r in rows].index)
    keys = [(m, e) for m in models for e in (engines or (None,))]
    titles = [f"{m}" + (f" ({e})" if e else "") for m, e in keys]
    fig, panels = _panels(plt, titles)
    for (model, label), group in lines.items():
        engine = group[0]["engine"] if engines else None
        ax = panels[f"{model}" + (f" ({engine})" if engine else "")]
        pts = sorted((_x(r, axis), r["rel_error"]) for r in group)
        first = group[0]
        ax.plot(
            *zip(*pts, strict=True),
            _ENGINE_STYLE[first["engine"]],
            color=_ESTIMATOR_COLOUR.get(first["estimator"], "k"),
            marker="x" if first["rule"] == "stdp" else "o",
            ms=4,
            label=label,
        )
    for title, ax in panels.items():
        if axis in ("beta", "time") or axis in ("free_steps", "nudged_steps", "steps_per_period"):
            ax.set_xscale("log")
        ax.set_yscale("log")
        xlabel = {
            "beta": "|beta|",
            "time": "simulation length (snntorch: steps; brian2: s per sample)",
        }.get(axis, axis)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("relative error", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6)
        else:
            ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _heatmap(plt, rows, model: str, path: Path):
    base = [r for r in _ok(rows) if r["model"] == model and r["sweep"] == "base"]
    if not base:
        return None
    params = list(base[0]["per_param"])
    labels = [r["label"] for r in base]
    from matplotlib.colors import LogNorm

    cos = np.array([[r["per_param"][p]["cosine"] for p in params] for r in base])
    rel = np.array([[r["per_param"][p]["rel_error"] for p in params] for r in base])
    shown = np.clip(rel, 1e-12, None)
    fig, ax = plt.subplots(figsize=(2.2 + 0.8 * len(params), 0.9 + 0.3 * len(labels)), dpi=90)
    norm = LogNorm(vmin=float(shown.min()), vmax=max(float(shown.max()), float(shown.min()) * 10))
    im = ax.imshow(shown, norm=norm, cmap="viridis", aspect="auto")
    for i in range(len(labels)):
        for j in range(len(params)):
            dark = norm(shown[i, j]) < 0.5
            text = f"{cos[i, j]:.3f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=6, color="w" if dark else "k")
    ax.set_xticks(range(len(params)), params, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(f"{model}: rel. error (colour), cosine (text)", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def figures(rows: list[dict], out: Path) -> list[Path]:
    """Write the figures of the module docstring into ``out``; their paths."""
    plt = _plt()
    out = Path(out)
    made = [_plot_axis(plt, rows, "beta", out / "error_vs_beta.png", ("beta",))]
    made.append(_plot_axis(plt, rows, "time", out / "error_vs_time.png", _TIME_AXES))
    swept = {r["sweep"] for r in rows} - {"base", "beta", "time_steps", "window"}
    for axis in sorted(swept):
        made.append(_plot_axis(plt, rows, axis, out / f"error_vs_{axis}.png", (axis,)))
    for model in dict.fromkeys(r["model"] for r in rows):
        made.append(_heatmap(plt, rows, model, out / f"per_layer_{model}.png"))
    return [p for p in made if p is not None]
