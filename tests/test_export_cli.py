"""``spikeep export CKPT --format nir --out FILE``: every network the NIR exporter supports (dense,
unpooled stride-1 conv, squared error or the cross-entropy readout) round-trips through
``nir.read``; the rest is refused in one line with exit status 2."""

from __future__ import annotations

import pytest
import torch
from conftest import MODELS, raw

from spikeep import checkpoint, spec
from spikeep import protocol as proto
from spikeep.checkpoint import TrainState
from spikeep.cli import main
from spikeep.energy import Network
from spikeep.snn import SNNConfig, phase

nir = pytest.importorskip("nir")


def _checkpoint(tmp_path, model: dict, snntorch: dict | None = None):
    """A checkpoint of the network ``model`` (a spec table) at its initial weights (seed 0)."""
    net = Network(spec.from_dict(model, source=str(tmp_path / "model.toml")))
    params = net.init_params(0)
    p = proto.from_dict(
        {"name": "export", "model": str(MODELS / "tiny.toml"), "snntorch": snntorch or {}},
        source=str(tmp_path / "p.toml"),
    )
    state = TrainState(params, {k: torch.zeros_like(v) for k, v in params.items()})
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(state.to_checkpoint(p, model), path)
    return path, net, params


def _dense_ce() -> dict:
    m = raw("spiking_small")  # 20-16-4, hard sigmoid, mse
    m.pop("spiking", None)
    return {**m, "cost": "cross_entropy", "dynamics": "prototypical"}


def _conv_unpooled() -> dict:
    m = raw("spiking_small_conv")  # conv3 pad 1 (4 channels) -> 4
    m["layers"][1]["coupling"] = {**m["layers"][1]["coupling"], "pool": "none"}
    return m


@pytest.mark.parametrize(
    "model",
    [
        lambda: {k: v for k, v in raw("spiking_small").items() if k != "spiking"},
        _dense_ce,
        _conv_unpooled,
    ],
    ids=["dense-mse", "dense-readout", "conv-unpooled"],
)
def test_export_round_trips_through_nir_read(tmp_path, capsys, model):
    from spikeep.snn import export

    path, net, params = _checkpoint(tmp_path, model(), {"tau": 6, "decay": 0.9})
    out = tmp_path / "net.nir"
    assert main(["export", str(path), "--format", "nir", "--out", str(out)]) == 0
    said = capsys.readouterr().out.strip()
    assert said.startswith(f"{out}: ") and "LIF, decay 0.9" in said and "tau 6 steps" in said
    graph = nir.read(out, type_check=False)  # NIR's own reader: the feedback makes cycles
    names = [layer.name for layer in net.spec.dynamic_layers]
    assert all(isinstance(graph.nodes[n], nir.LIF) for n in names)
    assert all(isinstance(graph.nodes[f"{n}.trace"], nir.LI) for n in names)
    back, fields = export.from_nir(graph)
    assert fields["decay"] == pytest.approx(0.9) and fields["tau"] == pytest.approx(6.0)
    assert sorted(back) == sorted(params)
    for k in params:
        torch.testing.assert_close(back[k].to(params[k].dtype), params[k], rtol=1e-6, atol=1e-7)
    x = torch.rand(3, *net.spec.layers[0].shape, dtype=params["W1"].dtype)
    cfg = SNNConfig(decay=0.9, tau=6.0, settle=10, window=40)
    same = {k: v.to(params[k].dtype) for k, v in back.items()}
    a, b = phase(net, params, x, config=cfg), phase(net, same, x, config=cfg)
    assert all(torch.equal(u, v) for u, v in zip(a.rates, b.rates))
    if net.readout:  # the logits node: W_L r_{L-1} + b_L, read off the last trace
        i = net.n_dynamic + 1
        node = graph.nodes[f"W{i}"]
        assert isinstance(node, nir.Affine) and (f"W{i}", "output") in graph.edges
        r = a.rates[-1]
        logits = r @ torch.as_tensor(node.weight).T + torch.as_tensor(node.bias)
        torch.testing.assert_close(logits, net.logits(params, r).to(logits.dtype))


def test_flags_override_the_runs_settings(tmp_path, capsys):
    from spikeep.snn import export

    path, _, _ = _checkpoint(tmp_path, _dense_ce(), {"tau": 6})
    out = tmp_path / "if.nir"
    assert main(["export", str(path), "--out", str(out), "--tau", "3", "--decay", "1"]) == 0
    assert "IF neurons" in capsys.readouterr().out
    _, fields = export.read(out)
    assert fields == {"decay": 1.0, "tau": pytest.approx(3.0)}


@pytest.mark.parametrize(
    "model,match",
    [
        (
            lambda: raw("snn_conv_tiny_ce"),
            r"NIR export needs conv couplings of stride 1 without "
            r"pooling .* layer 'c1' .* has pool 'avg', stride 1",
        ),
        (lambda: {**_dense_ce(), "activation": "sigmoid4"}, r"needs a hard-sigmoid activation"),
    ],
    ids=["pooled-conv", "sigmoid"],
)
def test_what_nir_cannot_express_is_refused_in_one_line(tmp_path, capsys, model, match):
    import re

    path, _, _ = _checkpoint(tmp_path, model())
    out = tmp_path / "no.nir"
    assert main(["export", str(path), "--format", "nir", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("spikeep export: error: "), err
    assert re.search(match, err), err
    assert not out.exists()


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "a.nir")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    path, _, _ = _checkpoint(tmp_path, _dense_ce())
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(path), "--format", "onnx", "--out", str(tmp_path / "a")])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(path), "--out", str(tmp_path / "a"), "--decay", "1.5"])
    assert exit_.value.code == 2
    assert main(["export", str(path), "--out", str(tmp_path / "no" / "such" / "dir.nir")]) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_an_output_layer_named_y_keeps_its_neurons(tmp_path):
    from spikeep.snn import export

    net = Network(spec.load(MODELS / "spiking_small.toml"))  # layers x, h, y (mse: y is a state)
    graph = export.to_nir(net, net.init_params(0))
    assert isinstance(graph.nodes["y"], nir.IF) and isinstance(graph.nodes["output"], nir.Output)
    assert ("y.trace", "output") in graph.edges
