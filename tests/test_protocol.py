"""Protocols: every shipped file validates; bad keys, types and overrides are named."""

import re

import pytest
from conftest import ROOT

from spikeep import protocol as proto
from spikeep.energy import Network
from spikeep.spec import load as load_spec

# training protocols; fidelity_*.toml are `spikeep fidelity` studies (tests/test_fidelity.py)
PROTOCOLS = sorted(
    p for p in (ROOT / "protocols").glob("*.toml") if not p.stem.startswith("fidelity")
)


def test_protocols_are_shipped():
    names = {p.stem for p in PROTOCOLS}
    assert {
        "quickstart",
        "scellier2017_mnist_1h",
        "scellier2017_mnist_2h",
        "scellier2017_mnist_3h",
        "ernoult2019_conv_mnist",
        "laborieux2021_cifar10",
    } <= names


@pytest.mark.parametrize("path", PROTOCOLS, ids=lambda p: p.stem)
def test_every_protocol_validates_against_its_model(path):
    p = proto.load(path)
    net = Network(load_spec(p.model))
    proto.check_against_model(p, len(net.couplings))
    assert p.paper, "every protocol carries the paper's number (or says there is none)"


def _write(tmp_path, text, name="p.toml"):
    (tmp_path / "model.toml").write_text((ROOT / "models" / "tiny.toml").read_text())
    path = tmp_path / name
    path.write_text('model = "model.toml"\n' + text)
    return path


@pytest.mark.parametrize(
    "text,key",
    [
        ("colour = 1\n", "colour"),
        ("[train]\nepocs = 3\n", "train.epocs"),
        ("[train]\nepochs = -1\n", "train.epochs"),
        ("[train]\nepochs = 'ten'\n", "train.epochs"),
        ("[train]\npersistent = 1\n", "train.persistent"),
        ("[optimizer]\nlr = 'fast'\n", "optimizer.lr"),
        ("[optimizer]\nlr = [0.1, -0.2]\n", "optimizer.lr"),
        ("[optimizer]\nmomentum = 1.0\n", "optimizer.momentum"),
        ("[estimator]\nname = 'two-sided'\n", "estimator.name"),
        ("[estimator]\nname = 'bptt'\nnoise = 0.1\n", "estimator.noise"),
        ("[estimator]\nbeta = 0\n", "estimator.beta"),
        ("[estimator]\npoints = 1\n", "estimator.points"),
        ("[data]\nname = 'imagenet'\n", "data.name"),
        ("[train]\ndevice = 'tpu'\n", "train.device"),
        ("[train]\ntest_every = -1\n", "train.test_every"),
        ("[train]\nkeep_epochs = -2\n", "train.keep_epochs"),
        ("data = 3\n", "data"),
        ("[train]\nengine = 'spiking'\n", "train.engine"),
        ("[brian2]\nrule = 'hebb'\n", "brian2.rule"),
        ("[brian2]\nchunk = 0\n", "brian2.chunk"),
        ("[brian2]\nchunks = 10\n", "brian2.chunks"),
    ],
)
def test_bad_values_are_named(tmp_path, text, key):
    path = _write(tmp_path, text)
    with pytest.raises(proto.ProtocolError, match=re.escape(f"{path}: {key}")):
        proto.load(path)


def test_missing_model_and_file(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('model = "nowhere.toml"\n')
    with pytest.raises(proto.ProtocolError, match="model: no model spec"):
        proto.load(path)
    with pytest.raises(proto.ProtocolError, match="no such protocol file"):
        proto.load(tmp_path / "absent.toml")


def test_overrides_are_parsed_as_toml_and_validated(tmp_path):
    path = _write(tmp_path, "[train]\nepochs = 3\n")
    over = proto.parse_overrides(
        [
            "train.epochs=5",
            "optimizer.lr=[0.1, 0.2, 0.3]",
            "estimator.name=symmetric",
            "data.normalize=true",
        ]
    )
    p = proto.load(path, over)
    assert p.train.epochs == 5 and p.optimizer.lr == (0.1, 0.2, 0.3)
    assert p.estimator.name == "symmetric" and p.data.normalize is True
    with pytest.raises(proto.ProtocolError, match="train.epochs"):
        proto.load(path, proto.parse_overrides(["train.epochs=0.5"]))
    with pytest.raises(proto.ProtocolError, match="unknown section 'trian'"):
        proto.load(path, proto.parse_overrides(["trian.epochs=2"]))
    with pytest.raises(proto.ProtocolError, match="expected section.key=value"):
        proto.parse_overrides(["epochs"])


def test_learning_rates_must_match_the_couplings(tmp_path):
    p = proto.load(_write(tmp_path, "[optimizer]\nlr = [0.1, 0.2]\n"))
    with pytest.raises(proto.ProtocolError, match="the model has 3 couplings"):
        proto.check_against_model(p, 3)
    proto.check_against_model(proto.load(_write(tmp_path, "[optimizer]\nlr = 0.1\n")), 3)


def test_engine_defaults_to_rate_and_a_misspelling_gets_a_suggestion(tmp_path):
    p = proto.load(_write(tmp_path, ""))
    assert p.train.engine == "rate" and p.brian2.rule == "endpoint"
    assert proto.load(_write(tmp_path, "[train]\nengine = 'brian2'\n")).train.engine == "brian2"
    path = _write(tmp_path, "[train]\nengine = 'brain2'\n")
    expected = (
        "train.engine: expected one of ['rate', 'brian2', 'snntorch'], got 'brain2'; "
        "did you mean 'brian2'?"
    )
    with pytest.raises(proto.ProtocolError, match=re.escape(f"{path}: {expected}")):
        proto.load(path)
