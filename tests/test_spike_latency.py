"""scripts/spike_latency.py: spiking test error against steps per phase, on a tiny checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import script

from spikeep import checkpoint, spec
from spikeep import protocol as proto
from spikeep.checkpoint import TrainState
from spikeep.energy import Network
from spikeep.snn import SNNConfig, phase

MODEL = """name = "latency_tiny"
activation = "hard_sigmoid"
cost = "cross_entropy"
dynamics = "prototypical"
dtype = "float32"
[init]
scheme = "glorot_uniform"
scale = 2.0
[[layers]]
name = "x"
size = 784
[[layers]]
name = "h"
size = 32
coupling = "dense"
[[layers]]
name = "y"
size = 10
coupling = "dense"
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A checkpoint of the untrained 784-32-10 network (no training needed: the script reads
    any checkpoint), with the snntorch settings of its protocol."""
    d = tmp_path_factory.mktemp("latency")
    (d / "model.toml").write_text(MODEL)
    raw = {
        "name": "latency_tiny",
        "model": str(d / "model.toml"),
        "data": {"name": "mnist-embedded", "test_subset": 100},
        "estimator": {"eval_free_steps": 50},
        "snntorch": {"tau": 3, "eval_settle": 10, "eval_window": 30},
    }
    p = proto.from_dict(raw, source=str(d / "p.toml"))
    net = Network(spec.load(d / "model.toml"))
    params = net.init_params(0)
    state = TrainState(params, {k: torch.zeros_like(v) for k, v in params.items()})
    checkpoint.save(state.to_checkpoint(p, net.spec.raw), d / "checkpoint.pt")
    return d / "checkpoint.pt", net, params


def test_the_sweep_gives_each_phase_its_own_rates(ckpt):
    _, net, params = ckpt
    lat = script("spike_latency")
    x = torch.rand(6, 784)
    config = SNNConfig(tau=3)
    cuts = lat.windows([4, 30, 12, 30], 0.25)
    assert cuts == [(1, 4), (3, 12), (8, 30)]
    for (settle, T), (rates, spikes) in zip(cuts, lat.sweep_rates(net, params, x, config, cuts)):
        direct = phase(net, params, x, config=SNNConfig(tau=3, settle=settle, window=T - settle))
        assert all(torch.equal(a, b) for a, b in zip(rates, direct.rates))
        assert spikes == pytest.approx(direct.spikes, rel=1e-6)


def test_latency_table_and_figure(ckpt, tmp_path, capsys):
    path, _, _ = ckpt
    lat = script("spike_latency")
    out_json, out_png = tmp_path / "lat.json", tmp_path / "lat.png"
    argv = [str(path), "--steps", "8", "40", "160", "--test-subset", "50"]
    assert lat.main([*argv, "--json", str(out_json), "--figure", str(out_png)]) == 0
    text = capsys.readouterr().out
    assert "rate engine" in text and "(50 free steps)" in text
    result = json.loads(out_json.read_text())
    assert result["test_images"] == 50 and result["tau"] == 3
    assert result["settle_fraction"] == pytest.approx(10 / 40)  # the run's eval_settle / phase
    rows = result["rows"]
    assert [(r["steps"], r["settle"], r["window"]) for r in rows] == [
        (8, 2, 6),
        (40, 10, 30),
        (160, 40, 120),
    ]
    spikes = [r["spikes_per_sample"] for r in rows]
    assert 0 < spikes[0] < spikes[1] < spikes[2]
    assert all(0 <= r["agreement"] <= 1 and 0 <= r["error"] <= 100 for r in rows)
    for r in rows:  # the discordant images are exactly the two errors' difference
        gap = (result["rate_error"] - r["error"]) * 50 / 100
        assert r["spikes_only_right"] - r["rates_only_right"] == pytest.approx(gap)
        assert r["spikes_only_right"] + r["rates_only_right"] <= (1 - r["agreement"]) * 50 + 1e-9
        assert r["mcnemar_p"] == lat.mcnemar_p(r["spikes_only_right"], r["rates_only_right"])
    assert rows[-1]["agreement"] >= rows[0]["agreement"]
    assert out_png.stat().st_size > 10_000


def test_mcnemar_p_is_the_exact_binomial_tail():
    lat = script("spike_latency")
    assert lat.mcnemar_p(0, 0) == 1.0
    assert lat.mcnemar_p(10, 0) == lat.mcnemar_p(0, 10) == pytest.approx(2 / 2**10)
    assert lat.mcnemar_p(3, 2) == 1.0  # 2 * P(X <= 2), X ~ B(5, 1/2), is above 1
    assert lat.mcnemar_p(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 2**10)


def test_a_network_no_neuron_realises_is_refused(tmp_path, capsys):
    (tmp_path / "model.toml").write_text(MODEL.replace('"hard_sigmoid"', '"sigmoid4"'))
    p = proto.from_dict({"name": "s", "model": str(tmp_path / "model.toml")})
    net = Network(spec.load(tmp_path / "model.toml"))
    params = net.init_params(0)
    state = TrainState(params, {k: torch.zeros_like(v) for k, v in params.items()})
    checkpoint.save(state.to_checkpoint(p, net.spec.raw), tmp_path / "c.pt")
    assert script("spike_latency").main([str(tmp_path / "c.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a hard-sigmoid activation" in err and len(err.splitlines()) == 1
