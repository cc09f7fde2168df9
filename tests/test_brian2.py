"""The Brian2 spiking engine (``spikeep.brian2``) against the rate engine.

Runtime tests use the numpy target on ``models/spiking_small.toml`` (20-16-4, non-leaky IF neurons,
``rate_max`` 500 Hz, ``tau_syn`` 20 ms, ``dt`` 0.2 ms, constant input current), batches of copies of
the network simulated side by side; seeds are fixed (``brian2.seed`` inside ``build``, torch
generators for parameters and batches). The cpp_standalone tests compile (about 40 s the first
time on two shared cores, a few seconds from the cache) and are marked ``slow``.
"""

from __future__ import annotations

import dataclasses
import json
import os

import brian2 as b2
import numpy as np
import pytest
import torch
from conftest import MODELS, raw

from spikeep import spec as spec_mod
from spikeep.brian2 import build, neurons, rules, schedules
from spikeep.brian2.calibrate import transfer
from spikeep.brian2.gradcheck import gradcheck
from spikeep.brian2.lowering import closing_time, layer_equations
from spikeep.cli import main
from spikeep.dynamics import relax
from spikeep.energy import Network
from spikeep.gradcheck import random_batch

pytestmark = pytest.mark.brian2

SMALL = MODELS / "spiking_small.toml"


@pytest.fixture(scope="module")
def small():
    return spec_mod.load(SMALL)


@pytest.fixture(autouse=True)
def _numpy_target():
    b2.prefs.codegen.target = "numpy"


def _spiking(**changes):
    data = raw("spiking_small")
    data["spiking"] = {**data["spiking"], **changes}
    return data


# -- the [spiking] section -----------------------------------------------------------------------


BAD_SPECS = [
    ("unknown-key", _spiking(tau_bogus=1.0), "spiking: unknown key 'tau_bogus'"),
    (
        "neuron",
        _spiking(neuron="hh"),
        "spiking.neuron: expected one of ['if', 'lif', 'lif_bio'], got 'hh'",
    ),
    ("input", _spiking(input="rate"), "spiking.input"),
    ("negative-tau", _spiking(tau_syn=-0.01), "spiking.tau_syn: expected a finite number > 0"),
    ("string-rate", _spiking(rate_max="fast"), "spiking.rate_max: expected int/float"),
    ("two-spikes-per-step", _spiking(rate_max=1e4), "rate_max * dt = 2 must be <= 1"),
    ("window-under-two-steps", _spiking(window=1e-4), "spiking.window: expected at least two"),
    (
        "stdp-trace",
        _spiking(stdp_trace="delayed"),
        "spiking.stdp_trace: expected one of ['running', 'count'], got 'delayed'",
    ),
    (
        "stdp-expressed",
        _spiking(stdp_expressed="later"),
        "spiking.stdp_expressed: expected one of ['at_spike', 'next_sample'], got 'later'",
    ),
    ("tanh", {**_spiking(), "activation": "tanh"}, "needs a non-negative rate function"),
    ("cross-entropy", {**_spiking(), "cost": "cross_entropy"}, "needs cost 'mse'"),
    ("sigmoid4-gradient-flow", {**_spiking(), "activation": "sigmoid4"}, "dynamics: spiking rates"),
]


@pytest.mark.parametrize("data,message", [b[1:] for b in BAD_SPECS], ids=[b[0] for b in BAD_SPECS])
def test_bad_spiking_section_is_one_line_naming_the_key(data, message):
    with pytest.raises(spec_mod.SpecError) as err:
        spec_mod.from_dict(data, source="bad.toml")
    text = str(err.value)
    assert text.startswith("bad.toml: ") and "\n" not in text
    assert message in text


def test_conv_network_cannot_be_spiking():
    data = raw("tiny_conv")
    data["spiking"] = {}
    with pytest.raises(spec_mod.SpecError, match="needs dense couplings|input is flat"):
        spec_mod.from_dict(data, source="conv.toml")


def test_spiking_section_parsed_in_seconds(small):
    cfg = small.spiking
    assert dataclasses.is_dataclass(cfg) and isinstance(cfg, spec_mod.Spiking)
    assert (cfg.neuron, cfg.input, cfg.rate_max, cfg.tau_syn, cfg.dt) == (
        "if",
        "current",
        500.0,
        0.02,
        2e-4,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tau_syn = 1.0


def test_every_spiking_activation_and_neuron_has_brian2_code():
    assert set(neurons.RHO) == set(spec_mod.SPIKING_ACTIVATIONS)
    assert set(neurons.MODELS) == set(spec_mod.NEURONS)


# -- lowering ---------------------------------------------------------------------------------


def test_equations_are_generated_from_the_spec(small):
    rule = rules.Rule("endpoint", schedules.one_sided(0.1, small.spiking))
    out = str(layer_equations(small, rule, input_current=False, output=True))
    assert "clip(s, 0, 1)" in out  # the spec's rho
    assert "I_teach = beta_t(t) * (y - r)" in out  # the MSE teaching current
    half = dataclasses.replace(small, activation="hard_sigmoid_half")
    out = str(layer_equations(half, rule, input_current=False, output=False))
    assert "clip(s / 2, 0, 1)" in out and "I_teach" not in out


def test_lowering_keeps_the_parameters_and_shares_each_weight(small):
    net = Network(small)
    params = net.init_params(3)
    x, _ = random_batch(net, 2, 3)
    sn = build(small, params, x)
    assert isinstance(sn.network, b2.Network)
    assert [len(g) for g in sn.groups] == [2 * 20, 2 * 16, 2 * 4]
    got = sn.params()
    for k in params:
        assert torch.equal(got[k], params[k].double()), k
    syn = sn.synapses[1]  # W2: one object, both directions
    assert "s_post +=" in syn.pre.code and "s_pre +=" in syn.post.code
    i, j = np.asarray(syn.i[:]), np.asarray(syn.j[:])
    assert np.array_equal(i // 16, j // 4)  # no synapse joins two copies


def test_user_monitors_see_the_spikes(small):
    net = Network(small)
    params = net.init_params(0)
    x, _ = random_batch(net, 1, 0)
    sn = build(small, params, x, schedule=schedules.free(small.spiking, settle=0.02, window=0.1))
    mon = b2.SpikeMonitor(sn.groups[1])
    sn.network.add(mon)
    sn.run()
    t, i = np.asarray(mon.t_[:]), np.asarray(mon.i[:])
    in_window = np.bincount(i[(t > 0.02 - 1e-4) & (t < 0.12 - 1e-4)], minlength=16)
    assert in_window.sum() > 50
    np.testing.assert_allclose(sn.rates("rho0")[1][0], in_window / (500 * 0.1), atol=1e-12)


def test_bad_inputs_are_refused(small):
    net = Network(small)
    params = net.init_params(0)
    with pytest.raises(ValueError, match=r"x must have shape"):
        build(small, params, np.zeros((2, 7)))
    with pytest.raises(ValueError, match=r"params\['W2'\] must have shape \(4, 16\)"):
        build(small, {**params, "W2": params["W2"][:3]}, np.zeros((2, 20)))
    with pytest.raises(ValueError, match="no spiking rate function|unknown learning rule"):
        build(small, params, np.zeros((1, 20)), rule="hebb")
    with pytest.raises(ValueError, match="not a whole number of steps"):
        build(small, params, np.zeros((1, 20)), schedule=schedules.free(small.spiking, 0.01, 3e-4))


# -- rates --------------------------------------------------------------------------------------


def _free_rate_error(spec, window: float, batch: int = 8) -> float:
    net = Network(spec)
    params = net.init_params(0)
    x, _ = random_batch(net, batch, 0)
    fixed = relax(net, params, x, steps=300).s
    sn = build(spec, params, x, schedule=schedules.free(spec.spiking, settle=0.2, window=window))
    sn.run()
    rates = sn.rates("rho0")[1:]
    return max(float(np.abs(a - f.numpy()).max()) for a, f in zip(rates, fixed, strict=True))


def test_free_rates_approach_the_fixed_point_as_the_window_grows(small):
    short, long = _free_rate_error(small, 0.1), _free_rate_error(small, 0.8)
    # measured: 0.018 and 0.0024; one spike in a 0.1 s window at 500 Hz is 0.02
    assert long < 0.5 * short
    assert long < 0.01


def test_a_sample_of_two_seconds_or_more_is_closed(small):
    # Brian2 ignores a run's last 0.2 ms step on a once-per-sample clock of dt >= 2 s
    # (Clock.epsilon_dt): the sample was never closed and every rate read 0
    assert closing_time(2e-4, 2.0) > b2.Clock.epsilon_dt * 2.0
    assert closing_time(2e-4, 0.15) == 2e-4
    assert _free_rate_error(small, 1.8, batch=2) < 0.01  # 0.2 + 1.8 s: measured 0.0018


def test_poisson_input_rates_near_the_fixed_point(small):
    cfg = dataclasses.replace(small.spiking, input="poisson")
    poisson = dataclasses.replace(small, spiking=cfg)
    assert _free_rate_error(poisson, 0.4, batch=4) < 0.15  # measured 0.07: Poisson input noise


# -- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", rules.RULES)
@pytest.mark.parametrize("estimator", ["one-sided", "symmetric"])
def test_spiking_ep_update_aligns_with_the_exact_gradient(small, estimator, rule):
    # 16 copies, beta 0.1, settle 0.2 s + window 0.4 s per phase (1.2 s / 1.8 s per sample);
    # measured cosines 0.991 (one-sided) and 0.999 (symmetric), both rules
    r = gradcheck(small, estimator, 0.1, rule=rule, batch=16, settle=0.2, window=0.4)
    assert r["cosine"] >= 0.9, r["per_param"]
    assert all(v["cosine"] >= 0.8 for v in r["per_param"].values())
    assert r["rate_error"] < 0.02


@pytest.mark.parametrize("rule", rules.RULES)
def test_phase_free_oscillation_rule_aligns_with_the_exact_gradient(small, rule):
    # |beta| 0.2 cos(2 pi t / 0.8 s), one period discarded, one demodulated (1.6 s); measured 0.997
    r = gradcheck(small, "oscillation", 0.2, rule=rule, batch=16, period=0.8, periods=1, warmup=1)
    assert r["cosine"] >= 0.8, r["per_param"]


def test_the_count_pairing_forms_the_endpoint_estimate_spike_by_spike(small):
    """stdp_trace = "count": each pair of a learning window's spikes is counted once, by the
    later spike (a pair within one step by the postsynaptic one), so the window's sum is the
    product of the counts: the endpoint rule's estimate to float rounding, with 1000 Hz neurons
    in lockstep and 20 ms windows too; the running trace weighs pairs by their lag instead."""
    net = Network(small)
    params = net.init_params(0)
    x, y = random_batch(net, 16, 0)
    for rate, settle, window in ((500.0, 0.3, 0.1), (1000.0, 0.055, 0.02)):
        cfg = dataclasses.replace(small.spiking, rate_max=rate)
        sched = schedules.symmetric(0.1, cfg, settle=settle, window=window)
        g = {}
        for rule, trace in (("endpoint", "running"), ("stdp", "count"), ("stdp", "running")):
            spiking = dataclasses.replace(cfg, stdp_trace=trace)
            sn = build(dataclasses.replace(small, spiking=spiking), params, x, y, sched, rule=rule)
            sn.run()
            g[rule, trace] = sn.gradient()
        endpoint = g["endpoint", "running"]
        for k, v in g["stdp", "count"].items():
            np.testing.assert_allclose(v, endpoint[k], rtol=1e-9, atol=1e-12, err_msg=k)
        lag = g["stdp", "running"]["W2"] - endpoint["W2"]
        assert float(lag.norm() / endpoint["W2"].norm()) > 0.01  # measured 0.044 and 0.17


def test_weight_changes_expressed_next_sample_train_as_the_endpoint_rule(small):
    """stdp_expressed = "next_sample": spikes transmit the weight of the sample's start while the
    rule moves w at every spike; with the count pairing, three samples of online learning end at
    the endpoint rule's weights. Expressed at once, the second nudged window sees the first one's
    changes and the weights go elsewhere."""
    net = Network(small)
    params = net.init_params(0)
    x, y = random_batch(net, 6, 0)
    x, y = x.reshape(3, 2, -1), y.reshape(3, 2, -1)  # 3 samples one after the other, 2 copies
    cfg = dataclasses.replace(small.spiking, rate_max=1000.0, stdp_trace="count")
    sched = schedules.symmetric(0.5, cfg, settle=0.055, window=0.02)
    after = {}
    for rule, expressed in (
        ("endpoint", "at_spike"),
        ("stdp", "next_sample"),
        ("stdp", "at_spike"),
    ):
        spiking = dataclasses.replace(cfg, stdp_expressed=expressed)
        spec = dataclasses.replace(small, spiking=spiking)
        sn = build(spec, params, x, y, sched, rule=rule, eta=0.5)
        sn.run()
        after[rule, expressed] = sn.params()
    endpoint = after["endpoint", "at_spike"]
    for k, v in after["stdp", "next_sample"].items():
        np.testing.assert_allclose(v, endpoint[k], rtol=1e-9, atol=1e-12, err_msg=k)
    moved = endpoint["W2"] - params["W2"]
    apart = after["stdp", "at_spike"]["W2"] - endpoint["W2"]
    assert float(apart.norm()) > 0.1 * float(moved.norm())  # measured 0.78


def test_the_count_pairing_needs_phases(small):
    with pytest.raises(ValueError, match="stdp_trace: 'count' needs a phased schedule"):
        rules.Rule("stdp", schedules.oscillation(0.2, small.spiking), trace="count")


def test_update_moves_the_weights_against_the_estimate(small):
    net = Network(small)
    params = net.init_params(0)
    x, y = random_batch(net, 1, 0)
    sched = schedules.one_sided(0.1, small.spiking, settle=0.1, window=0.2)
    sn = build(small, params, x, y, sched, eta=0.3)
    sn.run()
    g, after = sn.gradient(), sn.params()
    for k in params:
        np.testing.assert_allclose(after[k], params[k] - 0.3 * g[k], atol=1e-12, err_msg=k)
    assert float(g["W2"].abs().max()) > 0


def test_cli_gradcheck_brian2_json(capsys):
    argv = ["gradcheck", "--engine", "brian2", "--model", str(SMALL), "--estimator", "one-sided"]
    argv += ["--beta", "0.1", "--batch", "2", "--settle", "0.05", "--window", "0.05", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("model", "estimator", "beta", "reference", "cosine", "rel_error", "per_param"):
        assert key in out
    assert out["engine"] == "brian2" and out["reference"] == "implicit"
    assert set(out["per_param"]) == {"W1", "b1", "W2", "b2"}
    assert out["spikes"] > 0
    assert out["cosine"] > 0.1  # measured 0.33 with these short phases; a sign error is negative


def test_cli_gradcheck_brian2_refuses_a_rate_only_estimator(capsys):
    argv = ["gradcheck", "--engine", "brian2", "--model", str(SMALL), "--estimator", "holomorphic"]
    assert main([*argv, "--beta", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holomorphic" in err


# -- calibration ---------------------------------------------------------------------------------


def test_if_neuron_rate_is_rho(small):
    c = transfer(small, duration=1.0)
    np.testing.assert_allclose(c["measured"], c["rho"], atol=1 / 500 + 1e-9)  # one spike


def test_lif_rate_follows_its_analytic_curve_not_rho(small):
    cfg = dataclasses.replace(small.spiking, neuron="lif", refractory=0.002)
    c = transfer(dataclasses.replace(small, spiking=cfg), duration=1.0)
    assert np.abs(c["measured"] - c["predicted"]).max() < 0.05  # measured 0.022 (dt = 0.2 ms)
    assert np.abs(c["measured"] - c["rho"]).max() > 0.3


def test_fast_lowering_refuses_the_runtime_device(small):
    net = Network(small)
    with pytest.raises(ValueError, match="cpp_standalone only"):
        build(small, net.init_params(0), np.zeros((1, 20)), fast=True)


@pytest.mark.parametrize("input_", ["poisson", "poisson_frozen"])
def test_poisson_inputs_above_one_are_refused(small, input_):
    # a rate above r_max: the fast path's frozen_input lists only spikes below r_max dt
    spec = dataclasses.replace(small, spiking=dataclasses.replace(small.spiking, input=input_))
    x = np.full((1, 20), 0.5)
    x[0, 3] = 1.25
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*1\.25"):
        build(spec, Network(spec).init_params(0), x)


# -- cpp_standalone ----------------------------------------------------------------------------


SAMPLES = 3


@pytest.fixture(scope="module")
def runtime_update(small):
    """The runtime result on 3 samples in sequence (one copy), computed before any compilation."""
    net = Network(small)
    params = net.init_params(0)
    x, y = random_batch(net, SAMPLES, 0)
    b2.prefs.codegen.target = "numpy"
    sched = schedules.one_sided(0.1, small.spiking)
    sn = build(small, params, x[:, None], y[:, None], sched, eta=0.05)
    sn.run()
    return params, x, y, sn.gradient(), sn.params()


@pytest.fixture(scope="module")
def chunk(small, runtime_update):
    from spikeep.brian2.standalone import Chunk

    with Chunk(small, schedules.one_sided(0.1, small.spiking), samples=SAMPLES) as c:
        yield c


@pytest.mark.slow
def test_standalone_and_runtime_give_the_same_update(chunk, runtime_update):
    params, x, y, gradient, after = runtime_update
    out = chunk.run(x, y, params, eta=0.05)
    for k, g in gradient.items():
        np.testing.assert_allclose(out["gradient"][k], g, atol=1e-9, err_msg=k)
        np.testing.assert_allclose(out["params"][k], after[k], atol=1e-9, err_msg=k)
    assert float(gradient["W1"].abs().max()) > 0


@pytest.mark.slow
def test_standalone_chunk_reruns_with_new_data_and_weights_without_recompiling(small, chunk):
    net = Network(small)
    params = net.init_params(0)
    x, y = random_batch(net, SAMPLES, 1)
    mtime = chunk.binary_mtime
    first = chunk.run(x, y, params, eta=0.05)
    x2, y2 = random_batch(net, SAMPLES, 2)
    second = chunk.run(x2, y2, first["params"], eta=0.05)
    again = chunk.run(x, y, params, eta=0.05)
    assert chunk.binary_mtime == mtime
    for k in params:  # the same data and weights reproduce; new ones change the update
        np.testing.assert_array_equal(again["gradient"][k], first["gradient"][k])
        assert not torch.equal(second["gradient"][k], first["gradient"][k])
    leftovers = list((chunk.directory / "static_arrays").glob("init_x_t_values_*"))
    assert leftovers == []  # the run_args arrays are deleted after each run


def test_a_held_project_folder_sends_another_process_to_a_spare(tmp_path):
    """Two runs of one network at once (two seeds): the second compiles in a spare folder, not
    over the binary the first is running."""
    import subprocess
    import sys

    from spikeep.brian2.standalone import claim

    base = tmp_path / "net-0123"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; "
            "from spikeep.brian2.standalone import claim; claim(Path(sys.argv[1])); "
            "print('held', flush=True); sys.stdin.read()",
            str(base),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        folder, fd = claim(base)
        assert folder == tmp_path / "net-0123-1"
        with pytest.raises(RuntimeError, match="net-0123 is in use by another process"):
            claim(base, spare=False)
        os.close(fd)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    folder, fd = claim(base)  # the holder has ended: its folder is free again
    assert folder == base
    os.close(fd)


# -- the fast path (spikeep.brian2.kernels) against Brian2's generated code ----------------------


BIO_CHANGES = {"input": "poisson_frozen", "neuron": "lif_bio", "rate_max": 200.0}
FAST_CASES = [
    # the spiking_mnist recipe's settings: the input kernel, the spike kernel, no hidden trace
    ("symmetric-endpoint", "symmetric", "endpoint", {}),
    # the input kernel under stdp (dg = -x_prev gate), Brian2's spike queues for W2's learning
    ("symmetric-stdp", "symmetric", "stdp", {}),
    # the input kernel's dg with a constant (beta_abs) and the m, q accumulators
    ("oscillation-endpoint", "oscillation", "endpoint", {}),
    # Poisson input (rand() in the thresholder), LIF (refractory in the thresholder), stdp
    # (traces kept, Brian2's spike queues): only the device's thresholder and loop change
    ("phased-stdp-lif-poisson", "one-sided", "stdp", {"input": "poisson", "neuron": "lif"}),
    # Poisson input with the endpoint rule: W1's input spikes through the input_spikes kernel
    ("phased-endpoint-poisson", "one-sided", "endpoint", {"input": "poisson"}),
    # the spiking_mnist_bio recipe's settings: frozen Poisson input listed by frozen_input, W1's
    # spikes through input_spikes, lif_bio (refractory in its thresholder and state update)
    ("symmetric-endpoint-bio", "symmetric", "endpoint", BIO_CHANGES),
    # the same input kernel under stdp: the input's trace kept, W1 through Brian2's spike queues
    ("symmetric-stdp-bio", "symmetric", "stdp", BIO_CHANGES),
    # the count pairing (a per-step run_regularly that empties the counts between windows, the
    # postsynaptic pathway after the resets) and w_now, the weight spikes transmit
    (
        "symmetric-stdp-count",
        "symmetric",
        "stdp",
        {"stdp_trace": "count", "stdp_expressed": "next_sample"},
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "estimator,rule,changes", [c[1:] for c in FAST_CASES], ids=[c[0] for c in FAST_CASES]
)
def test_fast_chunk_gives_the_generated_codes_results(small, estimator, rule, changes):
    # measured with g++ 12 (-O3 -ffast-math -march=native): the same estimates, rates and spike
    # counts bit for bit, and weights that differ by at most one rounding (1.4e-17 in W1 of the
    # endpoint cases: -ffast-math orders the rule's expression differently in the hand-written
    # loop; bit for bit on 784-500-10, benchmarks/brian2_sample.py --code both). The tolerance
    # leaves room for rounding only: one spike more or less anywhere moves a weight by about
    # eta * 0.02 / (2 beta) = 2.5e-3 times an input.
    from spikeep.brian2.standalone import Chunk

    cfg = dataclasses.replace(small.spiking, refractory=0.002, tau_mem=0.02, **changes)
    spec = dataclasses.replace(small, spiking=cfg)
    sched = schedules.for_estimator(
        estimator, 0.2, cfg, settle=0.05, window=0.1, periods=1, warmup=1, period=0.2
    )
    net = Network(spec)
    params = net.init_params(1)
    x, y = random_batch(net, SAMPLES, 3)
    outs = {}
    for fast in (False, True):
        with Chunk(spec, sched, samples=SAMPLES, rule=rule, fast=fast) as c:
            first = c.run(x, y, params, eta=0.05)
            outs[fast] = [first, c.run(x.flip(0), y.flip(0), first["params"], eta=0.05)]
    for old, new in zip(outs[False], outs[True], strict=True):
        assert new["spikes"] == old["spikes"] > 0
        np.testing.assert_allclose(new["rates"], old["rates"], rtol=0, atol=1e-12)
        for k in params:
            np.testing.assert_allclose(new["params"][k], old["params"][k], rtol=0, atol=1e-12)
            np.testing.assert_allclose(new["gradient"][k], old["gradient"][k], rtol=0, atol=1e-12)
        assert float(new["gradient"]["W1"].abs().max()) > 0
