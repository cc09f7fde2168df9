"""Rates -> spikes: a convnet trained by the rate engine runs, and fine-tunes, in spikes.

The rate engine trains ``models/snn_conv_tiny_ce.toml`` (average pooling, hard sigmoid: an
integrate-and-fire neuron's rate) on a few hundred embedded MNIST images, testing the same
weights in spikes every epoch (``[train] eval_engines = ["snntorch"]``). The snntorch engine's
spiking free phase then predicts what the rate engine predicts on at least 95% of test images at
the protocol's evaluation length (``eval_settle + eval_window`` steps), and a snntorch run started
from the rate run's parameters (``[train] init``) fine-tunes them in spikes (docs/snn.md, "Rates to
spikes").
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT

from spikeep import batches, checkpoint, data
from spikeep import protocol as proto
from spikeep import train as train_mod
from spikeep.cli import main
from spikeep.dynamics import relax
from spikeep.energy import Network
from spikeep.plots import read_metrics
from spikeep.snn import SNNConfig, phase

PROTOCOL = f"""name = "tiny_rates"
model = "{ROOT / "models" / "snn_conv_tiny_ce.toml"}"
[data]
name = "mnist-embedded"
train_subset = 400
test_subset = 200
[estimator]
name = "symmetric"
beta = 1.0
free_steps = 30
nudged_steps = 10
eval_free_steps = 40
[optimizer]
lr = [0.05, 0.05, 0.02]
momentum = 0.9
[train]
epochs = 3
batch_size = 20
eval_engines = ["snntorch"]
[snntorch]
tau = 4
settle = 20
window = 40
eval_settle = 40
eval_window = 100
"""


def _run(p, out, **kw):
    return train_mod.train(p, out, progress=False, log=kw.pop("log", lambda m: None), **kw)


@pytest.fixture(scope="module")
def rated(tmp_path_factory):
    """The protocol file and the output folder of the rate run (3 epochs, about 15 s of CPU)."""
    d = tmp_path_factory.mktemp("rates")
    (d / "p.toml").write_text(PROTOCOL)
    _run(proto.load(d / "p.toml"), d / "out")
    return d / "p.toml", d / "out"


def test_a_rate_run_tests_in_spikes_every_epoch(rated):
    _, out = rated
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert {"test_error_snntorch", "test_loss_snntorch"} <= r.keys()
        assert r["test_spikes_per_sample_snntorch"] > 0  # the spiking pass's own figures too
        assert "engine" not in r and "test_error_rate" not in r  # a rate run, tested in spikes
    assert rows[-1]["test_error"] < 50  # it learns (chance: 90%)
    assert abs(rows[-1]["test_error_snntorch"] - rows[-1]["test_error"]) <= 3


def test_spiking_predictions_agree_with_the_rate_engine(rated):
    path, out = rated
    p = proto.load(path)
    ckpt = checkpoint.load(out / "checkpoint.pt")
    net = Network(checkpoint.model_spec(ckpt))
    params = ckpt["params"]
    ds = batches.subset(data.load("mnist-embedded", "test"), 500)
    x, _ = batches.prepare_batch(net, ds.images, ds.labels, ds.classes, None, torch.float32, "cpu")
    rates = net.dynamics.rates(net, relax(net, params, x, steps=p.estimator.eval_free_steps).s)
    by_rates = net.output(params, rates).argmax(1)
    s = p.snntorch
    cfg = SNNConfig(tau=s.tau, settle=s.eval_settle, window=s.eval_window)
    spiking = phase(net, params, x, config=cfg)
    by_spikes = net.output(params, spiking.rates).argmax(1)
    agree = float((by_spikes == by_rates).float().mean())
    assert agree >= 0.95, agree  # measured: 0.984 over these 500 images
    assert spiking.spikes > 0


def test_a_spiking_run_starts_from_the_rate_run(rated, tmp_path):
    path, out = rated
    lines = []
    over = {
        "train.engine": "snntorch",
        "train.eval_engines": [],
        "train.init": str(out / "checkpoint.pt"),
        "train.epochs": 1,
        "data.train_subset": 60,
        "optimizer.lr": [0.005, 0.005, 0.002],
    }
    _run(proto.load(path, over), tmp_path, log=lines.append)
    assert any(ln.startswith(f"starting from the parameters of {out}") for ln in lines), lines
    (row,) = read_metrics(tmp_path)
    assert row["engine"] == "snntorch"
    before = read_metrics(out)[-1]
    # the rate run's weights, barely moved: the spiking test error stays near the rate run's
    assert abs(row["test_error"] - before["test_error_snntorch"]) <= 5, (row, before)
    assert abs(row["test_error_rate"] - before["test_error"]) <= 5
    a = checkpoint.load(out / "checkpoint.pt")["params"]
    b = checkpoint.load(tmp_path / "checkpoint.pt")["params"]
    assert not torch.equal(a["W1"], b["W1"])
    assert float((a["W1"] - b["W1"]).norm() / a["W1"].norm()) < 0.1


def test_init_of_another_shape_is_refused_in_one_line(rated, tmp_path, capsys):
    path, out = rated
    other = tmp_path / "other"
    model = tmp_path / "narrow.toml"  # 12 channels in c2 where the rate run had 16
    text = (ROOT / "models" / "snn_conv_tiny_ce.toml").read_text()
    model.write_text(text.replace("channels = 16", "channels = 12"))
    code = main(
        [
            "train",
            str(path),
            "--out",
            str(other),
            "--set",
            f"model={model}",
            "--set",
            f"train.init={out / 'checkpoint.pt'}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "W2 has shape [16, 8, 5, 5]" in err and "expects [12, 8, 5, 5]" in err
    code = main(["train", str(path), "--out", str(other), "--set", "train.init=nowhere.pt"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nowhere.pt: no such checkpoint" in err and len(err.splitlines()) == 1


def test_spiking_eval_of_a_run_that_tested_in_spikes(rated, capsys):
    """spikeep eval --engine snntorch builds the run's protocol on the snntorch engine, whose
    eval_engines then name the run's own engine: tested once, not refused."""
    _, out = rated
    sets = ["--set", "snntorch.eval_settle=40", "--set", "snntorch.eval_window=100"]
    assert main(["eval", str(out / "checkpoint.pt"), "--engine", "snntorch", *sets, "--json"]) == 0
    printed = capsys.readouterr()
    got = json.loads(printed.out.strip().splitlines()[-1])
    assert got["error"] == pytest.approx(read_metrics(out)[-1]["test_error_snntorch"])
    n = f"{got['images']:,} {got['data']} test images"  # announced: minutes on 10,000
    assert f"spikeep eval: {n} in spikes on the snntorch engine" in printed.err
    assert got["spikes_per_sample"] > 0


@pytest.mark.parametrize(
    "over,match",
    [
        ({"train.eval_engines": ["snntorh"]}, r"train\.eval_engines: .*did you mean 'snntorch'\?"),
        ({"train.eval_engines": [1]}, r"train\.eval_engines: expected a list of names, got \[1\]"),
    ],
)
def test_bad_eval_engines_are_refused_in_one_line(rated, over, match):
    path, _ = rated
    with pytest.raises(proto.ProtocolError, match=match) as err:
        proto.load(path, over)
    assert "\n" not in str(err.value)
