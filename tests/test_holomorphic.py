"""Holomorphic EP, continuous oscillation and state noise, in float64 on tiny_holo (dense) and
tiny_holo_conv (conv, softmax pooling), against the implicit reference."""

from __future__ import annotations

import cmath
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_same_estimate, load, rel, setup, variant
from test_cli import run

from spikeep import estimators, oscillation, reference
from spikeep import protocol as proto
from spikeep.dynamics import add_noise, relax, relax_points
from spikeep.gradcheck import loglog_slope
from spikeep.oscillation import Demodulator

STEPS = {"tiny_holo": 150, "tiny_holo_conv": 100}  # enough for a residual below 1e-13


@pytest.fixture(scope="module", params=["tiny_holo", "tiny_holo_conv"])
def problem(request):
    """``(net, params, x, y, free, ref, steps)`` of one model, relaxed once per module."""
    net = load(request.param)
    params, x, y = setup(net)
    steps = STEPS[request.param]
    free = relax(net, params, x, steps=steps)
    assert float(free.residual) < 1e-13
    ref = reference.implicit_gradient(net, params, x, y, s_star=free.s)
    return net, params, x, y, free, ref, steps


def _estimate(est, problem, generator=None):
    net, params, x, y, free, _, _ = problem
    return est.estimate(net, params, x, y, free, generator=generator)


# -- the N-point estimator ----------------------------------------------------------------------

BETAS = np.geomspace(0.15, 0.6, 5)


@pytest.mark.parametrize("points", [3, 4, 6])
def test_n_point_error_falls_as_beta_to_the_n(problem, points):
    steps, ref = problem[6], problem[5]
    errors = [
        rel(_estimate(estimators.Holomorphic(float(b), steps, points), problem).grads, ref)
        for b in BETAS
    ]
    slope = loglog_slope(BETAS, errors)
    print(f"N={points}: errors {[f'{e:.2e}' for e in errors]}, slope {slope:.2f}")
    assert min(errors) > 1e-12  # well above the relaxation's floor: the slope is the bias's
    assert slope == pytest.approx(points, abs=0.3)


def test_eight_points_at_half_are_within_1e6(problem):
    out = _estimate(estimators.Holomorphic(0.5, problem[6], points=8), problem)
    print(f"N=8, |beta|=0.5: relative error {rel(out.grads, problem[5]):.2e}")
    assert rel(out.grads, problem[5]) < 1e-6
    assert len(out.residuals) == 5 and max(out.residuals) < 1e-12  # k = 0 .. 4, all converged


@pytest.mark.parametrize("points", [5, 6])
def test_conjugate_symmetric_shortcut_equals_the_full_sum(problem, points):
    net, params, x, y, free, _, steps = problem
    half = _estimate(estimators.Holomorphic(0.4, steps, points), problem).grads
    full = []
    for k in range(points):  # every point of the circle, simulated
        beta_k = 0.4 * cmath.exp(2j * math.pi * k / points)
        out = relax(net, params, x, y, beta_k, s=free.s, steps=steps, static=free.static)
        full.append((out.s, beta_k, 1 / (points * beta_k)))
    assert rel(half, net.dF_dtheta(params, x, y, full)) < 1e-12


@pytest.mark.parametrize("points", [2, 3, 4, 10])
def test_points_relaxed_as_one_batch_equal_the_full_circle_one_by_one(points):
    """The batched half circle (complex states as pairs of real rows, dynamics.relax_points)
    against every point of the circle relaxed on its own with complex weights: the same
    estimate to float64 rounding, and each point's states and residual too."""
    net = load("tiny_holo")
    params, x, y = setup(net, batch=5)
    free = relax(net, params, x, steps=150)
    est = estimators.Holomorphic(0.4, 60, points)
    fast = est.estimate(net, params, x, y, free)
    slow = estimators.Holomorphic(0.4, 60, points, batched=False).estimate(net, params, x, y, free)
    assert rel(fast.grads, slow.grads) < 1e-13
    assert fast.residuals == pytest.approx(slow.residuals, rel=1e-6, abs=1e-14)
    full = []
    for k in range(points):
        beta_k = 0.4 * cmath.exp(2j * math.pi * k / points)
        out = relax(net, params, x, y, beta_k, s=free.s, steps=60, static=free.static)
        full.append((out.s, beta_k, 1 / (points * beta_k)))
    assert rel(fast.grads, net.dF_dtheta(params, x, y, full)) < 1e-13
    outs = relax_points(net, params, x, y, [b for b, _ in est.betas()], free.s, 60)
    for out, (beta_k, _) in zip(outs, est.betas(), strict=True):
        alone = relax(net, params, x, y, beta_k, s=free.s, steps=60)
        assert out.s[0].dtype == alone.s[0].dtype
        for a, b in zip(out.s, alone.s, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_points_relaxed_as_one_batch_check_every_state_against_max_abs():
    """relax_points bounds every state at once (|a + ib| <= sqrt(2) max(|a|, |b|)) and checks
    point by point only past the bound: a state at max_abs passes, one above it is named."""
    from spikeep.dynamics import DivergenceError

    net = load("tiny_holo")
    params, x, y = setup(net)
    free = relax(net, params, x, steps=150)
    betas = [0.4, 0.4j, -0.4]
    outs = relax_points(net, params, x, y, betas, free.s, 40)
    peak = max(float(si.abs().max()) for out in outs for si in out.s)
    at_peak = relax_points(net, params, x, y, betas, free.s, 40, max_abs=peak)  # the check runs
    for a, b in zip(outs, at_peak, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a.s, b.s)) and a.residual == b.residual
    with pytest.raises(DivergenceError, match="one of 3 nudges relaxed together"):
        relax_points(net, params, x, y, betas, free.s, 40, max_abs=peak * (1 - 1e-9))
    bad = {**params, "W2": params["W2"] * float("nan")}
    with pytest.raises(DivergenceError, match="layer 'h1' became non-finite"):
        relax_points(net, bad, x, y, betas, free.s, 2)


def test_points_relaxed_as_one_batch_draw_seeded_noise():
    net = load("tiny_holo")
    params, x, y = setup(net)
    free = relax(net, params, x, steps=150)
    betas = [0.4, 0.4j, -0.4]

    def run(seed, noise=0.04):
        g = torch.Generator().manual_seed(seed)
        return relax_points(net, params, x, y, betas, free.s, 40, noise=noise, generator=g)

    clean, a, b = run(0, 0.0), run(0), run(0)
    for u, v, w in zip(clean, a, b, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(v.s, w.s))  # seeded: reproducible
        gap = max(float((p - q).abs().max()) for p, q in zip(v.s, u.s))
        assert 1e-3 < gap < 1.0
    assert not a[0].s[0].is_complex() and a[1].s[0].is_complex()


# -- continuous oscillation ---------------------------------------------------------------------


def test_continuous_demodulation_converges_as_steps_per_period_grow(problem):
    steps_per_period = [50, 100, 200, 400]
    errors = [
        rel(_estimate(estimators.Oscillation(0.5, K, periods=1), problem).grads, problem[5])
        for K in steps_per_period
    ]
    slope = loglog_slope(steps_per_period, errors)
    print(f"complex oscillation, |beta|=0.5, K={steps_per_period}:", [f"{e:.2e}" for e in errors])
    print(f"  slope in K {slope:.2f}")
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-5
    assert slope == pytest.approx(-2, abs=0.3)  # the lag, O(K^-2)
    holo = _estimate(estimators.Holomorphic(0.5, problem[6], points=8), problem).grads
    last = _estimate(estimators.Oscillation(0.5, 400, periods=1), problem).grads
    assert rel(last, holo) < 1e-5  # and to the N-point estimate


def test_real_cosine_variant_has_a_second_order_bias(problem):
    betas = [0.05, 0.1, 0.2, 0.4]
    errors = [
        rel(_estimate(estimators.Oscillation(b, 400, 1, real=True), problem).grads, problem[5])
        for b in betas
    ]
    slope = loglog_slope(betas, errors)
    print(f"real cosine oscillation, K=400, |beta|={betas}:", [f"{e:.2e}" for e in errors])
    print(f"  slope in |beta| {slope:.2f}")
    assert estimators.Oscillation(0.1, 400, real=True).bias_order == 2
    assert slope == pytest.approx(2, abs=0.3)


def test_windowed_demodulation_equals_step_by_step(problem, monkeypatch):
    est = estimators.Oscillation(0.3, 20, periods=2, warmup=1)
    windowed = _estimate(est, problem)
    monkeypatch.setattr(oscillation, "WINDOW", 1)
    stepwise = _estimate(est, problem)
    assert rel(windowed.grads, stepwise.grads) < 1e-13
    assert windowed.residuals == stepwise.residuals


def test_oscillation_from_zeros_needs_its_warmup(problem):
    """Without the free phase the start's transient biases an undiscarded first period."""
    K, ref = 200, problem[5]
    biased = _estimate(estimators.Oscillation(0.3, K, 1, warmup=0, free=False), problem)
    settled = _estimate(estimators.Oscillation(0.3, K, 1, warmup=1, free=False), problem)
    assert rel(settled.grads, ref) < 1e-4 < rel(biased.grads, ref)
    assert settled.residuals[0] < 1e-10 < biased.residuals[0]  # reported, not hidden


def test_demodulator_recovers_the_first_fourier_coefficient():
    K, delta = 16, 0.7
    real, cplx, both = Demodulator(), Demodulator(), Demodulator()
    for t in range(3 * K):
        phi = 2 * math.pi * t / K
        f = 0.3 + 2.0 * math.cos(phi + delta) + 0.5 * math.cos(2 * phi)  # DC and 2nd harmonic
        z = (1.5 - 0.25j) * cmath.exp(1j * phi) + 0.1j * cmath.exp(-3j * phi)
        real.add(torch.tensor(f, dtype=torch.float64), phi)
        cplx.add(torch.tensor(z, dtype=torch.complex128), phi)
        both.add({"f": torch.tensor([f]), "z": torch.tensor([z])}, phi)
    assert float(real.coefficient()) == pytest.approx(math.cos(delta), abs=1e-14)  # A/2 cos d
    assert float(cplx.coefficient()) == pytest.approx(1.5, abs=1e-14)
    assert both.count == 3 * K and not both.coefficient()["z"].is_complex()
    with pytest.raises(ValueError, match="no samples"):
        Demodulator().coefficient()


# -- noise --------------------------------------------------------------------------------------


def test_zero_noise_is_bit_identical_and_draws_nothing():
    net = load("tiny_holo")
    params, x, y = setup(net)
    g = torch.Generator().manual_seed(5)
    before = g.get_state()
    plain = relax(net, params, x, y, 0.3j, steps=40)
    zero = relax(net, params, x, y, 0.3j, steps=40, noise=0.0, generator=g)
    assert all(torch.equal(a, b) for a, b in zip(plain.s, zero.s))
    assert torch.equal(g.get_state(), before)
    free = relax(net, params, x, steps=40)
    for name in ("holomorphic", "oscillation"):
        a = estimators.make(name, 0.3, 20, points=4).estimate(net, params, x, y, free)
        b = estimators.make(name, 0.3, 20, points=4, noise=0.0).estimate(
            net, params, x, y, free, generator=g
        )
        assert all(torch.equal(a.grads[k], b.grads[k]) for k in a.grads)


def test_seeded_noise_is_reproducible_and_changes_the_states():
    net = load("tiny_holo")
    params, x, y = setup(net)

    def run(seed, noise=0.04):
        g = torch.Generator().manual_seed(seed)
        return relax(net, params, x, y, 0.3j, steps=40, noise=noise, generator=g).s

    clean, a, b, other = run(0, 0.0), run(0), run(0), run(1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not any(torch.equal(u, v) for u, v in zip(a, other))
    gap = max(float((u - v).abs().max()) for u, v in zip(a, clean))
    assert 1e-3 < gap < 1.0
    free = relax(net, params, x, steps=40)
    for name in ("holomorphic", "oscillation", "one-sided"):
        est = estimators.make(name, 0.3, 20, points=4, noise=0.04)
        g1, g2 = (
            est.estimate(net, params, x, y, free, torch.Generator().manual_seed(3)).grads
            for _ in "12"
        )
        quiet = estimators.make(name, 0.3, 20, points=4).estimate(net, params, x, y, free).grads
        assert all(torch.equal(g1[k], g2[k]) for k in g1)
        assert rel(g1, quiet) > 1e-4


@pytest.mark.parametrize("name", list(estimators.ESTIMATORS))
def test_shared_noise_on_copies_of_a_sample_is_the_noise_on_that_sample_alone(name):
    """noise_shared: one draw per neuron and step for the whole batch, so a batch of copies of
    one sample follows that sample's noisy run, and its estimate is the sample's; with a draw
    per sample the copies part."""
    net = load("tiny_holo")
    params, x1, y1 = setup(net, batch=1)
    x4, y4 = x1.repeat(4, 1), y1.repeat(4, 1)
    options = dict(points=4, lr=1e-3, steps_per_period=8, periods=1, warmup=0)
    shared = estimators.make(name, 0.3, 10, noise=0.04, noise_shared=True, **options)
    apart = estimators.make(name, 0.3, 10, noise=0.04, **options)

    def grads(est, x, y):
        free = relax(net, params, x, steps=40)
        return est.estimate(net, params, x, y, free, torch.Generator().manual_seed(3)).grads

    one = grads(shared, x1, y1)
    assert rel(grads(shared, x4, y4), one) < 1e-12
    assert rel(grads(apart, x4, y4), one) > 1e-4
    assert rel(grads(apart, x1, y1), one) < 1e-12  # one sample: both draw the same numbers
    assert "noise_shared=True" in repr(shared) and "noise_shared" not in repr(apart)


def test_noise_is_real_on_complex_states():
    s = (torch.zeros(2000, dtype=torch.complex128),)
    add_noise(s, 0.04, torch.Generator().manual_seed(0))
    assert float(s[0].imag.abs().max()) == 0.0
    assert float(s[0].real.std()) == pytest.approx(0.04, rel=0.1)


def test_bad_noise_is_refused():
    net = load("tiny_holo")
    params, x, _ = setup(net)
    with pytest.raises(ValueError, match=r"noise=0\.1 needs an explicit torch\.Generator"):
        relax(net, params, x, noise=0.1)
    with pytest.raises(ValueError, match="noise must be a finite number >= 0.*-0.5"):
        estimators.Symmetric(0.1, noise=-0.5)
    with pytest.raises(ValueError, match="noise_shared must be True .* got 1$"):
        estimators.Holomorphic(0.1, noise=0.1, noise_shared=1)
    with pytest.raises(ValueError, match="noise_shared must be True .* got 'no'"):
        estimators.make("oscillation", 0.1, noise_shared="no")


# -- clear errors -------------------------------------------------------------------------------


def test_non_holomorphic_networks_refuse_complex_nudges():
    net = variant("tiny_holo", activation="hard_sigmoid")
    params, x, y = setup(net)
    free = relax(net, params, x, steps=20)
    with pytest.raises(ValueError, match="needs a holomorphic network.*hard_sigmoid"):
        relax(net, params, x, y, 0.1j, steps=5)
    with pytest.raises(ValueError, match="complex oscillation needs a holomorphic.*real=True"):
        estimators.Oscillation(0.1, 10).estimate(net, params, x, y, free)
    out = estimators.Oscillation(0.1, 10, real=True).estimate(net, params, x, y, free)
    assert all(torch.isfinite(v).all() for v in out.grads.values())  # the cosine one runs
    pooled = variant("tiny_holo_conv", layers={1: {"pool": "max"}})
    p, xc, yc = setup(pooled)
    with pytest.raises(ValueError, match="max pooling"):
        estimators.Oscillation(0.1, 10).estimate(pooled, p, xc, yc, relax(pooled, p, xc))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"steps": 2}, "steps per period"),
        ({"periods": 0}, "periods"),
        ({"warmup": -1}, "warmup"),
        ({"real": 1}, "real"),
    ],
)
def test_bad_oscillation_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        estimators.Oscillation(0.1, **kwargs)


# -- command line and protocols -----------------------------------------------------------------

HOLO = str(ROOT / "models" / "tiny_holo.toml")
OSC = ["gradcheck", "--model", HOLO, "--estimator", "oscillation", "--beta", "0.3"]


def test_cli_gradcheck_oscillation_json(capsys):
    argv = [*OSC, "--steps-per-period", "200", "--periods", "1", "--batch", "4", "--json"]
    code, out, err = run([*argv, "--real"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["estimator"] == "oscillation" and result["real"] is True
    assert result["steps_per_period"] == 200 and result["periods"] == 1
    assert result["warmup"] == 1 and result["from_free"] is True and result["noise"] == 0.0
    assert result["bias_order"] == 2 and result["points"] is None
    assert 0 < result["rel_error"] < 0.05 and len(result["nudged_residuals"]) == 1
    code, out, _ = run([*argv, "--no-free", "--noise", "0.01"], capsys)
    result = json.loads(out)
    assert code == 0 and result["from_free"] is False and result["noise"] == 0.01
    assert result["real"] is False and result["bias_order"] == 200


@pytest.mark.parametrize(
    "extra,names",
    [
        (["--steps-per-period", "2"], ["--steps-per-period", "'2'"]),
        (["--periods", "0"], ["--periods", "'0'"]),
        (["--warmup", "-1"], ["--warmup", "'-1'"]),
        (["--noise", "-0.1"], ["--noise", "'-0.1'"]),
        (["--noise", "nan"], ["--noise", "'nan'"]),
    ],
)
def test_cli_bad_oscillation_input_is_one_line_with_status_2(capsys, extra, names):
    code, out, err = run([*OSC, *extra], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert all(n in err for n in names)


def test_cli_complex_oscillation_on_a_non_holomorphic_model_exits_2(capsys, tmp_path):
    hard = tmp_path / "hard.toml"
    hard.write_text(Path(HOLO).read_text().replace('"sigmoid4"', '"hard_sigmoid"'))
    argv = ["gradcheck", "--model", str(hard), "--estimator", "oscillation", "--beta", "0.1"]
    code, out, err = run([*argv, "--batch", "2", "--free-steps", "20"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "hard_sigmoid" in err and "real=True" in err


def _protocol(tmp_path, text):
    path = tmp_path / "p.toml"
    path.write_text(f'model = "{HOLO}"\n[estimator]\n{text}\n')
    return path


def test_protocol_noise_parses(tmp_path):
    p = proto.load(_protocol(tmp_path, "name = 'holomorphic'\nnoise = 0.04\npoints = 10"))
    assert p.estimator.noise == 0.04 and p.estimator.eval_noise is None
    p = proto.load(_protocol(tmp_path, "noise = 0.04\neval_noise = 0"))
    assert p.estimator.eval_noise == 0.0
    shipped = proto.load(ROOT / "protocols" / "hep_mnist_noise.toml")
    assert shipped.estimator.noise == 0.04 and shipped.estimator.points == 10
    assert shipped.estimator.free_noise and not shipped.estimator.noise_shared  # the defaults
    p = proto.load(_protocol(tmp_path, "noise = 0.04\nfree_noise = false\nnoise_shared = true"))
    assert not p.estimator.free_noise and p.estimator.noise_shared


# Laborieux & Zenke's placement: a noise-free free phase, one draw per neuron shared by the batch
THEIR_NOISE = ["oscep_table1_noise", "ep_table1_noise_beta04", "ep_table1_noise_beta01"]


@pytest.mark.parametrize("name", [*THEIR_NOISE, "hep_table1_noise_shared", "hep_table1_noise"])
def test_table1_noise_protocols_place_the_noise_as_their_code(name):
    e = proto.load(ROOT / "protocols" / f"{name}.toml").estimator
    if name == "hep_table1_noise":  # a run of it was started before the keys: left as it was
        assert e.free_noise and not e.noise_shared
    else:
        assert not e.free_noise and e.noise_shared
    assert e.noise == 0.04 and e.eval_noise == 0.0


def test_the_shared_hep_protocol_is_its_twin_with_the_two_keys():
    old, new = (
        proto.load(ROOT / "protocols" / f"{n}.toml")
        for n in ("hep_table1_noise", "hep_table1_noise_shared")
    )
    changes = proto.protocol_changes(old.raw, new.raw)
    assert [c.split(":")[0] for c in changes] == [
        "description",
        "estimator.free_noise",
        "estimator.noise_shared",
        "name",
    ]


@pytest.mark.parametrize(
    "text,key",
    [
        ("noise = -0.1", "estimator.noise"),
        ("noise = 'high'", "estimator.noise"),
        ("eval_noise = true", "estimator.eval_noise"),
        ("free_noise = 0", "estimator.free_noise"),
        ("noise_shared = 'yes'", "estimator.noise_shared"),
        ("steps_per_period = 2", "estimator.steps_per_period"),
        ("periods = 0", "estimator.periods"),
    ],
)
def test_protocol_bad_noise_is_named(tmp_path, text, key):
    path = _protocol(tmp_path, text)
    with pytest.raises(proto.ProtocolError, match=re.escape(f"{path}: {key}")):
        proto.load(path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_split_sigmoid_is_bit_identical_to_the_complex_one(dtype):
    from spikeep.activations import _sigmoid
    from spikeep.dynamics import _sigmoid_planar_, _split_sigmoid

    g = torch.Generator().manual_seed(0)
    a = 30 * torch.randn(3, 40, 9, generator=g, dtype=dtype)  # both branches, exp underflow
    a[0, 0, :3] = torch.tensor([0.0, -0.0, float("inf")])  # the branches' edge, and a > 88
    b = 3 * torch.randn(3, 40, 9, generator=g, dtype=dtype)
    want = _sigmoid(torch.complex(a, b))
    pair = torch.stack([a, b], dim=1)  # (3, 2, 40, 9): layers of real and imaginary parts
    _sigmoid_planar_(_split_sigmoid(pair))
    assert torch.equal(pair[:, 0], want.real) and torch.equal(pair[:, 1], want.imag)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128])
def test_softmax_in_buffers_is_bit_identical_to_the_networks(dtype):
    """The buffered loop's readout nudge forms the softmax in buffers (dynamics._softmax_into),
    with the numbers of Network._softmax, complex rows included."""
    from spikeep.dynamics import _softmax_into
    from spikeep.energy import Network

    g = torch.Generator().manual_seed(1)
    z = (30 * torch.randn(60, 10, generator=g, dtype=torch.float64)).to(dtype)
    if dtype.is_complex:
        z = z + 3j * torch.randn(60, 10, generator=g, dtype=torch.float64).to(dtype)
    out, total = torch.empty_like(z), z.new_empty((60, 1))
    got = _softmax_into(z, z.real, torch.empty_like(z), out, total)
    assert got is out and torch.equal(out, Network._softmax(z))


@pytest.mark.parametrize("real", [False, True])
@pytest.mark.parametrize("noise,shared", [(0.0, False), (0.04, False), (0.04, True)])
def test_oscillation_in_real_rows_equals_the_general_loop(monkeypatch, real, noise, shared):
    """The dense prototypical oscillation (states as real rows, the lock-in by real products
    over windows of steps) against the general loop with complex tensors: the same estimate,
    state and residual to float64 rounding, noise draws included (the same order; shared by
    the batch, or a draw per sample)."""
    net = load("tiny_holo")
    params, x, y = setup(net, batch=5)
    free = relax(net, params, x, steps=100)

    def run():
        g = torch.Generator().manual_seed(2) if noise else None
        return oscillation.oscillate(
            net, params, x, y, 0.4, 7, 5, 1, real, s=free.s, static=free.static, noise=noise,
            generator=g, noise_shared=shared,
        )  # fmt: skip

    fast = run()
    monkeypatch.setattr(oscillation, "_planar", lambda net: False)
    assert_same_estimate(fast, run(), 1e-13, 1e-14)
