"""Phase-free learning on MNIST: ``protocols/spiking_mnist_phasefree.toml`` and the measurement
behind it (``scripts/brian2_mnist_estimate.py --estimator oscillation``).

Nothing here compiles: the protocol is parsed and handed to the brian2 engine (which checks it
before any simulation), and the script runs on a 784-8-10 network in runtime mode (numpy target).
"""

from __future__ import annotations

import dataclasses
import json

import brian2 as b2
import pytest
import torch
from conftest import ROOT, raw, script

from spikeep import engine, protocol, spec
from spikeep.brian2 import build, schedules
from spikeep.brian2.engine import _schedule
from spikeep.energy import Network
from spikeep.gradcheck import random_batch

pytestmark = pytest.mark.brian2

PHASEFREE = ROOT / "protocols" / "spiking_mnist_phasefree.toml"


@pytest.fixture(autouse=True)
def _numpy_target():
    b2.prefs.codegen.target = "numpy"


def test_phasefree_protocol_parses_and_the_brian2_engine_accepts_it():
    p = protocol.load(PHASEFREE)
    model = spec.load(p.model)
    e = engine.get("brian2")(p, Network(model))
    assert e.online and p.train.engine == "brian2" and p.train.batch_size == 1
    assert p.estimator.name == "oscillation" and p.estimator.real
    # one oscillation of the model's period per sample: warm-up + demodulated periods, no phases
    schedule = _schedule(p, model.spiking)
    assert schedule.oscillating and schedule.period == model.spiking.period
    assert (schedule.warmup, schedule.periods) == (p.estimator.warmup, p.estimator.periods)
    assert schedule.duration == pytest.approx((schedule.warmup + schedule.periods) * 0.15)
    schedule.check(model.spiking)  # whole numbers of dt
    # the model variant changes the spiking realisation only, not the network or its energy
    base = spec.load(ROOT / "models" / "spiking_784_500_10.toml")
    for field in ("layers", "activation", "cost", "dynamics", "dt", "dtype", "init"):
        assert getattr(model, field) == getattr(base, field), field
    changed = {"tau_syn": 0.01, "tau_trace": 0.01, "period": 0.1}
    assert dataclasses.replace(model.spiking, **changed) == base.spiking


def tiny_spec(period: float = 0.02) -> spec.ModelSpec:
    """The phase-free model with 8 hidden units and a short period."""
    data = raw("spiking_784_500_10_osc")
    data["name"] = "spiking_784_8_10_osc"
    data["layers"][1]["size"] = 8
    data["spiking"]["period"] = period
    return spec.from_dict(data, source="tiny-osc")


def test_estimate_script_measures_the_sample_after_another():
    # --previous: the second sample's share of the summed estimate, which with the first sample
    # run alone (the same arithmetic: the input is a current) adds up to the two-sample total
    est = script("brian2_mnist_estimate")
    model = tiny_spec()
    net = Network(model)
    params = net.init_params(0, dtype=torch.float64)
    x, y = random_batch(net, 4, 1)
    (x0, x1), (y0, y1) = x.view(2, 2, -1), y.view(2, 2, -1)
    schedule = schedules.oscillation(0.5, model.spiking, periods=1, warmup=1)
    second, rates, spikes = est.spiking_estimate(
        model, params, x1, y1, schedule, "endpoint", 0, x0, y0
    )
    first = est.spiking_estimate(model, params, x0, y0, schedule, "endpoint", 0)[0]
    both = build(model, params, torch.stack([x0, x1]), torch.stack([y0, y1]), schedule)
    both.run()
    total = both.gradient()  # averaged over the 2 copies and the 2 samples
    for k, v in total.items():
        torch.testing.assert_close(first[k] + second[k], 2 * v, rtol=1e-9, atol=1e-12)
    assert any(float(v.abs().max()) > 0 for v in second.values())
    assert [r.shape for r in rates] == [(2, 8), (2, 10)] and spikes > 0


def test_estimate_script_oscillation_json(tmp_path, capsys):
    model = tmp_path / "tiny.toml"
    text = (ROOT / "models" / "spiking_784_500_10_osc.toml").read_text()
    model.write_text(text.replace("size = 500", "size = 8"))
    argv = ["init", "--model", str(model), "--estimator", "oscillation", "--period", "0.02"]
    argv += ["--warmup", "1", "--periods", "1", "--batch", "2", "--steps", "60", "--previous"]
    assert script("brian2_mnist_estimate").main([*argv, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["estimator"], r["period"], r["warmup"], r["periods"]) == ("oscillation", 0.02, 1, 1)
    assert r["ms_per_sample"] == pytest.approx(40.0) and r["previous"]
    assert 0 <= r["informative"] <= 2
    for key in ("rate_vs_exact", "spiking_vs_exact", "spiking_vs_rate"):
        assert set(r[key]) == {"W1", "b1", "W2", "b2", "all"}
        assert all(-1.0 <= c <= 1.0 for c in r[key].values())
    assert set(r["norm_vs_exact"]) == {"W1", "b1", "W2", "b2"}
    # measured 0.95 and 0.38 (one period of two samples in spikes); a demodulation of the wrong
    # sign or phase gives a negative or near-zero cosine
    assert r["rate_vs_exact"]["all"] > 0.9 and r["spiking_vs_exact"]["all"] > 0.2


def test_estimate_script_compares_the_stdp_pairings_with_the_endpoint_rule(tmp_path, capsys):
    # --compare-rules: at learning rate 0 the count pairing is the endpoint estimate formed spike
    # by spike (float rounding), the running trace is not, and every rule sees the same spikes
    model = tmp_path / "tiny.toml"
    text = (ROOT / "models" / "spiking_784_500_10_stdp.toml").read_text()
    model.write_text(text.replace("size = 500", "size = 8"))
    argv = ["init", "--model", str(model), "--settle", "0.01", "--window", "0.01"]
    argv += ["--batch", "2", "--steps", "60", "--compare-rules", "--json"]
    assert script("brian2_mnist_estimate").main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["rule"] == "endpoint"
    rows = {(p["stdp_trace"], p["tau_trace"]): p for p in r["rules"]}
    assert set(rows) == {("running", 0.01), ("running", 0.02), ("running", 0.04), ("count", 0.01)}
    assert all(p["same_spikes"] for p in rows.values())
    count, running = rows["count", 0.01], rows["running", 0.01]
    assert max(count["relative_error"].values()) < 1e-12
    assert running["relative_error"]["W2"] > 1e-3
