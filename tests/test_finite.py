"""The training loop's finiteness check (train._finite: one sum per tensor, one synchronisation)
stops a run on a NaN or an infinity anywhere in the estimate, and only then."""

from __future__ import annotations

import pytest
import torch

from spikeep import protocol as proto
from spikeep import train as train_mod
from spikeep.checkpoint import TrainState


def _grads():
    return {"W1": torch.rand(50, 30), "b1": torch.rand(50), "W2": torch.rand(10, 50)}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["W1", "b1", "W2"])
def test_one_non_finite_element_is_found(bad, where):
    grads = _grads()
    assert train_mod._finite(grads.values())
    grads[where].view(-1)[7] = bad
    assert not train_mod._finite(grads.values())


def test_a_non_finite_estimate_stops_the_step_before_the_update():
    p = proto.load("protocols/quickstart.toml")
    params = {k: torch.zeros_like(v) for k, v in _grads().items()}
    state = TrainState(params, {k: torch.zeros_like(v) for k, v in params.items()})
    grads = _grads()
    grads["b1"][3] = float("nan")
    lrs = proto.learning_rates(p, 0)
    with pytest.raises(train_mod.TrainingError, match="non-finite loss or gradient"):
        train_mod._descend(state, grads, p, (lrs[0],) * 3, 1.0, "epoch 1, batch 1", 1.0, 1)
    assert all(float(v.abs().sum()) == 0 for v in state.params.values())  # nothing moved
