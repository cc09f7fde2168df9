"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of tensors, numbers, strings and lists: a run's :class:`TrainState` (its
format, ``"spikeep-checkpoint"`` version 1, is every key of :meth:`TrainState.to_checkpoint`).
``model_spec``, the model spec's parsed table, is optional (checkpoints written before it was
added hold only ``model_source``, the file's path); :func:`model_spec` reads whichever it holds.
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

__all__ = [
    "CheckpointError",
    "TrainState",
    "save",
    "load",
    "model_spec",
    "check_params",
    "remove_temporaries",
]

# the keys every checkpoint holds (``model_spec`` is optional: older ones lack it)
REQUIRED = ("protocol", "model_source", "params", "momentum", "epoch", "batch", "wall_s")


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
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: a damaged spikeep checkpoint (no {', '.join(missing)})")
    for key in ("params", "momentum"):
        table = obj[key]
        if not isinstance(table, dict) or not all(
            isinstance(v, torch.Tensor) for v in table.values()
        ):
            raise CheckpointError(f"{path}: a damaged spikeep checkpoint ({key} is not tensors)")
    return obj


def remove_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files that :func:`save` left beside ``path`` when its process was
    killed mid-write (``.checkpoint.pt.*``); only safe while no other process saves there."""
    path = Path(path)
    gone = []
    for tmp in path.parent.glob(f".{path.name}.*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def model_spec(ckpt: dict, log=None):
    """The model spec a checkpoint was trained with: its stored table (``model_spec``) when it
    has one, else the file at ``model_source`` (older checkpoints). When the stored table and the
    file on disk differ, ``log`` gets one line naming the keys that changed; the stored one wins.
    Raises :class:`~spikeep.spec.SpecError` when neither gives a valid spec."""
    from . import spec
    from .protocol import protocol_changes

    source = ckpt["model_source"]
    stored = ckpt.get("model_spec")
    if not stored:
        return spec.load(source)
    model = spec.from_dict(stored, source=source)
    if log is not None and Path(source).is_file():
        try:
            on_disk = spec.load(source).raw
        except spec.SpecError as err:
            on_disk, changed = None, [f"it no longer loads ({err})"]
        if on_disk is not None:
            changed = protocol_changes(stored, on_disk)
        if changed:
            log(
                f"warning: {source} differs from the model spec stored in the checkpoint "
                f"({'; '.join(changed)}); using the stored one"
            )
    return model


def check_params(ckpt: dict, net, where: str | Path) -> None:
    """Refuse, in one line, a checkpoint whose parameters (or momentum buffers) are not those of
    ``net``: a missing or extra name, or a tensor of another shape."""
    expected = {}
    for i, c in enumerate(net.couplings, start=1):
        expected[f"W{i}"] = tuple(c.weight_shape)
        expected[f"b{i}"] = (c.layer.shape[0],)
    for key in ("params", "momentum"):
        table = ckpt[key]
        missing = [k for k in expected if k not in table]
        extra = [k for k in table if k not in expected]
        if missing or extra:
            raise CheckpointError(
                f"{where}: {key} hold {sorted(table)}, but the model {net.spec.source} has "
                f"{list(expected)}"
            )
        for k, shape in expected.items():
            if tuple(table[k].shape) != shape:
                raise CheckpointError(
                    f"{where}: {key} {k} has shape {list(table[k].shape)}, but the model "
                    f"{net.spec.source} expects {list(shape)} (a changed layer size?)"
                )


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

    def to_checkpoint(self, protocol: Protocol, model_spec: dict | None = None) -> dict:
        """The checkpoint's dict; ``model_spec`` is the model spec's table (stored when given)."""
        return {
            "format": "spikeep-checkpoint",
            "version": 1,
            "protocol": protocol.raw,
            "protocol_source": protocol.source,
            "model_source": str(protocol.model),
            **({"model_spec": model_spec} if model_spec else {}),
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
            generator=ckpt.get("generator"),
            persistent=ckpt.get("persistent"),
            sums=ckpt.get("sums"),
            wall_s=ckpt["wall_s"],
        )
