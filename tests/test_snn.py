"""The snntorch spiking engine: rate approximation, phases, EP estimates against exact gradients."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import MODELS, load, setup, variant

from spikeep import estimators as rate_estimators
from spikeep.cli import main
from spikeep.dynamics import relax
from spikeep.gradcheck import cosine
from spikeep.gradcheck import gradcheck as rate_gradcheck
from spikeep.snn import SNNConfig, phase
from spikeep.snn import estimators as snn_estimators
from spikeep.snn.gradcheck import gradcheck
from spikeep.snn.neuron import V_MAX, Neuron, NeuronState
from spikeep.snn.rate import dtransfer, leaky_activation, measure, transfer
from spikeep.spec import SpecError

SMALL = ["spiking_small", "spiking_small_conv"]


# -- the rate approximation --------------------------------------------------------------------


def test_if_rate_is_the_hard_sigmoid():
    current = torch.linspace(-1.0, 2.0, 121, dtype=torch.float64)
    steps = 1000
    measured = measure(current, decay=1.0, steps=steps, settle=50)
    assert (measured - transfer(current)).abs().max() <= 2 / steps
    assert torch.equal(transfer(current), current.clamp(0, 1))


@pytest.mark.parametrize("decay", [0.99, 0.95, 0.9])
def test_leaky_rate_within_its_staircase(decay):
    current = torch.linspace(-0.5, 1.5, 201, dtype=torch.float64)
    measured = measure(current, decay=decay, steps=2000)
    assert (measured - transfer(current, decay)).abs().max() <= (1 - decay) / 2 + 5e-3


def test_leaky_rate_tends_to_the_hard_sigmoid_and_drho_is_its_derivative():
    current = torch.linspace(-0.5, 1.5, 81, dtype=torch.float64)
    assert (transfer(current, 0.99999) - current.clamp(0, 1)).abs().max() < 1e-3
    act = leaky_activation(0.9)
    s = torch.linspace(0.15, 0.95, 41, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(act.rho(s).sum(), s)
    torch.testing.assert_close(act.drho(s.detach()), g)
    assert float(dtransfer(torch.tensor([0.05]), 0.9)) == 0.0  # below 1 - b: silent


def test_membrane_floor_forgets_inhibition():
    neuron = Neuron(1.0)
    state = NeuronState(torch.zeros(3, dtype=torch.float64))
    for _ in range(200):  # strong inhibition: snntorch alone would run to -200
        _, state = neuron.step(torch.full((3,), -1.0, dtype=torch.float64), state)
    assert float(state.v.min()) == 0.0
    count = torch.zeros(3, dtype=torch.float64)
    for _ in range(100):
        z, state = neuron.step(torch.tensor([0.25, 0.5, 3.0], dtype=torch.float64), state)
        count += z
        assert 0 <= float(state.v.min()) and float(state.v.max()) <= V_MAX
    expected = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(count / 100, expected, atol=0.02, rtol=0)  # no memory of the -200


# -- phases ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SMALL)
def test_free_rates_match_the_rate_engine_fixed_point(name):
    net = load(name)
    params, x, _ = setup(net, batch=8)
    r_ref = net.dynamics.rates(net, relax(net, params, x, steps=500).s)
    errors = []
    for window in (100, 1000):
        free = phase(net, params, x, config=SNNConfig(settle=200, window=window))
        errors.append(max(float((a - b).abs().max()) for a, b in zip(free.rates, r_ref)))
        assert free.spikes > 0
    assert errors[1] <= 3 / 1000 and errors[1] < errors[0]


def test_phases_are_batched_and_pure():
    """A sample's rates do not depend on its batch, and the start state is not modified."""
    net = load("spiking_small")
    params, x, y = setup(net, batch=4)
    cfg = SNNConfig(settle=50, window=200)
    free = phase(net, params, x, config=cfg)
    v0 = [v.clone() for v in free.state.v]
    nudged = phase(net, params, x, y, 0.3, free.state, cfg)
    alone = phase(net, params, x[:1], y[:1], 0.3, phase(net, params, x[:1], config=cfg).state, cfg)
    for a, b in zip(nudged.rates, alone.rates):
        torch.testing.assert_close(a[:1], b)
    for a, b in zip(free.state.v, v0):
        assert torch.equal(a, b)


# -- EP estimates against the exact gradient ------------------------------------------------------


@pytest.mark.parametrize("name", SMALL)
def test_spiking_gradient_approaches_the_exact_gradient(name):
    """The trend with the number of time steps per phase (figures in docs/snn.md)."""
    path = str(MODELS / f"{name}.toml")
    cosines = [gradcheck(path, "one-sided", 0.1, T, batch=8)["cosine"] for T in (100, 300, 1000)]
    assert cosines[0] < cosines[1] <= cosines[2] + 1e-3
    assert cosines[2] >= 0.95


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("estimator", ["symmetric", "oscillation"])
def test_symmetric_and_oscillation(name, estimator):
    r = gradcheck(str(MODELS / f"{name}.toml"), estimator, 0.2, 300, batch=8)
    assert r["cosine"] >= 0.95
    assert r["engine"] == "snntorch" and r["bias_order"] == 2


def test_spiking_estimate_equals_the_rate_engines_estimate():
    """Same beta, same parameters: the spiking one-sided estimate is the rate engine's own."""
    net = load("spiking_small_conv")
    params, x, y = setup(net, batch=8)
    cfg = SNNConfig(settle=200, window=2000)
    spiking = snn_estimators.one_sided(net, params, x, y, 0.1, cfg)
    free = relax(net, params, x, steps=500)
    rate = rate_estimators.make("one-sided", 0.1, 500).estimate(net, params, x, y, free)
    flat = lambda g: torch.cat([v.flatten() for v in g.values()])  # noqa: E731
    assert cosine(flat(spiking.grads), flat(rate.grads)) >= 0.995
    assert set(spiking.grads) == set(params)
    assert all(spiking.grads[k].shape == params[k].shape for k in params)


def test_rate_coded_input():
    r = gradcheck(str(MODELS / "spiking_small.toml"), "symmetric", 0.2, 1000, batch=8, input="rate")
    assert r["cosine"] >= 0.95 and r["input"] == "rate"


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL)
def test_long_runs(name):
    """3000 steps: the spiking estimates reach the rate engine's own (same beta, same batch)."""
    path = str(MODELS / f"{name}.toml")
    for estimator, beta in (("one-sided", 0.1), ("symmetric", 0.2), ("oscillation", 0.2)):
        spiking = gradcheck(path, estimator, beta, 3000)["cosine"]
        options = {"real": True, "from_free": False, "steps_per_period": 1000}
        rate = rate_gradcheck(path, estimator, beta, **options)["cosine"]
        assert spiking >= 0.95 and abs(spiking - rate) <= 0.01


# -- interface -----------------------------------------------------------------------------------


def test_cli_json_has_the_rate_engines_keys(capsys):
    path = str(MODELS / "spiking_small.toml")
    code = main(
        ["gradcheck", "--engine", "snntorch", "--model", path, "--estimator", "symmetric"]
        + ["--beta", "0.2", "--time-steps", "200", "--batch", "4", "--json"]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    rate = rate_gradcheck(path, "symmetric", 0.2, batch=4, free_steps=50, nudged_steps=50)
    assert set(rate) <= set(out)
    assert out["engine"] == "snntorch" and out["time_steps"] == 200


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"decay": 0.0}, "decay must be a number in"),
        ({"decay": 1.5}, "decay must be a number in"),
        ({"tau": 0.5}, "tau must be"),
        ({"settle": -1}, "settle must be"),
        ({"window": 0}, "window must be"),
        ({"input": "poisson"}, "input must be one of"),
        ({"nudged_settle": -1}, r"nudged_settle must be an integer number of steps >= 0, or None"),
        ({"nudged_window": 0}, r"nudged_window must be an integer number of steps >= 1, or None"),
        ({"nudged_window": 2.0}, r"nudged_window must be .*, got 2\.0"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SNNConfig(**kwargs)


def test_bad_input():
    net = load("spiking_small")
    params, x, y = setup(net, batch=2)
    with pytest.raises(ValueError, match="must lie in"):
        phase(net, params, 2 * x + 0.5, config=SNNConfig(input="rate", window=5))
    with pytest.raises(ValueError, match="needs targets y"):
        phase(net, params, x, beta=0.1, config=SNNConfig(window=5))
    with pytest.raises(ValueError, match="beta must be"):
        snn_estimators.one_sided(net, params, x, y, 0.0, SNNConfig(window=5))
    with pytest.raises(SpecError, match="prototypical fixed point"):  # its [spiking] section
        variant("spiking_small", activation="hard_sigmoid_half")
    conv_half = variant("spiking_small_conv", activation="hard_sigmoid_half")  # no [spiking]
    conv_params, conv_x, _ = setup(conv_half, batch=2)
    with pytest.raises(ValueError, match="prototypical fixed point"):
        phase(conv_half, conv_params, conv_x, config=SNNConfig(window=5))
    # accepted with the prototypical dynamics (current s / 2): the same fixed point as the rates
    half = variant("spiking_small", activation="hard_sigmoid_half", dynamics="prototypical")
    r_ref = half.dynamics.rates(half, relax(half, params, x, steps=500).s)
    free = phase(half, params, x, config=SNNConfig(settle=200, window=1000))
    assert max(float((a - b).abs().max()) for a, b in zip(free.rates, r_ref)) <= 3 / 1000
    variant("spiking_small", activation="hard_sigmoid_half", dynamics="alternating")  # same point
    tiny = load("tiny")  # sigmoid4: no integrate-and-fire neuron fires at that rate
    with pytest.raises(ValueError, match="hard-sigmoid activation"):
        phase(tiny, *setup(tiny)[:2], config=SNNConfig(window=5))
    with pytest.raises(ValueError, match="unknown snntorch estimator"):
        gradcheck(str(MODELS / "spiking_small.toml"), "holomorphic", 0.1)
    with pytest.raises(ValueError, match="time_steps"):
        gradcheck(str(MODELS / "spiking_small.toml"), "one-sided", 0.1, 3)
    with pytest.raises(ValueError, match="decay must be"):
        Neuron(decay=2)
    with pytest.raises(ValueError, match="decay must be"):
        transfer(torch.zeros(1), decay=-1)


def test_cli_bad_values_exit_2(capsys):
    path = str(MODELS / "spiking_small.toml")
    base = ["gradcheck", "--engine", "snntorch", "--model", path, "--beta", "0.1"]
    assert main([*base, "--estimator", "continual"]) == 2
    assert "the snntorch engine has" in capsys.readouterr().err
    assert (
        main(
            ["gradcheck", "--engine", "snntorch", "--model", str(MODELS / "tiny.toml")]
            + ["--beta", "0.1", "--estimator", "one-sided"]
        )
        == 2
    )
    assert "hard-sigmoid" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--estimator", "one-sided", "--tau", "0"])
    assert exit_.value.code == 2


# -- NIR export ----------------------------------------------------------------------------------


@pytest.mark.parametrize("decay", [1.0, 0.95])
def test_nir_round_trip(tmp_path, decay):
    pytest.importorskip("nir")
    from spikeep.snn import export

    net = load("spiking_small")
    params, x, _ = setup(net, batch=4)
    cfg = SNNConfig(decay=decay, tau=7.0, settle=20, window=100)
    path = tmp_path / "spiking_small.nir"
    export.write(path, net, params, cfg)
    back, fields = export.read(path)
    assert fields["decay"] == pytest.approx(decay) and fields["tau"] == pytest.approx(7.0)
    for k in params:
        torch.testing.assert_close(back[k], params[k], rtol=0, atol=1e-15)
    again = SNNConfig(fields["decay"], fields["tau"], cfg.settle, cfg.window)
    for a, b in zip(
        phase(net, params, x, config=cfg).rates, phase(net, back, x, config=again).rates
    ):
        torch.testing.assert_close(a, b)


def _graph_currents(graph, x, r):
    """The current into every neuron node of a NIR graph: the sum over its incoming edges of
    the edge's node (Affine, Linear or Conv2d) applied to its source (the input ``x`` or a
    layer's trace, here the rates ``r`` reshaped to the graph's shapes)."""
    import nir
    import numpy as np

    meta = graph.metadata["spikeep"]
    layers = [str(n) for n in meta["layers"]]
    value = {"x": x}
    for name, ri, shape in zip(layers, r, meta["nir_shape"], strict=True):
        value[f"{name}.trace"] = ri.reshape(ri.shape[0], *shape)
    into = {name: 0 for name in layers}
    for src, op in graph.edges:
        node = graph.nodes[op]
        if op in into or src not in value or isinstance(node, nir.Output):
            continue
        (target,) = [t for s, t in graph.edges if s == op]
        v = value[src]
        w = torch.as_tensor(np.asarray(node.weight))
        if isinstance(node, nir.Conv2d):
            pad = tuple(int(p) for p in np.broadcast_to(node.padding, (2,)))
            out = torch.nn.functional.conv2d(v, w, torch.as_tensor(node.bias), padding=pad)
        else:
            out = v @ w.T + (torch.as_tensor(node.bias) if isinstance(node, nir.Affine) else 0)
        into[target] = into[target] + out
    return [into[name] for name in layers]


def test_nir_conv_graph_computes_the_engines_currents(tmp_path):
    nir = pytest.importorskip("nir")
    from spikeep.snn import export
    from spikeep.snn.phases import gain

    net = variant("spiking_small_conv", layers={1: {"pool": "none"}})  # conv3 pad 1, then dense
    params, x, _ = setup(net, batch=3)
    graph = export.to_nir(net, params, SNNConfig(tau=5.0))
    assert isinstance(graph.nodes["W1"], nir.Conv2d) and isinstance(graph.nodes["W2.T"], nir.Conv2d)
    g = torch.Generator().manual_seed(0)
    r = tuple(
        torch.rand(3, *layer.shape, generator=g, dtype=x.dtype) for layer in net.spec.dynamic_layers
    )
    expected = net.dphi(params, r, net.static_drive(params, x), None, 0.0)
    for got, want in zip(_graph_currents(graph, x, r), expected, strict=True):
        torch.testing.assert_close(got.reshape(want.shape), gain(net) * want, rtol=0, atol=1e-12)
    path = tmp_path / "conv.nir"
    export.write(path, net, params, SNNConfig(tau=5.0))
    back, fields = export.read(path)
    assert fields["tau"] == pytest.approx(5.0)
    for k in params:
        torch.testing.assert_close(back[k], params[k], rtol=0, atol=1e-15)
    cfg = SNNConfig(tau=5.0, settle=10, window=50)
    for a, b in zip(phase(net, params, x, config=cfg).rates, phase(net, back, x, config=cfg).rates):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "layers,match",
    [
        (None, "pool 'max', stride 1"),
        ({1: {"pool": "avg"}}, "pool 'avg', stride 1"),
        ({1: {"pool": "none", "stride": 2}}, "pool 'none', stride 2"),
    ],
)
def test_nir_refuses_conv_feedback_it_cannot_express(layers, match):
    pytest.importorskip("nir")
    from spikeep.snn import export

    net = variant("spiking_small_conv", layers=layers)
    with pytest.raises(
        ValueError, match=r"NIR export needs conv couplings of stride 1 without pooling.*" + match
    ) as err:
        export.to_nir(net, net.init_params(0))
    assert "\n" not in str(err.value)


def test_nudged_phases_take_their_own_settle_and_window():
    """Unset (or equal to settle and window), the nudged phases are the free phase's length, bit
    for bit; nudged_settle = 0 counts from the free state on, as phases composed by hand."""
    net = load("spiking_small")
    params, x, y = setup(net, batch=3, dtype=torch.float32)
    cfg = SNNConfig(tau=4, settle=12, window=20)
    same = SNNConfig(tau=4, settle=12, window=20, nudged_settle=12, nudged_window=20)
    short = SNNConfig(tau=4, settle=12, window=20, nudged_settle=0, nudged_window=15)
    assert cfg.nudged is cfg and short.nudged == SNNConfig(tau=4, settle=0, window=15)
    grads = {c: snn_estimators.symmetric(net, params, x, y, 0.5, c).grads for c in (cfg, same)}
    assert all(torch.equal(grads[cfg][k], grads[same][k]) for k in params)
    free = phase(net, params, x, config=short)
    nudged = [phase(net, params, x, y, b, free.state, short.nudged) for b in (0.5, -0.5)]
    points = [(nudged[0].rates, 0.5, 1.0), (nudged[1].rates, -0.5, -1.0)]
    by_hand = net.dF_dtheta(params, x, y, points)
    est = snn_estimators.symmetric(net, params, x, y, 0.5, short)
    assert all(torch.equal(est.grads[k], by_hand[k]) for k in params)
    assert est.spikes == free.spikes + nudged[0].spikes + nudged[1].spikes
    assert not torch.equal(est.grads["W1"], grads[cfg]["W1"])
    one = snn_estimators.one_sided(net, params, x, y, 0.5, short)
    points = [(nudged[0].rates, 0.5, 2.0), (free.rates, 0.0, -2.0)]
    assert all(torch.equal(one.grads[k], g) for k, g in net.dF_dtheta(params, x, y, points).items())


def test_spike_counts_do_not_depend_on_the_batch_bit_for_bit():
    """What lets the spiking test pass choose its batch (spikeep.snn.engine.EVAL_BATCH)."""
    net = variant("snn_conv_tiny_ce", activation="hard_sigmoid_half", dynamics="prototypical")
    params, _, _ = setup(net, batch=1, dtype=torch.float32)
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    cfg = SNNConfig(tau=4, settle=10, window=20)
    whole = phase(net, params, x, config=cfg).rates
    parts = [phase(net, params, x[i : i + 2], config=cfg).rates for i in (0, 2, 4)]
    assert all(torch.equal(w, torch.cat(p)) for w, p in zip(whole, zip(*parts), strict=True))
