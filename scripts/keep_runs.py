"""Keep long runs in the repository between sessions (``docs/results/runs/README.md``).

A session may start on a fresh machine, where run folders outside the repository are gone.
``save`` copies each run folder's ``checkpoint.pt`` and ``metrics.jsonl`` (and the
``epochs/epoch_E.pt`` that ``[train] keep_epochs`` keeps) into ``docs/results/runs/NAME/`` and
prints the run's row for that README; ``restore`` copies them back into a runs folder, from
which ``spikeep train ... --resume`` goes on::

    .venv/bin/python scripts/keep_runs.py save /work/runs/oscep_table1_noise [...]
    .venv/bin/python scripts/keep_runs.py restore oscep_table1_noise [...] [--runs /work/runs]

``save`` copies the checkpoint first and the metrics after it: a run appends an epoch's metrics
line before it saves that epoch's checkpoint, so the copied metrics cover every epoch the copied
checkpoint holds (a resumed run drops any later line). A run still going is kept as of its last
checkpoint; stop it first (``kill -TERM PID``: it saves the batch in progress) to keep all of it.
``restore`` refuses a runs folder that already holds a checkpoint.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from spikeep.train import CHECKPOINT, EPOCHS, METRICS

ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / "docs" / "results" / "runs"
FILES = (CHECKPOINT, METRICS)  # in this order: see the module's docstring


def where(ckpt: dict) -> str:
    """Where a checkpoint's run stands, in words: epochs done of all, batches into the next."""
    epochs = ckpt.get("protocol", {}).get("train", {}).get("epochs", "?")
    text = f"{ckpt['epoch']} of {epochs} epochs done"
    if ckpt["batch"]:
        text += f", {ckpt['batch']:,} batches into epoch {ckpt['epoch'] + 1}"
    return text + f", {ckpt['wall_s'] / 3600:.1f} h of wall time"


def _copy(src: Path, to: Path) -> None:
    """Copy the run files ``src`` has into ``to``, in the order of :data:`FILES`."""
    to.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, to / name)
    for kept in sorted((src / EPOCHS).glob("epoch_*.pt")):
        (to / EPOCHS).mkdir(exist_ok=True)
        shutil.copyfile(kept, to / EPOCHS / kept.name)


def save(run: Path, kept: Path = KEPT) -> str:
    """Copy ``run``'s checkpoint, then its metrics, into ``kept/NAME``; return its README row."""
    from spikeep import checkpoint

    ckpt_path = run / CHECKPOINT
    ckpt = checkpoint.load(ckpt_path)  # one line for a folder without a readable checkpoint
    _copy(run, kept / run.name)
    stamp = datetime.fromtimestamp(ckpt_path.stat().st_mtime, UTC)
    return f"| `{run.name}` | {where(ckpt)} | {stamp:%Y-%m-%d %H:%M} UTC |"


def restore(name: str, runs: Path, kept: Path = KEPT) -> Path:
    """Copy ``kept/NAME`` into ``runs/NAME``, refusing one that holds a checkpoint already."""
    src, to = kept / name, runs / name
    if not (src / CHECKPOINT).is_file():
        have = sorted(p.name for p in kept.iterdir() if (p / CHECKPOINT).is_file())
        raise FileNotFoundError(f"{name}: no run kept in {kept}; kept: {', '.join(have) or 'none'}")
    if (to / CHECKPOINT).exists():
        raise FileExistsError(f"{to}: holds a checkpoint already; resume it as it is")
    _copy(src, to)
    return to


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sv = sub.add_parser("save", help="copy run folders' state into the repository")
    sv.add_argument("runs", nargs="+", type=Path, help="run folders (spikeep train --out)")
    sv.add_argument("--kept", type=Path, default=KEPT, help=f"where runs are kept ({KEPT})")
    rs = sub.add_parser("restore", help="copy kept runs back into a runs folder")
    rs.add_argument("names", nargs="+", help="kept runs' names")
    rs.add_argument("--runs", type=Path, default=Path("/work/runs"), help="the runs folder")
    rs.add_argument("--kept", type=Path, default=KEPT, help=f"where runs are kept ({KEPT})")
    args = ap.parse_args(argv)
    try:
        if args.command == "save":
            for run in args.runs:
                print(save(run, args.kept))
        else:
            for name in args.names:
                print(f"{name}: restored into {restore(name, args.runs, args.kept)}")
    except (OSError, ValueError) as err:  # CheckpointError is a ValueError
        print(f"keep_runs: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
