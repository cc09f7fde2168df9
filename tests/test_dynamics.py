"""Relaxation: convergence, residuals, seeding, dtypes, and clear errors on divergence."""

import pytest
import torch
from conftest import load, setup, variant

from spikeep.dynamics import DivergenceError, relax


@pytest.mark.parametrize("dynamics", ["prototypical", "energy"])
def test_residual_falls_and_fixed_point_is_stationary(exact_model, dynamics):
    net = variant(exact_model.spec.name, dynamics=dynamics)
    params, x, _ = setup(net)
    short, long = relax(net, params, x, steps=10), relax(net, params, x, steps=400)
    assert float(long.residual) < 1e-12 < float(short.residual)
    again = net.dynamics.step(net, params, long.s, long.static)
    for a, b in zip(again, long.s, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_a_phase_can_be_seeded_and_continued(exact_model):
    net = exact_model
    params, x, y = setup(net)
    whole = relax(net, params, x, y, beta=0.2, steps=30)
    first = relax(net, params, x, y, beta=0.2, steps=12)
    rest = relax(net, params, x, y, beta=0.2, s=first.s, steps=18, static=first.static)
    for a, b in zip(whole.s, rest.s, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_energy_dynamics_descend_the_energy():
    net = variant("tiny", dynamics="energy", dt=0.2)
    params, x, y = setup(net)
    s = net.zeros(x)
    static = net.static_drive(params, x)
    energies = []
    for _ in range(30):
        s = net.dynamics.step(net, params, s, static, y, 0.5)
        energies.append(float(net.energy(params, s, x, y, 0.5).sum()))
    assert all(b <= a + 1e-12 for a, b in zip(energies, energies[1:]))


def test_hard_sigmoid_dynamics_share_fixed_points():
    proto = variant("tiny", activation="hard_sigmoid", dynamics="prototypical")
    flow = variant("tiny", activation="hard_sigmoid", dynamics="energy")
    params, x, y = setup(proto)
    a = relax(proto, params, x, y, 0.3, steps=400).s
    b = relax(flow, params, x, y, 0.3, steps=800).s
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_real_dtypes(dtype):
    net = load("tiny_conv")
    params, x, y = setup(net, dtype=dtype)
    out = relax(net, params, x, y, 0.1, steps=50)
    assert all(si.dtype == dtype for si in out.s)
    assert float(out.residual) < 100 * torch.finfo(dtype).eps


@pytest.mark.parametrize(
    "real,complex_", [(torch.float32, torch.complex64), (torch.float64, torch.complex128)]
)
def test_complex_beta_gives_complex_states(real, complex_):
    net = load("tiny")
    params, x, y = setup(net, dtype=real)
    out = relax(net, params, x, y, 0.1j, steps=80)
    assert all(si.dtype == complex_ for si in out.s)
    assert float(out.residual) < 100 * torch.finfo(real).eps
    # conjugate nudge gives the conjugate fixed point (real parameters and data)
    conj = relax(net, params, x, y, -0.1j, steps=80)
    for a, b in zip(out.s, conj.s, strict=True):
        torch.testing.assert_close(a.conj(), b)


@pytest.mark.parametrize(
    "overrides,what",
    [({"activation": "hard_sigmoid"}, "hard_sigmoid"), ({"activation": "tanh"}, None)],
)
def test_complex_beta_needs_a_holomorphic_network(overrides, what):
    net = variant("tiny", **overrides)
    params, x, y = setup(net)
    if what is None:
        relax(net, params, x, y, 0.1j, steps=5)
        return
    with pytest.raises(ValueError, match=what):
        relax(net, params, x, y, 0.1j, steps=5)


def test_complex_beta_rejects_max_pooling():
    net = variant("tiny_conv", {1: {"pool": "max"}})
    params, x, y = setup(net)
    with pytest.raises(ValueError, match="max pooling"):
        relax(net, params, x, y, 0.1 + 0.1j, steps=5)


def test_non_finite_state_names_layer_and_step():
    net = load("tiny")
    params, x, y = setup(net)
    params["W3"][0, 0] = float("nan")  # reaches h2 (feedback) and y at the first step
    with pytest.raises(DivergenceError, match=r"layer 'h2' became non-finite at step 1 of 20"):
        relax(net, params, x, steps=20)


def test_unbounded_state_is_reported():
    net = variant("tiny", activation="tanh", dynamics="energy")
    params, x, y = setup(net)
    with pytest.raises(DivergenceError, match=r"larger than 0\.001 in magnitude at step 1"):
        relax(net, params, x, steps=5, max_abs=1e-3)


def test_nudged_phase_needs_targets_and_positive_steps():
    net = load("tiny")
    params, x, y = setup(net)
    with pytest.raises(ValueError, match="needs targets"):
        relax(net, params, x, beta=0.1)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        relax(net, params, x, steps=0)
