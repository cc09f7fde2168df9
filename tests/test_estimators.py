"""Every EP estimator against the exact implicit gradient: accuracy, bias order, identities."""

import math

import numpy as np
import pytest
import torch
from conftest import rel, setup, variant

from spikeep import activations, estimators, reference
from spikeep.dynamics import relax
from spikeep.estimators import ESTIMATORS
from spikeep.gradcheck import loglog_slope

STEPS = 300


def _problem(net, seed=0):
    params, x, y = setup(net, seed=seed)
    free = relax(net, params, x, steps=STEPS)
    ref = reference.implicit_gradient(net, params, x, y, s_star=free.s)
    return params, x, y, free, ref


def _estimate(est, net, params, x, y, free):
    return est.estimate(net, params, x, y, free, generator=torch.Generator().manual_seed(0))


def test_every_estimator_is_registered_with_a_bias_order():
    assert set(ESTIMATORS) == {
        "one-sided",
        "random-sign",
        "symmetric",
        "holomorphic",
        "continual",
        "oscillation",
    }
    orders = {name: estimators.make(name, 0.1, points=5).bias_order for name in ESTIMATORS}
    assert orders == {
        "one-sided": 1,
        "random-sign": 1,
        "symmetric": 2,
        "holomorphic": 5,
        "continual": 1,
        "oscillation": 20,  # complex: the K-point circle (plus the K^-2 lag, test_holomorphic)
    }
    assert estimators.make("oscillation", 0.1, real=True).bias_order == 2


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@pytest.mark.parametrize("activation", activations.names())
@pytest.mark.parametrize("dynamics", ["prototypical", "alternating", "energy"])
def test_every_estimator_activation_and_dynamics_approaches_the_reference(
    name, activation, dynamics
):
    net = variant("tiny", activation=activation, dynamics=dynamics)
    params, x, y, free, ref = _problem(net)
    beta = 1e-3
    est = estimators.make(
        name, beta, 2 * STEPS if dynamics == "energy" else STEPS, points=3, lr=1e-9
    )
    if name in ("holomorphic", "oscillation") and not net.holomorphic:
        with pytest.raises(ValueError, match="holomorphic"):
            _estimate(est, net, params, x, y, free)
        # N=2 only needs real nudges; the cosine oscillation has real states
        est = estimators.make(name, beta, est.steps, points=2, real=True)
    g = _estimate(est, net, params, x, y, free).grads
    if name == "oscillation":  # the lag behind the turning beta dominates: O(K^-2), K = steps
        bound = 5e-3
    else:
        bound = {1: 20 * beta, 2: 50 * beta**2, 3: 1e-6, 4: 1e-6}[est.bias_order]
    assert rel(g, ref) < bound


def test_symmetric_with_small_beta_is_within_1e5_of_the_reference(exact_model):
    params, x, y, free, ref = _problem(exact_model)
    g = _estimate(estimators.Symmetric(1e-3, STEPS), exact_model, params, x, y, free).grads
    assert rel(g, ref) < 1e-5


def test_holomorphic_with_two_points_is_symmetric(exact_model):
    params, x, y, free, _ = _problem(exact_model)
    sym = _estimate(estimators.Symmetric(0.2, STEPS), exact_model, params, x, y, free).grads
    holo = _estimate(
        estimators.Holomorphic(0.2, STEPS, points=2), exact_model, params, x, y, free
    ).grads
    assert rel(holo, sym) < 1e-12


@pytest.mark.parametrize("points", [3, 4, 5])
def test_conjugate_symmetric_shortcut_equals_the_full_circle(exact_model, points):
    net = exact_model
    params, x, y, free, _ = _problem(net)
    est = estimators.Holomorphic(0.3, STEPS, points=points)
    half = _estimate(est, net, params, x, y, free).grads
    full_points = []
    for k in range(points):
        beta_k = 0.3 * complex(
            math.cos(2 * math.pi * k / points), math.sin(2 * math.pi * k / points)
        )
        out = relax(net, params, x, y, beta_k, s=free.s, steps=STEPS, static=free.static)
        full_points.append((out.s, beta_k, 1 / (points * beta_k)))
    full = net.dF_dtheta(params, x, y, full_points)
    assert rel(half, full) < 1e-12
    assert len(est.betas()) == points // 2 + 1


BETAS = np.geomspace(0.02, 0.3, 6)


@pytest.mark.parametrize(
    "name,options,order",
    [
        ("one-sided", {}, 1),
        ("random-sign", {}, 1),
        ("symmetric", {}, 2),
        ("holomorphic", {"points": 3}, 3),
        ("holomorphic", {"points": 4}, 4),
        ("continual", {"lr": 1e-9}, 1),
    ],
)
def test_bias_order_is_the_fitted_slope(exact_model, name, options, order):
    net = exact_model
    params, x, y, free, ref = _problem(net)
    errors = []
    for beta in BETAS:
        est = estimators.make(name, float(beta), STEPS, **options)
        errors.append(rel(_estimate(est, net, params, x, y, free).grads, ref))
    assert est.bias_order == order
    assert loglog_slope(BETAS, errors) == pytest.approx(order, abs=0.3)


def test_random_sign_draws_both_signs_and_each_is_one_sided():
    net = variant("tiny")
    params, x, y, free, _ = _problem(net)
    plus = estimators.OneSided(0.1, STEPS).estimate(net, params, x, y, free).grads
    minus = estimators.OneSided(-0.1, STEPS).estimate(net, params, x, y, free).grads
    est = estimators.RandomSign(0.1, STEPS)
    gen = torch.Generator().manual_seed(3)
    seen = set()
    for _ in range(12):
        out = est.estimate(net, params, x, y, free, generator=gen)
        assert out.betas[0] in (0.1, -0.1)
        seen.add(out.betas[0])
        match = plus if out.betas[0] > 0 else minus
        assert rel(out.grads, match) < 1e-14
    assert seen == {0.1, -0.1}


def test_continual_ep_tends_to_one_sided_as_the_learning_rate_vanishes():
    net = variant("tiny")
    params, x, y, free, _ = _problem(net)
    one_sided = estimators.OneSided(0.1, 30).estimate(net, params, x, y, free).grads
    errors = [
        rel(estimators.Continual(0.1, 30, lr=lr).estimate(net, params, x, y, free).grads, one_sided)
        for lr in (1e-3, 1e-4, 1e-5)
    ]
    assert errors[2] < 1e-3
    assert errors[0] / errors[1] == pytest.approx(10, rel=0.1)  # the gap is O(lr)
    assert errors[1] / errors[2] == pytest.approx(10, rel=0.1)


def test_continual_ep_moves_the_weights_during_the_nudged_phase():
    net = variant("tiny")
    params, x, y, free, _ = _problem(net)
    lr = {k: 0.05 for k in params}
    out = estimators.Continual(0.5, 10, lr=lr).estimate(net, params, x, y, free)
    # replay by hand: the nudged phase must see the updated weights at every step
    theta, s, r_prev, b_prev = dict(params), free.s, free.s, 0.0
    for _ in range(10):
        s = net.dynamics.step(net, theta, s, net.static_drive(theta, x), y, 0.5)
        g = net.dF_dtheta(theta, x, y, [(s, 0.5, 2.0), (r_prev, b_prev, -2.0)])
        theta = {k: v - 0.05 * g[k] for k, v in theta.items()}
        r_prev, b_prev = s, 0.5
    for k in params:
        torch.testing.assert_close(params[k] - 0.05 * out.grads[k], theta[k])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"beta": 0.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"beta": 0.1, "steps": 0}, "steps"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        estimators.OneSided(**kwargs)


def test_bad_points_and_names_are_refused():
    with pytest.raises(ValueError, match="points"):
        estimators.Holomorphic(0.1, points=1)
    with pytest.raises(ValueError, match="unknown estimator 'two-sided'"):
        estimators.make("two-sided", 0.1)


def test_nudged_residuals_are_reported_per_point():
    net = variant("tiny")
    params, x, y, free, _ = _problem(net)
    out = estimators.Holomorphic(0.2, 5, points=6).estimate(net, params, x, y, free)
    assert len(out.residuals) == len(out.betas) == 4
    assert all(r > 1e-6 for r in out.residuals)  # 5 steps cannot converge: reported, not hidden


def test_bptt_baseline_tends_to_the_implicit_gradient_as_it_unrolls(exact_model):
    params, x, y, free, ref = _problem(exact_model)
    errors = [
        rel(_estimate(estimators.make("bptt", 0.5, K), exact_model, params, x, y, free).grads, ref)
        for K in (1, 3, 10, STEPS)
    ]
    assert errors[0] > 0.1 and errors[0] > errors[1] > errors[2] and errors[-1] < 1e-10


@pytest.mark.parametrize("dynamics", ["prototypical", "energy"])
@pytest.mark.parametrize("K", [1, 3, 10])
def test_bptt_baseline_is_one_sided_ep_in_the_small_beta_limit(dynamics, K):
    """GDU summed over the nudged phase (Ernoult et al. 2019): one-sided EP with K nudged steps
    and BPTT through K free steps agree up to O(beta) at any K, when the step is a gradient
    map."""
    net = variant("tiny", dynamics=dynamics)
    params, x, y = setup(net)
    free = relax(net, params, x, steps=2 * STEPS)
    bptt = _estimate(estimators.make("bptt", 1.0, K), net, params, x, y, free).grads
    ep = _estimate(estimators.OneSided(1e-6, K), net, params, x, y, free).grads
    assert rel(ep, bptt) < 1e-4


def test_bptt_baseline_and_one_sided_ep_differ_for_alternating_until_the_steps_are_many():
    """The half-step update is no gradient map: the GDU identity fails at few steps, and both
    sides meet only as they approach the implicit gradient (docs/conventions.md)."""
    net = variant("tiny", dynamics="alternating")
    params, x, y = setup(net)
    free = relax(net, params, x, steps=STEPS)
    gap = {}
    for K in (1, STEPS):
        bptt = _estimate(estimators.make("bptt", 1.0, K), net, params, x, y, free).grads
        ep = _estimate(estimators.OneSided(1e-6, K), net, params, x, y, free).grads
        gap[K] = rel(ep, bptt)
    assert gap[1] > 0.1 and gap[STEPS] < 1e-4


def test_bptt_baseline_refuses_noise_and_bad_steps():
    assert repr(estimators.make("bptt", 0.3, 7)) == "TruncatedBPTT(steps=7)"
    assert "bptt" not in ESTIMATORS  # not an EP estimator: no bias order in beta
    with pytest.raises(ValueError, match="noise must be 0, got 0.1"):
        estimators.make("bptt", 0.3, 7, noise=0.1)
    with pytest.raises(ValueError, match="positive integer, got 0"):
        estimators.make("bptt", 0.3, 0)
