"""The engine contract: every registered engine through one loop, one registry, one table.

One parametrised test trains every registered engine on a tiny model (two epochs of three steps),
interrupts it mid-epoch, resumes it and checks the weights equal an uninterrupted run's bit for
bit; the estimator tables are checked against what each engine accepts; no module outside
``spikeep/engine.py`` matches engine names; and ``spikeep eval --engine snntorch`` runs a
rate-trained hard-sigmoid network as integrate-and-fire neurons.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import test_brian2_train
import test_snn_train
import torch
from conftest import ROOT, assert_same_run, copies_of_one_sample, interrupt

from spikeep import checkpoint, engine, spec
from spikeep import protocol as proto
from spikeep import train as train_mod
from spikeep.cli import main
from spikeep.dynamics import relax
from spikeep.energy import Network
from spikeep.plots import read_metrics
from spikeep.snn import SNNConfig, phase


def _rate(d: Path) -> Path:
    text = (ROOT / "protocols" / "quickstart.toml").read_text()
    model = (ROOT / "models" / "mlp_784_500_10_ce.toml").resolve()
    text = re.sub(r"(?m)^model = .*$", f'model = "{model}"', text)
    (d / "p.toml").write_text(text)
    return d / "p.toml"


def _snntorch(d: Path) -> Path:
    (d / "model.toml").write_text(test_snn_train.MODEL)
    (d / "p.toml").write_text(test_snn_train.PROTOCOL)
    return d / "p.toml"


# every registered engine's tiny run: the protocol file and the overrides of three steps an epoch
TINY = {
    "rate": (
        _rate,
        {
            "data.train_subset": 60,
            "train.batch_size": 20,
            "estimator.free_steps": 5,
            "estimator.nudged_steps": 2,
            "data.test_subset": 50,
        },
    ),
    "snntorch": (_snntorch, {"data.train_subset": 60, "data.test_subset": 50}),
    "brian2": (test_brian2_train.write_tiny, {}),
}


def test_every_registered_engine_has_a_tiny_run():
    assert set(TINY) == set(engine.names())


def _load(name: str, d: Path, **over) -> proto.Protocol:
    write, base = TINY[name]
    return proto.load(write(d), {**base, "train.epochs": 2, "train.checkpoint_every": 1, **over})


def _quiet(p, out, resume=False):
    return train_mod.train(p, out, resume=resume, progress=False, log=lambda m: None)


@pytest.mark.parametrize("name", list(engine.ENGINES))
def test_interrupted_and_resumed_run_reaches_the_uninterrupted_weights(name, tmp_path, monkeypatch):
    if name == "brian2":
        pytest.importorskip("brian2")
    p = _load(name, tmp_path)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _quiet(p, whole)
    cls = engine.get(name)
    real = interrupt(monkeypatch, cls, "step", 5)  # in epoch 2, at its second of three steps
    with pytest.raises(KeyboardInterrupt):
        _quiet(p, cut)
    ckpt = checkpoint.load(cut / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 1)  # the mid-epoch checkpoint
    monkeypatch.setattr(cls, "step", real)
    _quiet(p, cut, resume=True)
    a = assert_same_run(whole, cut)
    start = Network(spec.load(p.model)).init_params(p.train.seed)
    assert not torch.equal(a["W1"], start["W1"].to(a["W1"].dtype))  # it learned
    assert len(read_metrics(whole)) == 2


@pytest.mark.parametrize("name", list(engine.ENGINES))
def test_the_estimator_table_is_what_the_engine_accepts(name, tmp_path):
    """Every declared estimator builds the engine; one outside the table is refused in one line
    naming estimator.name."""
    if name == "brian2":
        pytest.importorskip("brian2")
    cls = engine.get(name)
    assert cls.name == name and cls.estimators
    for est in cls.estimators:
        over = {"estimator.name": est, "estimator.real": True}
        if est == "holomorphic":
            over["estimator.points"] = 2  # the MLP is not holomorphic: N = 2 is symmetric EP
        p = _load(name, tmp_path, **over)
        net = Network(spec.load(p.model))
        e = cls(p, net)
        e.close()
        if name == "brian2":  # its step runs the estimator's schedule: it must exist
            from spikeep.brian2 import schedules

            assert schedules.for_estimator(est, 0.5, net.spec.spiking).duration > 0
    outside = sorted(set(engine.get("rate").estimators) - set(cls.estimators))
    for est in outside[:2]:
        p = _load(name, tmp_path, **{"estimator.name": est})
        with pytest.raises(proto.ProtocolError, match=r"estimator\.name: the .* engine has"):
            cls(p, Network(spec.load(p.model)))


def test_the_rate_engines_table_is_the_estimators_module():
    from spikeep import estimators

    rate = engine.get("rate").estimators
    assert set(rate) == set(estimators.ESTIMATORS) | set(estimators.BASELINES)
    assert rate == {  # the bias orders in beta of docs/conventions.md, written out
        "one-sided": "1",
        "random-sign": "1",
        "symmetric": "2",
        "holomorphic": "N",
        "continual": "1",
        "oscillation": "K / hold (real: 2)",
        "bptt": "0 (truncated BPTT, not EP)",
    }


def test_no_module_but_the_registry_matches_engine_names():
    names = "|".join(engine.ENGINES)
    quoted = rf"""["']({names})["']"""
    matching = re.compile(rf"(==|!=|\bin)\s*\(?\s*{quoted}|{quoted}\s*(==|!=)|{{\s*{quoted}\s*:")
    # not dispatch: snntorch's input coding "rate"; the fidelity protocol's TOML sections and its
    # report's line styles, which are named after the engines (a schema and a legend, not a
    # choice of code to run)
    allowed = re.compile(r"\binput\b")
    schema = {"engine.py", "fidelity/protocol.py", "fidelity/report.py"}
    found = []
    for path in (ROOT / "spikeep").rglob("*.py"):
        if str(path.relative_to(ROOT / "spikeep")) in schema:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if matching.search(line) and not allowed.search(line):
                found.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not found, "\n".join(found)


def test_importing_spikeep_imports_no_spiking_engine():
    code = (
        "import sys, spikeep, spikeep.train, spikeep.cli; "
        "print(sorted(m for m in sys.modules if m in ('brian2', 'snntorch')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_engine_is_named():
    with pytest.raises(ValueError, match="unknown engine 'nest'"):
        engine.get("nest")


def test_a_rate_trained_hard_sigmoid_network_runs_in_spikes(tmp_path, capsys):
    """spikeep eval --engine snntorch: the rate-trained network as integrate-and-fire neurons.
    Its spike rates are the rate engine's fixed point to within the spike-count resolution
    (1 / window per unit, plus what the settling leaves), and so are its predictions."""
    p = _load(
        "snntorch",
        tmp_path,
        **{"train.engine": "rate", "train.epochs": 1, "train.checkpoint_every": 0},
    )
    _quiet(p, tmp_path / "run")
    ckpt_path = str(tmp_path / "run" / "checkpoint.pt")
    settle, window = 100, 400
    sets = [f"--set=snntorch.eval_settle={settle}", f"--set=snntorch.eval_window={window}"]
    assert main(["eval", ckpt_path, "--engine", "snntorch", *sets, "--json"]) == 0
    spiking = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", ckpt_path, "--free-steps", "200", "--json"]) == 0
    rated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert spiking["engine"] == "snntorch" and (spiking["settle"], spiking["window"]) == (
        settle,
        window,
    )
    # the state level: the same inputs, the rate fixed point against the spike counts
    net = Network(spec.load(p.model))
    params = checkpoint.load(ckpt_path)["params"]
    from spikeep import data

    ds = data.load("mnist-embedded", "test")
    x = ds.images[:200].reshape(200, -1).float() / 255
    fixed = net.dynamics.rates(net, relax(net, params, x, steps=200).s)
    counted = phase(net, params, x, config=SNNConfig(settle=settle, window=window)).rates
    gap = (counted[0] - fixed[0]).abs()
    assert gap.mean() < 1.0 / window * 2 and gap.max() < 0.1, (gap.mean(), gap.max())
    agree = net.output(params, counted).argmax(1) == net.output(params, fixed).argmax(1)
    assert agree.float().mean() >= 0.95
    assert abs(spiking["error"] - rated["error"]) <= 5.0


def _noisy_rate_engine(**estimator):
    model = ROOT / "models" / "tiny_holo.toml"
    table = {"name": "holomorphic", "points": 4, "free_steps": 30, "nudged_steps": 6}
    p = proto.from_dict({"model": str(model), "estimator": {**table, **estimator}})
    net = Network(spec.load(model))
    return engine.RateEngine(p, net), net


def test_the_rate_engine_places_the_noise_as_free_noise_and_noise_shared_say():
    """free_noise = false: the training free phase is the noise-free one (the nudged phases
    stay noisy); noise_shared = true: a batch of copies of one sample stays identical."""
    quiet_engine, net = _noisy_rate_engine()
    params = net.init_params(0, dtype=torch.float64)
    x, y = copies_of_one_sample(6, 2, 4)

    def step(eng):
        return eng.step(net, params, x, y, None, torch.Generator().manual_seed(0), 0)

    quiet = step(quiet_engine)
    noisy = step(_noisy_rate_engine(noise=0.04)[0])
    calm_free = step(_noisy_rate_engine(noise=0.04, free_noise=False)[0])
    shared = step(_noisy_rate_engine(noise=0.04, noise_shared=True)[0])
    assert all(torch.equal(a, b) for a, b in zip(calm_free.s, quiet.s, strict=True))
    assert not torch.equal(noisy.s[-1], quiet.s[-1])
    assert not torch.equal(calm_free.grads["W2"], quiet.grads["W2"])  # nudged: noisy
    assert float((noisy.s[-1][0] - noisy.s[-1][1]).abs().max()) > 1e-3  # a draw per sample
    assert float((shared.s[-1] - shared.s[-1][:1]).abs().max()) < 1e-12  # one for the batch
    assert float((shared.s[-1] - quiet.s[-1]).abs().max()) > 1e-3
