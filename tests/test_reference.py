"""Exact references: implicit differentiation, BPTT and finite differences agree in float64."""

import pytest
import torch
from conftest import flat, rel, setup, variant

from spikeep import reference


def test_implicit_equals_converged_bptt(exact_model):
    params, x, y = setup(exact_model)
    implicit = reference.implicit_gradient(exact_model, params, x, y, steps=400)
    bptt = reference.bptt_gradient(exact_model, params, x, y, steps=400)
    assert rel(bptt, implicit) < 1e-8


def test_iterative_adjoint_equals_dense(exact_model):
    params, x, y = setup(exact_model)
    dense = reference.implicit_gradient(exact_model, params, x, y, solver="dense")
    iterative = reference.implicit_gradient(exact_model, params, x, y, solver="iterative")
    assert rel(iterative, dense) < 1e-10


def test_bptt_approaches_implicit_as_the_free_phase_lengthens(exact_model):
    params, x, y = setup(exact_model)
    implicit = reference.implicit_gradient(exact_model, params, x, y)
    errors = [
        rel(reference.bptt_gradient(exact_model, params, x, y, steps=k), implicit)
        for k in (3, 10, 30)
    ]
    assert errors[0] > errors[1] > errors[2]


def _directional_fd(net, params, x, y, v, eps=1e-5, steps=400):
    plus = {k: params[k] + eps * v[k] for k in params}
    minus = {k: params[k] - eps * v[k] for k in params}
    lp = reference.loss(net, plus, x, y, steps=steps)
    lm = reference.loss(net, minus, x, y, steps=steps)
    return float((lp - lm) / (2 * eps))


def test_implicit_matches_central_finite_differences(exact_model):
    params, x, y = setup(exact_model)
    grad = reference.implicit_gradient(exact_model, params, x, y, steps=400)
    g = torch.Generator().manual_seed(7)
    directions = [{k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}]
    for name in params:  # one direction inside each parameter tensor
        directions.append(
            {
                k: (
                    torch.randn(v.shape, generator=g, dtype=v.dtype)
                    if k == name
                    else torch.zeros_like(v)
                )
                for k, v in params.items()
            }
        )
    for v in directions:
        fd = _directional_fd(exact_model, params, x, y, v)
        exact = float(flat(grad) @ flat(v))
        assert abs(fd - exact) <= 1e-6 * abs(exact) + 1e-12, (fd, exact)


@pytest.mark.parametrize(
    "overrides",
    [
        {"cost": "cross_entropy"},
        {"dynamics": "energy"},
        {"activation": "hard_sigmoid"},
        {"dynamics": "alternating"},
        {"dynamics": "alternating", "cost": "cross_entropy", "activation": "hard_sigmoid"},
    ],
)
def test_references_agree_on_variants(overrides):
    net = variant("tiny", **overrides)
    params, x, y = setup(net)
    implicit = reference.implicit_gradient(net, params, x, y, steps=800)
    bptt = reference.bptt_gradient(net, params, x, y, steps=800)
    assert rel(bptt, implicit) < 1e-8
    v = {k: torch.ones_like(p) for k, p in params.items()}
    fd = _directional_fd(net, params, x, y, v, steps=800)
    assert fd == pytest.approx(float(flat(implicit) @ flat(v)), rel=1e-6)


def test_alternating_dynamics_have_the_prototypical_gradient(exact_model):
    # same fixed points as functions of theta, so the same dL/dtheta, though the step maps and
    # their Jacobians differ
    alternating = variant(exact_model.spec.name, dynamics="alternating")
    params, x, y = setup(exact_model)
    a = reference.implicit_gradient(exact_model, params, x, y, steps=400)
    b = reference.implicit_gradient(alternating, params, x, y, steps=400)
    assert rel(b, a) < 1e-10


def test_unknown_solver_is_refused():
    net = variant("tiny")
    params, x, y = setup(net)
    with pytest.raises(ValueError, match="solver"):
        reference.implicit_gradient(net, params, x, y, solver="cg")
