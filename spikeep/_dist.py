"""Device and process group: which torch device a run uses, its rank and world size under
``torchrun``, and the one collective the loop needs (a sum over processes)."""

from __future__ import annotations

import os

import torch

from .protocol import ProtocolError

__all__ = ["device", "world", "rank", "all_reduce"]


def device(name: str) -> torch.device:
    """``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) as a torch device; ``auto`` is CUDA when
    one is available, and under ``torchrun`` each process takes its ``LOCAL_RANK``'s GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ProtocolError(f"device {name!r} requested but no CUDA device is available")
    if name.startswith("cuda") and world() > 1:
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(name)


def world() -> int:
    """Processes in the run (``WORLD_SIZE``; 1 without ``torchrun``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (``RANK``; 0 without ``torchrun``)."""
    return int(os.environ.get("RANK", "0"))


def all_reduce(values: list[float], world: int) -> list[float]:
    """The sums of ``values`` over the ``world`` processes (float64)."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()
