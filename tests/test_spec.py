"""Model specs: every shipped TOML loads, shapes are inferred, and bad specs are rejected with a
one-line :class:`SpecError` that names the file and the offending key."""

from __future__ import annotations

import dataclasses
import re

import pytest
from conftest import ROOT

from spikeep.spec import Coupling, Init, Layer, ModelSpec, SpecError, from_dict, load

MODELS = sorted((ROOT / "models").glob("*.toml"))


def _toml(top: str = "", *layers: str) -> str:
    """A spec's text: top-level keys, then one ``[[layers]]`` table per entry of ``layers``."""
    return top + "\n" + "".join(f"\n[[layers]]\n{body}\n" for body in layers)


X = 'name = "x"\nsize = 4'
X_IMG = 'name = "x"\nshape = [1, 8, 8]'
H = 'name = "h"\nsize = 3\ncoupling = "dense"'
Y = 'name = "y"\nsize = 2\ncoupling = "dense"'
CONV = 'name = "c"\nchannels = 4\ncoupling = { kind = "conv", kernel = 3, padding = 1 }'
CONV2 = 'name = "c2"\nchannels = 2\ncoupling = { kind = "conv", kernel = 3, padding = 1 }'


def test_models_found():
    assert ROOT / "models" / "tiny.toml" in MODELS
    assert len(MODELS) >= 8


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_model_file_loads(path):
    spec = load(path)
    assert isinstance(spec, ModelSpec)
    assert spec.source == str(path)
    assert spec.name == path.stem
    assert len(spec.layers) >= 2
    assert spec.layers[0].coupling is None
    assert all(isinstance(layer.coupling, Coupling) for layer in spec.layers[1:])
    assert all(layer.size >= 1 for layer in spec.layers)
    assert len({layer.name for layer in spec.layers}) == len(spec.layers)
    if spec.readout:
        assert spec.layers[-1].coupling.kind == "dense"
        assert spec.dynamic_layers == spec.layers[1:-1]
    else:
        assert spec.dynamic_layers == spec.layers[1:]


def test_conv_mnist_shapes():
    spec = load(ROOT / "models" / "conv_mnist.toml")
    assert [layer.shape for layer in spec.layers] == [(1, 28, 28), (32, 12, 12), (64, 4, 4), (10,)]
    assert [layer.coupling.kind for layer in spec.layers[1:]] == ["conv", "conv", "dense"]
    assert spec.layers[1].coupling == Coupling("conv", kernel=5, pool="max", pool_size=2)
    assert spec.layers[1].size == 32 * 12 * 12
    assert spec.init == Init("uniform_fan_in", 1.0, "uniform_fan_in")
    assert (spec.activation, spec.cost, spec.dtype) == ("hard_sigmoid", "mse", "float32")


def test_vgg4_cifar10_shapes():
    spec = load(ROOT / "models" / "vgg4_cifar10.toml")
    shapes = [layer.shape for layer in spec.layers]
    assert shapes == [(3, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 1, 1), (10,)]
    assert spec.layers[-2].shape == (512, 1, 1)
    assert spec.readout
    assert [layer.name for layer in spec.dynamic_layers] == ["c1", "c2", "c3", "c4"]


def test_tiny_conv_shapes():
    spec = load(ROOT / "models" / "tiny_conv.toml")
    assert [layer.shape for layer in spec.layers] == [(1, 8, 8), (4, 4, 4), (5, 2, 2), (3,)]
    assert spec.layers[1].coupling.pool == "softmax"


# (id, TOML text, substrings of the message; the first is matched with pytest.raises)
BAD = [
    ("unknown-top-key", _toml('colour = "red"', X, Y), ["top level: unknown key 'colour'"]),
    (
        "unknown-layer-key",
        _toml("", X, Y + "\nwidth = 3"),
        ["layers[1]: unknown key 'width'"],
    ),
    (
        "unknown-coupling-key",
        _toml(
            "",
            X_IMG,
            'name = "c"\nchannels = 4\ncoupling = { kind = "conv", kernel = 3, dilation = 2 }',
        ),
        ["layers[1].coupling: unknown key 'dilation'"],
    ),
    (
        "dense-coupling-with-kernel",
        _toml("", X, 'name = "y"\nsize = 2\ncoupling = { kind = "dense", kernel = 3 }'),
        ["layers[1].coupling: a dense coupling takes no ['kernel']"],
    ),
    (
        "unknown-coupling-kind",
        _toml("", X, 'name = "y"\nsize = 2\ncoupling = "recurrent"'),
        ["layers[1].coupling.kind: expected one of", "'recurrent'"],
    ),
    (
        "coupling-without-kind",
        _toml("", X_IMG, 'name = "c"\nchannels = 4\ncoupling = { kernel = 3 }'),
        ["layers[1].coupling.kind: expected one of"],
    ),
    (
        "coupling-not-a-table",
        _toml("", X, 'name = "y"\nsize = 2\ncoupling = 3'),
        ["layers[1].coupling: expected a table, got int"],
    ),
    (
        "size-string",
        _toml("", X, 'name = "y"\nsize = "ten"\ncoupling = "dense"'),
        ["layers[1].size: expected int, got 'ten'"],
    ),
    (
        "size-bool",
        _toml("", X, 'name = "y"\nsize = true\ncoupling = "dense"'),
        ["layers[1].size: expected int, got True"],
    ),
    (
        "size-zero",
        _toml("", X, 'name = "y"\nsize = 0\ncoupling = "dense"'),
        ["layers[1].size: expected an integer >= 1, got 0"],
    ),
    ("size-float", _toml("", 'name = "x"\nsize = 4.0', Y), ["layers[0].size: expected int"]),
    (
        "kernel-bool",
        _toml("", X_IMG, 'name = "c"\nchannels = 4\ncoupling = { kind = "conv", kernel = true }'),
        ["layers[1].coupling.kernel: expected int, got True"],
    ),
    (
        "padding-negative",
        _toml(
            "",
            X_IMG,
            'name = "c"\nchannels = 4\ncoupling = { kind = "conv", kernel = 3, padding = -1 }',
        ),
        ["layers[1].coupling.padding: expected an integer >= 0, got -1"],
    ),
    ("dt-string", _toml('dt = "x"', X, Y), ["dt: expected int/float, got 'x'"]),
    ("dt-bool", _toml("dt = true", X, Y), ["dt: expected int/float, got True"]),
    ("dt-too-large", _toml("dt = 2.0", X, Y), ["dt: expected a step in (0, 1]"]),
    ("dt-nan", _toml("dt = nan", X, Y), ["dt: expected a step in (0, 1]"]),
    ("name-int", _toml("name = 3", X, Y), ["name: expected str, got 3"]),
    (
        "activation",
        _toml('activation = "nope"', X, Y),
        ["activation: expected one of", "got 'nope'"],
    ),
    ("cost", _toml('cost = "hinge"', X, Y), ["cost: expected one of", "got 'hinge'"]),
    ("dynamics", _toml('dynamics = "euler"', X, Y), ["dynamics: expected one of", "got 'euler'"]),
    ("dtype", _toml('dtype = "float16"', X, Y), ["dtype: expected one of", "got 'float16'"]),
    (
        "pool",
        _toml(
            "",
            X_IMG,
            'name = "c"\nchannels = 4\ncoupling = { kind = "conv", kernel = 3, pool = "median" }',
        ),
        ["layers[1].coupling.pool: expected one of", "got 'median'"],
    ),
    ("init-unknown-key", _toml("[init]\ngain = 2.0", X, Y), ["init: unknown key 'gain'"]),
    (
        "init-scheme",
        _toml('[init]\nscheme = "he"', X, Y),
        ["init.scheme: expected one of", "got 'he'"],
    ),
    ("init-scale", _toml("[init]\nscale = 0", X, Y), ["init.scale: expected a positive number"]),
    ("init-bias", _toml('[init]\nbias = "ones"', X, Y), ["init.bias: expected one of"]),
    (
        "conv-after-dense",
        _toml("", X, H, CONV),
        ["layers[2].coupling: a conv coupling needs a [C, H, W] layer before it"],
    ),
    (
        "kernel-larger-than-input",
        _toml(
            "",
            'name = "x"\nshape = [1, 4, 4]',
            'name = "c"\nchannels = 2\ncoupling = { kind = "conv", kernel = 5 }',
            Y,
        ),
        ["layers[1].coupling: kernel 5", "leave no output"],
    ),
    (
        "pool-leaves-no-output",
        _toml(
            "",
            'name = "x"\nshape = [1, 3, 3]',
            'name = "c"\nchannels = 2\ncoupling = { kind = "conv", kernel = 3, pool = "max" }',
            Y,
        ),
        ["layers[1].coupling: kernel 3", "leave no output"],
    ),
    (
        "declared-shape-mismatch",
        _toml("", X_IMG, CONV + "\nshape = [4, 4, 4]", Y),
        ["layers[1].shape: declared [4, 4, 4] but the coupling gives [4, 8, 8]"],
    ),
    (
        "conv-shape-not-a-list",
        _toml("", X_IMG, CONV + "\nshape = 5", Y),
        ["layers[1].shape"],
    ),
    (
        "conv-shape-floats",
        _toml("", X_IMG, CONV + "\nshape = [4.0, 8, 8]", Y),
        ["layers[1].shape: expected [size] or [channels, height, width] of positive integers"],
    ),
    ("conv-with-size", _toml("", X_IMG, CONV + "\nsize = 4", Y), ["layers[1].size"]),
    (
        "conv-without-channels",
        _toml("", X_IMG, 'name = "c"\ncoupling = { kind = "conv", kernel = 3 }', Y),
        ["layers[1].channels: expected an integer >= 1, got None"],
    ),
    ("dense-with-channels", _toml("", X, Y + "\nchannels = 2"), ["layers[1].channels"]),
    (
        "dense-with-3d-shape",
        _toml("", X, 'name = "y"\nshape = [1, 2, 2]\ncoupling = "dense"'),
        ["layers[1].shape: a dense layer is flat"],
    ),
    ("bad-input-shape", _toml("", 'name = "x"\nshape = [1, 8]', Y), ["layers[0].shape"]),
    (
        "no-size-or-shape",
        _toml("", X, 'name = "y"\ncoupling = "dense"'),
        ["layers[1]: expected 'size' or 'shape'"],
    ),
    ("one-layer", _toml("", X), ["layers: expected an array of at least two"]),
    ("no-layers", _toml('name = "t"'), ["layers: expected an array of at least two"]),
    ("layer-not-a-table", "layers = [1, 2]\n", ["layers[0]: expected a table, got int"]),
    (
        "cross-entropy-conv-readout",
        _toml('cost = "cross_entropy"', X_IMG, CONV, CONV2),
        ["layers[2].coupling: the readout layer must be dense"],
    ),
    (
        "cross-entropy-no-hidden",
        _toml('cost = "cross_entropy"', X, Y),
        ["layers: a cross_entropy readout needs at least one layer"],
    ),
    (
        "missing-coupling",
        _toml("", X, 'name = "y"\nsize = 2'),
        ["layers[1].coupling: every layer after the input needs a coupling"],
    ),
    (
        "input-with-coupling",
        _toml("", X + '\ncoupling = "dense"', Y),
        ["layers[0].coupling: the input layer has no coupling"],
    ),
    (
        "duplicate-layer-name",
        _toml("", X, 'name = "x"\nsize = 2\ncoupling = "dense"'),
        ["layers[1].name: duplicate layer name 'x'"],
    ),
]


@pytest.mark.parametrize(("text", "parts"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_spec_rejected(tmp_path, text, parts):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=re.escape(parts[0])) as info:
        load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ")
    assert "\n" not in msg
    for part in parts[1:]:
        assert part in msg


def test_good_spec_text_loads(tmp_path):
    """The building blocks of BAD make a valid spec: the failures come from the edits alone."""
    path = tmp_path / "good.toml"
    path.write_text(_toml('cost = "cross_entropy"\ndt = 1', X_IMG, CONV, CONV2, H, Y))
    spec = load(path)
    assert [layer.shape for layer in spec.layers] == [(1, 8, 8), (4, 8, 8), (2, 8, 8), (3,), (2,)]
    assert spec.name == "good"
    assert spec.dt == 1.0
    assert [layer.name for layer in spec.dynamic_layers] == ["c", "c2", "h"]


def test_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(SpecError, match=re.escape(f"{path}: no such model spec file")):
        load(path)
    with pytest.raises(SpecError, match="no such model spec file"):
        load(tmp_path)  # a directory is not a spec file


def test_invalid_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\n[[layers]\nsize = 4\n')
    with pytest.raises(SpecError, match=re.escape(f"{path}: not valid TOML")) as info:
        load(path)
    assert "\n" not in str(info.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b'name = "\xff\xfe"\n')
    with pytest.raises(SpecError, match=re.escape(f"{path}: not valid TOML")):
        load(path)


def _dict(**top):
    return {
        "layers": [{"name": "x", "size": 4}, {"name": "y", "size": 2, "coupling": "dense"}],
        **top,
    }


def test_from_dict_valid():
    spec = from_dict(_dict(name="d", activation="sigmoid4"))
    assert spec.source == "<dict>"
    assert spec.name == "d"
    assert spec.layers == (Layer("x", (4,)), Layer("y", (2,), Coupling("dense")))
    assert (spec.cost, spec.dynamics, spec.dtype, spec.dt) == (
        "mse",
        "prototypical",
        "float64",
        0.5,
    )
    assert spec.init == Init()
    assert from_dict(_dict(), source="dir/net.toml").name == "net"


def test_from_dict_names_source_and_key():
    with pytest.raises(SpecError, match=re.escape("mine.toml: top level: unknown key 'bogus'")):
        from_dict(_dict(bogus=1), source="mine.toml")
    with pytest.raises(SpecError, match=re.escape("<dict>: dtype: expected one of")):
        from_dict(_dict(dtype="bfloat16"))
    with pytest.raises(SpecError, match=re.escape("<dict>: layers: expected an array")):
        from_dict({"layers": {"x": {"size": 4}}})
    with pytest.raises(SpecError, match=re.escape("<dict>: top level: expected a table, got list")):
        from_dict([])  # type: ignore[arg-type]


def test_dataclasses_frozen():
    spec = load(ROOT / "models" / "tiny_conv.toml")
    cases = [
        (spec, "name"),
        (spec, "layers"),
        (spec.layers[1], "shape"),
        (spec.layers[1].coupling, "kernel"),
        (spec.init, "scale"),
    ]
    for obj, attr in cases:
        before = getattr(obj, attr)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, attr, None)
        assert getattr(obj, attr) == before
    assert hash(spec.layers[1].coupling) == hash(Coupling("conv", 3, 1, 1, "softmax", 2))


def test_model_spec_in_code_takes_plain_tables_as_a_file_does():
    file = load(ROOT / "models" / "tiny_conv.toml")
    tables = {k: v for k, v in file.raw.items() if k not in ("name", "description", "layers")}
    spec = ModelSpec(file.name, [dict(t) for t in file.raw["layers"]], **tables)
    assert spec == dataclasses.replace(file, source="ModelSpec")  # every field, checked
    assert from_dict(spec.raw) == dataclasses.replace(file, source="<dict>")  # raw round-trips
    # Layer objects and dicts mixed; the caller's dicts are not kept
    layers = [{"name": "x", "size": 4}, Layer("h", (3,), Coupling("dense"))]
    mixed = ModelSpec("m", layers, init={"scale": 0.5})
    assert mixed.layers == (Layer("x", (4,)), Layer("h", (3,), Coupling("dense")))
    assert mixed.init == Init(scale=0.5)
    layers[0]["size"] = 9
    assert mixed.raw["layers"][0]["size"] == 4
    # built dataclasses are taken as they are
    built = ModelSpec("b", mixed.layers)
    assert built.raw == {} and built.layers == mixed.layers


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"layers": [{"size": 0}, {"size": 3, "coupling": "dense"}]}, "layers[0].size"),
        ({"layers": [{"size": 4}, {"size": 3}]}, "layers[1].coupling"),
        ({"layers": [{"size": 4}, {"size": 3, "coupling": "dense"}], "cost": "l1"}, "cost"),
        ({"layers": [{"size": 4}, {"size": 3, "coupling": "dense"}], "init": {"s": 1}}, "init"),
        ({"layers": {"size": 4}}, "layers: expected an array"),
        ({"layers": ["x", "y"]}, "layers[0]: expected a table, got str"),
        ({"layers": [{"size": 4}, {"size": 3, "coupling": "dense"}], "spiking": 3}, "spiking"),
    ],
)
def test_model_spec_in_code_names_a_bad_table(kwargs, words):
    with pytest.raises(SpecError, match=re.escape(f"ModelSpec: {words}")):
        ModelSpec("m", **kwargs)
