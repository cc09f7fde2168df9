"""spikeep's Table 1 runs epoch by epoch against the authors' own logs (Laborieux & Zenke 2022).

For each run folder of ``spikeep train`` (its ``metrics.jsonl``), the per-epoch test accuracy
(``100 - test_error``) beside the band of the authors' three runs of the same algorithm and
setting, from ``hep_table1_logs.csv`` (``../shared/anchors/``; validation accuracy on the 10,000
test images). The algorithm is the run's protocol's ``[paper] anchors`` key (``noise/hep``,
``noise/continuous_hep``, ``noise/classic_ep_4e-1``, ...), read from its checkpoint, or given
after the folder as ``RUN=SETTING/ALGO``. Prints, per epoch, our accuracy, the band (lowest and
highest of the three runs), the gap to the band's bottom and whether we are inside, above or
below; writes a figure with one panel per algorithm: the three runs, the band between them, our
curve. Whether a dip below the band means anything is judged against the authors' own spread:
over the same epochs after the first, how often each of their runs falls below the band of the
other two, beside how often ours falls below a band of two of their runs (both held against two
runs, so alike). Usage::

    .venv/bin/python scripts/table1_compare.py /work/runs/hep_table1_noise \
        [/work/runs/oscep_table1_noise=noise/continuous_hep ...] \
        [--anchors ../shared/anchors/hep_table1_logs.csv] [--out docs/results/table1.png] \
        [--json | --markdown]

``--markdown`` prints each run's table and summary as ``docs/holomorphic.md`` ("The runs") has
them, with its training accuracy and wall time per epoch.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path

from spikeep.plots import PlotError, read_metrics

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ROOT.parent / "shared" / "anchors" / "hep_table1_logs.csv"
NAMES = {
    "hep": "hEP, N = 10",
    "continuous_hep": "oscEP (continuous hEP)",
    "classic_ep_4e-1": "one-sided EP, beta = 0.4",
    "classic_ep_1e-1": "one-sided EP, beta = 0.1",
}


def read_anchors(path: str | Path, column: str = "val_accuracy") -> dict:
    """``{"setting/algo": {run: {epoch: value}}}`` from the anchors CSV: the validation accuracy
    in % (``column="val_accuracy"``) or another column as it is (``"epoch_seconds"``)."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = f"{row['setting']}/{row['algo']}"
            value = float(row[column])
            out[key][row["run"]][int(row["epoch"])] = (
                percent(value) if column == "val_accuracy" else value
            )
    return {k: dict(v) for k, v in out.items()}


def percent(fraction: float) -> float:
    """``100 * fraction``, rounded to 1e-6 points: an accuracy on the 10,000 test images is a
    whole number of hundredths, so theirs (``0.0958``) and ours (``100 - 90.42``) compare equal
    where the float products differ in their last bits."""
    return round(100.0 * fraction, 6)


def band(runs: dict[str, dict[int, float]]) -> dict[int, tuple[float, float]]:
    """Per epoch, the lowest and highest accuracy of the runs that logged it."""
    epochs = sorted({e for r in runs.values() for e in r})
    return {
        e: (min(r[e] for r in runs.values() if e in r), max(r[e] for r in runs.values() if e in r))
        for e in epochs
    }


def accuracies(metrics: list[dict]) -> dict[int, float]:
    """``{epoch: test accuracy in %}`` from a run's metric rows."""
    return {
        int(r["epoch"]): percent(1 - float(r["test_error"]) / 100)
        for r in metrics
        if "test_error" in r
    }


def run_anchor(folder: str | Path) -> str:
    """The run's protocol's ``[paper] anchors`` key, from its checkpoint."""
    from spikeep import checkpoint

    ckpt = checkpoint.load(Path(folder) / "checkpoint.pt")
    key = ckpt.get("protocol", {}).get("paper", {}).get("anchors")
    if not key:
        raise ValueError(
            f"{folder}: its protocol has no [paper] anchors key; give it as {folder}=SETTING/ALGO"
        )
    return key


def compare(ours: dict[int, float], lo_hi: dict[int, tuple[float, float]]) -> list[dict]:
    """Per epoch that both have: our accuracy, the band, ``gap`` = ours - band bottom (points;
    negative below the band) and ``where`` (inside, above or below)."""
    rows = []
    for e in sorted(set(ours) & set(lo_hi)):
        lo, hi = lo_hi[e]
        a = ours[e]
        where = "below" if a < lo else "above" if a > hi else "inside"
        rows.append({"epoch": e, "ours": a, "low": lo, "high": hi, "gap": a - lo, "where": where})
    return rows


def dips(curve: dict[int, float], runs: dict[str, dict[int, float]], epochs) -> list[tuple]:
    """``(epoch, gap)`` for each epoch of ``epochs`` at which ``curve`` lies below the band of
    ``runs`` (gap = curve - band bottom, negative)."""
    lo_hi = band(runs)
    return [(e, curve[e] - lo_hi[e][0]) for e in epochs if e in lo_hi and curve[e] < lo_hi[e][0]]


def spread(ours: dict[int, float], runs: dict[str, dict[int, float]]) -> dict:
    """The dips below the band over our epochs after the first, ours against theirs.

    ``ours``: our dips below the band of all their runs; ``ours_vs_two``: our dips below the band
    of each pair of their runs; ``theirs``: each of their runs' dips below the band of the others.
    A run of theirs takes part at the epochs it logged."""
    epochs = sorted(e for e in ours if e > 1)
    pairs = {
        f"{a}+{b}": dips(ours, {a: runs[a], b: runs[b]}, epochs)
        for a, b in itertools.combinations(sorted(runs), 2)
    }
    theirs = {
        k: dips(runs[k], {o: r for o, r in runs.items() if o != k}, [e for e in epochs if e in r])
        for k, r in sorted(runs.items())
    }
    return {
        "epochs": epochs,
        "ours": dips(ours, runs, epochs),
        "ours_vs_two": pairs,
        "theirs": theirs,
    }


def _spread_figures(sp: dict) -> tuple[str, float, str]:
    """The span of epochs, our mean number of dips below a band of two of their runs, and each
    of their runs' dips (``N (worst G)``, joined by `` / ``) of a :func:`spread`."""
    first, last = sp["epochs"][0], sp["epochs"][-1]
    span = f"epoch {first}" if first == last else f"epochs {first}-{last}"
    two = [len(d) for d in sp["ours_vs_two"].values()]
    each = " / ".join(_dips_line(d) for d in sp["theirs"].values())
    return span, sum(two) / max(len(two), 1), each


def _dips_line(found: list[tuple]) -> str:
    worst = f" (worst {min(g for _, g in found):+.2f})" if found else ""
    return f"{len(found)}{worst}"


def markdown(metrics: list[dict], rows: list[dict], sp: dict, seconds: dict) -> str:
    """The comparison of one run as the Markdown of ``docs/holomorphic.md``: per epoch our test
    accuracy (training accuracy, with the noise), their band, the gap and our epoch's wall time
    (training and test pass: the difference of the cumulative ``wall_s``); then the epochs after
    the first below the band, the spread against theirs (:func:`spread`) and their GPU epoch
    times after the first (``seconds``: ``{run: {epoch: s}}`` from the logs)."""
    by_epoch = {int(m["epoch"]): m for m in metrics}
    n = len(sp["theirs"])
    words = {1: "one", 2: "two", 3: "three", 4: "four"}
    lines = [
        f"| epoch | ours: test accuracy (train, with the noise) | their {words.get(n, n)} runs "
        "| gap to the band's bottom | our epoch's wall time |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        m, before = by_epoch[r["epoch"]], by_epoch.get(r["epoch"] - 1, {"wall_s": 0.0})
        wall = m["wall_s"] - before["wall_s"]
        lines.append(
            f"| {r['epoch']} | {r['ours']:.2f}% ({100 - m['train_error']:.2f}%) "
            f"| {r['low']:.2f}-{r['high']:.2f}% | {r['gap']:+.2f} points, {r['where']} "
            f"| {wall:.0f} s |"
        )
    text = "\n".join(lines) + "\n\n"
    if sp["ours"]:  # our dips below the band after the first epoch
        listed = ", ".join(f"{e} ({g:+.2f})" for e, g in sp["ours"])
        text += f"Epochs after the first below the band: {listed} (points)."
    else:
        text += "No epoch after the first below the band."
    if sp["epochs"]:
        span, mean_two, each = _spread_figures(sp)
        text += (
            f" Against their own spread over {span} (`scripts/table1_compare.py` prints it): "
            f"ours is below a band of two of their runs at {mean_two:.1f} epochs on average, "
            f"and each of their runs below the band of the other {words.get(n - 1, n - 1)} at "
            f"{each} epochs (worst gap in points)."
        )
    later = [t for r in seconds.values() for e, t in r.items() if e > 1]
    if later:
        text += f" Their GPU epochs after the first: {min(later):.0f}-{max(later):.0f} s (logs)."
    return text + "\n"


def figure(panels: dict[str, tuple[dict, list[tuple[str, dict[int, float]]]]], path: str | Path):
    """One panel per key ``SETTING/ALGO``: the authors' runs, their band, and our curves (every
    run given for that key, labelled by its folder's name)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (key, (runs, ours_all)) in zip(axes[0], panels.items(), strict=True):
        lo_hi = band(runs)
        epochs = sorted(lo_hi)
        lows = [lo_hi[e][0] for e in epochs]
        ax.fill_between(epochs, lows, [lo_hi[e][1] for e in epochs], alpha=0.25, color="C0")
        for i, (_, r) in enumerate(sorted(runs.items())):
            es = sorted(r)
            label = "authors' runs (GPU logs)" if i == 0 else None
            ax.plot(es, [r[e] for e in es], color="C0", lw=0.8, alpha=0.7, label=label)
        shown = list(lows)
        for k, (label, ours) in enumerate(ours_all):
            es = sorted(ours)
            color = ["C3", "C1", "C2", "C4"][k % 4]
            ax.plot(es, [ours[e] for e in es], "o-", color=color, ms=3, lw=1.5, label=label)
            shown += [ours[e] for e in es]
        shown = [v for v in shown if v > 80]  # collapsed runs: off scale, unless all are
        bottom = min(shown) - 0.5 if shown else 0.0
        ax.set_ylim(bottom, 100)
        setting, algo = key.split("/")
        ax.set_title(f"{NAMES.get(algo, algo)}, {setting.replace('_', ' ')}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if shown else "center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders, each optionally =SETTING/ALGO")
    ap.add_argument("--anchors", default=str(ANCHORS), help="the authors' logs (CSV)")
    ap.add_argument("--out", default=None, help="figure path (PNG); none when omitted")
    ap.add_argument("--json", action="store_true", help="print the comparison as JSON")
    ap.add_argument(
        "--markdown",
        action="store_true",
        help="print each run's table as docs/holomorphic.md has it",
    )
    args = ap.parse_args(argv)
    anchors = read_anchors(args.anchors)
    seconds = read_anchors(args.anchors, "epoch_seconds")
    panels, report, spreads, tables = {}, {}, {}, {}
    for item in args.runs:
        folder, _, key = item.partition("=")
        try:
            key = key or run_anchor(folder)
        except (ValueError, OSError) as e:  # CheckpointError is a ValueError
            print(f"table1_compare: {e}", file=sys.stderr)
            return 2
        if key not in anchors:
            print(f"{key}: not in {args.anchors}; expected one of {sorted(anchors)}")
            return 2
        try:
            metrics = read_metrics(folder)
        except PlotError as e:
            print(f"table1_compare: {e}", file=sys.stderr)
            return 2
        ours = accuracies(metrics)
        rows = compare(ours, band(anchors[key]))
        spreads[f"{folder}={key}"] = spread(ours, anchors[key])
        panels.setdefault(key, (anchors[key], []))[1].append(
            ("spikeep, " + Path(folder).name, ours)
        )
        report[f"{folder}={key}"] = rows
        if args.markdown:
            tables[f"{folder}={key}"] = markdown(
                metrics, rows, spreads[f"{folder}={key}"], seconds[key]
            )
    if args.markdown:
        for name, table in tables.items():
            print(f"{name}\n\n{table}")
    elif args.json:
        out = {name: {"epochs": rows, "spread": spreads[name]} for name, rows in report.items()}
        print(json.dumps(out, indent=1))
    else:
        for name, rows in report.items():
            print(name)
            print("  epoch   ours    band (3 runs)    gap to bottom")
            for r in rows:
                print(
                    f"  {r['epoch']:5d}  {r['ours']:6.2f}  {r['low']:6.2f}-{r['high']:6.2f}"
                    f"  {r['gap']:+6.2f}  {r['where']}"
                )
            sp = spreads[name]
            if sp["epochs"]:
                span, mean_two, each = _spread_figures(sp)
                print(
                    f"  {span}: below the band of their {len(sp['theirs'])} runs at "
                    f"{_dips_line(sp['ours'])}; below a band of two of them at "
                    f"{mean_two:.1f} on average; each of theirs below the band of the others "
                    f"at {each}"
                )
    if args.out:
        print(f"figure: {figure(panels, args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
