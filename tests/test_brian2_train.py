"""Training with the brian2 engine (``[train] engine = "brian2"``, spikeep/brian2/engine.py).

A 784-16-10 network with ``models/spiking_small.toml``'s neurons and short phases (10 ms settling
+ 10 ms window, 40 ms per one-sided sample, ``dt`` 0.5 ms) on 12 embedded MNIST images in chunks
of 4. Refusals are checked before anything compiles (fast); the runs compile one cpp_standalone
project (about 35 s the first time on two shared cores, a few seconds per run from the cache)
and are marked ``slow``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from spikeep import batches, checkpoint, data, engine, spec
from spikeep import protocol as proto
from spikeep import train as train_mod
from spikeep.brian2 import engine as b2train
from spikeep.brian2 import rules, schedules
from spikeep.cli import main
from spikeep.energy import Network
from spikeep.plots import read_metrics

pytestmark = pytest.mark.brian2

SPIKING_MNIST = ROOT / "protocols" / "spiking_mnist.toml"

PROTOCOL = """name = "tiny_brian2"
model = "model.toml"
[data]
name = "mnist-embedded"
train_subset = 12
test_subset = 8
[estimator]
name = "one-sided"
beta = 0.5
[optimizer]
lr = [0.02, 0.01]
[train]
epochs = 2
batch_size = 1
engine = "brian2"
[brian2]
chunk = 4
[paper]
note = "test only"
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The protocol file of the tiny spiking MNIST run (its model beside it)."""
    return write_tiny(tmp_path_factory.mktemp("tiny_brian2"))


def write_tiny(d: Path) -> Path:
    """Write the tiny spiking MNIST protocol and its model into ``d``; the protocol's path."""
    text = (ROOT / "models" / "spiking_small.toml").read_text()
    for old, new in [
        (r'name = "spiking_small"', 'name = "spiking_tiny_mnist"'),
        (r"size = 20\b", "size = 784"),
        (r"size = 4\b", "size = 10"),
        (r"(?m)^tau_syn = .*$", "tau_syn = 0.005"),
        (r"(?m)^tau_trace = .*$", "tau_trace = 0.005"),
        (r"(?m)^dt = 2e-4.*$", "dt = 5e-4"),
        (r"(?m)^settle = .*$", "settle = 0.01"),
        (r"(?m)^window = .*$", "window = 0.01"),
        (r"(?m)^period = .*$", "period = 0.02"),
    ]:
        text, n = re.subn(old, new, text)
        assert n == 1, old
    (d / "model.toml").write_text(text)
    (d / "p.toml").write_text(PROTOCOL)
    return d / "p.toml"


def _load(path, **over) -> proto.Protocol:
    return proto.load(path, over)


def _quiet(p, out, **kw):
    return train_mod.train(p, out, progress=False, log=lambda m: None, **kw)


def test_the_protocol_knows_the_engines_rules():
    assert proto.BRIAN2_RULES == rules.RULES


def test_the_spiking_mnist_protocol_is_one_the_brian2_engine_accepts():
    p = proto.load(SPIKING_MNIST)
    assert p.train.engine == "brian2" and p.train.batch_size == 1
    eng = engine.get("brian2")(p, Network(spec.load(p.model)))  # refuses what it cannot run
    assert eng.name == "brian2"


# -- refusals: one line, exit status 2, before anything compiles ---------------------------------


REFUSED = [
    (["train.batch_size=20"], "train.batch_size: the brian2 engine learns online"),
    (["train.persistent=true"], "train.persistent"),
    (["optimizer.momentum=0.9"], "optimizer.momentum"),
    (["estimator.name=holomorphic"], "the brian2 engine has ['one-sided'"),
    (["estimator.name=oscillation"], "estimator.real"),
    (["estimator.noise=0.1"], "estimator.noise"),
    (
        ["estimator.name=oscillation", "estimator.real=true", "estimator.hold=2"],
        "estimator.hold: the brian2 engine turns beta at every step",
    ),
    (["data.augment=true"], "data.augment"),
    (["train.device=cuda"], "runs on the CPU"),
    (["train.engine=brain2"], "did you mean 'brian2'?"),
    (["brian2.rule=hebb"], "brian2.rule: expected one of ['endpoint', 'stdp'], got 'hebb'"),
    (["brian2.chunk=13"], "brian2.chunk: 13 is larger than the 12 training examples"),
    (["brian2.eval_window=-0.1"], "brian2.eval_window: expected seconds >= 0"),
    (["brian2.eval_settle=0.01"], "brian2.eval_window: set both eval_settle and eval_window"),
    (
        ["brian2.eval_settle=0.0102", "brian2.eval_window=0.01"],
        "brian2.eval_settle: duration 0.0102 s is not a whole number of steps",
    ),
]


@pytest.mark.parametrize("sets,match", REFUSED, ids=[s[0][0] for s in REFUSED])
def test_cli_refuses_what_the_engine_cannot_train(tiny, tmp_path, capsys, sets, match):
    argv = ["train", str(tiny), "--out", str(tmp_path), *[f"--set={s}" for s in sets]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("model", ["conv_mnist.toml", "mlp_784_500_10.toml"])
def test_cli_refuses_a_model_without_spiking_neurons(tmp_path, capsys, model):
    over = f"--set=model='{ROOT / 'models' / model}'"
    assert main(["train", str(SPIKING_MNIST), over, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "needs a model with a [spiking] section" in err and err.count("\n") == 1, err


def test_cli_refuses_several_processes(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", str(tiny), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "one process, not under torchrun" in err and err.count("\n") == 1, err


def test_resume_refuses_a_checkpoint_of_the_other_engine(tiny, tmp_path, capsys):
    rate = ["--set=train.engine='rate'", "--set=train.epochs=1", "--set=train.batch_size=4"]
    assert main(["train", str(tiny), "--out", str(tmp_path), *rate]) == 0
    capsys.readouterr()
    assert main(["train", str(tiny), "--out", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "written by the 'rate' engine" in err and err.count("\n") == 1, err


# -- training runs (compile) ------------------------------------------------------------------


@pytest.mark.slow
def test_cli_train_writes_metrics_and_a_checkpoint_that_eval_and_plot_read(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(tiny), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2] and summary["epochs"] == 2
    for r in rows:
        assert r["engine"] == "brian2" and r["spikes_per_sample"] > 0
        for key in ("train_error", "test_error", "test_error_rate"):
            assert 0 <= r[key] <= 100
        assert r["loss"] > 0 and r["test_loss"] > 0 and r["test_loss_rate"] > 0
    assert summary["test_error"] == rows[-1]["test_error"]
    ckpt = checkpoint.load(out / "checkpoint.pt")
    start = train_mod.Network(train_mod.spec.load(tiny.parent / "model.toml")).init_params(0)
    assert ckpt["epoch"] == 2 and set(ckpt["params"]) == set(start)
    for k, v in ckpt["params"].items():
        assert v.shape == start[k].shape and v.dtype == torch.float64
        assert not torch.equal(v, start[k].double()), k  # the weights learned
    assert main(["eval", str(out / "checkpoint.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["engine"] == "rate" and 0 <= result["error"] <= 100
    assert main(["plot", str(out)]) == 0


@pytest.mark.slow
def test_a_test_pass_of_its_own_free_phase_and_spiking_eval(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["brian2.eval_settle=0.02", "brian2.eval_window=0.03", "train.epochs=1"]
    argv = ["train", str(tiny), "--out", str(out), "--json", *[f"--set={s}" for s in sets]]
    assert main(argv) == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    # the same compiled free phase on the same 8 test images: the same error, bit for bit
    test = batches.subset(data.load("mnist-embedded", "test"), 8)
    model = train_mod.spec.load(tiny.parent / "model.toml")
    ckpt = checkpoint.load(out / "checkpoint.pt")
    again = b2train.spiking_test(
        model, ckpt["params"], test, None, schedules.free(model.spiking, 0.02, 0.03), 4
    )
    assert again["error"] == row["test_error"] and again["loss"] == row["test_loss"]
    capsys.readouterr()
    assert main(["eval", str(out / "checkpoint.pt"), "--engine", "brian2", "--json"]) == 0
    printed = capsys.readouterr()
    result = json.loads(printed.out.strip().splitlines()[-1])
    n = f"{result['images']:,} {result['data']} test images"
    assert f"{n} in spikes on the brian2 engine" in printed.err  # announced: minutes on 10,000
    assert result["engine"] == "brian2" and 0 <= result["error"] <= 100
    assert (result["settle"], result["window"]) == (0.02, 0.03)  # the protocol's eval_*


def test_spiking_eval_refuses_bad_flags_in_one_line(tiny, tmp_path, capsys):
    out = tmp_path / "run"  # a rate-engine checkpoint of the spiking model: nothing compiles
    argv = [
        "train",
        str(tiny),
        "--out",
        str(out),
        "--set=train.engine=rate",
        "--set=train.epochs=1",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    for bad, match in [
        (["--engine", "brian2", "--noise", "0.1"], "--noise: the brian2 engine has none"),
        (["--window", "0.1"], "add --engine brian2"),
        (["--engine", "brian2", "--window", "0.0102"], "not a whole number of steps"),
    ]:
        assert main(["eval", str(out / "checkpoint.pt"), *bad]) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1 and "Traceback" not in err, err
