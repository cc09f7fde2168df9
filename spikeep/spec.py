"""Model specs: declarative networks read from TOML into frozen dataclasses.

A spec lists layers in order, the input first. Every later layer names the coupling that feeds it
from the layer before (dense, or conv with optional pooling); the energy couples each pair both ways
with the one weight. Example (``models/tiny_conv.toml`` has the full set of keys)::

    name = "tiny"
    activation = "sigmoid4"      # see spikeep.activations
    cost = "mse"                 # or "cross_entropy": the last layer becomes a readout
    dynamics = "prototypical"    # or "energy" (continuous-time gradient flow, step dt)
    dtype = "float64"

    [[layers]]
    name = "x"
    size = 6                     # or shape = [C, H, W]

    [[layers]]
    name = "h1"
    size = 8
    coupling = "dense"           # or { kind = "conv", kernel = 3, padding = 1, pool = "max" }

Every error names the file and the key, and says what was expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _toml, activations

__all__ = ["SpecError", "Coupling", "Layer", "Init", "ModelSpec", "load", "from_dict"]

COSTS = ("mse", "cross_entropy")
DYNAMICS = ("prototypical", "energy")
DTYPES = ("float32", "float64")
POOLS = ("none", "max", "avg", "softmax")
INIT_SCHEMES = ("glorot_uniform", "uniform_fan_in", "normal")
BIAS_INITS = ("zeros", "uniform_fan_in")


class SpecError(ValueError):
    """A model spec that cannot describe a network; the message names file and key."""


@dataclass(frozen=True)
class Coupling:
    """How a layer is driven by the layer before it.

    ``dense``: ``W rho(s_prev)`` (the previous layer flattened). ``conv``:
    ``pool(conv(rho(s_prev)))`` with a square ``kernel``, ``stride`` and zero ``padding``;
    ``pool`` acts on non-overlapping ``pool_size`` windows (``softmax``: the softmax-weighted
    mean, temperature 1).
    """

    kind: str = "dense"
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    pool: str = "none"
    pool_size: int = 2


@dataclass(frozen=True)
class Layer:
    """One layer: its name, its per-sample shape, and the coupling from the previous layer."""

    name: str
    shape: tuple[int, ...]
    coupling: Coupling | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Init:
    """Weight initialisation: ``scheme`` scaled by ``scale``; biases by ``bias``."""

    scheme: str = "glorot_uniform"
    scale: float = 1.0
    bias: str = "zeros"


@dataclass(frozen=True)
class ModelSpec:
    """A whole network. ``layers[0]`` is the input; with ``cost = "cross_entropy"`` the last
    layer is a readout outside the dynamics. ``dt`` is the step of the ``energy`` dynamics."""

    name: str
    layers: tuple[Layer, ...]
    activation: str = "hard_sigmoid"
    cost: str = "mse"
    dynamics: str = "prototypical"
    dt: float = 0.5
    dtype: str = "float64"
    init: Init = field(default_factory=Init)
    source: str = "<dict>"

    @property
    def readout(self) -> bool:
        """True when the last layer is a cross-entropy readout taken out of the dynamics."""
        return self.cost == "cross_entropy"

    @property
    def dynamic_layers(self) -> tuple[Layer, ...]:
        """The layers whose states relax (all but the input, and but the readout)."""
        return self.layers[1:-1] if self.readout else self.layers[1:]


def load(path: str | Path) -> ModelSpec:
    """Read and validate a model spec from a TOML file."""
    data = _toml.read(path, SpecError, "model spec")
    return from_dict(data, source=str(path))


_TOP_KEYS = {
    "name",
    "layers",
    "activation",
    "cost",
    "dynamics",
    "dt",
    "dtype",
    "init",
    "description",
}
_LAYER_KEYS = {"name", "size", "shape", "channels", "coupling"}
_COUPLING_KEYS = {"kind", "kernel", "stride", "padding", "pool", "pool_size"}
_INIT_KEYS = {"scheme", "scale", "bias"}


def from_dict(data: dict[str, Any], source: str = "<dict>") -> ModelSpec:
    """Validate a parsed TOML table into a :class:`ModelSpec`."""
    ctx = _Ctx(source)
    ctx.keys(data, _TOP_KEYS, "top level")
    name = ctx.typed(data, "name", str, "name", default=Path(source).stem)
    activation = ctx.typed(data, "activation", str, "activation", default="hard_sigmoid")
    if activation not in activations.names():
        ctx.fail("activation", f"expected one of {activations.names()}, got {activation!r}")
    cost = ctx.choice(data, "cost", COSTS, "cost", "mse")
    dynamics = ctx.choice(data, "dynamics", DYNAMICS, "dynamics", "prototypical")
    dtype = ctx.choice(data, "dtype", DTYPES, "dtype", "float64")
    dt = float(ctx.typed(data, "dt", (int, float), "dt", default=0.5))
    if not 0 < dt <= 1:
        ctx.fail("dt", f"expected a step in (0, 1], got {dt}")
    init = _init(ctx, data.get("init", {}))
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list) or len(raw_layers) < 2:
        ctx.fail("layers", "expected an array of at least two [[layers]] tables (input and output)")
    layers = _layers(ctx, raw_layers)
    if cost == "cross_entropy":
        if len(layers) < 3:
            ctx.fail("layers", "a cross_entropy readout needs at least one layer in the dynamics")
        if layers[-1].coupling.kind != "dense":
            ctx.fail(f"layers[{len(layers) - 1}].coupling", "the readout layer must be dense")
    return ModelSpec(name, layers, activation, cost, dynamics, dt, dtype, init, source)


class _Ctx:
    """Error helpers that prefix the file name."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, msg: str):
        raise SpecError(f"{self.source}: {key}: {msg}")

    def keys(self, table: Any, allowed: set[str], where: str):
        if not isinstance(table, dict):
            self.fail(where, f"expected a table, got {type(table).__name__}")
        for key in table:
            if key not in allowed:
                self.fail(where, f"unknown key {key!r}; expected one of {sorted(allowed)}")

    def typed(self, table, key, types, where, default=None):
        if key not in table:
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, types):
            names = (
                types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
            )
            self.fail(where, f"expected {names}, got {value!r}")
        return value

    def choice(self, table, key, options, where, default):
        value = self.typed(table, key, str, where, default)
        if value not in options:
            self.fail(where, f"expected one of {list(options)}, got {value!r}")
        return value

    def positive(self, table, key, where, default=None, minimum=1):
        value = self.typed(table, key, int, where, default)
        if value is None or value < minimum:
            self.fail(where, f"expected an integer >= {minimum}, got {value!r}")
        return value


def _init(ctx: _Ctx, raw: Any) -> Init:
    ctx.keys(raw, _INIT_KEYS, "init")
    scheme = ctx.choice(raw, "scheme", INIT_SCHEMES, "init.scheme", "glorot_uniform")
    scale = float(ctx.typed(raw, "scale", (int, float), "init.scale", 1.0))
    if not (math.isfinite(scale) and scale > 0):
        ctx.fail("init.scale", f"expected a positive number, got {scale}")
    bias = ctx.choice(raw, "bias", BIAS_INITS, "init.bias", "zeros")
    return Init(scheme, scale, bias)


def _layers(ctx: _Ctx, raw_layers: list) -> tuple[Layer, ...]:
    layers: list[Layer] = []
    for i, raw in enumerate(raw_layers):
        where = f"layers[{i}]"
        ctx.keys(raw, _LAYER_KEYS, where)
        name = ctx.typed(raw, "name", str, f"{where}.name", default=f"s{i}")
        if any(layer.name == name for layer in layers):
            ctx.fail(f"{where}.name", f"duplicate layer name {name!r}")
        if i == 0:
            if "coupling" in raw:
                ctx.fail(f"{where}.coupling", "the input layer has no coupling")
            layers.append(Layer(name, _declared_shape(ctx, raw, where)))
            continue
        coupling = _coupling(ctx, raw.get("coupling"), f"{where}.coupling")
        shape = _infer_shape(ctx, layers[-1].shape, coupling, raw, where)
        layers.append(Layer(name, shape, coupling))
    return tuple(layers)


def _declared_shape(ctx: _Ctx, raw: dict, where: str) -> tuple[int, ...]:
    if "shape" in raw:
        shape = raw["shape"]
        ok = isinstance(shape, list) and len(shape) in (1, 3)
        if not ok or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape
        ):
            ctx.fail(
                f"{where}.shape",
                f"expected [size] or [channels, height, width] of positive integers, got {shape!r}",
            )
        return tuple(shape)
    if "size" in raw:
        return (ctx.positive(raw, "size", f"{where}.size"),)
    ctx.fail(where, "expected 'size' or 'shape'")


def _coupling(ctx: _Ctx, raw: Any, where: str) -> Coupling:
    if raw is None:
        ctx.fail(where, "every layer after the input needs a coupling ('dense' or a conv table)")
    if isinstance(raw, str):
        raw = {"kind": raw}
    ctx.keys(raw, _COUPLING_KEYS, where)
    kind = ctx.choice(raw, "kind", ("dense", "conv"), f"{where}.kind", None)
    if kind == "dense":
        extra = set(raw) - {"kind"}
        if extra:
            ctx.fail(where, f"a dense coupling takes no {sorted(extra)}")
        return Coupling("dense")
    kernel = ctx.positive(raw, "kernel", f"{where}.kernel")
    stride = ctx.positive(raw, "stride", f"{where}.stride", default=1)
    padding = ctx.positive(raw, "padding", f"{where}.padding", default=0, minimum=0)
    pool = ctx.choice(raw, "pool", POOLS, f"{where}.pool", "none")
    pool_size = ctx.positive(raw, "pool_size", f"{where}.pool_size", default=2)
    return Coupling("conv", kernel, stride, padding, pool, pool_size)


def _infer_shape(ctx, prev: tuple[int, ...], c: Coupling, raw: dict, where: str):
    if c.kind == "dense":
        if "channels" in raw:
            ctx.fail(f"{where}.channels", "a dense layer has a 'size', not 'channels'")
        shape = _declared_shape(ctx, raw, where)
        if len(shape) != 1:
            ctx.fail(f"{where}.shape", f"a dense layer is flat, got shape {list(shape)}")
        return shape
    if len(prev) != 3:
        ctx.fail(
            f"{where}.coupling",
            f"a conv coupling needs a [C, H, W] layer before it, got shape {list(prev)}",
        )
    channels = ctx.positive(raw, "channels", f"{where}.channels")
    hw = []
    for n in prev[1:]:
        m = (n + 2 * c.padding - c.kernel) // c.stride + 1
        if c.pool != "none":
            m //= c.pool_size
        if m < 1:
            ctx.fail(
                f"{where}.coupling",
                f"kernel {c.kernel}, stride {c.stride}, padding "
                f"{c.padding}, pool {c.pool}/{c.pool_size} leave no output from a {prev} input",
            )
        hw.append(m)
    shape = (channels, *hw)
    if "shape" in raw and _declared_shape(ctx, raw, where) != shape:
        ctx.fail(f"{where}.shape", f"declared {raw['shape']} but the coupling gives {list(shape)}")
    if "size" in raw:
        ctx.fail(f"{where}.size", "a conv layer has 'channels' (its shape is inferred)")
    return shape
