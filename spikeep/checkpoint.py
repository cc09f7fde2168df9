"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of tensors, numbers, strings and lists (see ``spikeep.train.TrainState``).
``save`` writes it to a temporary file in the same folder and renames it over the target, so a
crash mid-write leaves the previous checkpoint intact. ``load`` uses ``torch.load(...,
weights_only=True)``: a file that holds anything but plain data is refused.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

__all__ = ["CheckpointError", "save", "load"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not spikeep's."""


def save(obj: dict, path: str | Path) -> Path:
    """Write ``obj`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`save` (plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path}: not a readable spikeep checkpoint ({reason})") from None
    if not isinstance(obj, dict) or obj.get("format") != "spikeep-checkpoint":
        raise CheckpointError(f"{path}: not a spikeep checkpoint")
    return obj
