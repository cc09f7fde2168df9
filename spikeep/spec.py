"""Model specs: declarative networks read from TOML into frozen dataclasses.

A spec lists layers in order, the input first. Every later layer names the coupling that feeds it
from the layer before (dense, or conv with optional pooling); the energy couples each pair both ways
with the one weight. Example (``models/tiny_conv.toml`` has the full set of keys)::

    name = "tiny"
    activation = "sigmoid4"      # see spikeep.activations
    cost = "mse"                 # or "cross_entropy": the last layer becomes a readout
    dynamics = "prototypical"    # or "alternating" (half the layers at a time), or "energy"
                                 # (continuous-time gradient flow, step dt)
    dtype = "float64"

    [[layers]]
    name = "x"
    size = 6                     # or shape = [C, H, W]

    [[layers]]
    name = "h1"
    size = 8
    coupling = "dense"           # or { kind = "conv", kernel = 3, padding = 1, pool = "max" }

    [spiking]                    # optional: the Brian2 engine (docs/spiking.md); times in seconds
    neuron = "if"                # "if" (non-leaky) or "lif"
    rate_max = 500.0             # Hz: the rate at rho = 1
    tau_syn = 0.02               # synaptic current (the state s) time constant

Every error names the file and the key, and says what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _toml, activations

__all__ = ["SpecError", "Coupling", "Layer", "Init", "Spiking", "ModelSpec", "load", "from_dict"]

COSTS = ("mse", "cross_entropy")
DYNAMICS = ("prototypical", "alternating", "energy")
DTYPES = ("float32", "float64")
POOLS = ("none", "max", "avg", "softmax")
INIT_SCHEMES = ("glorot_uniform", "uniform_fan_in", "normal")
BIAS_INITS = ("zeros", "uniform_fan_in")
NEURONS = ("if", "lif", "lif_bio")
SPIKING_ACTIVATIONS = ("hard_sigmoid", "hard_sigmoid_half", "sigmoid4", "holotanh", "lif_rate")
SPIKING_INPUTS = ("poisson", "current", "poisson_frozen")
#: The trace the STDP-like rule pairs a spike with (Spiking.stdp_trace).
STDP_TRACES = ("running", "count")
#: When the STDP-like rule's weight changes reach transmission (Spiking.stdp_expressed).
STDP_EXPRESSED = ("at_spike", "next_sample")


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
class Spiking:
    """The spiking realisation of the network (the Brian2 engine, :mod:`spikeep.brian2`).

    Times in seconds, rates in Hz. A neuron's synaptic current is its state ``s``
    (``tau_syn ds/dt = -s + W r + b + teaching``, each presynaptic spike adding
    ``W / (rate_max tau_syn)``); ``neuron = "if"`` integrates ``dv/dt = rate_max rho(s)`` and fires
    at ``v > 1`` with subtractive reset, so its rate is exactly ``rate_max rho(s)``; ``"lif"`` adds
    a leak ``-v / tau_mem`` and a ``refractory`` period (its rate only approximates ``rho``: measure
    it with :mod:`spikeep.brian2.calibrate`). ``trace`` (``tau_trace``) filters each neuron's spikes
    into ``r ~ rho(s)``: the output's teaching current ``beta (y - r)`` and the STDP-like rule read
    it. ``input``: the input ``x`` as Poisson spike trains at ``rate_max x``, or as the constant
    current ``W_1 x``. ``settle`` and ``window``: each phase settles, then averages its rates over
    the window; ``period``: the phase-free rule's oscillation period. ``stdp_trace``: what the
    STDP-like rule pairs each spike with: ``"running"`` (the other neuron's trace ``r``) or
    ``"count"`` (the other neuron's spikes so far in the current learning window; docs/spiking.md).
    ``stdp_expressed``:
    when the STDP-like rule's weight changes reach transmission: ``"at_spike"`` (at once) or
    ``"next_sample"`` (spikes transmit the weight of the sample's start).
    """

    neuron: str = "if"
    rate_max: float = 500.0
    tau_syn: float = 0.02
    tau_trace: float = 0.02
    tau_mem: float = 0.02
    refractory: float = 0.0
    dt: float = 1e-4
    input: str = "current"
    settle: float = 0.2
    window: float = 0.4
    period: float = 0.2
    stdp_trace: str = "running"
    stdp_expressed: str = "at_spike"


@dataclass(frozen=True)
class ModelSpec:
    """A whole network. ``layers[0]`` is the input; with ``cost = "cross_entropy"`` the last
    layer is a readout outside the dynamics. ``dt`` is the step of the ``energy`` dynamics.

    Built in code, it takes the model file's tables as plain dicts, checked as a file's are
    (:func:`from_dict`; a :class:`SpecError` names the bad key) and kept as ``raw``, so a
    checkpoint stores the spec::

        ModelSpec("mlp", [{"size": 784}, {"size": 500, "coupling": "dense"},
                          {"size": 10, "coupling": "dense"}], cost="cross_entropy")

    ``layers`` as :class:`Layer` objects (a tuple), ``init`` an :class:`Init` and ``spiking`` a
    :class:`Spiking` or None are taken as they are.
    """

    name: str
    layers: tuple[Layer, ...]
    activation: str = "hard_sigmoid"
    cost: str = "mse"
    dynamics: str = "prototypical"
    dt: float = 0.5
    dtype: str = "float64"
    init: Init = field(default_factory=Init)
    source: str = "<dict>"
    spiking: Spiking | None = None
    # the parsed table it was read from (stored in checkpoints, so a run needs no file to go on)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        built = (
            isinstance(self.layers, tuple)
            and all(isinstance(layer, Layer) for layer in self.layers)
            and isinstance(self.init, Init)
            and (self.spiking is None or isinstance(self.spiking, Spiking))
        )
        if built:
            return
        table = {
            "name": self.name,
            "layers": (
                [_layer_table(x) if isinstance(x, Layer) else x for x in self.layers]
                if isinstance(self.layers, (list, tuple))
                else self.layers
            ),
            "activation": self.activation,
            "cost": self.cost,
            "dynamics": self.dynamics,
            "dt": self.dt,
            "dtype": self.dtype,
            "init": _table(self.init),
        }
        if self.spiking is not None:
            table["spiking"] = _table(self.spiking)
        source = "ModelSpec" if self.source == "<dict>" else self.source
        checked = from_dict(copy.deepcopy(table), source)  # the caller's dicts stay theirs
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, getattr(checked, f.name))

    @property
    def readout(self) -> bool:
        """True when the last layer is a cross-entropy readout taken out of the dynamics."""
        return self.cost == "cross_entropy"

    @property
    def dynamic_layers(self) -> tuple[Layer, ...]:
        """The layers whose states relax (all but the input, and but the readout)."""
        return self.layers[1:-1] if self.readout else self.layers[1:]


def _table(x: Any) -> Any:
    """A dataclass (an :class:`Init`, a :class:`Spiking`) as its table; anything else as it is."""
    return dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x


def _layer_table(layer: Layer) -> dict:
    """A :class:`Layer` as its ``[[layers]]`` table."""
    c = layer.coupling
    if c is None:
        return {"name": layer.name, "shape": list(layer.shape)}
    if c.kind == "dense":
        return {"name": layer.name, "shape": list(layer.shape), "coupling": "dense"}
    return {"name": layer.name, "channels": layer.shape[0], "coupling": dataclasses.asdict(c)}


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
    "spiking",
}
_LAYER_KEYS = {"name", "size", "shape", "channels", "coupling"}
_COUPLING_KEYS = {"kind", "kernel", "stride", "padding", "pool", "pool_size"}
_INIT_KEYS = {"scheme", "scale", "bias"}
_SPIKING_KEYS = {f.name for f in dataclasses.fields(Spiking)}


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
    spiking = None
    if "spiking" in data:
        spiking = _spiking(ctx, data["spiking"])
        _check_spiking_network(ctx, layers, cost, activation, dynamics)
    return ModelSpec(
        name, layers, activation, cost, dynamics, dt, dtype, init, source, spiking=spiking, raw=data
    )


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
                self.fail(where, _toml.unknown(key, allowed, named=True))

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
            self.fail(where, _toml.not_a_choice(value, options))
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


def _spiking(ctx: _Ctx, raw: Any) -> Spiking:
    ctx.keys(raw, _SPIKING_KEYS, "spiking")
    default = Spiking()
    neuron = ctx.choice(raw, "neuron", NEURONS, "spiking.neuron", default.neuron)
    input_ = ctx.choice(raw, "input", SPIKING_INPUTS, "spiking.input", default.input)
    trace = ctx.choice(raw, "stdp_trace", STDP_TRACES, "spiking.stdp_trace", default.stdp_trace)
    expressed = ctx.choice(
        raw, "stdp_expressed", STDP_EXPRESSED, "spiking.stdp_expressed", default.stdp_expressed
    )
    values = {}
    for f in dataclasses.fields(Spiking):
        if f.name in ("neuron", "input", "stdp_trace", "stdp_expressed"):
            continue
        where = f"spiking.{f.name}"
        value = float(ctx.typed(raw, f.name, (int, float), where, getattr(default, f.name)))
        unit = "Hz" if f.name == "rate_max" else "seconds"
        lowest = 0.0 if f.name == "refractory" else None
        if not math.isfinite(value) or (value < 0 if lowest == 0.0 else value <= 0):
            bound = ">= 0" if lowest == 0.0 else "> 0"
            ctx.fail(where, f"expected a finite number {bound} ({unit}), got {value!r}")
        values[f.name] = value
    out = Spiking(
        neuron=neuron,
        input=input_,
        stdp_trace=trace,
        stdp_expressed=expressed,
        **values,
    )
    if out.rate_max * out.dt > 1:
        ctx.fail(
            "spiking.dt",
            f"a neuron fires at most once per step: rate_max * dt = {out.rate_max * out.dt:g} "
            f"must be <= 1 (rate_max {out.rate_max:g} Hz, dt {out.dt:g} s)",
        )
    for key in ("tau_syn", "tau_trace", "tau_mem", "settle", "window", "period"):
        if getattr(out, key) < 2 * out.dt:
            ctx.fail(
                f"spiking.{key}",
                f"expected at least two steps of spiking.dt = {out.dt:g} s, "
                f"got {getattr(out, key)!r}",
            )
    return out


def _check_spiking_network(ctx: _Ctx, layers, cost: str, activation: str, dynamics: str):
    if cost != "mse":
        ctx.fail("cost", f"a [spiking] network needs cost 'mse' (a teaching current), got {cost!r}")
    for i, layer in enumerate(layers[1:], start=1):
        if layer.coupling.kind != "dense":
            ctx.fail(
                f"layers[{i}].coupling",
                f"a [spiking] network needs dense couplings, got {layer.coupling.kind!r}",
            )
    if len(layers[0].shape) != 1:
        ctx.fail("layers[0].shape", f"a [spiking] input is flat, got {list(layers[0].shape)}")
    if activation not in SPIKING_ACTIVATIONS:
        ctx.fail(
            "activation",
            f"a [spiking] network needs a non-negative rate function, one of "
            f"{list(SPIKING_ACTIVATIONS)}, got {activation!r}",
        )
    if dynamics == "energy" and activation != "hard_sigmoid":
        # spiking rates settle at r = rho(dPhi/dr(r)); the gradient flow's fixed point,
        # r = rho(rho' dPhi/dr(r)), is the same only where rho' = 1 (spikeep.dynamics)
        ctx.fail(
            "dynamics",
            f"spiking rates settle at the prototypical fixed point, which the {dynamics!r} "
            f"dynamics share only with hard_sigmoid, not {activation!r}; set dynamics = "
            f"'prototypical'",
        )


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
