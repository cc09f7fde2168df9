"""A diverged training step: it stops the run (the default), or, with ``[train] on_divergence =
"skip"``, the batch is skipped without any update and counted in ``metrics.jsonl``."""

import pytest
import torch
from conftest import ROOT

from spikeep import engine
from spikeep import protocol as proto
from spikeep import train as train_mod
from spikeep.dynamics import DivergenceError
from spikeep.plots import read_metrics

SMALL = {
    "data.train_subset": 100,
    "data.test_subset": 50,
    "train.epochs": 2,
    "train.batch_size": 20,
    "estimator.free_steps": 8,
    "estimator.nudged_steps": 3,
}


def _protocol(**over):
    return proto.load(ROOT / "protocols" / "quickstart.toml", {**SMALL, **over})


@pytest.fixture
def diverging(monkeypatch):
    """The rate engine's step diverges at its 2nd and 8th call (one in each epoch of 5 steps);
    ``seen`` holds the parameters every call received."""
    cls = engine.get("rate")
    real, seen = cls.step, []

    def step(self, net, params, *args, **kwargs):
        seen.append({k: v.clone() for k, v in params.items()})
        if len(seen) in (2, 8):
            raise DivergenceError("relaxation diverged: layer 'h' became non-finite (test)")
        return real(self, net, params, *args, **kwargs)

    monkeypatch.setattr(cls, "step", step)
    return seen


def test_a_diverged_step_stops_the_run_by_default(diverging, tmp_path):
    with pytest.raises(train_mod.Diverged, match=r"epoch 1, batch 2: relaxation diverged"):
        train_mod.train(_protocol(), tmp_path, progress=False, log=lambda m: None)
    assert len(diverging) == 2


def test_a_diverged_batch_is_skipped_without_an_update_and_counted(diverging, tmp_path):
    lines = []
    p = _protocol(**{"train.on_divergence": "skip"})
    train_mod.train(p, tmp_path, progress=False, log=lines.append)
    assert len(diverging) == 10  # every batch was tried
    for k in diverging[1]:  # the skipped batches moved nothing; the others did
        assert torch.equal(diverging[1][k], diverging[2][k])
        assert torch.equal(diverging[7][k], diverging[8][k])
    assert not torch.equal(diverging[2]["W1"], diverging[3]["W1"])
    assert [r["skipped"] for r in read_metrics(tmp_path)] == [1, 1]
    skipped = [m for m in lines if "skipped" in m]
    assert len(skipped) == 4  # two batch lines, two epoch lines
    assert skipped[0].startswith("epoch 1, batch 2: relaxation diverged")


def test_every_batch_skipped_is_an_error(monkeypatch, tmp_path):
    def step(self, *args, **kwargs):
        raise DivergenceError("diverged (test)")

    monkeypatch.setattr(engine.get("rate"), "step", step)
    p = _protocol(**{"train.on_divergence": "skip"})
    with pytest.raises(train_mod.Diverged, match="epoch 1: every batch diverged"):
        train_mod.train(p, tmp_path, progress=False, log=lambda m: None)


def test_on_divergence_takes_stop_or_skip():
    assert _protocol().train.on_divergence == "stop"
    with pytest.raises(proto.ProtocolError, match=r"train.on_divergence.*'retry'") as err:
        _protocol(**{"train.on_divergence": "retry"})
    assert len(str(err.value).splitlines()) == 1 and "skip" in str(err.value)
