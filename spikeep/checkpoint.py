"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of tensors, numbers, strings and lists: a run's :class:`TrainState` (its
format, ``"spikeep-checkpoint"`` version 1, is every key of :meth:`TrainState.to_checkpoint`).
``save`` writes it to a temporary file in the same folder and renames it over the target, so a
crash mid-write leaves the previous checkpoint intact. ``load`` uses ``torch.load(...,
weights_only=True)``: a file that holds anything but plain data is refused.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .protocol import Protocol

__all__ = ["CheckpointError", "TrainState", "save", "load"]


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


@dataclass
class TrainState:
    """All that a run carries from one batch (or online chunk) to the next."""

    params: dict[str, torch.Tensor]
    momentum: dict[str, torch.Tensor]
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches (online engines: chunks) completed in the current epoch
    generator: torch.Tensor | None = None  # state of the epoch's generator, mid-epoch
    persistent: list[torch.Tensor] | None = None  # free states per training example
    sums: dict[str, float] | None = None  # running sums of the current epoch
    wall_s: float = 0.0  # wall time of the run so far

    def to_checkpoint(self, protocol: Protocol) -> dict:
        return {
            "format": "spikeep-checkpoint",
            "version": 1,
            "protocol": protocol.raw,
            "protocol_source": protocol.source,
            "model_source": str(protocol.model),
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "momentum": {k: v.detach().cpu() for k, v in self.momentum.items()},
            "epoch": self.epoch,
            "batch": self.batch,
            "generator": self.generator,
            "persistent": None if self.persistent is None else [p.cpu() for p in self.persistent],
            "sums": self.sums,
            "wall_s": self.wall_s,
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict, device) -> TrainState:
        return cls(
            params={k: v.to(device) for k, v in ckpt["params"].items()},
            momentum={k: v.to(device) for k, v in ckpt["momentum"].items()},
            epoch=ckpt["epoch"],
            batch=ckpt["batch"],
            generator=ckpt["generator"],
            persistent=ckpt["persistent"],
            sums=ckpt["sums"],
            wall_s=ckpt["wall_s"],
        )
