"""GDU (Ernoult et al. 2019): per-step EP updates equal minus the BPTT gradients as beta -> 0."""

import pytest
import torch
from conftest import setup, variant

from spikeep import estimators
from spikeep.dynamics import relax
from spikeep.gdu import gdu, gdu_sequences

CASES = [
    ("tiny", {"dynamics": "energy"}),
    ("tiny", {"activation": "hard_sigmoid"}),
    ("tiny", {}),
    ("tiny", {"dynamics": "energy", "cost": "cross_entropy"}),
    ("tiny_conv", {"dynamics": "energy"}),
]


@pytest.mark.parametrize("name,overrides", CASES)
def test_gdu_error_is_first_order_in_beta(name, overrides):
    net = variant(name, **overrides)
    params, x, y = setup(net)
    worst = {}
    for beta in (1e-3, 1e-5):
        out = gdu(net, params, x, y, beta=beta, free_steps=600, K=6)
        assert out["free_residual"] < 1e-12
        worst[beta] = max(
            max(r["states"]["rel_error"], r["params"]["rel_error"]) for r in out["per_step"]
        )
    assert worst[1e-5] < 1e-3
    assert worst[1e-3] / worst[1e-5] == pytest.approx(100, rel=0.1)  # O(beta)


def test_gdu_updates_telescope_to_one_sided_ep():
    net = variant("tiny", dynamics="energy")
    params, x, y = setup(net)
    K, beta = 8, 0.05
    _, _, ep_theta, _, _ = gdu_sequences(net, params, x, y, beta=beta, free_steps=600, K=K)
    total = {k: sum(step[k] for step in ep_theta) for k in params}
    free = relax(net, params, x, steps=600 - K)
    free = relax(net, params, x, s=free.s, steps=K)
    one_sided = estimators.OneSided(beta, K).estimate(net, params, x, y, free).grads
    for k in params:
        torch.testing.assert_close(total[k], -one_sided[k], rtol=1e-9, atol=1e-13)


def test_gdu_rejects_more_nudged_than_free_steps():
    net = variant("tiny")
    params, x, y = setup(net)
    with pytest.raises(ValueError, match="fewer than free_steps"):
        gdu(net, params, x, y, K=10, free_steps=10)


def test_gdu_refuses_the_alternating_dynamics():
    net = variant("tiny", dynamics="alternating")
    params, x, y = setup(net)
    with pytest.raises(ValueError, match="'alternating' dynamics"):
        gdu(net, params, x, y)
