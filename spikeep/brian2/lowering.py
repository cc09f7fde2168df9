r"""Lowering: a dense model spec and its parameters become Brian2 neurons and synapses.

For every dynamic layer ``l`` (``B`` copies of the network side by side, one per sample of a
batch; unit ``i`` of copy ``c`` is neuron ``c n_l + i``) the equations are generated from the spec:

    tau_syn ds/dt = -s + b + I_x + I_teach        (the state s: a synaptic current)
    <the neuron model's equation for v, with rho(s)>   (spikeep.brian2.neurons)
    tau_trace dr/dt = -r                            (+ 1/(r_max tau_trace) per spike: r ~ rho(s))
    I_teach = beta(t) (y - r)                       (output layer only: the MSE teaching current)

and each coupling ``W_l`` is *one* ``Synapses`` object from layer ``l-1`` to layer ``l`` whose
weight ``w`` serves both directions, as in the energy: a presynaptic spike adds
``w / (r_max tau_syn)`` to ``s_post`` (``W r``), a postsynaptic spike adds it to ``s_pre``
(``W^T r``). Averaged, ``s`` settles at ``W_l r_{l-1} + W_{l+1}^T r_{l+1} + b + teaching`` and the
rates at ``r = rho(s)``: the fixed point of the rate engine's dynamics, nudged by
``-beta dC/dr = beta (y - r)``.

The input ``x`` (``[spiking] input``): ``"poisson"``, spike trains at ``r_max x`` that drive layer 1
through spiking synapses; or ``"current"``, the constant current ``I_x = W_1 x``, summed once per
sample by a slow ``drive`` group and linked into layer 1 (no input spikes at all: the input
layer's cost falls from one event per input spike and target to one product per synapse per
sample). Inputs and targets are 2-D ``TimedArray`` s (``x_t``, ``y_t``: one row per sample, one
column per neuron of all copies), so a run of many samples is one simulation.

:func:`build` returns a :class:`SpikingNetwork`; its ``network`` is a plain ``brian2.Network``
(add monitors to it), its ``groups`` and ``synapses`` the objects by layer.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field

import brian2 as b2
import numpy as np
import torch
from brian2.devices.cpp_standalone.device import CPPStandaloneDevice
from brian2.synapses.synapses import SynapticPathway

from ..spec import ModelSpec, Spiking
from . import inputs, kernels, neurons
from .rules import Rule
from .schedules import Schedule

__all__ = ["SpikingNetwork", "build", "layer_equations", "namespace"]


def namespace(cfg: Spiking, schedule: Schedule) -> dict:
    """The constants the generated code refers to, with units."""
    return {
        "r_max": cfg.rate_max * b2.Hz,
        "tau_syn": cfg.tau_syn * b2.second,
        "tau_trace": cfg.tau_trace * b2.second,
        "tau_mem": cfg.tau_mem * b2.second,
        "t_ref": cfg.refractory * b2.second,
        "beta_abs": schedule.beta,
        "omega": schedule.omega * b2.Hz,
    }


def layer_equations(
    spec: ModelSpec,
    rule: Rule,
    *,
    input_current: bool,
    output: bool,
    linked: bool = True,
    trace: bool = True,
) -> b2.Equations:
    """The equations of one dynamic layer (module docstring), generated from the spec;
    ``linked``: ``I_x`` is linked to the slow ``drive`` group (else a plain variable that
    :func:`spikeep.brian2.kernels.input_step` writes); ``trace``: the layer has the trace
    ``r`` (needed by the teaching current and the ``stdp`` rule only)."""
    cfg = spec.spiking
    model = neurons.get(cfg.neuron)
    drives = ["b"] + (["I_x"] if input_current else []) + (["I_teach"] if output else [])
    lines = [
        f"ds/dt = ({' + '.join(drives)} - s) / tau_syn : 1",
        model.equations.format(rho=neurons.rho_expression(spec.activation, "s")),
        "dr/dt = -r / tau_trace : 1" if trace or output else "",
        "b : 1",
        rule.neuron_variables(),
    ]
    if input_current:
        lines.append("I_x : 1 (linked)" if linked else "I_x : 1")
    if output:
        beta = "beta_abs * cos(omega * t)" if rule.schedule.oscillating else "beta_t(t)"
        lines += ["y = y_t(t, i) : 1", f"I_teach = {beta} * (y - r) : 1"]
    return b2.Equations("\n".join(lines))


@dataclass
class SpikingNetwork:
    """A lowered network.

    Attributes:
        network: the ``brian2.Network`` holding every object (add monitors to it).
        groups: ``NeuronGroup`` per layer, the input first (``B n_l`` neurons each).
        synapses: ``Synapses`` per coupling, ``synapses[l - 1]`` holding ``W_l`` (``g``: the rule's
            summed estimate of ``+dL/dW_l``).
        drive: the slow group carrying ``I_x = W_1 x`` (``input = "current"``), else ``None``.
        timed: the ``TimedArray`` s by name (``x_t``, ``y_t``, and the schedule's tables).
        spec, schedule, rule, copies, samples: what was lowered.
        pre_major: per coupling, whether its synapses are stored input-major (``W_1`` under
            ``build(fast=True)``); :meth:`to_synapses` and :meth:`from_synapses` convert.
        sample_clock: the clock of the once-per-sample objects under ``build(fast=True)``.
    """

    network: b2.Network
    groups: list
    synapses: list
    drive: object
    timed: dict
    spec: ModelSpec
    schedule: Schedule
    rule: Rule
    copies: int
    samples: int
    done: int = 0
    sizes: list = field(default_factory=list)
    pre_major: list = field(default_factory=list)
    sample_clock: object = None

    def to_synapses(self, layer: int, W) -> np.ndarray:
        """``W_layer`` (``(n_l, n_{l-1})``, tensor or array) as the values of its synapses' ``w``,
        every copy the same, in the order its synapses were created (:func:`dense_pairs`)."""
        W = _as_numpy(W)
        W = W.T if layer - 1 < len(self.pre_major) and self.pre_major[layer - 1] else W
        return np.tile(np.ascontiguousarray(W).ravel(), self.copies)

    def from_synapses(self, layer: int, values) -> np.ndarray:
        """A synaptic variable of coupling ``layer`` as an array ``(copies, n_l, n_{l-1})``."""
        n_post, n_pre = self.sizes[layer], self.sizes[layer - 1]
        values = np.asarray(values)
        if layer - 1 < len(self.pre_major) and self.pre_major[layer - 1]:
            return values.reshape(self.copies, n_pre, n_post).transpose(0, 2, 1)
        return values.reshape(self.copies, n_post, n_pre)

    @property
    def cfg(self) -> Spiking:
        return self.spec.spiking

    def run(self, samples: int | None = None, **kwargs) -> None:
        """Simulate ``samples`` more samples (default: all that were lowered). The first run adds
        :func:`closing_time`, at whose start the last sample is closed (its rates stored, its update
        applied)."""
        n = self.samples - self.done if samples is None else samples
        if n < 1 or self.done + n > self.samples:
            raise ValueError(
                f"{self.done} of {self.samples} lowered samples are done; cannot run {n} more"
            )
        extra = closing_time(self.cfg.dt, self.schedule.duration) if self.done == 0 else 0.0
        kwargs.setdefault("namespace", {})  # every object has its own: never the caller's locals
        self.network.run((n * self.schedule.duration + extra) * b2.second, **kwargs)
        self.done += n

    def rates(self, name: str = "rho0") -> list[np.ndarray]:
        """Per layer (input first), the last closed sample's accumulator ``name``, shape
        ``(copies, n_l)``: ``rho<k>`` the rates of phase ``k`` (units of ``r_max``); the input
        layer under ``input = "current"`` gives ``x``."""
        out = []
        for group, n in zip(self.groups, self.sizes, strict=True):
            values = group.x_prev[:] if name not in group.variables else group.variables[name]
            values = np.asarray(values.get_value() if hasattr(values, "get_value") else values)
            out.append(values.reshape(self.copies, n).copy())
        return out

    def gradient(self) -> dict[str, torch.Tensor]:
        """The rule's estimate of ``+dL/dtheta``, averaged over copies and samples done: name ->
        float64 tensor, shapes of the parameters (``W_l``: ``(n_l, n_{l-1})``)."""
        count = self.copies * self.done
        out = {}
        for layer, syn in enumerate(self.synapses, start=1):
            n_post = self.sizes[layer]
            g = self.from_synapses(layer, syn.g[:]).sum(0) / count
            gb = np.asarray(self.groups[layer].gb[:]).reshape(self.copies, n_post).sum(0) / count
            out[f"W{layer}"] = torch.from_numpy(g)
            out[f"b{layer}"] = torch.from_numpy(gb)
        return out

    def params(self) -> dict[str, torch.Tensor]:
        """The current weights and biases of copy 0, float64 tensors."""
        out = {}
        for layer, syn in enumerate(self.synapses, start=1):
            n_post = self.sizes[layer]
            out[f"W{layer}"] = torch.from_numpy(self.from_synapses(layer, syn.w[:])[0].copy())
            out[f"b{layer}"] = torch.from_numpy(
                np.asarray(self.groups[layer].b[:]).reshape(self.copies, n_post)[0].copy()
            )
        return out


def closing_time(dt: float, duration: float) -> float:
    """The time (s, whole steps ``dt``) a run adds after its last sample, so that the
    once-per-sample clocks (``dt = duration``) tick once more and close that sample.

    Brian2 rounds a run's end down to a clock's last step when it lies within
    ``Clock.epsilon_dt`` (1e-4) of that clock's ``dt``: one step of 0.2 ms after a sample of 2 s
    or more would not count, the last sample would never be closed, and its rates and update
    would read zero."""
    steps = max(1, math.ceil(2 * b2.Clock.epsilon_dt * duration / dt))
    return steps * dt


def check_inputs(x: np.ndarray, cfg: Spiking) -> None:
    """Refuse Poisson inputs above 1: an input fires at ``r_max x``, never faster than
    ``r_max`` (the fast path's :func:`spikeep.brian2.kernels.frozen_input` relies on it)."""
    if cfg.input != "current" and x.size and float(x.max()) > 1:
        raise ValueError(
            f"Poisson input x must lie in [0, 1] (a rate of r_max x), got {float(x.max())!r}"
        )


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().to(torch.float64).cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def dense_pairs(
    n_pre: int, n_post: int, copies: int, pre_major: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Presynaptic and postsynaptic indices of ``copies`` dense blocks, synapse
    ``(c n_post + i) n_pre + j`` joining unit ``j`` to unit ``i`` of copy ``c`` (``W[i, j]``);
    ``pre_major``: synapse ``(c n_pre + j) n_post + i`` (``W^T`` of each copy in row-major order,
    the order :func:`spikeep.brian2.kernels.input_step` reads)."""
    if pre_major:
        c, j, i = np.meshgrid(np.arange(copies), np.arange(n_pre), np.arange(n_post), indexing="ij")
    else:
        c, i, j = np.meshgrid(np.arange(copies), np.arange(n_post), np.arange(n_pre), indexing="ij")
    return (c * n_pre + j).ravel(), (c * n_post + i).ravel()


def build(
    spec: ModelSpec,
    params: dict,
    x,
    y=None,
    schedule: Schedule | None = None,
    rule: str = "endpoint",
    eta: float | dict[str, float] = 0.0,
    seed: int = 0,
    freeze: bool = True,
    fast: bool = False,
) -> SpikingNetwork:
    """Lower ``spec`` with ``params`` for the inputs ``x`` and targets ``y``.

    Args:
        spec: a dense model spec with a ``[spiking]`` section.
        params: ``W1, b1, ...`` as the rate engine has them (tensors or arrays; ``W_l`` of shape
            ``(n_l, n_{l-1})``).
        x: inputs, shape ``(samples, copies, n_0)`` (or ``(copies, n_0)`` for one sample), at
            most 1 for Poisson input (:func:`check_inputs`).
        y: targets, shape ``(samples, copies, n_L)``; zeros when ``None`` (free runs).
        schedule: one sample's time course (:mod:`spikeep.brian2.schedules`; default a free phase).
        rule: ``"endpoint"`` or ``"stdp"`` (:mod:`spikeep.brian2.rules`).
        eta: learning rate (per parameter name, or one for all); 0 only measures the estimate.
        seed: seeds Brian2's random numbers (Poisson input).
        freeze: call ``gc.freeze()`` once built, so that ``Network.run``'s collection does not
            walk the objects again (runtime mode).
        fast: cpp_standalone only: one clock per time step (every group and synapse at ``dt``
            shares it, every once-per-sample object the other), and the hand-written C++ of
            :mod:`spikeep.brian2.kernels` (the same arithmetic; :mod:`spikeep.brian2.standalone`):
            under ``input = "current"`` the input layer's update and drive
            (:func:`~spikeep.brian2.kernels.input_step`) instead of ``W_1`` 's generated code and
            the ``drive`` group; under Poisson input, with a rule that does not learn at spikes,
            the input spikes' delivery through ``W_1``
            (:func:`~spikeep.brian2.kernels.input_spikes`) instead of Brian2's spike queue;
            under ``"poisson_frozen"`` the input spikes listed from the table
            (:func:`~spikeep.brian2.kernels.frozen_input`) instead of a thresholder that reads
            it for every input neuron; no spike traces where nothing reads them.

    Returns:
        a :class:`SpikingNetwork`.
    """
    from . import schedules

    cfg = spec.spiking
    if cfg is None:
        raise ValueError(f"{spec.source}: the brian2 engine needs a [spiking] section")
    schedule = schedule or schedules.free(cfg)
    schedule.check(cfg)
    rule_ = Rule(rule, schedule, cfg.stdp_trace)
    x = _as_numpy(x)
    x = x[None] if x.ndim == 2 else x
    sizes = [layer.size for layer in spec.layers]
    if x.ndim != 3 or x.shape[2] != sizes[0]:
        raise ValueError(
            f"x must have shape (samples, copies, {sizes[0]}) or (copies, {sizes[0]}), "
            f"got {tuple(x.shape)}"
        )
    samples, copies = x.shape[:2]
    y = np.zeros((samples, copies, sizes[-1])) if y is None else _as_numpy(y)
    y = y[None] if y.ndim == 2 else y
    if y.shape != (samples, copies, sizes[-1]):
        raise ValueError(
            f"y must have shape {(samples, copies, sizes[-1])} to match x, got {tuple(y.shape)}"
        )
    for k in range(1, len(sizes)):
        for name, shape in ((f"W{k}", (sizes[k], sizes[k - 1])), (f"b{k}", (sizes[k],))):
            if name not in params or tuple(params[name].shape) != shape:
                got = tuple(params[name].shape) if name in params else "missing"
                raise ValueError(f"params[{name!r}] must have shape {shape}, got {got}")

    # every duration is a whole number of steps (Schedule.grid checked it); the float ratios of
    # the clocks are not exact integers, which Brian2 would warn about at every run
    b2.BrianLogger.suppress_name("timedarray")
    b2.seed(seed)
    dt = cfg.dt * b2.second
    T = schedule.duration * b2.second
    grid = schedule.grid(cfg.dt)
    ns = namespace(cfg, schedule)
    timed = {
        "x_t": b2.TimedArray(x.reshape(samples, -1), dt=T, name="x_t"),
        "y_t": b2.TimedArray(y.reshape(samples, -1), dt=T, name="y_t"),
    }
    for name, values in schedule.tables(cfg.dt, samples).items():
        unit = 1 if name == "beta_t" else b2.Hz  # the weights and gates are per second
        timed[name] = b2.TimedArray(values * unit, dt=grid * b2.second, name=name)
    ns.update(timed)
    current = cfg.input == "current"
    if fast and not isinstance(b2.get_device(), CPPStandaloneDevice):
        raise ValueError("fast=True lowers for cpp_standalone only (brian2.set_device)")
    kernel = fast and current
    traces = not fast or rule_.name == "stdp"  # fast: r where it is read (and the output layer)
    model = neurons.get(cfg.neuron)
    # fast: two clocks in all, so the scheduler compares two per step instead of one per object
    step = {"clock": b2.Clock(dt, name="step_clock")} if fast else {"dt": dt}
    per_sample = {"clock": b2.Clock(T, name="sample_clock")} if fast else {"dt": T}
    lr = (lambda k: eta.get(k, 0.0)) if isinstance(eta, dict) else (lambda k: eta)  # noqa: E731

    # input layer: the rate x of the sample (x_prev: of the sample just closed)
    inp_eqs = "x : 1\nx_prev : 1"
    close_input = "x_prev = x\nx = x_t(t, i)"
    # fast, frozen Poisson input: a kernel lists each step's input spikes from the table
    listed = fast and cfg.input == "poisson_frozen"
    if current:
        inp = b2.NeuronGroup(copies * sizes[0], inp_eqs, **step, namespace=ns, name="layer0")
    else:
        check_inputs(x, cfg)
        inp_ns = dict(ns) if listed else ns
        inp_eqs += ("\ndr/dt = -r / tau_trace : 1" if traces else "") + "\n"
        inp_eqs += rule_.neuron_variables()
        inp_eqs += "\nb : 1"  # unused: keeps the closing code uniform
        threshold = "rand() < x * r_max * dt"
        if listed:  # never evaluated: ListedCodeObject keeps the kernel's list
            threshold = "False"
            inp_eqs += "\nlisted : 1 (shared)"
            u = inputs.frozen_table(cfg, schedule, sizes[0], seed)
            inp_ns["t_replay"] = inputs.replay_length(schedule) * b2.second
            inp_ns["row_t"] = b2.TimedArray(np.arange(len(u), dtype=float), dt=dt, name="row_t")
        elif cfg.input == "poisson_frozen":  # one realisation, replayed in every phase
            threshold = inputs.THRESHOLD
            ns.update(inputs.frozen_poisson(cfg, schedule, sizes[0], seed))
        inp = b2.NeuronGroup(
            copies * sizes[0],
            inp_eqs,
            threshold=threshold,
            reset=("r += 1 / (r_max * tau_trace)\n" if traces else "") + rule_.on_spike(),
            **step,
            namespace=inp_ns,
            name="layer0",
            codeobj_class=kernels.ListedCodeObject if listed else None,
        )
        if listed:
            # the rate bound r_max dt x <= r_max dt (x <= 1, check_inputs), with a margin
            bound = cfg.rate_max * cfg.dt * (1 + 1e-12)
            steps = round(schedule.duration / cfg.dt)
            fn = kernels.frozen_input(u, bound, inp, copies, steps, "_spikeep_layer0")
            inp.namespace["spikeep_layer0"] = fn
            inp.run_regularly(
                "listed = spikeep_layer0(row_t(t % t_replay), r_max * dt)",
                **step,
                when="thresholds",
                order=-1,
                name="layer0_spikes",
            )
        close_input = rule_.close_sample() + "\n" + close_input
    inp.run_regularly(close_input, **per_sample, when="start", order=0, name="layer0_close")
    groups, objects = [inp], [inp]
    empty_counts = rule_.per_step()
    if empty_counts and not current:
        inp.run_regularly(empty_counts, **step, when="start", order=1, name="layer0_counts")

    for k in range(1, len(sizes)):
        eqs = layer_equations(
            spec,
            rule_,
            input_current=current and k == 1,
            output=k == len(sizes) - 1,
            linked=not kernel,
            trace=traces,
        )
        g = b2.NeuronGroup(
            copies * sizes[k],
            eqs,
            threshold=model.threshold,
            reset="\n".join([model.reset, "r += 1 / (r_max * tau_trace)", rule_.on_spike()])
            if "r" in eqs.names
            else "\n".join([model.reset, rule_.on_spike()]),
            refractory=cfg.refractory * b2.second if model.refractory else False,
            method="euler",
            **step,
            namespace=ns,
            name=f"layer{k}",
            codeobj_class=kernels.CodeObject if fast else None,
        )
        g.b = np.tile(_as_numpy(params[f"b{k}"]), copies)
        g.eta_b = lr(f"b{k}")
        g.run_regularly(
            rule_.close_sample(), **per_sample, when="start", order=0, name=f"layer{k}_close"
        )
        if empty_counts:
            g.run_regularly(empty_counts, **step, when="start", order=1, name=f"layer{k}_counts")
        groups.append(g)
        objects.append(g)

    drive = None
    synapses, pre_major = [], []
    jump = "w / (r_max * tau_syn)"
    # fast: spikes that only transmit (no learning at spikes) go through C++ functions per step
    # instead of Brian2's spike queues
    transmit_only = fast and not (rule_.on_pre() or rule_.on_post())
    for k in range(1, len(sizes)):
        # W_1 input-major for the kernels that read it by input (input_step, input_spikes)
        pre_major.append(k == 1 and (kernel or (transmit_only and not current)))
        pre_idx, post_idx = dense_pairs(sizes[k - 1], sizes[k], copies, pre_major[-1])
        if k == 1 and kernel:
            # W_1 only holds w and g: the kernel updates them and sets layer 1's I_x
            syn = b2.Synapses(
                inp,
                groups[1],
                rule_.synapse_variables() + "\ndone : 1 (shared)",
                **step,
                namespace=dict(ns),
                name="W1",
            )
        elif k == 1 and current:
            # gate_post / rho_post: the learning rule reads layer 1's accumulators through links
            links = ["gate", *rule_.weights()]
            drive_eqs = "I_x : 1\n" + "\n".join(f"{v} : 1 (linked)" for v in links)
            # x and W1 change only at sample starts (W1's rules act once per sample): one
            # product per synapse per sample
            drive = b2.NeuronGroup(
                copies * sizes[1], drive_eqs, **per_sample, namespace=ns, name="drive1"
            )
            for v in links:
                setattr(drive, v, b2.linked_var(groups[1], v))
            groups[1].I_x = b2.linked_var(drive, "I_x")
            syn = b2.Synapses(
                inp,
                drive,
                rule_.synapse_variables() + "\nI_x_post = w * x_pre : 1 (summed)",
                **step,
                namespace=ns,
                name="W1",
            )
            objects.append(drive)
        else:
            clamped = k == 1  # the input is clamped: it receives no feedback
            delivered = transmit_only
            # stdp_expressed = "next_sample": spikes transmit w_now, the weight at the sample's
            # start, while the rule moves w at every spike
            held = rule_.name == "stdp" and cfg.stdp_expressed == "next_sample"
            sent = jump.replace("w /", "w_now /") if held else jump
            on_pre = "\n".join([f"s_post += {sent}", rule_.on_pre()])
            on_post = "\n".join(([] if clamped else [f"s_pre += {sent}"]) + [rule_.on_post()])
            syn = b2.Synapses(
                groups[k - 1],
                groups[k],
                rule_.synapse_variables()
                + ("\ndelivered : 1 (shared)" if delivered else "")
                + ("\nw_now : 1" if held else ""),
                on_pre=None if delivered else on_pre,
                on_post=None if delivered else on_post.strip() or None,
                **step,
                namespace=dict(ns),
                name=f"W{k}",
            )
            if delivered:
                kernel_of = kernels.input_spikes if clamped else kernels.spike_step
                fn = kernel_of(jump, syn, groups[k - 1], groups[k], copies, f"_spikeep_W{k}_spikes")
                syn.namespace[f"spikeep_W{k}_spikes"] = fn
                syn.run_regularly(
                    f"delivered = spikeep_W{k}_spikes(0)",
                    **step,
                    when="synapses",
                    name=f"W{k}_spikes",
                )
        if rule_.counts and isinstance(getattr(syn, "post", None), SynapticPathway):
            # the postsynaptic spikes' pathway after the neurons' resets, where a presynaptic
            # spike of the same step is in nw_pre already: such a pair is counted once, by it
            # (the presynaptic pathway, before the resets, does not see it in nw_post)
            syn.post.when = "after_resets"
        syn.connect(i=pre_idx, j=post_idx)
        W = _as_numpy(params[f"W{k}"])
        syn.w = np.tile(np.ascontiguousarray(W.T if pre_major[-1] else W).ravel(), copies)
        syn.eta = lr(f"W{k}")
        code = rule_.per_sample(current_input=k == 1 and current)
        if k == 1 and kernel:
            fn = kernels.input_step(
                rule_.input_dg(), syn, inp, groups[1], copies, samples, "_spikeep_W1"
            )
            syn.namespace["spikeep_W1"] = fn
            code = "done = spikeep_W1(eta)"
        if code:
            syn.run_regularly(code, **per_sample, when="start", order=1, name=f"W{k}_update")
        if "w_now" in syn.variables:  # at every sample's start, the first one's too
            syn.run_regularly("w_now = w", **per_sample, when="start", order=2, name=f"W{k}_now")
        synapses.append(syn)
        objects.append(syn)

    net = b2.Network(*objects)
    if freeze:
        gc.collect()
        gc.freeze()
    return SpikingNetwork(
        net,
        groups,
        synapses,
        drive,
        timed,
        spec,
        schedule,
        rule_,
        copies,
        samples,
        sizes=sizes,
        pre_major=pre_major,
        sample_clock=per_sample.get("clock"),
    )
