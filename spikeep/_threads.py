"""How many CPU threads torch computes with: ``--threads N``, else ``SPIKEEP_THREADS``, else 1.

One thread is the default because the machines spikeep runs on are rarely idle: with torch's own
default (one thread per core) and one other busy process, the EP steps of ``docs/benchmarks.md``
("Threads") ran several times slower than on one thread, and at times 30x. More threads pay on
an idle machine with many cores; there, ask for them. Under ``torchrun`` the number is per
process (rank). ``OMP_NUM_THREADS`` does not change spikeep's choice (spikeep sets torch's count
itself); ``OMP_WAIT_POLICY`` is OpenMP's own and is read once, when torch loads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

__all__ = ["ENV", "DEFAULT", "parse", "choose", "apply"]

ENV = "SPIKEEP_THREADS"
DEFAULT = 1


def parse(text: str, where: str) -> int:
    """``text`` as a number of threads (an integer >= 1); a ValueError naming ``where`` and the
    value otherwise."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{where}: expected a positive number of threads, got {text!r}")
    return n


def choose(flag: int | None, environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """The number of threads and where it came from: ``flag`` (``--threads``), else the
    ``SPIKEEP_THREADS`` variable of ``environ`` (default ``os.environ``), else the default."""
    environ = os.environ if environ is None else environ
    if flag is not None:
        return flag, "--threads"
    if environ.get(ENV, "").strip():
        return parse(environ[ENV].strip(), ENV), ENV
    return DEFAULT, "default"


def apply(n: int) -> int:
    """Make torch compute with ``n`` threads (intra-op); returns ``n``."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
