"""Figures: training curves from a run's ``metrics.jsonl``.

``plot_run(out)`` writes ``out/curves.png``: the training loss, and the train, validation (when
the run held images out) and test error (%) per epoch; matplotlib with the Agg backend, so it
works with no display.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["PlotError", "read_metrics", "plot_run", "curves", "log_ticks"]

# Mantissas for log-axis labels, sparsest first: the first set that labels enough values wins.
_MANTISSAS = ((1,), (1, 2, 5), (1, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))


class PlotError(ValueError):
    """Nothing to plot."""


def read_metrics(out: str | Path) -> list[dict]:
    """The metric lines of a run folder, one dict per epoch (a last line cut short, from a run
    killed while writing it, is left out)."""
    path = Path(out) / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"{out}: no metrics.jsonl (is this a `spikeep train` output folder?)")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:  # a last line cut short is a run writing (or killed): skipped
                raise PlotError(f"{path}: line {i + 1} is not JSON ({line[:40]!r})") from None
    if not rows:
        raise PlotError(f"{path}: no epochs recorded yet")
    return rows


def plot_run(out: str | Path, title: str | None = None) -> Path:
    """Write ``out/curves.png`` and return its path."""
    import matplotlib.pyplot as plt

    fig = curves(read_metrics(out), title or Path(out).name)
    path = Path(out) / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curves(rows: list[dict], title: str):
    """The figure of ``plot_run``: loss, and train (validation) and test error, against whole
    epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    for key, marker, label in (
        ("loss", "o", "train (free phase)"),
        ("val_loss", "^", "validation"),
        ("test_loss", "s", "test"),
    ):
        if any(key in r for r in rows):
            ax_loss.plot(*_series(rows, key), marker=marker, label=label)
    ax_loss.set(xlabel="epoch", ylabel="cost C", title="loss")
    ax_loss.legend()
    shown = ["train_error", *(["val_error"] if "val_error" in rows[0] else []), "test_error"]
    for key, marker in zip(shown, "o^s" if len(shown) == 3 else "os", strict=True):
        label = {"train_error": "train", "val_error": "validation", "test_error": "test"}[key]
        ax_err.plot(*_series(rows, key), marker=marker, label=label)
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="error")
    errors = [r[k] for r in rows for k in shown if k in r]
    if min(errors) > 0:  # a log axis, labelled in plain numbers at least every few values
        ax_err.set_yscale("log")
        ax_err.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(log_ticks(errors)))
        ax_err.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax_err.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_err.legend()
    for ax in (ax_loss, ax_err):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # no epoch 2.5
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Epochs and values of the rows that have ``key`` (``[train] test_every`` leaves epochs
    without a test error)."""
    had = [r for r in rows if key in r]
    return [r["epoch"] for r in had], [r[key] for r in had]


def log_ticks(values: list[float], least: int = 4) -> list[float]:
    """Values to label on a log axis spanning ``values`` (all positive): ``m * 10^k`` for the
    sparsest mantissa set of ``_MANTISSAS`` that puts at least ``least`` labels in range, else the
    densest; the range's ends when even that labels fewer than two. (matplotlib's own log
    locator labels a range inside one decade, such as 8-18%, at a single value.)"""
    lo, hi = min(values), max(values)
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    for mantissas in _MANTISSAS:
        ticks = [m * 10.0**k for k in decades for m in mantissas]
        ticks = [float(f"{t:.6g}") for t in ticks if lo <= t <= hi]
        if len(ticks) >= least:
            break
    if len(ticks) < 2:  # a range too narrow for any set: label its ends
        ticks = sorted({float(f"{lo:.4g}"), float(f"{hi:.4g}")})
    return ticks
