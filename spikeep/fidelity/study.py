"""One fidelity study, end to end: references, points, parallel run, results and figures.

:func:`study` reads nothing itself: it takes a validated
:class:`~spikeep.fidelity.protocol.FidelityProtocol`, computes each model's exact reference once
(:mod:`spikeep.fidelity.reference`), expands the points (:mod:`spikeep.fidelity.points`), runs
them (:mod:`spikeep.fidelity.sweep`) and writes ``OUT/results.csv``, ``OUT/results.json`` and the
figures (:mod:`spikeep.fidelity.report`).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from .. import engine as engines
from .. import spec
from ..energy import Network
from . import points, reference, report, sweep
from .protocol import FidelityProtocol

__all__ = ["study"]


def study(protocol: FidelityProtocol, out: str | Path, jobs: int = 1, progress=None) -> dict:
    """Run ``protocol`` on ``jobs`` processes into the folder ``out``.

    Returns the summary also written to ``results.json`` (without its rows): ``out``, ``rows``
    (points), ``ok``, ``errors``, ``na``, ``wall_s``, ``references`` (per model, the self-check),
    ``slopes`` and ``figures``; and ``results`` with every row.
    """
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [m.spec for m in protocol.models]
    nets = [Network(spec.load(p)) for p in paths]
    problems, checks = {}, []
    for i, net in enumerate(nets):
        problems[i], check = reference.compute(
            net,
            protocol.batch,
            protocol.seed,
            protocol.reference.free_steps,
            protocol.reference.check_steps,
        )
        checks.append(check)
    todo = points.expand(protocol, nets)
    rows = sweep.run_all(
        todo, paths, problems, protocol.batch, protocol.seed, jobs=jobs, progress=progress
    )
    report.write_csv(rows, out / "results.csv")
    figures = report.figures(rows, out)
    summary = {
        "protocol": protocol.name,
        "source": protocol.source,
        "out": str(out),
        "batch": protocol.batch,
        "seed": protocol.seed,
        "jobs": jobs,
        "rows": len(rows),
        "ok": sum(r["status"] == "ok" for r in rows),
        "errors": sum(r["status"] == "error" for r in rows),
        "na": sum(r["status"] == "n/a" for r in rows),
        "wall_s": time.perf_counter() - start,
        "references": checks,
        "slopes": report.slopes(rows),
        "figures": [str(p.name) for p in figures],
        "settings": {
            e: {k: v for k, v in asdict(protocol.engine(e)).items()}
            for e in engines.names()
            if protocol.engine(e) is not None
        },
    }
    report.write_json({**summary, "results": rows}, out / "results.json")
    return {**summary, "results": rows}
