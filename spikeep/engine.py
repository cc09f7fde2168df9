r"""Engines: the contract every engine meets, the registry of engines by name, and the rate engine.

An engine realises the one energy (:mod:`spikeep.energy`) in its own physics: ``rate`` relaxes
the rate dynamics with torch (:class:`RateEngine`, below), ``snntorch`` runs discrete-time
integrate-and-fire neurons (:mod:`spikeep.snn.engine`), ``brian2`` runs spiking populations in a
compiled continuous-time simulation (:mod:`spikeep.brian2.engine`). The training loop
(:mod:`spikeep.train`), ``spikeep eval``, ``spikeep gradcheck`` and the fidelity study
(:mod:`spikeep.fidelity`) ask an engine for what they need through :class:`Engine` and never
know which one runs, as model code never knows which Brian2 device runs it.

The contract (:class:`Engine`):

- **built from a protocol and a network**, it refuses in one line naming the key
  (:class:`~spikeep.protocol.ProtocolError`, ``"<file>: section.key: ..."``) what it cannot do;
  built with ``training=False`` it checks only what evaluation needs (``spikeep eval``);
- it **declares** its ``name``, the ``estimators`` it supports with their bias orders in
  ``beta`` (the one table the protocol checks, the CLI and the fidelity study read), whether it is
  ``online`` (a step moves the parameters itself) and which ``spikeep eval`` flags are its own
  settings (``eval_settings``, flag -> protocol key);
- :meth:`Engine.step` takes one batch (or one online chunk: ``samples_per_step`` examples) and
  returns the free phase's rates, the estimate of ``+dL/dtheta`` or the moved parameters, and
  per-step metrics (:class:`Step`);
- :meth:`Engine.evaluate` gives the test metrics after an epoch with the engine's own free phase;
  :meth:`Engine.score` the error and loss of given parameters on a dataset (``spikeep eval``);
- :meth:`Engine.close` releases what the engine holds (a compiled simulation, say).

The registry (:data:`ENGINES`) maps each name to the import path of its class, so that importing
spikeep imports neither brian2 nor snntorch; :func:`get` imports an engine when it is used.
Adding an engine is a folder with a subclass of :class:`Engine` and one line in :data:`ENGINES`
(``docs/extending.md``, "An engine").
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import ClassVar, NamedTuple

import torch

from . import _dist, data, estimators
from .batches import score
from .dynamics import relax
from .energy import Network
from .protocol import Protocol, ProtocolError, layer_lr

__all__ = ["Engine", "Step", "RateEngine", "ENGINES", "get", "names", "evaluate"]

# name -> "module:Class"; the one place engine names are matched
ENGINES: dict[str, str] = {
    "rate": "spikeep.engine:RateEngine",
    "snntorch": "spikeep.snn.engine:SNNEngine",
    "brian2": "spikeep.brian2.engine:Brian2Engine",
}


def names() -> tuple[str, ...]:
    """The registered engines' names."""
    return tuple(ENGINES)


def get(name: str) -> type[Engine]:
    """The engine class registered as ``name`` (imported now, not with spikeep)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; expected one of {list(ENGINES)}")
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


class Step(NamedTuple):
    """One step's work: the free phase's ``rates`` (per dynamic layer, or the output layer's
    alone; for the loss and the training error, on the parameters before the step), the estimate
    ``grads`` of ``+dL/dtheta`` (batched engines; ``None`` for online ones), the free states ``s``
    (kept for persistent training; ``None`` when the engine has none), ``extra``: per-step means
    that the epoch's metrics average over steps, under these names, and ``params``: the
    parameters an online engine moved itself (``None`` for batched engines: the loop's optimiser
    moves them with ``grads``)."""

    rates: tuple[torch.Tensor, ...]
    grads: dict[str, torch.Tensor] | None
    s: tuple[torch.Tensor, ...] | None
    extra: dict[str, float]
    params: dict[str, torch.Tensor] | None = None


class Engine:
    """What the training loop, ``spikeep eval``, ``gradcheck`` and ``fidelity`` ask of an engine.

    Subclasses set the class attributes and implement :meth:`step`, :meth:`evaluate` and
    :meth:`score`; the constructor calls :meth:`check` (training) and keeps ``protocol`` and
    ``net``. Shapes: ``x`` is ``(B, *input shape)``, ``y`` one-hot ``(B, n_L)``, parameters the
    rate engine's ``{"W1": ..., "b1": ...}``.
    """

    name: ClassVar[str]
    # estimator -> the order p of its bias O(beta^p) ("N": the points, "K": the period's steps)
    estimators: ClassVar[Mapping[str, str]]
    online: ClassVar[bool] = False  # True: step moves the parameters itself (no optimiser)
    spiking: ClassVar[bool] = False  # True: its free phase counts spikes
    unit: ClassVar[str] = "batch"  # what one step takes, in progress lines
    # spikeep eval's flags that are this engine's settings -> the protocol key each sets
    eval_settings: ClassVar[Mapping[str, str]] = {}

    def __init__(self, protocol: Protocol, net: Network, training: bool = True):
        self.protocol, self.net = protocol, net
        self.log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)
        if training:
            self.check_estimator(protocol)
            self.check(protocol, net)

    @classmethod
    def check_estimator(cls, protocol: Protocol) -> None:
        """Refuse an estimator that is not in :attr:`estimators`."""
        name = protocol.estimator.name
        if name not in cls.estimators:
            raise ProtocolError(
                f"{protocol.source}: estimator.name: the {cls.name} engine has "
                f"{list(cls.estimators)}, not {name!r}"
            )

    def check(self, protocol: Protocol, net: Network) -> None:
        """Refuse, in one line naming the key, what this engine cannot train."""

    @property
    def tag(self) -> dict:
        """Keys written into every metrics line."""
        return {"engine": self.name} if self.spiking else {}

    def device(self, override: str | None) -> torch.device:
        """The torch device the run's parameters live on."""
        return _dist.device(override or self.protocol.train.device)

    def samples_per_step(self) -> tuple[int, str]:
        """Training examples per :meth:`step`, and the protocol key that sets it."""
        return self.protocol.train.batch_size, "train.batch_size"

    def step(self, net, params, x, y, s0, g: torch.Generator, rank: int, lr: dict) -> Step:
        """The free phase (from ``s0``, or zeros) and the gradient estimate on ``(x, y)`` (or,
        online, the parameters moved by ``lr[name]`` per sample); random draws come from ``g``,
        the epoch's generator (checkpointed)."""
        raise NotImplementedError

    def evaluate(self, net, params, ds, normalize, shard, epoch: int) -> dict:
        """``test_error`` (%), ``test_loss`` and any further test metrics after ``epoch``."""
        raise NotImplementedError

    def score(self, net, params, ds: data.Dataset, normalize) -> dict:
        """``error`` (%) and ``loss`` of the engine's own free phase on all of ``ds``, and the
        settings it ran with (``spikeep eval``)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the engine holds; it is not used afterwards."""

    @classmethod
    def eval_defaults(cls, raw: dict, net: Network) -> dict:
        """Protocol keys that ``spikeep eval`` sets before its flags, from the run's protocol
        table ``raw`` and the network (default: none)."""
        return {}

    # -- spikeep gradcheck (spiking engines): the estimate against the implicit gradient --

    gradcheck_estimators: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def gradcheck(cls, model, args) -> dict:
        """One estimate of ``args.estimator`` on ``model`` against the implicit gradient, from
        ``spikeep gradcheck``'s arguments (a dict with ``cosine``, ``rel_error``, ``per_param``,
        ``spikes``, ``wall_s``, ``model``)."""
        raise NotImplementedError

    @classmethod
    def gradcheck_header(cls, row: dict) -> str:
        """The settings of a :meth:`gradcheck` row, on one line."""
        raise NotImplementedError

    # -- the fidelity study (spikeep.fidelity): one point of a sweep --

    @classmethod
    def fidelity_point(cls, point, model_spec, s: dict, problem, batch: int, seed: int) -> dict:
        """The estimate of ``point`` (:class:`spikeep.fidelity.points.Point`) with settings ``s``
        on ``problem``, against the exact gradient: the metrics of its row."""
        raise NotImplementedError

    @classmethod
    def not_applicable(cls, net, estimator: str, rule, settings: dict) -> str | None:
        """Why ``estimator`` (with the learning ``rule``) cannot run on ``net`` here; None if it
        can."""
        return None


@torch.no_grad()
def evaluate(
    net: Network,
    params,
    ds: data.Dataset,
    free_steps: int,
    normalize=None,
    batch_size: int = 1000,
    shard: tuple[int, int] = (0, 1),
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict:
    """Error (%) and mean cost of the rate free phase's predictions on ``ds`` (or a shard of it),
    with state noise ``noise`` drawn from ``generator`` (none by default)."""

    def free(x):
        relaxed = relax(net, params, x, steps=free_steps, noise=noise, generator=generator)
        return net.dynamics.rates(net, relaxed.s)

    return score(net, params, ds, free, normalize, batch_size, shard)


def _rate_bias(cls) -> str:
    order = getattr(cls, "bias_order", None)
    if isinstance(order, int):
        return str(order)
    return {"holomorphic": "N", "oscillation": "K / hold (real: 2)"}[cls.name]


class RateEngine(Engine):
    """The rate dynamics: ``relax`` and a registered estimator (:mod:`spikeep.estimators`); the
    ``bptt`` baseline trains beside them (bias: none but the truncation). Training noise:
    ``[estimator] noise`` on the nudged phases, and on the free phase unless ``free_noise`` is
    false; ``noise_shared`` draws it once per neuron and step for the whole batch (evaluation
    draws ``eval_noise`` per sample)."""

    name = "rate"
    estimators = {
        **{k: _rate_bias(cls) for k, cls in estimators.ESTIMATORS.items()},
        **{k: "0 (truncated BPTT, not EP)" for k in estimators.BASELINES},
    }
    eval_settings = {"free_steps": "estimator.eval_free_steps", "noise": "estimator.eval_noise"}

    def __init__(self, protocol: Protocol, net: Network, training: bool = True):
        super().__init__(protocol, net, training)
        cfg = protocol.estimator
        if training:
            self.est = estimators.make(
                cfg.name,
                cfg.beta,
                cfg.nudged_steps,
                points=cfg.points,
                # C-EP moves the weights inside the estimator, at the initial learning rates
                lr={k: layer_lr(protocol.optimizer.lr, k) for k in net.param_names()},
                noise=cfg.noise,
                noise_shared=cfg.noise_shared,
                steps_per_period=cfg.steps_per_period,
                periods=cfg.periods,
                warmup=cfg.warmup,
                real=cfg.real,
                hold=cfg.hold,
            )
        self.free_steps, self.noise = cfg.free_steps, cfg.noise
        self.free_noise = cfg.noise if cfg.free_noise else 0.0
        self.noise_shared = cfg.noise_shared
        self.eval_steps = cfg.eval_free_steps or cfg.free_steps
        self.eval_noise = cfg.noise if cfg.eval_noise is None else cfg.eval_noise
        self.seed = protocol.train.seed

    def check(self, protocol: Protocol, net: Network) -> None:
        """Refuse, before training, an estimator that needs complex states on a network that is
        not holomorphic (it would fail at the first batch)."""
        est = protocol.estimator
        complex_states = (est.name == "holomorphic" and est.points > 2) or (
            est.name == "oscillation" and not est.real
        )
        if complex_states and not net.holomorphic:
            fix = "points = 2" if est.name == "holomorphic" else "real = true"
            raise ProtocolError(
                f"{protocol.source}: estimator.name: {est.name!r} needs complex states, but model "
                f"{protocol.model.name} uses {net.not_holomorphic}; set estimator.{fix} or use a "
                f"holomorphic model (sigmoid4, holotanh or tanh; softmax or avg pooling)"
            )

    def step(self, net, params, x, y, s0, g, rank, lr=None) -> Step:
        # noise-free runs draw as they always did; with free_noise = false the batch's noise
        # generator is made all the same (the epoch generator's stream is a noisy run's)
        gen = noise_generator(g, x.device, rank) if self.noise else g
        free = relax(
            net,
            params,
            x,
            steps=self.free_steps,
            s=s0,
            noise=self.free_noise,
            generator=gen,
            noise_shared=self.noise_shared,
        )
        rates = net.dynamics.rates(net, free.s)
        grads = self.est.estimate(net, params, x, y, free, generator=gen).grads
        return Step(rates, grads, free.s, {"free_residual": float(free.residual)})

    def evaluate(self, net, params, ds, normalize, shard, epoch) -> dict:
        dev = next(iter(params.values())).device
        gen = eval_generator(self.seed, epoch, dev, shard[0]) if self.eval_noise else None
        e = evaluate(
            net,
            params,
            ds,
            self.eval_steps,
            normalize,
            shard=shard,
            noise=self.eval_noise,
            generator=gen,
        )
        return {"test_error": e["error"], "test_loss": e["loss"]}

    def score(self, net, params, ds, normalize) -> dict:
        noise = self.eval_noise
        gen = torch.Generator().manual_seed(0) if noise else None
        e = evaluate(net, params, ds, self.eval_steps, normalize, noise=noise, generator=gen)
        return {**e, "noise": noise, "free_steps": self.eval_steps}

    @classmethod
    def fidelity_point(cls, point, model_spec, s, problem, batch, seed) -> dict:
        import dataclasses

        from .fidelity.sweep import metrics
        from .gradcheck import gradcheck

        if s["dt"]:
            model_spec = dataclasses.replace(model_spec, dt=s["dt"])
        net = Network(model_spec)
        real = {"auto": not net.holomorphic, "complex": False, "cosine": True}[s["oscillation"]]
        r = gradcheck(
            model_spec,
            point.estimator,
            s["beta"],
            s["points"],
            batch,
            seed,
            "float64",
            s["free_steps"],
            s["nudged_steps"],
            noise=s["noise"],
            steps_per_period=s["steps_per_period"],
            periods=s["periods"],
            warmup=s["warmup"],
            real=real,
            problem=problem,
        )
        out = metrics(r)
        out["dt"] = model_spec.dt
        if point.estimator == "oscillation":
            out["oscillation"] = "cosine" if real else "complex"
        return out

    @classmethod
    def not_applicable(cls, net, estimator: str, rule, settings: dict) -> str | None:
        if estimator == "holomorphic" and not net.holomorphic:
            return f"holomorphic EP needs a holomorphic network ({net.not_holomorphic} is not)"
        if estimator == "oscillation" and settings["oscillation"] == "complex":
            if not net.holomorphic:
                return (
                    f"the complex oscillation needs a holomorphic network "
                    f"({net.not_holomorphic} is not); use oscillation = 'cosine'"
                )
        return None


def noise_generator(g: torch.Generator, device, rank: int) -> torch.Generator:
    """A generator on ``device`` for one batch's state noise, seeded by a draw from the epoch
    generator ``g`` (checkpointed, so a resumed run draws the same noise) and the rank."""
    seed = int(torch.randint(0, 2**62, (1,), generator=g)) + rank
    return torch.Generator(device=device).manual_seed(seed)


def eval_generator(seed: int, epoch: int, device, rank: int) -> torch.Generator:
    """The state noise's generator of the test pass after ``epoch``."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch + 7_919 * (rank + 1))
