"""Training with the snntorch engine (``[train] engine = "snntorch"``, spikeep/snn/engine.py).

A 784-64-10 network (hard sigmoid, cross-entropy readout) with short spiking phases (tau 4 steps,
20 + 40 steps per phase) on a few hundred embedded MNIST images: it learns, a resumed run reaches
the weights of an uninterrupted one, bad ``[snntorch]`` values and what the engine cannot train
are refused in one line, and ``spikeep eval`` reads its checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT, assert_same_run, interrupt, run_params

from spikeep import batches, checkpoint, spec
from spikeep import protocol as proto
from spikeep import train as train_mod
from spikeep.cli import main
from spikeep.energy import Network
from spikeep.plots import read_metrics
from spikeep.snn import SNNConfig, phase

MODEL = """name = "snn_tiny_mnist"
activation = "hard_sigmoid"
cost = "cross_entropy"
dynamics = "prototypical"
dtype = "float32"
[init]
scheme = "glorot_uniform"
[[layers]]
name = "x"
size = 784
[[layers]]
name = "h1"
size = 64
coupling = "dense"
[[layers]]
name = "y"
size = 10
coupling = "dense"
"""

PROTOCOL = """name = "snn_tiny"
model = "model.toml"
[data]
name = "mnist-embedded"
train_subset = 400
test_subset = 200
[estimator]
name = "symmetric"
beta = 1.0
eval_free_steps = 40
[optimizer]
lr = [0.05, 0.02]
momentum = 0.5
[train]
epochs = 2
batch_size = 20
engine = "snntorch"
[snntorch]
tau = 4
settle = 20
window = 40
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("snn_tiny")
    (d / "model.toml").write_text(MODEL)
    (d / "p.toml").write_text(PROTOCOL)
    return d / "p.toml"


def _run(p, out, **kw):
    return train_mod.train(p, out, progress=False, log=lambda m: None, **kw)


def test_training_learns_and_eval_reads_the_checkpoint(tiny, tmp_path, capsys):
    # all 2000 test images: what `spikeep eval` measures
    p = proto.load(tiny, {"data.train_subset": 1000, "data.test_subset": 0})
    summary = _run(p, tmp_path)
    rows = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2] and summary["epochs"] == 2
    keys = {"test_error_rate", "test_loss_rate", "spikes_per_sample", "ms_per_sample"}
    assert all(r["engine"] == "snntorch" and keys <= r.keys() for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    # the untrained network's spiking test error, for comparison (chance is 90%)
    net = Network(spec.load(p.model))
    params = net.init_params(p.train.seed, dtype=torch.float32)
    cfg = SNNConfig(tau=4, settle=20, window=40)
    before = train_mod.score(
        net, params, _test_set(p), lambda x: phase(net, params, x, config=cfg).rates
    )["error"]
    after = rows[-1]["test_error"]
    assert before > 60 and after < 30, (before, after)
    # spiking and rate free phases of the same weights agree
    assert abs(after - rows[-1]["test_error_rate"]) < 5
    assert main(["eval", str(tmp_path / "checkpoint.pt"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["error"] == pytest.approx(rows[-1]["test_error_rate"])


def _test_set(p):
    from spikeep import data

    return batches.subset(data.load(p.data.name, "test"), p.data.test_subset)


@pytest.mark.parametrize(
    "over",
    [
        {"estimator.name": "random-sign", "snntorch.input": "rate"},
        {"estimator.name": "oscillation", "estimator.real": True, "estimator.periods": 1},
    ],
    ids=["random-sign-rate-input", "oscillation"],
)
def test_resume_reaches_the_weights_of_an_uninterrupted_run(tiny, tmp_path, monkeypatch, over):
    over = {
        **over,
        "data.train_subset": 120,
        "data.test_subset": 40,
        "estimator.steps_per_period": 20,
        "estimator.warmup": 1,
        "train.checkpoint_every": 2,
    }
    p = proto.load(tiny, over)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _run(p, whole)
    real_step = interrupt(monkeypatch, train_mod, "_train_step", 10)  # epoch 2 of 6 batches
    with pytest.raises(KeyboardInterrupt):
        _run(p, cut)
    assert checkpoint.load(cut / "checkpoint.pt")["batch"] == 2
    monkeypatch.setattr(train_mod, "_train_step", real_step)
    _run(p, cut, resume=True)
    a = assert_same_run(whole, cut)
    a0 = proto.load(tiny, {**over, "train.seed": 1})  # another seed, other weights
    _run(a0, tmp_path / "other")
    assert not torch.equal(run_params(tmp_path / "other")["W1"], a["W1"])


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("snntorch.tau", 0.5, r"snntorch\.tau: expected a trace time constant of at least 1"),
        ("snntorch.decay", 1.5, r"snntorch\.decay: expected a number in \(0, 1\]"),
        ("snntorch.window", 0, r"snntorch\.window: expected a positive number of steps, got 0"),
        ("snntorch.settle", -1, r"snntorch\.settle: expected a non-negative integer, got -1"),
        ("snntorch.input", "poisson", r"snntorch\.input: expected one of \['current', 'rate'\]"),
        ("snntorch.tua", 4, r"snntorch\.tua: unknown key; did you mean 'tau'\?"),
        (
            "snntorch.nudged_settle",
            -1,
            r"snntorch\.nudged_settle: expected a non-negative integer number of steps, got -1",
        ),
        ("snntorch.nudged_settle", 2.5, r"snntorch\.nudged_settle: expected .*, got 2\.5"),
        (
            "snntorch.nudged_window",
            0,
            r"snntorch\.nudged_window: expected a positive number of steps, got 0",
        ),
        ("train.engine", "snntorh", r"did you mean 'snntorch'\?"),
    ],
)
def test_bad_snntorch_values_are_named_in_one_line(tiny, key, value, match):
    with pytest.raises(proto.ProtocolError, match=match) as err:
        proto.load(tiny, {key: value})
    assert "\n" not in str(err.value) and str(tiny) in str(err.value)


@pytest.mark.parametrize(
    "over,match",
    [
        ({"estimator.name": "holomorphic"}, r"estimator\.name: the snntorch engine has \["),
        ({"estimator.name": "oscillation"}, r"estimator\.real: .* set real = true"),
        ({"train.persistent": True}, r"train\.persistent: the snntorch engine has no stored"),
        (
            {"estimator.name": "oscillation", "estimator.real": True, "snntorch.nudged_settle": 0},
            r"snntorch\.nudged_settle: the snntorch engine runs no nudged phases with the osc",
        ),
        (
            {"estimator.name": "oscillation", "estimator.real": True, "snntorch.nudged_window": 9},
            r"snntorch\.nudged_window: the snntorch engine runs no nudged phases with the osc",
        ),
        ({"estimator.noise": 0.1}, r"estimator\.noise: the snntorch engine spikes are its noise"),
        (
            {"snntorch.input": "rate", "data.normalize": True},
            r"data\.normalize: the snntorch engine codes x as spike probabilities",
        ),
    ],
)
def test_what_the_engine_cannot_train_is_refused(tiny, tmp_path, over, match):
    with pytest.raises(proto.ProtocolError, match=match) as err:
        _run(proto.load(tiny, over), tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_model_no_spiking_neuron_realises_is_refused(tiny, tmp_path):
    text = MODEL.replace('"hard_sigmoid"', '"sigmoid4"')
    (tiny.parent / "sigmoid.toml").write_text(text)
    p = proto.load(tiny, {"model": "sigmoid.toml"})
    with pytest.raises(proto.ProtocolError, match=r"train\.engine: 'snntorch': .*hard-sigmoid"):
        _run(p, tmp_path)


def test_cli_exits_2_on_a_bad_snntorch_value(tiny, tmp_path, capsys):
    argv = ["train", str(tiny), "--out", str(tmp_path), "--set", "snntorch.window=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "snntorch.window" in err and len(err.splitlines()) == 1


def test_snn_protocols_validate():
    for path in sorted((ROOT / "protocols").glob("snn_*.toml")):
        # trained by the snntorch engine, or tested by it (rates -> spikes): every epoch, or once at
        # the end by the command its header gives
        p = proto.load(path)
        in_spikes = "snntorch" in (p.train.engine, *p.train.eval_engines)
        assert in_spikes or "--engine snntorch" in path.read_text(), path
        net = Network(spec.load(p.model))
        from spikeep.snn.engine import check

        check(p, net)


def test_the_engine_reads_the_nudged_phases_lengths(tiny):
    from spikeep.snn.engine import SNNEngine

    net = Network(spec.load(tiny.parent / "model.toml"))
    plain = SNNEngine(proto.load(tiny), net).config
    assert plain.nudged is plain and (plain.settle, plain.window) == (20, 40)
    over = {"snntorch.nudged_settle": 0, "snntorch.nudged_window": 30}
    cfg = SNNEngine(proto.load(tiny, over), net).config
    assert (cfg.settle, cfg.window, cfg.nudged.settle, cfg.nudged.window) == (20, 40, 0, 30)


def test_the_test_pass_has_its_own_trace_time_constant(tmp_path):
    """[snntorch] eval_tau: the test pass's traces (0: tau's); the test pass then runs as a
    protocol whose tau is eval_tau would run it, while training keeps tau. Two hidden layers, so
    that the second one's traces feed back into the first."""
    from spikeep import data
    from spikeep.snn.engine import SNNEngine

    deep = MODEL.replace(
        'name = "y"', 'name = "h2"\nsize = 32\ncoupling = "dense"\n[[layers]]\nname = "y"'
    )
    (tmp_path / "model.toml").write_text(deep)
    (tmp_path / "p.toml").write_text(PROTOCOL.replace("lr = [0.05, 0.02]", "lr = 0.05"))
    net = Network(spec.load(tmp_path / "model.toml"))
    params = net.init_params(0, dtype=torch.float32)
    full = data.load("mnist-embedded", "test")
    ds = data.Dataset(full.images[:40], full.labels[:40], full.name, full.split)

    def score(**over):
        p = proto.load(tmp_path / "p.toml", {f"snntorch.{k}": v for k, v in over.items()})
        eng = SNNEngine(p, net)
        return eng, eng._spiking_score(net, params, ds, None, (0, 1), torch.Generator())

    assert score(tau=2)[0].eval_config.tau == 2
    short, mixed = score(tau=1, eval_tau=6)
    assert (short.config.tau, short.eval_config.tau) == (1, 6)
    assert mixed == score(tau=6)[1]
    assert score(tau=1)[1] != mixed  # the traces feed back: it changes the test pass
    for bad in (0.5, -1.0):
        with pytest.raises(proto.ProtocolError, match=r"snntorch\.eval_tau: .*got") as err:
            proto.load(tmp_path / "p.toml", {"snntorch.eval_tau": bad})
        assert len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize("coding", ["current", "rate"])
def test_the_spiking_test_pass_batch_changes_no_prediction(tiny, monkeypatch, coding):
    """The test pass runs current input in batches of EVAL_BATCH: each image's spike counts are
    its own, so the error is the same as in batches of 1000 (loss and spikes to rounding);
    rate-coded input keeps batches of 1000 (its draws depend on the batch)."""
    from spikeep import data
    from spikeep.snn import engine as snn_engine

    p = proto.load(tiny, {"snntorch.input": coding, "snntorch.eval_window": 20})
    net = Network(spec.load(tiny.parent / "model.toml"))
    params = net.init_params(0, dtype=torch.float32)
    full = data.load("mnist-embedded", "test")
    ds = data.Dataset(full.images[:90], full.labels[:90], full.name, full.split)
    eng = snn_engine.SNNEngine(p, net, training=False)
    scores = {}
    for batch in (1000, 40):
        monkeypatch.setattr(snn_engine, "EVAL_BATCH", batch)
        scores[batch] = eng._spiking_score(net, params, ds, None, (0, 1), torch.Generator())
    assert scores[40]["error"] == scores[1000]["error"]
    for key in ("loss", "spikes_per_sample"):
        assert scores[40][key] == pytest.approx(scores[1000][key], rel=1e-6)
    if coding == "rate":  # one batch of 90 both times: the same draws, the same numbers
        assert scores[40] == scores[1000]
