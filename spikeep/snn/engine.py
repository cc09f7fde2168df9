r"""The snntorch engine: a protocol with ``[train] engine = "snntorch"``.

The rate engine's loop (:mod:`spikeep.train`: batches, augmentation, momentum SGD, per-layer and
cosine learning rates, checkpoints, ``--resume``, several processes) with the spiking phases of
:mod:`spikeep.snn.estimators` in place of ``relax`` and the rate estimators: per batch

    free, nudged = spiking phases of [snntorch] settle + window steps   (free from zeros)
    g            = EP estimate of +dL/dtheta from their spike rates
    theta        = theta - lr_l (momentum v + g + weight_decay theta)   (as the rate engine)

``[snntorch]`` gives the :class:`~spikeep.snn.config.SNNConfig` (``tau``, ``decay``, ``settle``,
``window``, ``input``; times in steps), the nudged phases' ``nudged_settle`` and ``nudged_window``
(unset: ``settle`` and ``window``), and the spiking test pass's ``eval_settle`` and ``eval_window``
(0: the training values). Estimators: ``one-sided``, ``random-sign`` (one-sided with the sign of
``beta`` drawn per batch from the epoch's generator), ``symmetric`` (both nudged phases from the
free state) and ``oscillation`` (``real = true``: the cosine teaching current, ``[estimator]
steps_per_period``, ``periods``, ``warmup``), which here starts after a free phase, whose rates give
the training loss and error. Input spike trains (``input = "rate"``) are drawn from a generator
seeded per batch from the epoch's generator, so a resumed run draws the same spikes and reaches the
weights of an uninterrupted one (CPU).

Metrics per epoch (``metrics.jsonl``), from the spiking network unless named ``_rate``:

- ``loss``, ``train_error``: the free phase's output rates of each training batch;
- ``test_error``, ``test_loss``: a spiking free phase (``eval_settle + eval_window`` steps) on the
  test set, in batches of :data:`EVAL_BATCH` (1000 with ``input = "rate"``, whose draws depend
  on the batch);
- ``test_error_rate``, ``test_loss_rate``: the rate engine's free phase on the same parameters
  (``[estimator] eval_free_steps``), which is what ``spikeep eval`` measures;
- ``test_spikes_per_sample``: spikes of the spiking test pass's free phase per test image (all
  layers; the first process's share under ``torchrun``);
- ``spikes_per_sample`` (all layers, all phases of a training step), ``ms_per_sample`` (wall time
  of the spiking phases per training sample), ``lr``, ``wall_s``.

Built with ``training=False`` (``spikeep eval``, or another engine's run testing in spikes every
epoch with ``[train] eval_engines = ["snntorch"]``), :meth:`SNNEngine.evaluate` gives the spiking
metrics alone (no rate reference: the run's own engine reports its own).
"""

from __future__ import annotations

import time

import torch

from ..batches import score
from ..engine import Engine, Step, evaluate
from ..protocol import Protocol, ProtocolError, refuse
from . import estimators
from .config import SNNConfig
from .phases import gain, phase

__all__ = ["SNNEngine", "check", "ESTIMATORS"]

# the spiking estimators of spikeep.snn.estimators, and random-sign drawn here per batch
ESTIMATORS = {
    **{k: str(v) for k, v in estimators.BIAS_ORDER.items()},
    "random-sign": "1",
}
GRADCHECK_ESTIMATORS = tuple(estimators.ESTIMATORS)  # random-sign draws its sign in training
# test images per spiking free phase with current input: each image's spikes do not depend on
# its batch, and 250 cost 0.91x the CPU time per image of 1000 (docs/snn.md, "Speed")
EVAL_BATCH = 250


def check_model(protocol: Protocol, net) -> None:
    """Refuse a network whose activation no integrate-and-fire neuron has (what evaluation
    needs too)."""
    try:
        gain(net)
    except ValueError as err:
        raise ProtocolError(f"{protocol.source}: train.engine: 'snntorch': {err}") from None


def check(protocol: Protocol, net) -> None:
    """Refuse, in one line, what the snntorch engine cannot train."""
    src, est = protocol.source, protocol.estimator

    def fail(key: str, msg: str):
        raise ProtocolError(f"{src}: {key}: {msg}")

    check_model(protocol, net)
    SNNEngine.check_estimator(protocol)
    if est.name == "oscillation" and not est.real:
        fail("estimator.real", "the snntorch oscillation is the real beta cos(wt): set real = true")
    refused = {
        "train.persistent": (protocol.train.persistent, "has no stored free states: set false"),
        "snntorch.nudged_settle": (
            est.name == "oscillation" and protocol.snntorch.nudged_settle is not None,
            "runs no nudged phases with the oscillation: remove the key",
        ),
        "snntorch.nudged_window": (
            est.name == "oscillation" and protocol.snntorch.nudged_window is not None,
            "runs no nudged phases with the oscillation: remove the key",
        ),
        "estimator.noise": (est.noise != 0, "spikes are its noise: set 0"),
        "data.normalize": (
            protocol.data.normalize and protocol.snntorch.input == "rate",
            "codes x as spike probabilities with input = 'rate': set false",
        ),
    }
    refuse(protocol, "snntorch", refused)


class SNNEngine(Engine):
    """Spiking phases for :mod:`spikeep.train`'s loop (module docstring)."""

    name = "snntorch"
    estimators = ESTIMATORS
    spiking = True

    def __init__(self, protocol: Protocol, net, training: bool = True):
        super().__init__(protocol, net, training)  # training: check() below
        self.training = training
        if not training:
            check_model(protocol, net)
        s, est = protocol.snntorch, protocol.estimator
        nudged = {"nudged_settle": s.nudged_settle, "nudged_window": s.nudged_window}
        self.config = SNNConfig(s.decay, s.tau, s.settle, s.window, s.input, **nudged)
        self.eval_config = SNNConfig(
            s.decay,
            s.eval_tau or s.tau,
            s.eval_settle or s.settle,
            s.eval_window or s.window,
            s.input,
        )
        self.method, self.beta = est.name, est.beta
        self.options = (
            {
                "steps_per_period": est.steps_per_period,
                "periods": est.periods,
                "warmup": est.warmup,
                "from_free": True,
            }
            if est.name == "oscillation"
            else {}
        )
        self.eval_steps = est.eval_free_steps or est.free_steps
        self.seed = protocol.train.seed

    def check(self, protocol: Protocol, net) -> None:
        check(protocol, net)

    def _input_generator(self, g: torch.Generator, salt: int) -> torch.Generator | None:
        """A CPU generator for the input spike trains, seeded by a draw from ``g`` (nothing is
        drawn with current input, so such runs use ``g`` only for the batch order)."""
        if self.config.input != "rate":
            return None
        return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)) + salt)

    def step(self, net, params, x, y, s0, g, rank, lr=None) -> Step:
        name, beta = self.method, self.beta
        if name == "random-sign":
            name = "one-sided"
            beta = beta if int(torch.randint(0, 2, (1,), generator=g)) else -beta
        gen = self._input_generator(g, rank)
        start = time.perf_counter()
        out = estimators.estimate(name, net, params, x, y, beta, self.config, gen, **self.options)
        ms = 1e3 * (time.perf_counter() - start) / x.shape[0]
        extra = {"spikes_per_sample": out.spikes, "ms_per_sample": ms}
        return Step(out.free.rates, out.grads, None, extra)

    def evaluate(self, net, params, ds, normalize, shard, epoch) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        spiking = self._spiking_score(net, params, ds, normalize, shard, g)
        out = {
            "test_error": spiking["error"],
            "test_loss": spiking["loss"],
            "test_spikes_per_sample": spiking["spikes_per_sample"],
        }
        if self.training:
            rated = evaluate(net, params, ds, self.eval_steps, normalize, shard=shard)
            out |= {"test_error_rate": rated["error"], "test_loss_rate": rated["loss"]}
        return out

    def _spiking_score(self, net, params, ds, normalize, shard, g) -> dict:
        """Error, loss and spikes per sample (all layers; this process's share) of the spiking
        free phase (``eval_config``) on ``ds``; input spikes (rate coding) drawn from generators
        seeded by draws from ``g``."""
        cfg = self.eval_config
        spikes = []  # (spikes per sample, samples) per batch

        def free(x):
            out = phase(net, params, x, config=cfg, generator=self._input_generator(g, 0))
            spikes.append((out.spikes, x.shape[0]))
            return out.rates

        batch = EVAL_BATCH if cfg.input == "current" else 1000
        result = score(net, params, ds, free, normalize, batch_size=batch, shard=shard)
        n = sum(b for _, b in spikes)
        result["spikes_per_sample"] = sum(s * b for s, b in spikes) / max(n, 1)
        return result

    def score(self, net, params, ds, normalize) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003)
        cfg = self.eval_config
        return {
            **self._spiking_score(net, params, ds, normalize, (0, 1), g),
            "settle": cfg.settle,
            "window": cfg.window,
        }

    gradcheck_estimators = GRADCHECK_ESTIMATORS

    @classmethod
    def gradcheck(cls, model, args) -> dict:
        from .gradcheck import gradcheck

        return gradcheck(
            model,
            args.estimator,
            args.beta,
            args.time_steps,
            args.batch,
            args.seed,
            args.tau,
            input=args.input,
            periods=args.periods,
            warmup=args.warmup,
            free_steps=args.free_steps,
        )

    @classmethod
    def gradcheck_header(cls, r: dict) -> str:
        return (
            f"engine snntorch ({r['input']} input, tau {r['tau']:g} steps)  {r['estimator']}  "
            f"beta {r['beta']}  batch {r['batch']}  {r['time_steps']} steps per "
            f"{'period' if r['steps_per_period'] else 'phase'}"
        )

    @classmethod
    def fidelity_point(cls, point, model_spec, s, problem, batch, seed) -> dict:
        from ..fidelity.sweep import metrics
        from .gradcheck import gradcheck

        r = gradcheck(
            model_spec,
            point.estimator,
            s["beta"],
            s["time_steps"],
            batch,
            seed,
            s["tau"],
            input=s["input"],
            periods=s["periods"],
            warmup=s["warmup"],
            problem=problem,
        )
        return metrics(r)

    @classmethod
    def not_applicable(cls, net, estimator: str, rule, settings: dict) -> str | None:
        if rule == "stdp":
            return "snntorch has no STDP rule (its estimates are windowed spike-count products)"
        try:
            gain(net)
        except ValueError as err:
            return str(err)
        return None
