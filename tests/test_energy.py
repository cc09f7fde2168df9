"""Closed forms of the energy (dPhi/dr, feedback of every coupling and pooling, dF/dtheta)
against autograd of the one scalar Phi, in float64, real and complex."""

import pytest
import torch
from conftest import load, setup, variant

from spikeep.dynamics import Alternating, halves

POOLED = [
    ("tiny_conv", {}),
    ("tiny_conv", {1: {"pool": "max"}, 2: {"pool": "max"}}),
    ("tiny_conv", {1: {"pool": "avg"}, 2: {"pool": "none"}}),
    ("tiny_conv", {1: {"pool": "none", "stride": 2}, 2: {"pool": "avg", "padding": 0}}),
]


def _networks():
    nets = [load("tiny"), load("tiny_conv")]
    nets += [variant(n, layers) for n, layers in POOLED[1:]]
    nets.append(variant("tiny", cost="cross_entropy"))
    nets.append(variant("tiny_conv", cost="cross_entropy"))
    return nets


NETS = _networks()
IDS = ["tiny", "tiny_conv", "conv_max", "conv_avg", "conv_stride2", "tiny_ce", "conv_ce"]


def _rates(net, x, dtype=torch.float64, seed=3):
    g = torch.Generator().manual_seed(seed)
    shapes = [(x.shape[0], *layer.shape) for layer in net.spec.dynamic_layers]
    r = tuple(torch.rand(s, generator=g, dtype=torch.float64) for s in shapes)
    if dtype.is_complex:
        r = tuple(
            torch.complex(ri, 0.1 * torch.rand(ri.shape, generator=g, dtype=torch.float64))
            for ri in r
        )
    return r


@pytest.mark.parametrize("net", NETS, ids=IDS)
@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_closed_form_dphi_equals_autograd(net, beta):
    params, x, y = setup(net)
    r = tuple(ri.requires_grad_(True) for ri in _rates(net, x))
    phi = net.phi(params, r, x, y, beta).sum()
    expected = torch.autograd.grad(phi, r)
    got = net.dphi(params, tuple(ri.detach() for ri in r), net.static_drive(params, x), y, beta)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("net", NETS, ids=IDS)
@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_alternating_step_is_two_half_steps_of_autograd_drives(net, beta):
    # the alternating step shares each conv's pre-pool values between the forward drive and the
    # later feedback (Coupling.forward_with_feedback): check it against autograd of Phi
    params, x, y = setup(net)
    r = list(_rates(net, x))
    for half in halves(net):
        leaves = tuple(ri.detach().requires_grad_(True) for ri in r)
        drives = torch.autograd.grad(net.phi(params, leaves, x, y, beta).sum(), leaves)
        for i in half:
            r[i] = net.act.rho(drives[i])
    got = Alternating().step(net, params, _rates(net, x), net.static_drive(params, x), y, beta)
    for a, b in zip(got, r, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_alternating_halves_run_each_conv_once():
    # the top layer's half first, unless a max- or softmax-pooled conv has its upper layer in the
    # other half (then that half goes first, so the conv's pre-pool values serve both halves)
    assert halves(load("tiny")) == ([2, 0], [1])  # dense: top first
    assert halves(variant("tiny_conv", cost="cross_entropy")) == ([1], [0])  # c2 is the top
    assert halves(load("tiny_conv")) == ([1], [2, 0])  # softmax-pooled c1 -> c2 below y
    assert halves(variant("tiny_conv", {2: {"pool": "avg"}})) == ([2, 0], [1])  # avg needs no z


@pytest.mark.parametrize("net", [n for n in NETS if n.holomorphic], ids=lambda n: n.spec.source)
def test_closed_form_dphi_is_the_complex_derivative(net):
    # Phi is holomorphic in r: the gradient of Re(Phi) that torch returns is conj(dPhi/dr).
    params, x, y = setup(net)
    cparams = {k: v.to(torch.complex128) for k, v in params.items()}
    xc, yc = x.to(torch.complex128), y.to(torch.complex128)
    r = tuple(ri.requires_grad_(True) for ri in _rates(net, x, torch.complex128))
    beta = 0.3 + 0.2j
    expected = torch.autograd.grad(net.phi(cparams, r, xc, yc, beta).real.sum(), r)
    got = net.dphi(cparams, tuple(ri.detach() for ri in r), net.static_drive(cparams, xc), yc, beta)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b.conj(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("net", NETS, ids=IDS)
def test_closed_form_dF_dtheta_equals_autograd(net):
    params, x, y = setup(net)
    r1, r2 = _rates(net, x, seed=4), _rates(net, x, seed=5)
    points = [(r1, 0.4, 2.5), (r2, 0.0, -2.5)]
    got = net.dF_dtheta(params, x, y, points)
    expected = net.dF_dtheta_autograd(params, x, y, points)
    assert got.keys() == expected.keys() == params.keys()
    for k in params:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("net", [n for n in NETS if n.holomorphic], ids=lambda n: n.spec.source)
def test_closed_form_dF_dtheta_with_complex_points(net):
    params, x, y = setup(net)
    rc = _rates(net, x, torch.complex128, seed=6)
    rr = _rates(net, x, seed=7)
    beta = 0.2 * complex(0.5, 0.8)
    points = [(rc, beta, 0.5 / beta), (rr, -0.2, 0.25 / -0.2)]
    got = net.dF_dtheta(params, x, y, points)
    expected = net.dF_dtheta_autograd(params, x, y, points)
    for k in params:
        assert got[k].dtype == params[k].dtype
        torch.testing.assert_close(got[k], expected[k], rtol=1e-11, atol=1e-13)


def test_energy_is_half_norm_minus_phi():
    # F = sum_i |s_i|^2 / 2 - sum_i r_i . (W_i r_{i-1} + b_i) + beta |r_3 - y|^2 / 2, written out
    # for the 5-7-6-3 network without calling Network.phi
    net = load("tiny")
    params, x, y = setup(net)
    s = _rates(net, x)
    r = [x, *(net.act.rho(si) for si in s)]
    half = sum(0.5 * (si**2).sum(1) for si in s)
    phi = sum((r[i] * (r[i - 1] @ params[f"W{i}"].T + params[f"b{i}"])).sum(1) for i in (1, 2, 3))
    expected = half - phi + 0.5 * 0.5 * ((r[3] - y) ** 2).sum(1)
    torch.testing.assert_close(net.energy(params, s, x, y, 0.5), expected)


def test_mse_cost_and_cross_entropy_readout():
    net = variant("tiny", cost="cross_entropy")
    params, x, y = setup(net)
    r = _rates(net, x)
    logits = r[-1] @ params["W3"].T + params["b3"]
    expected = torch.nn.functional.cross_entropy(logits, y.argmax(1), reduction="none")
    torch.testing.assert_close(net.cost(params, r, y), expected)
    assert net.n_dynamic == 2  # the readout is not a state
    mse = load("tiny")
    r = _rates(mse, x)
    torch.testing.assert_close(mse.cost(params, r, y), 0.5 * ((r[-1] - y) ** 2).sum(1))


def test_init_is_seeded_and_follows_the_spec():
    net = load("tiny")
    a, b, c = net.init_params(0), net.init_params(0), net.init_params(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["W1"], c["W1"])
    assert a["W1"].shape == (7, 5) and a["W3"].shape == (3, 6) and a["b2"].shape == (6,)
    assert a["W1"].dtype == torch.float64
    conv = load("conv_mnist")
    p = conv.init_params(0)
    assert p["W1"].shape == (32, 1, 5, 5) and p["W2"].shape == (64, 32, 5, 5)
    assert p["W3"].shape == (10, 64 * 4 * 4) and p["W1"].dtype == torch.float32


def test_the_prototypical_fixed_point_is_stationary_for_e_proto_not_network_energy():
    """docs/conventions.md, "Two energies": on tiny (sigmoid4, prototypical) the free fixed point
    zeroes the gradient of E_proto(r) = sum G(r) - Phi(r), G' = rho^-1, and not that of
    ``Network.energy`` (the ``energy`` dynamics' F)."""
    from spikeep import relax

    net = load("tiny")
    params = net.init_params(seed=0)
    x = torch.rand(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    free = relax(net, params, x, steps=500)
    s = tuple(si.clone().requires_grad_(True) for si in free.s)

    def G(r):  # the integral of rho^-1(r) = (logit(r) + 2) / 4 for sigmoid4
        return (r * torch.log(r) + (1 - r) * torch.log1p(-r)) / 4 + r / 2

    e_proto = sum(G(r).sum() for r in s) - net.phi(params, s, x).sum()
    proto = torch.autograd.grad(e_proto, s)
    flow = torch.autograd.grad(net.energy(params, s, x).sum(), s)
    assert all(g.abs().max() < 1e-12 for g in proto)
    assert all(g.abs().max() > 0.05 for g in flow)
