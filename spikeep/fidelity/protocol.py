"""Fidelity protocols: models, engines, estimators and sweeps, read from TOML.

A fidelity protocol says which gradient estimates to compare with the exact implicit gradient of
one batch: ``protocols/fidelity_quick.toml`` is a small complete example. Every key, its default::

    name = "fidelity_quick"          # default: the file's stem
    description = "..."              # free text
    batch = 8                        # samples in the one batch (random inputs, random classes)
    seed = 0                         # parameters: init_params(seed); batch: random_batch(seed)

    [[model]]                        # one or more
    spec = "../models/spiking_small.toml"   # relative to the protocol file (or the cwd)
    engines = ["rate", "snntorch", "brian2"] # default: every engine section present

    [reference]                      # the exact implicit gradient, float64, once per model
    free_steps = 1000                # rate-engine steps to the free fixed point
    check_steps = 3000               # the self-check's steps (implicit at 3000 steps with the
                                     # iterative solver, and BPTT through 3000 steps)

    [rate]                           # the rate engine (absent: not run)
    estimators = ["one-sided", "symmetric", "holomorphic", "oscillation"]
    beta = 0.1                       # nudging strength (|beta| on the circle / the oscillation)
    points = 4                       # holomorphic N
    free_steps = 300                 # the estimator's own free phase (steps)
    nudged_steps = 300               # steps per nudged phase
    dt = 0.0                         # Euler step of the energy dynamics; 0: the spec's
    noise = 0.0                      # std of the state noise per step (free and nudged phases)
    steps_per_period = 100           # oscillation: steps per period K
    periods = 2                      # oscillation: periods demodulated
    warmup = 1                       # oscillation: periods discarded
    oscillation = "auto"             # "complex" (beta e^{iwt}), "cosine" (real), or "auto":
                                     # complex on a holomorphic network, else cosine
    [rate.sweep]                     # axis = [values]: beta, points, free_steps, nudged_steps,
                                     # dt, noise, steps_per_period

    [snntorch]                       # the snntorch engine (absent: not run)
    estimators = ["one-sided", "symmetric", "oscillation"]
    rules = ["endpoint", "stdp"]     # "stdp": recorded n/a (snntorch has no STDP rule)
    beta = 0.1
    time_steps = 1000                # steps per phase, or per oscillation period
    tau = 10.0                       # trace time constant (steps)
    input = "current"                # or "rate" (Bernoulli spike trains)
    periods = 2
    warmup = 1
    [snntorch.sweep]                 # beta, time_steps, tau, periods

    [brian2]                         # the Brian2 engine (absent: not run; dense [spiking] specs)
    estimators = ["one-sided", "symmetric", "oscillation"]
    rules = ["endpoint", "stdp"]     # the learning rule (spikeep.brian2.rules)
    beta = 0.1
    settle = 0.0                     # s per phase; 0: the spec's [spiking] settle
    window = 0.0                     # s per phase; 0: the spec's
    period = 0.0                     # s, the oscillation's; 0: the spec's
    periods = 1
    warmup = 1
    dt = 0.0                         # s, simulation step; 0: the spec's [spiking] dt
    rate_max = 0.0                   # Hz at rho = 1; 0: the spec's
    target = "numpy"                 # Brian2 code generation target: numpy or cython
    [brian2.sweep]                   # beta, settle, window, period, periods, dt, rate_max

A sweep varies one axis at a time around the section's values (the *base* point): every
estimator the axis concerns (``points``: holomorphic; ``steps_per_period``: oscillation;
``nudged_steps``, ``settle``, ``window``: the phased estimators; ``period``, ``periods``: the
oscillation) is run at each listed value with every other key at its base value.

``with --set`` (:func:`load`'s ``overrides``) dotted keys replace values before validation:
``batch=4``, ``rate.beta=0.2``, ``brian2.sweep.window=[0.1, 0.2]``, ``reference.check_steps=500``.
Every error is one line naming the file and the key, with a close match for an unknown key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import _toml
from .. import estimators as rate_estimators
from ..protocol import ProtocolError

__all__ = [
    "ProtocolError",
    "Model",
    "Reference",
    "Rate",
    "SNN",
    "Brian2",
    "FidelityProtocol",
    "ENGINES",
    "load",
    "from_dict",
]

ENGINES = ("rate", "snntorch", "brian2")
SPIKING_ESTIMATORS = ("one-sided", "symmetric", "oscillation")
RULES = ("endpoint", "stdp")


@dataclass(frozen=True)
class Model:
    """A model spec (its path) and the engines that run it."""

    spec: Path
    engines: tuple[str, ...]


@dataclass(frozen=True)
class Reference:
    """Steps of the reference's free phase and of its self-check."""

    free_steps: int = 1000
    check_steps: int = 3000


@dataclass(frozen=True)
class Rate:
    """The rate engine's base point (module docstring) and its sweeps."""

    estimators: tuple[str, ...] = ("one-sided", "symmetric", "holomorphic", "oscillation")
    beta: float = 0.1
    points: int = 4
    free_steps: int = 300
    nudged_steps: int = 300
    dt: float = 0.0
    noise: float = 0.0
    steps_per_period: int = 100
    periods: int = 2
    warmup: int = 1
    oscillation: str = "auto"
    sweep: dict[str, tuple] = field(default_factory=dict)


@dataclass(frozen=True)
class SNN:
    """The snntorch engine's base point and its sweeps."""

    estimators: tuple[str, ...] = SPIKING_ESTIMATORS
    rules: tuple[str, ...] = RULES
    beta: float = 0.1
    time_steps: int = 1000
    tau: float = 10.0
    input: str = "current"
    periods: int = 2
    warmup: int = 1
    sweep: dict[str, tuple] = field(default_factory=dict)


@dataclass(frozen=True)
class Brian2:
    """The Brian2 engine's base point and its sweeps (0 for a time: the spec's)."""

    estimators: tuple[str, ...] = SPIKING_ESTIMATORS
    rules: tuple[str, ...] = RULES
    beta: float = 0.1
    settle: float = 0.0
    window: float = 0.0
    period: float = 0.0
    periods: int = 1
    warmup: int = 1
    dt: float = 0.0
    rate_max: float = 0.0
    target: str = "numpy"
    sweep: dict[str, tuple] = field(default_factory=dict)


@dataclass(frozen=True)
class FidelityProtocol:
    name: str
    models: tuple[Model, ...]
    batch: int = 8
    seed: int = 0
    reference: Reference = field(default_factory=Reference)
    rate: Rate | None = None
    snntorch: SNN | None = None
    brian2: Brian2 | None = None
    description: str = ""
    source: str = "<dict>"

    def engine(self, name: str) -> Rate | SNN | Brian2 | None:
        """The section of engine ``name`` (None when the protocol does not run it)."""
        return getattr(self, name)


_ENGINE_CLASSES = {"rate": Rate, "snntorch": SNN, "brian2": Brian2}
_TOP = {"name", "description", "batch", "seed", "model", "reference", *ENGINES}

# value checks: (what it must be, test); "count" >= 1, "steps" >= 0, ...
_POSITIVE_INT = ("an integer >= 1", lambda v: _toml.is_int(v) and v >= 1)
_NON_NEGATIVE_INT = ("an integer >= 0", lambda v: _toml.is_int(v) and v >= 0)
_BETA = ("a finite non-zero number", lambda v: _toml.is_number(v) and v != 0)
_TIME = ("a number >= 0 (0: the spec's)", lambda v: _toml.is_number(v) and v >= 0)
_CHECKS = {
    "beta": _BETA,
    "points": ("an integer >= 2", lambda v: _toml.is_int(v) and v >= 2),
    "free_steps": _POSITIVE_INT,
    "nudged_steps": _POSITIVE_INT,
    "check_steps": _POSITIVE_INT,
    "noise": ("a finite number >= 0", lambda v: _toml.is_number(v) and v >= 0),
    "steps_per_period": ("an integer >= 3", lambda v: _toml.is_int(v) and v >= 3),
    "periods": _POSITIVE_INT,
    "warmup": _NON_NEGATIVE_INT,
    "time_steps": ("an integer >= 5", lambda v: _toml.is_int(v) and v >= 5),
    "tau": ("a number of steps >= 1", lambda v: _toml.is_number(v) and v >= 1),
    "settle": _TIME,
    "window": _TIME,
    "period": _TIME,
    "rate_max": ("a rate in Hz >= 0 (0: the spec's)", lambda v: _toml.is_number(v) and v >= 0),
    "batch": _POSITIVE_INT,
    "seed": _NON_NEGATIVE_INT,
}
_FLOATS = {"beta", "noise", "tau", "settle", "window", "period", "rate_max", "dt"}
_RATE_DT = ("a step in [0, 1] (0: the spec's)", lambda v: _toml.is_number(v) and 0 <= v <= 1)
_B2_DT = ("a step in seconds >= 0 (0: the spec's)", lambda v: _toml.is_number(v) and v >= 0)
_CHOICES = {
    ("rate", "oscillation"): ("auto", "complex", "cosine"),
    ("snntorch", "input"): ("current", "rate"),
    ("brian2", "target"): ("numpy", "cython"),
}
_ESTIMATORS = {
    "rate": tuple(rate_estimators.ESTIMATORS),
    "snntorch": SPIKING_ESTIMATORS,
    "brian2": SPIKING_ESTIMATORS,
}
SWEEPS = {
    "rate": ("beta", "points", "free_steps", "nudged_steps", "dt", "noise", "steps_per_period"),
    "snntorch": ("beta", "time_steps", "tau", "periods"),
    "brian2": ("beta", "settle", "window", "period", "periods", "dt", "rate_max"),
}


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> FidelityProtocol:
    """Read a fidelity protocol, apply dotted-key ``overrides``, validate."""
    path = Path(path)
    data = _toml.read(path, ProtocolError, "protocol")
    return from_dict(data, source=str(path), base=path.parent, overrides=overrides)


def from_dict(
    data: dict[str, Any],
    source: str = "<dict>",
    base: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> FidelityProtocol:
    """Validate a parsed protocol, with dotted-key ``overrides`` applied."""

    def fail(key, msg):
        raise ProtocolError(f"{source}: {key}: {msg}")

    data = _apply(fail, data, overrides or {})
    for key in data:
        if key not in _TOP:
            fail(key, _toml.unknown(key, _TOP))
    name = data.get("name", Path(source).stem)
    description = data.get("description", "")
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            fail(key, f"expected a string, got {value!r}")
    batch = _checked(fail, "batch", "batch", data.get("batch", 8))
    seed = _checked(fail, "seed", "seed", data.get("seed", 0))
    engines = {e: _engine(fail, e, data[e]) for e in ENGINES if e in data}
    if not engines:
        fail("engines", f"expected at least one engine section, one of {list(ENGINES)}")
    models = _models(fail, data.get("model"), base, tuple(engines))
    reference = _table(fail, "reference", Reference, data.get("reference", {}))
    return FidelityProtocol(
        name, models, batch, seed, reference, description=description, source=source, **engines
    )


def _apply(fail, data: dict, overrides: dict) -> dict:
    """A copy of ``data`` with ``a.b.c = v`` overrides written into nested tables."""
    out = {k: (_copy(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key, value in overrides.items():
        parts = key.split(".")
        table = out
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            if i == 0 and part not in _TOP:
                fail(f"--set {key}", _toml.unknown(part, _TOP))
            sub = table.setdefault(part, {})
            if not isinstance(sub, dict):
                fail(f"--set {key}", f"{where} is not a table")
            table = sub
        table[parts[-1]] = value
    return out


def _copy(d: dict) -> dict:
    return {k: (_copy(v) if isinstance(v, dict) else v) for k, v in d.items()}


def _models(fail, raw, base: Path | None, configured: tuple[str, ...]) -> tuple[Model, ...]:
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        fail("model", "expected one or more [[model]] tables with a spec path")
    out = []
    for i, entry in enumerate(raw):
        where = f"model[{i}]"
        if not isinstance(entry, dict):
            fail(where, f"expected a table, got {entry!r}")
        for key in entry:
            if key not in ("spec", "engines"):
                fail(f"{where}.{key}", _toml.unknown(key, ("spec", "engines")))
        spec_path = entry.get("spec")
        if not isinstance(spec_path, str):
            fail(f"{where}.spec", f"expected the path of a model spec, got {spec_path!r}")
        path = _resolve(spec_path, base)
        if not path.is_file():
            fail(f"{where}.spec", f"no model spec at {spec_path!r} (looked for {path})")
        engines = _names(fail, f"{where}.engines", entry.get("engines", list(configured)), ENGINES)
        for e in engines:
            if e not in configured:
                fail(f"{where}.engines", f"{e!r} has no [{e}] section in this protocol")
        out.append(Model(path, engines))
    return tuple(out)


def _resolve(path: str, base: Path | None) -> Path:
    p = Path(path)
    if p.is_absolute():
        return p
    for candidate in ((base / p) if base else None, Path.cwd() / p):
        if candidate is not None and candidate.is_file():
            return candidate.resolve()
    return (base / p) if base else p


def _engine(fail, engine: str, raw):
    cls = _ENGINE_CLASSES[engine]
    if not isinstance(raw, dict):
        fail(engine, f"expected a table, got {raw!r}")
    raw = dict(raw)
    sweep_raw = raw.pop("sweep", {})
    section = _table(fail, engine, cls, raw)
    if not isinstance(sweep_raw, dict):
        fail(f"{engine}.sweep", f"expected a table, got {sweep_raw!r}")
    sweep = {}
    for axis, values in sweep_raw.items():
        where = f"{engine}.sweep.{axis}"
        if axis not in SWEEPS[engine]:
            fail(where, _toml.unknown(axis, SWEEPS[engine]))
        if not isinstance(values, list) or not values:
            fail(where, f"expected a non-empty list of values, got {values!r}")
        sweep[axis] = tuple(_value(fail, engine, axis, where, v) for v in values)
    return dataclasses.replace(section, sweep=sweep)


def _table(fail, section: str, cls, raw):
    if not isinstance(raw, dict):
        fail(section, f"expected a table, got {raw!r}")
    allowed = [f.name for f in fields(cls) if f.name != "sweep"]
    values = {}
    for key, value in raw.items():
        where = f"{section}.{key}"
        if key not in allowed:
            fail(where, _toml.unknown(key, allowed + (["sweep"] if section in ENGINES else [])))
        if key == "estimators":
            values[key] = _names(fail, where, value, _ESTIMATORS[section])
        elif key == "rules":
            values[key] = _names(fail, where, value, RULES)
        else:
            values[key] = _value(fail, section, key, where, value)
    return cls(**values)


def _value(fail, section: str, key: str, where: str, value):
    if (section, key) in _CHOICES:
        allowed = _CHOICES[(section, key)]
        if not isinstance(value, str) or value not in allowed:
            fail(
                where, f"expected one of {list(allowed)}, got {value!r}{_toml.hint(value, allowed)}"
            )
        return value
    what, ok = _RATE_DT if (section, key) == ("rate", "dt") else _CHECKS.get(key, _B2_DT)
    if not ok(value):
        fail(where, f"expected {what}, got {value!r}")
    return float(value) if key in _FLOATS else value


def _checked(fail, key: str, where: str, value):
    what, ok = _CHECKS[key]
    if not ok(value):
        fail(where, f"expected {what}, got {value!r}")
    return value


def _names(fail, where: str, value, allowed) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        fail(where, f"expected a non-empty list of names from {list(allowed)}, got {value!r}")
    for v in value:
        if v not in allowed:
            fail(where, f"expected names from {list(allowed)}, got {v!r}{_toml.hint(v, allowed)}")
    if len(set(value)) != len(value):
        fail(where, f"a name is listed twice: {value!r}")
    return tuple(value)
