"""Protocols: declarative training experiments read from TOML into frozen dataclasses.

A protocol names a model spec, the data, the gradient estimator and every hyperparameter, and
carries the number the paper reports. ``protocols/quickstart.toml`` shows every key::

    name = "quickstart"
    model = "../models/spiking_784_500_10_f32.toml"     # relative to this file

    [data]        name, dir, train_subset, test_subset, validation, normalize, std_scale,
                  augment, crop_padding, flip
    [estimator]   name, beta, points, free_steps, nudged_steps, eval_free_steps,
                  noise, eval_noise, free_noise, noise_shared, steps_per_period, periods,
                  warmup, real, hold
    [optimizer]   lr (one per coupling, or one for all), momentum, weight_decay,
                  cosine, t_max, eta_min
    [train]       epochs, batch_size, seed, persistent, checkpoint_every, device, engine, init,
                  eval_engines, test_every, keep_epochs, on_divergence
    [brian2]      rule, chunk, eval_settle, eval_window   (read when engine = "brian2", and by
                                                    eval_engines, eval and compare)
    [snntorch]    tau, decay, settle, window, input, eval_settle, eval_window, eval_tau,
                  nudged_settle, nudged_window      (likewise for "snntorch")
    [paper]       source, test_error, note          (reported numbers, for the record)

``noise`` is the std of the Gaussian noise on every neuron at every relaxation step of training
(free and nudged phases; :mod:`spikeep.dynamics` says where it enters). Evaluation runs with
``eval_noise``, which defaults to ``noise``: a noisy system is measured as it runs.
``eval_noise = 0.0`` measures the noise-free network with the same weights (what Laborieux &
Zenke's code reports). ``free_noise = false`` runs training's free phase without noise (only
the nudged phases, or the whole oscillation, are noisy); ``noise_shared = true`` draws the
training noise once per neuron and step and adds it to every sample of the batch (each
holomorphic point its own draw). Both as Laborieux & Zenke's code does; the defaults (``true``,
``false``) keep spikeep's own placement. ``steps_per_period``, ``periods``, ``warmup``, ``real``
and ``hold`` configure the ``oscillation`` estimator (its ``nudged_steps`` is unused); ``hold``
(default 1: ``beta`` turns at every step) holds each of ``steps_per_period / hold`` phases for
``hold`` steps and samples its end, as Laborieux & Zenke's code does.

``engine`` picks what trains the model: ``"rate"`` (the default, :mod:`spikeep.train`) or
``"brian2"`` (spiking neurons in a compiled Brian2 simulation, :mod:`spikeep.brian2.engine`, which
reads ``[brian2]``: the learning ``rule``, the samples per compiled ``chunk``, and the spiking test
pass's free phase ``eval_settle`` + ``eval_window`` in seconds, 0 for the training schedule) or
``"snntorch"`` (batched discrete-time spiking neurons, :mod:`spikeep.snn.engine`, which reads
``[snntorch]``: the :class:`spikeep.snn.config.SNNConfig` of its phases, times in steps).

``validation = N`` holds N images of the training split out of training (drawn with
``train.seed``, :func:`spikeep.batches.split_train`); every epoch scores them as it scores the
test images (``val_error``, ``val_loss``), so a recipe can be chosen without looking at the test
set. ``train_subset`` then takes the first images of the rest.

``with_overrides`` applies ``--set section.key=value`` pairs (values in TOML syntax) before
validation, so an override is checked like the file itself.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _toml, estimators

__all__ = [
    "ProtocolError",
    "refuse",
    "Protocol",
    "load",
    "from_dict",
    "parse_overrides",
    "check_against_model",
]

DATASETS = ("mnist", "fashion-mnist", "mnist-embedded", "cifar10")
SEED_LIMIT = 2**32  # seeds are in [0, 2^32): every engine's generators take them (numpy's too)
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
ENGINES = ("rate", "brian2", "snntorch")
BRIAN2_RULES = ("endpoint", "stdp")  # spikeep.brian2.rules.RULES (not imported: no brian2 here)
ON_DIVERGENCE = ("stop", "skip")  # [train] on_divergence
SNN_INPUTS = ("current", "rate")  # spikeep.snn.config.INPUTS (not imported: no snntorch here)


class ProtocolError(ValueError):
    """A protocol that cannot run; the message names the file and the key."""


def refuse(protocol: Protocol, engine: str, refused: dict[str, tuple[bool, str]]) -> None:
    """Raise a :class:`ProtocolError` for the first ``"section.key": (bad, why)`` that is
    ``bad``: ``"<file>: section.key: the <engine> engine <why>, got <value>"``."""
    for key, (bad, why) in refused.items():
        if bad:
            section, name = key.split(".")
            value = json.dumps(getattr(getattr(protocol, section), name))
            raise ProtocolError(f"{protocol.source}: {key}: the {engine} engine {why}, got {value}")


@dataclass(frozen=True)
class Data:
    name: str = "mnist-embedded"
    dir: str | None = None
    train_subset: int = 0  # 0: all
    test_subset: int = 0
    validation: int = 0  # training images held out, scored every epoch (val_error); 0: none
    normalize: bool = False
    std_scale: float = 1.0  # normalise by std_scale * std (Laborieux et al. 2021 use 3)
    augment: bool = False
    crop_padding: int = 4
    flip: bool = True


@dataclass(frozen=True)
class Estimator:
    name: str = "symmetric"
    beta: float = 0.5
    points: int = 4
    free_steps: int = 20
    nudged_steps: int = 4
    eval_free_steps: int = 0  # 0: free_steps
    noise: float = 0.0  # std of the state noise per relaxation step, in training
    eval_noise: float | None = None  # None: noise
    free_noise: bool = True  # false: training's free phase runs without noise
    noise_shared: bool = False  # true: one draw per neuron and step, shared by the batch
    steps_per_period: int = 100  # oscillation
    periods: int = 2
    warmup: int = 1
    real: bool = False
    hold: int = 1  # oscillation: steps per held phase (1: beta turns at every step)


@dataclass(frozen=True)
class Optimizer:
    lr: tuple[float, ...] = (0.05,)
    momentum: float = 0.0
    weight_decay: float = 0.0
    cosine: bool = False
    t_max: int = 0  # 0: epochs
    eta_min: float = 0.0


@dataclass(frozen=True)
class Train:
    epochs: int = 1
    batch_size: int = 20
    seed: int = 0
    persistent: bool = False
    checkpoint_every: int = 0  # batches (brian2: chunks); 0: once per epoch
    device: str = "auto"
    engine: str = "rate"  # one of ENGINES
    init: str = ""  # a checkpoint whose parameters the run starts from ("": train.seed's draw)
    eval_engines: tuple[str, ...] = ()  # more engines at each test pass (the own one: once)
    test_every: int = 1  # epochs between test-set passes; 0: only after the last epoch
    keep_epochs: int = 0  # the last N epochs' checkpoints also kept as OUT/epochs/epoch_E.pt
    on_divergence: str = "stop"  # one of ON_DIVERGENCE: a diverged step stops the run or is skipped


@dataclass(frozen=True)
class Brian2:
    """The brian2 engine's training settings (ignored by the rate engine)."""

    rule: str = "endpoint"  # one of BRIAN2_RULES
    chunk: int = 100  # training samples per run of the compiled simulation
    eval_settle: float = 0.0  # s: the spiking test pass's free phase; 0: the training schedule
    eval_window: float = 0.0  # s


@dataclass(frozen=True)
class Snntorch:
    """The snntorch engine's training settings (ignored by the other engines): the fields of
    :class:`spikeep.snn.config.SNNConfig`, times in steps."""

    tau: float = 10.0  # spike traces' time constant
    decay: float = 1.0  # membrane decay per step, (0, 1]; 1: integrate-and-fire
    settle: int = 200  # steps of each phase before its spikes are counted
    window: int = 800  # steps whose spikes give the phase's rates
    input: str = "current"  # one of SNN_INPUTS
    eval_settle: int = 0  # the spiking test pass; 0: settle
    eval_window: int = 0  # 0: window
    eval_tau: float = 0.0  # the spiking test pass's trace time constant; 0: tau
    nudged_settle: int | None = None  # the nudged phases of EP (from the free state); unset: settle
    nudged_window: int | None = None  # unset: window


@dataclass(frozen=True)
class Protocol:
    name: str
    model: Path
    data: Data = field(default_factory=Data)
    estimator: Estimator = field(default_factory=Estimator)
    optimizer: Optimizer = field(default_factory=Optimizer)
    train: Train = field(default_factory=Train)
    brian2: Brian2 = field(default_factory=Brian2)
    snntorch: Snntorch = field(default_factory=Snntorch)
    paper: dict[str, Any] = field(default_factory=dict)
    source: str = "<dict>"
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


_SECTIONS = {
    "data": Data,
    "estimator": Estimator,
    "optimizer": Optimizer,
    "train": Train,
    "brian2": Brian2,
    "snntorch": Snntorch,
}
_TOP = {"name", "description", "model", "paper", *_SECTIONS}


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> Protocol:
    """Read a protocol file, apply ``overrides`` (dotted keys), validate."""
    path = Path(path)
    data = _toml.read(path, ProtocolError, "protocol")
    return from_dict(data, source=str(path), base=path.parent, overrides=overrides)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.epochs=2", "optimizer.lr=[0.1, 0.05]"]`` -> ``{"train.epochs": 2, ...}``.

    Values are TOML; a bare word that is not valid TOML is taken as a string.
    """
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ProtocolError(f"--set {pair!r}: expected section.key=value")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        out[key] = value
    return out


def from_dict(
    data: dict[str, Any],
    source: str = "<dict>",
    base: Path | None = None,
    overrides: dict[str, Any] | None = None,
    check_model: bool = True,
) -> Protocol:
    """Validate a parsed protocol, with dotted-key ``overrides`` applied, into a Protocol
    (``check_model=False``: the model file need not exist, e.g. for a checkpoint that stores its
    model spec)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key, value in (overrides or {}).items():
        section, _, leaf = key.rpartition(".")
        if section:
            if section not in _SECTIONS and section != "paper":
                known = sorted([*_SECTIONS, "paper"])
                close = difflib.get_close_matches(section, known, n=1)
                near = f"did you mean {close[0]!r}? " if close else ""
                raise ProtocolError(
                    f"--set {key}: unknown section {section!r}; {near}expected one of {known}"
                )
            data.setdefault(section, {})[leaf] = value
        else:
            data[leaf] = value
    fail = _failer(source)
    for key in data:
        if key not in _TOP:
            fail(key, _toml.unknown(key, _TOP))
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str):
        fail("name", f"expected a string, got {name!r}")
    model = data.get("model")
    if not isinstance(model, str):
        fail("model", f"expected the path of a model spec, got {model!r}")
    model_path = _resolve(model, base)
    if check_model and not model_path.is_file():
        fail("model", f"no model spec at {model!r} (looked for {model_path})")
    sections = {}
    for section, cls in _SECTIONS.items():
        sections[section] = _section(fail, section, cls, data.get(section, {}))
    paper = data.get("paper", {})
    if not isinstance(paper, dict):
        fail("paper", f"expected a table, got {paper!r}")
    protocol = Protocol(name, model_path, paper=paper, source=source, raw=data, **sections)
    _check(fail, protocol)
    return protocol


def _resolve(model: str, base: Path | None) -> Path:
    path = Path(model)
    if path.is_absolute():
        return path
    candidates = [(base / path) if base else None, Path.cwd() / path]
    for c in candidates:
        if c is not None and c.is_file():
            return c.resolve()
    return (base / path) if base else path


def _failer(source):
    def fail(key, msg):
        raise ProtocolError(f"{source}: {key}: {msg}")

    return fail


def _section(fail, section: str, cls, raw: Any):
    if not isinstance(raw, dict):
        fail(section, f"expected a table, got {raw!r}")
    defaults = cls()
    allowed = set(cls.__dataclass_fields__)
    values = {}
    for key, value in raw.items():
        where = f"{section}.{key}"
        if key not in allowed:
            fail(where, _toml.unknown(key, allowed))
        default = getattr(defaults, key)
        values[key] = _coerce(fail, where, value, default)
    return cls(**values)


_OPTIONAL_NUMBERS = {"estimator.eval_noise"}
_STRING_LISTS = {"train.eval_engines"}
_OPTIONAL_STEPS = {"snntorch.nudged_settle", "snntorch.nudged_window"}  # unset: None


def _coerce(fail, where, value, default):
    if where in _OPTIONAL_STEPS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            fail(where, f"expected a non-negative integer number of steps, got {value!r}")
        return value
    if where in _OPTIONAL_NUMBERS:
        if not _toml.is_number(value):
            fail(where, f"expected a number, got {value!r}")
        return float(value)
    if where in _STRING_LISTS:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in items):
            fail(where, f"expected a list of names, got {value!r}")
        return tuple(items)
    if isinstance(default, tuple):  # learning rates: a number or a list of numbers
        items = value if isinstance(value, list) else [value]
        if not items or not all(_toml.is_number(v) for v in items):
            fail(where, f"expected a number or a list of numbers, got {value!r}")
        return tuple(float(v) for v in items)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            fail(where, f"expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            fail(where, f"expected a non-negative integer, got {value!r}")
        return value
    if isinstance(default, float):
        if not _toml.is_number(value):
            fail(where, f"expected a number, got {value!r}")
        return float(value)
    if default is None or isinstance(default, str):
        if not isinstance(value, str):
            fail(where, f"expected a string, got {value!r}")
        return value
    return value


def _choice(fail, where: str, value: str, allowed) -> None:
    """Refuse ``value`` unless it is one of ``allowed``, suggesting the closest."""
    if value not in allowed:
        fail(where, _toml.not_a_choice(value, allowed))


def _check(fail, p: Protocol):
    if p.data.name not in DATASETS:
        fail("data.name", f"expected one of {list(DATASETS)}, got {p.data.name!r}")
    names = [*estimators.ESTIMATORS, *estimators.BASELINES]
    _choice(fail, "estimator.name", p.estimator.name, names)
    if p.estimator.name in estimators.BASELINES and p.estimator.noise:
        fail(
            "estimator.noise",
            f"{p.estimator.name} runs without noise; expected 0, got {p.estimator.noise}",
        )
    if p.estimator.beta == 0:
        fail("estimator.beta", "expected a non-zero nudging strength")
    if p.estimator.points < 2:
        fail("estimator.points", f"expected an integer >= 2, got {p.estimator.points}")
    for key in ("free_steps", "nudged_steps", "periods"):
        if getattr(p.estimator, key) < 1:
            fail(
                f"estimator.{key}", f"expected a positive integer, got {getattr(p.estimator, key)}"
            )
    if p.estimator.steps_per_period < 3:
        fail(
            "estimator.steps_per_period",
            f"expected an integer >= 3, got {p.estimator.steps_per_period}",
        )
    K, hold = p.estimator.steps_per_period, p.estimator.hold
    if not (hold >= 1 and K % hold == 0 and K // hold >= 3):
        fail(
            "estimator.hold",
            f"expected a positive integer dividing steps_per_period = {K} into at least 3 held "
            f"phases, got {hold}",
        )
    for key in ("noise", "eval_noise"):
        value = getattr(p.estimator, key)
        if value is not None and value < 0:
            fail(f"estimator.{key}", f"expected a standard deviation >= 0, got {value}")
    if any(lr <= 0 for lr in p.optimizer.lr):
        fail("optimizer.lr", f"expected positive learning rates, got {list(p.optimizer.lr)}")
    if not 0 <= p.optimizer.momentum < 1:
        fail("optimizer.momentum", f"expected a number in [0, 1), got {p.optimizer.momentum}")
    if p.optimizer.weight_decay < 0:
        fail("optimizer.weight_decay", f"expected >= 0, got {p.optimizer.weight_decay}")
    if p.train.epochs < 1 or p.train.batch_size < 1:
        fail("train", "epochs and batch_size must be positive integers")
    if p.train.test_every < 0:
        fail(
            "train.test_every",
            f"expected epochs >= 0 (0: the last epoch only), got {p.train.test_every}",
        )
    if p.train.keep_epochs < 0:
        fail("train.keep_epochs", f"expected epochs >= 0 (0: none kept), got {p.train.keep_epochs}")
    if not DEVICE.fullmatch(p.train.device):
        fail("train.device", f"expected auto, cpu, cuda or cuda:N, got {p.train.device!r}")
    if p.train.seed >= SEED_LIMIT:
        fail("train.seed", f"expected an integer in [0, 2^32), got {p.train.seed}")
    _choice(fail, "train.engine", p.train.engine, ENGINES)
    for name in p.train.eval_engines:  # the run's own engine among them tests once, as always
        _choice(fail, "train.eval_engines", name, ENGINES)
    _choice(fail, "train.on_divergence", p.train.on_divergence, ON_DIVERGENCE)
    _choice(fail, "brian2.rule", p.brian2.rule, BRIAN2_RULES)
    if p.brian2.chunk < 1:
        fail("brian2.chunk", f"expected a positive integer, got {p.brian2.chunk}")
    b = p.brian2
    for key, v in (("eval_settle", b.eval_settle), ("eval_window", b.eval_window)):
        if not (math.isfinite(v) and v >= 0):
            fail(f"brian2.{key}", f"expected seconds >= 0 (0: the training schedule), got {v}")
    if (b.eval_settle > 0) != (b.eval_window > 0):
        fail(
            "brian2.eval_window" if b.eval_settle > 0 else "brian2.eval_settle",
            f"set both eval_settle and eval_window (s), or neither; got {b.eval_settle} and "
            f"{b.eval_window}",
        )
    _check_snntorch(fail, p.snntorch)


def _check_snntorch(fail, s: Snntorch):
    if s.tau < 1:
        fail("snntorch.tau", f"expected a trace time constant of at least 1 step, got {s.tau}")
    if s.eval_tau != 0 and not s.eval_tau >= 1:
        fail(
            "snntorch.eval_tau",
            f"expected 0 (tau's) or a time constant of at least 1 step, got {s.eval_tau}",
        )
    if not 0 < s.decay <= 1:
        fail(
            "snntorch.decay", f"expected a number in (0, 1] (1: integrate-and-fire), got {s.decay}"
        )
    if s.window < 1:
        fail("snntorch.window", f"expected a positive number of steps, got {s.window}")
    if s.nudged_window is not None and s.nudged_window < 1:
        fail(
            "snntorch.nudged_window", f"expected a positive number of steps, got {s.nudged_window}"
        )
    _choice(fail, "snntorch.input", s.input, SNN_INPUTS)


def check_against_model(p: Protocol, n_couplings: int):
    """The per-coupling learning rates must match the model (one, or one per coupling)."""
    if len(p.optimizer.lr) not in (1, n_couplings):
        raise ProtocolError(
            f"{p.source}: optimizer.lr: the model has {n_couplings} couplings; give one learning "
            f"rate or {n_couplings}, got {len(p.optimizer.lr)}"
        )


# -- what a protocol implies over a run --------------------------------------------------


def learning_rates(protocol: Protocol, epoch: int) -> tuple[float, ...]:
    """``optimizer.lr`` during ``epoch`` (0-based): constant, or cosine-annealed from ``lr`` to
    ``eta_min`` over ``t_max`` epochs (default ``train.epochs``)."""
    opt = protocol.optimizer
    if not opt.cosine:
        return opt.lr
    t_max = opt.t_max or protocol.train.epochs
    f = 0.5 * (1 + math.cos(math.pi * min(epoch, t_max) / t_max))
    return tuple(opt.eta_min + (lr - opt.eta_min) * f for lr in opt.lr)


def layer_lr(lrs: tuple[float, ...], name: str) -> float:
    """The learning rate of parameter ``name`` (``W3`` and ``b3`` belong to coupling 3)."""
    i = int(name[1:]) - 1
    return lrs[0] if len(lrs) == 1 else lrs[i]


def eval_free_steps(raw: dict) -> int:
    """The free steps with which the run whose protocol table is ``raw`` evaluated."""
    est = raw.get("estimator", {})
    return est.get("eval_free_steps") or est.get("free_steps", 20)


def protocol_changes(old: dict, new: dict, where: str = "") -> list[str]:
    """``"section.key: old -> new"`` for every value that differs between two raw protocols
    (``None`` where a key is absent), in sorted key order."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{where}{key}"
        if isinstance(a, dict) or isinstance(b, dict):
            out += protocol_changes(a or {}, b or {}, f"{name}.")
        elif a != b:
            out.append(f"{name}: {json.dumps(a)} -> {json.dumps(b)}")
    return out
