"""Shared helpers: model loading, spec variants, seeded batches, dtype-scaled tolerances, and
run folders (interrupting a training step, comparing two runs)."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest
import torch

from spikeep import checkpoint, spec
from spikeep.energy import Network
from spikeep.gradcheck import random_batch
from spikeep.plots import read_metrics

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


def raw(name: str) -> dict:
    """The parsed TOML of ``models/<name>.toml``."""
    return tomllib.loads((MODELS / f"{name}.toml").read_text())


def variant(name: str, layers: dict | None = None, **top) -> Network:
    """A network from ``models/<name>.toml`` with top-level keys replaced, and optionally the
    coupling of some layers (index -> dict of coupling keys) changed."""
    data = raw(name)
    data.update(top)
    for i, changes in (layers or {}).items():
        coupling = data["layers"][i]["coupling"]
        coupling = {"kind": coupling} if isinstance(coupling, str) else dict(coupling)
        data["layers"][i] = {**data["layers"][i], "coupling": {**coupling, **changes}}
    return Network(spec.from_dict(data, source=f"{name}-variant"))


def script(name: str):
    """``scripts/<name>.py`` imported as a module (its ``main`` not run)."""
    found = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


def load(name: str) -> Network:
    return Network(spec.load(MODELS / f"{name}.toml"))


def setup(net: Network, batch: int = 4, seed: int = 0, dtype=torch.float64):
    """Parameters and a batch (x, y), seeded."""
    params = net.init_params(seed, dtype=dtype)
    x, y = random_batch(net, batch, seed + 1, dtype)
    return params, x, y


def tol(dtype: torch.dtype, factor: float) -> float:
    """A tolerance of ``factor`` machine epsilons of ``dtype``."""
    return factor * torch.finfo(dtype).eps


def flat(g: dict) -> torch.Tensor:
    return torch.cat([v.flatten() for v in g.values()])


def rel(a: dict | torch.Tensor, b: dict | torch.Tensor) -> float:
    a = flat(a) if isinstance(a, dict) else a.flatten()
    b = flat(b) if isinstance(b, dict) else b.flatten()
    return float((a - b).norm() / b.norm())


def assert_same_estimate(fast, slow, grad_tol: float, state_tol: float) -> None:
    """Two ``(grads, residual, states)`` of one estimate, by two code paths, agree."""
    assert rel(fast[0], slow[0]) < grad_tol
    assert fast[1] == pytest.approx(slow[1], rel=1e-9, abs=1e-15)
    for a, b in zip(fast[2], slow[2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=state_tol)


def _ctrl_c():
    raise KeyboardInterrupt


def interrupt(monkeypatch, owner, name: str, call: int, effect=_ctrl_c):
    """Patch ``owner.<name>`` (a training step) so that its ``call``-th call first runs
    ``effect`` (default: a Ctrl-C, ``KeyboardInterrupt``); returns the original, which
    ``monkeypatch.setattr(owner, name, original)`` puts back before resuming."""
    real, calls = getattr(owner, name), {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            effect()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return real


def run_params(out) -> dict:
    """The parameters of a run folder's checkpoint."""
    return checkpoint.load(Path(out) / "checkpoint.pt")["params"]


def assert_same_run(a: Path, b: Path, drop=("wall_s", "ms_per_sample")) -> dict:
    """Two run folders hold bit-equal parameters and the same metrics but for the times in
    ``drop``; returns the parameters."""
    pa, pb = run_params(a), run_params(b)
    assert set(pa) == set(pb) and all(torch.equal(pa[k], pb[k]) for k in pa)
    rows = [
        [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(d)] for d in (a, b)
    ]
    assert rows[0] == rows[1]
    return pa


def copies_of_one_sample(n_in: int, label: int, classes: int, copies: int = 3):
    """``(x, y)``: a batch of ``copies`` copies of one random float64 sample (shared noise keeps
    them together)."""
    x = torch.rand(1, n_in, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.full((copies,), label)
    return x.repeat(copies, 1), torch.nn.functional.one_hot(labels, classes).double()


@pytest.fixture(params=["tiny", "tiny_conv"])
def exact_model(request) -> Network:
    """The two float64 exactness models of the core issue."""
    return load(request.param)
