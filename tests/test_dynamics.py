"""Relaxation: convergence, residuals, seeding, dtypes, and clear errors on divergence."""

import pytest
import torch
from conftest import load, setup, variant

from spikeep.dynamics import (
    DivergenceError,
    _Draws,
    _planar,
    add_noise,
    prepare,
    relax,
    relax_each,
    relax_points,
    stepper,
)


@pytest.mark.parametrize("dynamics", ["prototypical", "alternating", "energy"])
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
    if what is None:  # accepted: complex states, the imaginary nudge reaching them
        out = relax(net, params, x, y, 0.1j, steps=5)
        assert all(si.is_complex() for si in out.s) and float(out.s[-1].imag.abs().max()) > 0
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


def _strong_max_pool_net(dynamics: str):
    """tiny_conv with max pooling, hard sigmoid and six times the initial weights: strong enough
    that the synchronous update falls into a period-2 cycle."""
    return variant(
        "tiny_conv",
        activation="hard_sigmoid",
        dynamics=dynamics,
        init={"scheme": "uniform_fan_in", "scale": 6.0},
        layers={1: {"pool": "max"}, 2: {"pool": "max"}},
    )


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_alternating_dynamics_share_the_prototypical_fixed_points(exact_model, beta):
    alternating = variant(exact_model.spec.name, dynamics="alternating")
    params, x, y = setup(exact_model)
    a = relax(exact_model, params, x, y, beta, steps=400)
    b = relax(alternating, params, x, y, beta, steps=400)
    assert float(b.residual) < 1e-12
    for u, v in zip(a.s, b.s, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-12)


def test_alternating_dynamics_settle_where_the_synchronous_ones_cycle():
    sync, alternating = _strong_max_pool_net("prototypical"), _strong_max_pool_net("alternating")
    params, x, _ = setup(sync, batch=16)
    cycling = relax(sync, params, x, steps=500)
    assert float(cycling.residual) == 1.0  # hard-sigmoid units flip between 0 and 1
    two_more = relax(sync, params, x, s=cycling.s, steps=2, static=cycling.static)
    for u, v in zip(two_more.s, cycling.s, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-12)  # period 2
    settled = relax(alternating, params, x, steps=500)
    assert float(settled.residual) < 1e-12
    again = sync.dynamics.step(sync, params, settled.s, settled.static)
    for u, v in zip(again, settled.s, strict=True):  # a fixed point of the synchronous map too
        torch.testing.assert_close(u, v, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["tiny", "strong max-pool conv"])
def test_alternating_half_steps_never_raise_the_energy(name):
    # With hard-sigmoid rates, E(r) = 1/2 |r|^2 - Phi(r) on the box; each half-step minimises a
    # majorant of E over half the layers (Phi is linear there, or convex through max pooling of
    # non-negative rates), so E cannot rise, step by step.
    if name == "tiny":
        net = variant("tiny", activation="hard_sigmoid", dynamics="alternating")
    else:
        net = _strong_max_pool_net("alternating")
    params, x, _ = setup(net, batch=16)
    s, static = net.zeros(x), net.static_drive(params, x)
    energies = [net.energy(params, s, x)]
    for _ in range(40):
        s = net.dynamics.step(net, params, s, static)
        energies.append(net.energy(params, s, x))
    rises = [float((b - a).max()) for a, b in zip(energies, energies[1:])]
    assert max(rises) <= 1e-12
    assert float(energies[-1].sum()) < float(energies[1].sum())


def test_alternating_noise_is_reproducible_and_enters_every_layer():
    net = variant("tiny_conv", dynamics="alternating")
    params, x, y = setup(net)
    runs = [
        relax(
            net, params, x, y, 0.2, steps=20, noise=0.05, generator=torch.Generator().manual_seed(3)
        )
        for _ in range(2)
    ]
    quiet = relax(net, params, x, y, 0.2, steps=20)
    for a, b, q in zip(runs[0].s, runs[1].s, quiet.s, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert float((a - q).abs().max()) > 1e-3


BUFFERED = {
    "tiny": lambda: load("tiny"),
    "tiny_holo": lambda: load("tiny_holo"),
    "mlp_784_256x2_10": lambda: load("mlp_784_256x2_10"),
    # the energy dynamics of the hard sigmoid: mse; a readout; two layers of one width (merged)
    "tiny energy": lambda: variant("tiny", dynamics="energy", dt=0.5, activation="hard_sigmoid"),
    "mlp_784_500_10_ce": lambda: load("mlp_784_500_10_ce"),
    "mlp_784_256x2_10 energy": lambda: variant(
        "mlp_784_256x2_10", dynamics="energy", dt=0.3, activation="hard_sigmoid"
    ),
}


@pytest.mark.parametrize("name", list(BUFFERED))
@pytest.mark.parametrize("beta", [0.0, 0.3])
@pytest.mark.parametrize("noise", [0.0, 0.04])
def test_the_buffered_loop_is_bit_identical_to_the_step_functions(name, beta, noise):
    """Dense prototypical phases, and energy phases of the hard sigmoid, run in preallocated
    buffers (dynamics._PlanarRun); the states, noise draws included, are exactly those of
    stepping Dynamics.step / noisy_step."""
    net = BUFFERED[name]()
    assert _planar(net, flow=True)  # the buffered loop is the one compared
    params, x, y = setup(net, dtype=net.init_params(0)["W1"].dtype)
    fast = relax(net, params, x, y, beta, steps=25, noise=noise, generator=_gen(noise))
    p, x, y, static, s = prepare(net, params, x, y, beta)
    step = stepper(net.dynamics, noise, _gen(noise))
    for _ in range(25):
        s = step(net, p, s, static, y, beta)
    assert all(torch.equal(a, b) for a, b in zip(fast.s, s, strict=True))


@pytest.mark.parametrize("name", list(BUFFERED))
@pytest.mark.parametrize("noise", [0.0, 0.04])
def test_relax_each_is_one_relax_per_nudge(name, noise):
    """The symmetric estimator's two phases with one setup (dynamics.relax_each): noise-free, as
    one batch of rows whose every point keeps the arithmetic of its own phase, so that at 20
    rows a point (MKL's row-independent products) the states and residuals are bit for bit
    those of one relax per nudge; with noise, the phases one after another, draws included."""
    net = BUFFERED[name]()
    params, x, y = setup(net, batch=20, dtype=net.init_params(0)["W1"].dtype)
    free = relax(net, params, x, steps=15)
    betas = [0.3, -0.3]
    each = relax_each(
        net, params, x, y, betas, free.s, 6, free.static, noise=noise, generator=_gen(noise)
    )
    g = _gen(noise)
    one = [
        relax(net, params, x, y, b, free.s, 6, free.static, noise=noise, generator=g) for b in betas
    ]
    exact = noise or name.startswith("mlp")  # float32 MLPs: products row-independent in MKL
    for a, b in zip(each, one, strict=True):
        for u, v in zip(a.s, b.s, strict=True):
            assert torch.equal(u, v) if exact else torch.allclose(u, v, rtol=0, atol=1e-13)
        assert (
            torch.equal(a.residual, b.residual)
            if exact
            else a.residual == pytest.approx(float(b.residual), abs=1e-12)
        )
    assert not torch.equal(each[0].s[-1], each[1].s[-1])  # the nudges differ


def test_relax_each_names_a_diverging_phase_as_relax_does():
    net = load("mlp_784_500_10_ce")
    params, x, y = setup(net, batch=20, dtype=torch.float32)
    free = relax(net, params, x, steps=5)
    with pytest.raises(DivergenceError) as alone:
        relax(net, params, x, y, 0.5, free.s, 3, free.static, max_abs=1e-3)
    with pytest.raises(DivergenceError, match="at step 1 of 3") as each:
        relax_each(net, params, x, y, [0.5, -0.5], free.s, 3, free.static, max_abs=1e-3)
    assert str(each.value) == str(alone.value)


def _gen(noise):
    return torch.Generator().manual_seed(3) if noise else None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_drawn_ahead_is_the_draws_of_one_step_at_a_time(dtype, monkeypatch):
    """The buffered loop draws several steps' noise in one call (dynamics._Draws): the same
    numbers, in the same order, as a draw per layer and step; refilled, past the steps
    announced, and not at all where a draw's size is not a multiple of 16."""
    monkeypatch.setattr(_Draws, "CHUNK", 3 * 48)  # 3 steps a call: refills, a short last one
    noisy = (torch.zeros(2, 16, dtype=dtype), torch.zeros(1, 16, dtype=dtype))
    draws = _Draws.ahead(noisy, 7)
    ahead, one_by_one = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(9):  # the 7 steps announced, then two more
        got = draws.next(ahead)
        want = [torch.randn(si.shape, generator=one_by_one, dtype=dtype) for si in noisy]
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert _Draws.ahead((torch.zeros(3, 5, dtype=dtype),), 4) is None


# -- shared noise: one draw per neuron and step for the whole batch ------------------------------


def test_shared_noise_is_one_draw_per_neuron_for_the_batch():
    g = torch.Generator().manual_seed(0)
    s = (torch.zeros(5, 16, dtype=torch.float64), torch.zeros(5, 2, 3, 3, dtype=torch.complex128))
    first = add_noise(tuple(si.clone() for si in s), 0.04, g, shared=True)
    second = add_noise(tuple(si.clone() for si in s), 0.04, g, shared=True)
    for a, b in zip(first, second, strict=True):
        assert all(torch.equal(a[0], a[k]) for k in range(1, 5))  # every sample: the same draw
        assert float(a.abs().amin()) > 0 and not torch.equal(a, b)  # a new draw each step
    assert float(first[1].imag.abs().amax()) == 0  # real, on complex states too
    apart = add_noise((torch.zeros(5, 16, dtype=torch.float64),), 0.04, g)[0]
    assert not torch.equal(apart[0], apart[1])  # the default: a draw per sample


# the buffered loop (with and without draws ahead: 256 neurons, or 8), and the step functions
SHARED = {
    "tiny": lambda: load("tiny"),
    "mlp_784_256x2_10": lambda: load("mlp_784_256x2_10"),
    "tiny energy": BUFFERED["tiny energy"],
    "tiny alternating": lambda: variant("tiny", dynamics="alternating"),
    "tiny_holo_conv": lambda: load("tiny_holo_conv"),
}


@pytest.mark.parametrize("name", list(SHARED))
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_shared_noise_keeps_identical_samples_identical(name, beta):
    """A batch of copies of one input under shared noise: every sample's states are the same,
    to the rounding of products over rows (with a draw per sample they part); the buffered loop
    draws the numbers of the step functions, bit for bit."""
    net = SHARED[name]()
    dtype = net.init_params(0)["W1"].dtype
    params, x, y = setup(net, batch=1, dtype=dtype)
    x, y = x.repeat(4, *[1] * (x.dim() - 1)), y.repeat(4, 1)
    g = torch.Generator().manual_seed(3)
    shared = relax(net, params, x, y, beta, steps=12, noise=0.04, generator=g, noise_shared=True)
    assert _spread(shared.s) < 1e-5
    apart = relax(net, params, x, y, beta, steps=12, noise=0.04, generator=g)
    assert _spread(apart.s) > 1e-3
    quiet = relax(net, params, x, y, beta, steps=12)
    assert float((shared.s[-1] - quiet.s[-1]).abs().max()) > 1e-3
    p, xs, ys, static, s = prepare(net, params, x, y, beta)
    step = stepper(net.dynamics, 0.04, torch.Generator().manual_seed(3), shared=True)
    for _ in range(12):
        s = step(net, p, s, static, ys, beta)
    assert all(torch.equal(a, b) for a, b in zip(shared.s, s, strict=True))


@pytest.mark.parametrize("name", ["tiny_holo", "mlp_784_256x2_10", "tiny_holo_conv"])
def test_shared_noise_in_points_relaxed_together_is_a_draw_per_point(name):
    """relax_points (hEP's points): each point is a relaxation of its own with its own draw,
    shared by the batch: copies of one input stay identical within a point, and two points with
    the same nudge part."""
    net = load(name)
    dtype = net.init_params(0)["W1"].dtype
    params, x, y = setup(net, batch=1, dtype=dtype)
    x, y = x.repeat(3, *[1] * (x.dim() - 1)), y.repeat(3, 1)
    free = relax(net, params, x, steps=30)
    betas = [0.4, 0.4j, -0.4, 0.4j]
    g = torch.Generator().manual_seed(1)
    outs = relax_points(
        net, params, x, y, betas, free.s, 10, free.static, noise=0.04, generator=g,
        noise_shared=True,
    )  # fmt: skip
    assert all(_spread(out.s) < 1e-5 for out in outs)
    gap = float((outs[1].s[-1] - outs[3].s[-1]).abs().max())
    assert gap > 1e-3  # the same nudge, its own draws
    assert outs[1].s[-1].is_complex() and float(outs[1].s[-1].imag.abs().amax()) > 0


def _spread(s) -> float:
    """The largest difference between a sample's states and the first sample's."""
    return max(float((si - si[:1]).abs().max()) for si in s)


def test_noise_drawn_ahead_shared_is_the_draws_of_one_step_at_a_time():
    noisy = (torch.zeros(4, 2, 16), torch.zeros(4, 1, 32))  # (B, points, n) views, as the loop's
    draws = _Draws.ahead(noisy, 5, shared=True)
    ahead, one_by_one = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(6):
        want = add_noise(tuple(torch.zeros_like(si) for si in noisy), 1.0, one_by_one, True)
        got = draws.next(ahead)
        assert [tuple(xi.shape) for xi in got] == [(1, 2, 16), (1, 1, 32)]
        assert all(torch.equal(w[:1], xi) for w, xi in zip(want, got, strict=True))
    assert _Draws.ahead((torch.zeros(4, 1, 8),), 3, shared=True) is None  # 8 numbers a draw


def test_bad_noise_shared_is_refused():
    net = load("tiny")
    params, x, y = setup(net)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="noise_shared must be True .* got 1$"):
        relax(net, params, x, noise=0.1, generator=g, noise_shared=1)
    with pytest.raises(ValueError, match="noise_shared must be True .* got 'yes'"):
        relax_points(net, params, x, y, [0.1, -0.1], noise_shared="yes")
