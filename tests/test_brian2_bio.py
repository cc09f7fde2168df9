"""The biological regime: the ``lif_bio`` neuron, its fitted rate ``lif_rate``, frozen Poisson input
and the ``spiking_mnist_bio`` protocol (docs/spiking.md, "A biological regime").

Brian2 runs in runtime mode (numpy target) on single neurons or a tiny network: seconds.
"""

from __future__ import annotations

import dataclasses

import brian2 as b2
import numpy as np
import pytest
import torch
from conftest import MODELS, ROOT

from spikeep import activations, engine, protocol, spec
from spikeep.brian2 import build, inputs, neurons, schedules
from spikeep.brian2.calibrate import transfer
from spikeep.energy import Network

pytestmark = pytest.mark.brian2

BIO = MODELS / "spiking_784_500_10_bio.toml"


@pytest.fixture(autouse=True)
def _numpy_target():
    b2.prefs.codegen.target = "numpy"


@pytest.fixture(scope="module")
def bio():
    return spec.load(BIO)


def test_lif_rate_values():
    rho = activations.get("lif_rate").rho
    s = torch.tensor([-1.0, -0.3, 0.0, 0.1, 0.5, 1.0, 1.3, 3.0], dtype=torch.float64)
    r = rho(s)
    assert torch.all(r[1:] > r[:-1])  # increasing
    assert 0 <= float(r[0]) < 1e-6 and float(r[-1]) == pytest.approx(1, abs=1e-9)
    # measured under fluctuations of sd 0.1 (scripts/bio_figures.py): 0.092 at s = 0 (noise lets it
    # fire at threshold), 0.644 at s = 0.5, 0.978 at s = 1
    torch.testing.assert_close(r[[2, 4, 5]], s.new_tensor([0.092, 0.644, 0.978]), atol=0.01, rtol=0)


def test_lif_rate_derivative_is_autograd_in_float64_far_out():
    # beyond tests/test_activations.py's [-3, 3]; autograd itself turns NaN below s = -40
    act = activations.get("lif_rate")
    s = torch.tensor([-20.0, -8.0, -2.5, 1.5, 4.0, 40.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(act.rho(s).sum(), s)
    torch.testing.assert_close(act.drho(s.detach()), g, rtol=1e-12, atol=1e-300)
    far = torch.tensor([-1e4, -40.0, 1e4], dtype=torch.float64)
    assert torch.isfinite(act.drho(far)).all() and torch.isfinite(act.rho(far)).all()


def test_lif_rate_brian2_expression_is_the_torch_function():
    s = np.linspace(-2, 3, 41)
    group = b2.NeuronGroup(s.size, "s : 1\nr = " + neurons.rho_expression("lif_rate") + " : 1")
    group.s = s
    expected = activations.get("lif_rate").rho(torch.from_numpy(s)).numpy()
    np.testing.assert_allclose(group.r[:], expected, rtol=0, atol=1e-14)


LEVELS = np.array([-0.2, 0.0, 0.02, 0.1, 0.3, 0.6, 0.9, 1.0, 1.5])


def test_lif_bio_rate_is_its_closed_form(bio):
    # s held constant: the Euler-step interval of neurons.lif_bio's docstring, exactly; the count
    # in 1 s can miss the last interval: one spike, 1 / 200 (measured 0.0023 over 101 levels in 2 s)
    c = transfer(bio, LEVELS, duration=1.0)
    np.testing.assert_allclose(c["measured"], c["predicted"], rtol=0, atol=1 / 200 + 1e-9)
    assert c["predicted"][0] == c["predicted"][1] == 0 and c["predicted"][-1] == 1
    assert c["measured"].max() <= 1.0  # never faster than r_max (200 Hz)


def test_lif_bio_rate_under_fluctuations_is_lif_rate(bio):
    # s fluctuating with sd 0.1 (the fit's assumption): 30 neurons x 1 s per level, standard error
    # up to about 0.006; the fit's largest error on 40 x 2 s was 0.007
    levels = np.array([-0.3, -0.1, 0.0, 0.1, 0.3, 0.6, 1.0, 1.2])
    c = transfer(bio, np.repeat(levels, 30), duration=1.0, noise=0.1, seed=1)
    measured = c["measured"].reshape(-1, 30).mean(1)
    fitted = activations.get("lif_rate").rho(torch.from_numpy(levels)).numpy()
    np.testing.assert_allclose(measured, fitted, rtol=0, atol=0.025)


def test_lif_bio_refuses_a_refractory_period_longer_than_the_interval(bio):
    cfg = dataclasses.replace(bio.spiking, refractory=0.006)
    with pytest.raises(ValueError, match="refractory < 1 / rate_max"):
        neurons.lif_bio_drive(np.zeros(1), cfg)


def _tiny(input_: str, **changes) -> spec.ModelSpec:
    data = {
        "name": "bio_tiny",
        "activation": "lif_rate",
        "cost": "mse",
        "dynamics": "alternating",
        "spiking": {
            "neuron": "lif_bio",
            "rate_max": 200.0,
            "tau_mem": 0.02,
            "refractory": 0.002,
            "tau_syn": 0.02,
            "tau_trace": 0.02,
            "dt": 2e-4,
            "input": input_,
            "settle": 0.02,
            "window": 0.03,
            **changes,
        },
        "layers": [
            {"name": "x", "size": 6},
            {"name": "h", "size": 4, "coupling": "dense"},
            {"name": "y", "size": 2, "coupling": "dense"},
        ],
    }
    return spec.from_dict(data, source="bio_tiny")


def _input_spikes(model, schedule, x, samples=1):
    net = Network(model)
    sn = build(model, net.init_params(0), np.repeat(x[None, None], samples, 0), schedule=schedule)
    mon = b2.SpikeMonitor(sn.groups[0])
    sn.network.add(mon)
    sn.run()
    t = np.round(np.asarray(mon.t / b2.second) / model.spiking.dt).astype(int)
    return t, np.asarray(mon.i[:])


def test_frozen_poisson_input_replays_one_realisation_in_every_phase():
    model = _tiny("poisson_frozen")
    schedule = schedules.symmetric(0.5, model.spiking)
    x = np.array([1.0, 0.5, 0.25, 0.0, 1.0, 0.75])
    t, i = _input_spikes(model, schedule, x, samples=2)
    steps = round(0.05 / model.spiking.dt)  # settle + window
    phases = [set(zip(t[(t // steps) == k] % steps, i[(t // steps) == k])) for k in range(6)]
    assert len(phases[0]) > 20 and all(p == phases[0] for p in phases[1:])
    assert not any(i == 3)  # x = 0 never fires
    # Poisson at r_max x within a phase: the fresh stream's realisation differs
    t2, i2 = _input_spikes(_tiny("poisson"), schedule, x)
    fresh = [set(zip(t2[(t2 // steps) == k] % steps, i2[(t2 // steps) == k])) for k in range(3)]
    assert fresh[0] != fresh[1]


def test_frozen_poisson_needs_equally_long_phases():
    model = _tiny("poisson_frozen")
    uneven = dataclasses.replace(
        schedules.symmetric(0.5, model.spiking),
        phases=(schedules.Phase(0.0, 0.02, 0.03, 0.0), schedules.Phase(0.5, 0.02, 0.05, 1.0)),
    )
    with pytest.raises(ValueError, match="replays one phase"):
        inputs.replay_length(uneven)
    assert inputs.replay_length(schedules.oscillation(0.5, model.spiking, period=0.04)) == 0.04


def test_bio_protocol_parses_and_the_brian2_engine_accepts_it():
    p = protocol.load(ROOT / "protocols" / "spiking_mnist_bio.toml")
    model = spec.load(p.model)
    cfg = model.spiking
    assert (model.activation, cfg.neuron, cfg.input) == ("lif_rate", "lif_bio", "poisson_frozen")
    assert 0.01 <= cfg.tau_mem <= 0.03 and 0.001 <= cfg.refractory <= 0.003
    assert cfg.rate_max <= 200
    eng = engine.get("brian2")(p, Network(model))
    assert eng.name == "brian2" and p.train.engine == "brian2"
