"""The oscillation's held phases (``hold``, :mod:`spikeep.oscillation`): every-step turning as
before, the held estimate against a loop written from the module docstring's maths, against the
holomorphic and symmetric estimators once converged and against the implicit reference, the
real-rows path against the general loop, noise, and one-line refusals. Float64, tiny_holo."""

from __future__ import annotations

import cmath
import math

import pytest
import torch
from conftest import ROOT, assert_same_estimate, copies_of_one_sample, load, rel, setup
from test_cli import run

from spikeep import engine, estimators, oscillation, reference
from spikeep import protocol as proto
from spikeep.dynamics import relax
from spikeep.energy import Network
from spikeep.spec import load as load_spec

HOLO = ROOT / "models" / "tiny_holo.toml"
SETTLE = 150  # tiny_holo's steps to a residual below 1e-13 (test_holomorphic.STEPS)


@pytest.fixture(scope="module")
def problem():
    """``(net, params, x, y, free, ref)``: tiny_holo, a batch of 4, the free fixed point and
    the implicit gradient."""
    net = load("tiny_holo")
    params, x, y = setup(net)
    free = relax(net, params, x, steps=SETTLE)
    assert float(free.residual) < 1e-13
    return net, params, x, y, free, reference.implicit_gradient(net, params, x, y, s_star=free.s)


def _by_hand(net, params, x, y, free, a, K, periods, warmup, real, hold):
    """The held estimate as the module docstring writes it: held phase ``j`` relaxes ``hold``
    steps at ``beta_j`` from the previous phase's state, and its last state's ``dF/dtheta``
    (the autograd oracle) is weighed by ``e^{-i phi_j} / |beta|`` (real: ``2 cos(phi_j) /
    |beta|``); the mean over the demodulated phases."""
    N, s, samples = K // hold, free.s, []
    for j in range((warmup + periods) * N):
        phi = 2 * math.pi * (j % N) / N
        beta_j = a * math.cos(phi) if real else a * cmath.exp(1j * phi)
        s = relax(net, params, x, y, beta_j, s=s, steps=hold, static=free.static).s
        if j >= warmup * N:
            c = 2 * math.cos(phi) / a if real else cmath.exp(-1j * phi) / a
            r = net.dynamics.rates(net, s)
            samples.append(net.dF_dtheta_autograd(params, x, y, [(r, beta_j, c)]))
    return {k: sum(g[k] for g in samples) / len(samples) for k in samples[0]}


def _oscillate(problem, K, periods, warmup, real, hold, **noise):
    net, params, x, y, free, _ = problem
    return oscillation.oscillate(
        net, params, x, y, 0.4, K, periods, warmup, real, s=free.s, static=free.static,
        hold=hold, **noise,
    )  # fmt: skip


@pytest.mark.parametrize("planar", [True, False], ids=["real-rows", "general"])
@pytest.mark.parametrize("real", [False, True], ids=["complex", "cosine"])
def test_hold_one_is_the_every_step_scheme_and_hold_follows_the_maths(
    problem, monkeypatch, planar, real
):
    """hold = 1 is the default (the same numbers, bit for bit), and both hold = 1 and hold = 5
    are the sum the module docstring writes, to rounding."""
    if not planar:
        monkeypatch.setattr(oscillation, "_planar", lambda net: False)
    free = problem[4]
    default = oscillation.oscillate(*problem[:4], 0.4, 15, 2, 1, real, s=free.s, static=free.static)
    every = _oscillate(problem, 15, 2, 1, real, hold=1)
    assert all(torch.equal(default[0][k], every[0][k]) for k in every[0])
    assert default[1] == every[1]
    assert all(torch.equal(u, v) for u, v in zip(default[2], every[2], strict=True))
    for hold in (1, 5):
        got = _oscillate(problem, 15, 2, 1, real, hold)[0]
        assert rel(got, _by_hand(*problem[:5], 0.4, 15, 2, 1, real, hold)) < 1e-12


def test_converged_held_phases_are_the_n_point_estimator(problem):
    """Each held phase settled: the held estimate is the holomorphic estimator with N points
    (each phase relaxed from the one before, not from the free state), the cosine one with N = 4
    the symmetric estimator, and both approach the exact gradient."""
    net, params, x, y, free, ref = problem
    for N in (5, 8):
        held = estimators.make("oscillation", 0.5, steps_per_period=N * SETTLE, hold=SETTLE)
        held.periods, held.warmup = 2, 0
        assert held.bias_order == N and f"hold={SETTLE}" in repr(held)
        out = held.estimate(net, params, x, y, free)
        hep = estimators.Holomorphic(0.5, SETTLE, points=N).estimate(net, params, x, y, free)
        gaps = rel(out.grads, hep.grads), rel(out.grads, ref)
        print(f"N={N}: held vs hEP {gaps[0]:.1e}, vs exact {gaps[1]:.1e}")
        assert rel(out.grads, hep.grads) < 1e-12
        assert out.residuals[0] < 1e-12  # the two periods are the same orbit
    assert rel(out.grads, ref) < 1e-6  # N = 8 at |beta| = 0.5 (test_holomorphic: within 1e-6)
    cosine = estimators.Oscillation(0.3, 4 * SETTLE, 1, 0, real=True, hold=SETTLE)
    symmetric = estimators.Symmetric(0.3, SETTLE).estimate(net, params, x, y, free)
    got = cosine.estimate(net, params, x, y, free).grads
    assert cosine.bias_order == 2 and rel(got, symmetric.grads) < 1e-11
    assert rel(got, ref) < 0.05


@pytest.mark.parametrize("real", [False, True], ids=["complex", "cosine"])
@pytest.mark.parametrize("noise,shared", [(0.0, False), (0.04, False), (0.04, True)])
def test_held_phases_in_real_rows_equal_the_general_loop(problem, monkeypatch, real, noise, shared):
    """The dense real-rows path with hold > 1 against the general loop: 40 samples (one window
    of 30 and one of 10), the same estimate, residual and state, noise draws included."""

    def once():
        g = torch.Generator().manual_seed(2) if noise else None
        return _oscillate(
            problem, 12, 10, 1, real, 3, noise=noise, generator=g, noise_shared=shared
        )

    fast = once()
    monkeypatch.setattr(oscillation, "_planar", lambda net: False)
    assert_same_estimate(fast, once(), 1e-12, 1e-13)


def test_held_phases_with_noise_are_seeded_and_shared_noise_keeps_copies_together():
    """Noise with hold: seeded draws repeat, they change the estimate, and under noise_shared a
    batch of copies of one sample gives that sample's estimate (a draw per sample: it does not)."""
    net = load("tiny_holo")
    params, x1, y1 = setup(net, batch=1)
    x4, y4 = x1.repeat(4, 1), y1.repeat(4, 1)

    def grads(x, y, **options):
        est = estimators.Oscillation(0.3, 12, 2, 1, hold=4, **options)
        free = relax(net, params, x, steps=40)
        return est.estimate(net, params, x, y, free, torch.Generator().manual_seed(3)).grads

    one = grads(x1, y1, noise=0.04, noise_shared=True)
    assert rel(grads(x1, y1, noise=0.04, noise_shared=True), one) == 0
    assert rel(grads(x1, y1), one) > 1e-4
    assert rel(grads(x4, y4, noise=0.04, noise_shared=True), one) < 1e-12
    assert rel(grads(x4, y4, noise=0.04), one) > 1e-4


def _engine(**estimator):
    table = {"name": "oscillation", "free_steps": 30, "steps_per_period": 12, "periods": 1}
    p = proto.from_dict({"model": str(HOLO), "estimator": {**table, "warmup": 0, **estimator}})
    return engine.RateEngine(p, Network(load_spec(HOLO)))


def test_the_rate_engine_holds_the_phases_with_the_noise_placed_as_the_keys_say():
    """[estimator] hold reaches the estimator; with free_noise = false and noise_shared = true
    the free phase is the noise-free one and copies of one sample stay together."""
    net = Network(load_spec(HOLO))
    params = net.init_params(0, dtype=torch.float64)
    x, y = copies_of_one_sample(6, 2, 4)

    def step(eng):
        return eng.step(net, params, x, y, None, torch.Generator().manual_seed(0), 0)

    quiet_engine = _engine(hold=3)
    assert quiet_engine.est.hold == 3 and quiet_engine.est.bias_order == 4
    quiet, every = step(quiet_engine), step(_engine())
    assert rel(quiet.grads, every.grads) > 1e-6  # held is not every-step
    keys = {"noise": 0.04, "free_noise": False, "noise_shared": True}
    shared = step(_engine(hold=3, **keys))
    assert all(torch.equal(a, b) for a, b in zip(shared.s, quiet.s, strict=True))  # free phase
    assert rel(shared.grads, quiet.grads) > 1e-4  # the oscillation: noisy
    one = _engine(hold=3, **keys).step(
        net, params, x[:1], y[:1], None, torch.Generator().manual_seed(0), 0
    )
    assert rel(shared.grads, one.grads) < 1e-12


# -- refusals -----------------------------------------------------------------------------------

BAD_HOLDS = [0, -3, 7, 10, 2.5, True]  # K = 20: 7 does not divide it, 10 leaves 2 held phases


@pytest.mark.parametrize("hold", BAD_HOLDS)
def test_bad_hold_is_one_line_naming_it_and_the_period(problem, hold):
    want = rf"^hold must be .* got hold={hold!r} for steps_per_period=20$"
    with pytest.raises(ValueError, match=want):
        estimators.Oscillation(0.1, 20, hold=hold)
    with pytest.raises(ValueError, match=want):
        _oscillate(problem, 20, 1, 0, False, hold)


@pytest.mark.parametrize("hold", [0, 7, 100])
def test_bad_hold_in_a_protocol_names_the_key(tmp_path, hold):
    path = tmp_path / "p.toml"
    path.write_text(
        f'model = "{HOLO}"\n[estimator]\nname = "oscillation"\nsteps_per_period = 20\n'
        f"hold = {hold}\n"
    )
    with pytest.raises(proto.ProtocolError, match=rf"estimator\.hold: .* 20 .* got {hold}$"):
        proto.load(path)


def test_protocol_hold_parses_and_the_table1_oscillations_hold_thirty_steps():
    for name in ("oscep_table1", "oscep_table1_noise"):
        p = proto.load(ROOT / "protocols" / f"{name}.toml").estimator
        assert (p.hold, p.steps_per_period, p.periods, p.warmup) == (30, 300, 3, 0)
        assert estimators.make(p.name, p.beta, hold=p.hold, steps_per_period=300).bias_order == 10
    assert proto.from_dict({"model": str(HOLO)}).estimator.hold == 1


OSC = ["gradcheck", "--model", str(HOLO), "--estimator", "oscillation", "--beta", "0.4"]


def test_cli_gradcheck_takes_hold(capsys):
    import json

    argv = [*OSC, "--steps-per-period", "600", "--hold", "150", "--periods", "1", "--warmup", "0"]
    code, out, err = run([*argv, "--batch", "4", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["hold"] == 150 and r["bias_order"] == 4 and r["rel_error"] < 0.01
    code, out, err = run([*argv, "--batch", "4"], capsys)
    assert code == 0 and "K=600 h=150" in out
    for bad in (["--hold", "0"], ["--hold", "7"]):
        code, out, err = run([*OSC, *bad], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1 and "hold" in err
        assert "Traceback" not in err
