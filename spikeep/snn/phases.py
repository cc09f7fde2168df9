r"""Spiking phases: the network's energy realised by snntorch neurons, batched in torch.

Per dynamic layer ``l`` the engine holds membranes ``v_l`` and spike traces ``r_l`` (shapes
``(B, *layer.shape)``), and at every step ``t``, with the nudging ``beta_t``::

    I_l  = g dPhi_beta/dr_l (r_t)                         (the same closed form as the rate engine)
    z_l, v_l = Neuron(decay).step(I_l, v_l)               (spikes, :mod:`spikeep.snn.neuron`)
    r_l  <- r_l + (z_l - r_l) / tau                       (trace: the rate estimate)

``dPhi_beta/dr`` is :meth:`spikeep.energy.Network.dphi` evaluated on the traces (no second copy of
the maths: dense and conv couplings, pooling, the MSE teaching current ``beta (y - r_out)`` or the
cross-entropy readout's, all come from there); ``g`` is the activation's slope (1 for
``hard_sigmoid``, 1/2 for ``hard_sigmoid_half``), so that an integrate-and-fire neuron fires at
``rho(s)`` spikes per step with ``s = dPhi/dr`` (:mod:`spikeep.snn.rate`). At equilibrium the
traces satisfy ``r = rho(dPhi_beta/dr(r))``: the fixed point of the rate engine's dynamics.

The input: ``x`` gives layer 1 the constant current ``c_1(W_1, x)`` (``input = "current"``), or is
coded as Bernoulli spike trains of ``x`` spikes per step by ``snntorch.spikegen.rate``, filtered
by the same trace, whose ``c_1(W_1, x_trace)`` then drives layer 1 (``input = "rate"``; ``x`` in
[0, 1]; the draws come from an explicit, seeded ``torch.Generator``).

A phase runs ``settle + window`` steps at one ``beta`` and returns the rate estimates ``count /
window`` (spikes counted after ``settle``) and the final :class:`SNNState`; the next phase starts
from it (the nudged phases of EP from the free state, passed back in). Everything runs under
``torch.no_grad()``: EP needs no surrogate gradient.

The step is fused and in place (:func:`_advance`): a phase copies the state it starts from once,
then updates membranes, traces and spike counts in their own buffers, and keeps the last step's
spikes ``z``, which *are* snntorch's delayed reset (``H(v_{t-1} - 1)``: the clip to [0, 2] keeps
which side of the threshold ``v`` is on). It gives bitwise the spikes, membranes and traces of
snntorch's own ``Leaky`` module (:class:`~spikeep.snn.neuron.Neuron`), which ``reference=True``
steps instead (the slower path, kept for tests and benchmarks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import snntorch.spikegen
import torch
from torch import Tensor

from ..dynamics import DivergenceError
from .config import SNNConfig
from .neuron import V_MAX, Neuron, NeuronState

__all__ = ["SNNState", "Phase", "gain", "init_state", "simulate", "phase"]

_BLOCK = 64  # input spike trains are drawn this many steps at a time


class SNNState(NamedTuple):
    """Explicit state of a spiking network: membranes ``v`` and traces ``r`` per dynamic layer
    (shapes ``(B, *layer.shape)``, ``v`` in threshold units, ``r`` in spikes per step), and the
    input's trace ``x`` (``input = "rate"``; ``None`` for current input)."""

    v: tuple[Tensor, ...]
    r: tuple[Tensor, ...]
    x: Tensor | None


class Phase(NamedTuple):
    """One phase: ``rates`` (spike counts over the window / window, per dynamic layer), the
    final ``state``, and ``spikes`` (all spikes of the phase, summed over layers, per sample)."""

    rates: tuple[Tensor, ...]
    state: SNNState
    spikes: float


def gain(net) -> float:
    """``g`` of the module docstring: the slope of the network's activation, which must be a
    hard sigmoid ``clip(g s, 0, 1)`` (the integrate-and-fire neuron's rate); a ValueError
    otherwise."""
    act = net.act
    if act.slope is None or act.box is None or act.box[0] != 0 or act.slope * act.box[1] != 1:
        raise ValueError(
            f"the snntorch engine needs a hard-sigmoid activation (the rate of an integrate-and-"
            f"fire neuron: hard_sigmoid or hard_sigmoid_half), but {net.spec.source} uses "
            f"{net.spec.activation!r}"
        )
    if act.slope != 1 and net.spec.dynamics == "energy":
        # spiking rates settle at r = rho(dPhi/dr(r)), the prototypical (and alternating) fixed
        # point; the gradient flow's is r = rho(rho' dPhi/dr(r)), the same only for slope 1
        raise ValueError(
            f"the snntorch engine realises the prototypical fixed point r = rho(dPhi/dr(r)); "
            f"with {net.spec.activation!r} (slope {act.slope:g}) the {net.spec.dynamics!r} "
            f'dynamics of {net.spec.source} settle elsewhere: set dynamics = "prototypical"'
        )
    return act.slope


def init_state(net, x: Tensor, config: SNNConfig) -> SNNState:
    """All-zero membranes and traces for the batch ``x`` (shape ``(B, *input_shape)``)."""
    zeros = net.zeros(x)
    return SNNState(
        tuple(torch.zeros_like(z) for z in zeros),
        zeros,
        torch.zeros_like(x) if config.input == "rate" else None,
    )


def _check_input(x: Tensor, config: SNNConfig):
    if config.input == "rate" and not bool(((x >= 0) & (x <= 1)).all()):
        lo, hi = float(x.min()), float(x.max())
        raise ValueError(
            f"input = 'rate' codes x as spike probabilities per step, so x must lie in [0, 1]; "
            f"got values in [{lo:g}, {hi:g}]"
        )


def _input_spikes(x: Tensor, steps: int, generator: torch.Generator) -> Tensor:
    """``(steps, *x.shape)`` Bernoulli spike trains from ``snntorch.spikegen.rate``, drawn
    reproducibly: the global RNG is forked and seeded from ``generator``."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    devices = [x.device] if x.device.type != "cpu" else []
    with torch.random.fork_rng(devices=devices, device_type=x.device.type):
        torch.manual_seed(seed)
        return snntorch.spikegen.rate(x, num_steps=steps)


@torch.no_grad()
def simulate(
    net,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor | None,
    state: SNNState,
    steps: int,
    beta: Callable[[int], float],
    config: SNNConfig,
    generator: torch.Generator | None = None,
    count_from: int | None = None,
    observe: Callable[[int, tuple[Tensor, ...], float], None] | None = None,
    reference: bool = False,
) -> tuple[SNNState, tuple[Tensor, ...], Tensor]:
    """Run ``steps`` steps; the step-by-step form that :func:`phase` and the oscillation use.

    Args:
        net, params: the :class:`~spikeep.energy.Network` and its rate-engine parameters.
        x, y: inputs ``(B, *input_shape)`` and targets (needed when ``beta`` is ever non-zero).
        state: the start :class:`SNNState` (:func:`init_state`, or a previous phase's).
        beta: ``t -> beta_t``, the nudging at step ``t`` (0-based).
        generator: draws of the input spike trains (``input = "rate"``).
        count_from: spikes are counted from this step on (default: never).
        observe: called as ``observe(t, r, beta_t)`` after every step with the new traces (its
            own copies: it may keep them).
        reference: step snntorch's ``Leaky`` module instead of the fused update (same numbers,
            slower).

    Returns:
        ``(state, counts, spikes)``: the final state, the spike counts per layer (zeros when
        nothing was counted) and the number of spikes per sample (a 0-d tensor).
    """
    g = gain(net)
    _check_input(x, config)
    if config.input == "rate" and generator is None:
        generator = torch.Generator(device=x.device).manual_seed(config.seed)
    if reference:
        return _simulate_reference(
            net, params, x, y, state, steps, beta, config, generator, count_from, observe, g
        )
    neuron = Neuron(config.decay)
    decay, k = neuron.beta, 1.0 / config.tau
    # g dPhi/dr from g-scaled couplings and biases (and beta g for the nudge): the same numbers
    # as scaling the currents when g is a power of two (scaling by it is exact), one pass less
    scaled = g != 1 and math.frexp(g)[0] == 0.5
    if scaled:
        params = _scaled(net, params, g)
    kernels = net.kernels(params)  # a conv's folded kernel, once per phase
    # the phase's own buffers: the state it starts from may start another phase too
    v = tuple(vl.clone() for vl in state.v)
    r = tuple(rl.clone() for rl in state.r)
    z = tuple((vl > 1.0).to(vl.dtype) for vl in v)  # the spikes of the step before: the reset
    total = tuple(torch.zeros_like(vl) for vl in v)  # spikes per unit since the phase began
    counted = None  # total at count_from
    xr = None if state.x is None else state.x.clone()
    static = net.static_drive(params, x) if config.input == "current" else None
    block = None
    for t in range(steps):
        if t == count_from:
            counted = tuple(c.clone() for c in total)
        if config.input == "rate":
            if t % _BLOCK == 0:
                block = _input_spikes(x, min(_BLOCK, steps - t), generator)
            xr.lerp_(block[t % _BLOCK], k)
            static = net.static_drive(params, xr)
        beta_t = beta(t)
        h = net.dphi(params, r, static, y, g * beta_t if scaled else beta_t, kernels)
        for hl, vl, zl, rl, cl in zip(h, v, z, r, total, strict=True):
            _advance(hl.mul_(g) if g != 1 and not scaled else hl, vl, zl, rl, cl, decay, k)
        if observe is not None:
            observe(t, tuple(rl.clone() for rl in r), beta_t)
    if counted is None:
        counts = tuple(torch.zeros_like(c) for c in total)
    else:
        counts = tuple(c.sub_(s) for c, s in zip(total, counted, strict=True))
        total = tuple(c.add(s) for c, s in zip(counts, counted, strict=True))
    spikes = sum(c.sum(dtype=torch.float64) for c in total)
    return SNNState(v, r, xr), counts, (spikes / x.shape[0]).to(x.dtype)


def _scaled(net, params: dict[str, Tensor], g: float) -> dict[str, Tensor]:
    """``params`` with the dynamic layers' couplings and biases times ``g`` (the readout's, which
    the nudge's ``dC/dr`` uses, as they are)."""
    dynamic = {f"{p}{i}" for i in range(1, net.n_dynamic + 1) for p in ("W", "b")}
    return {n: p * g if n in dynamic else p for n, p in params.items()}


def _advance(h: Tensor, v: Tensor, z: Tensor, r: Tensor, total: Tensor, decay: float, k: float):
    """One step of one layer, in place: ``v <- clip(decay v + h - z, 0, 2)`` (``z`` the previous
    step's spikes: snntorch's delayed subtractive reset), ``z <- H(v - 1)``, the trace
    ``r <- r + k (z - r)`` and the spike count ``total += z``; in snntorch's order of
    operations, so bitwise its ``Leaky``."""
    if decay != 1.0:
        v.mul_(decay)
    v.add_(h).sub_(z)
    torch.gt(v, 1.0, out=z)
    v.clamp_(0.0, V_MAX)
    r.lerp_(z, k)
    total.add_(z)


def _simulate_reference(
    net, params, x, y, state, steps, beta, config, generator, count_from, observe, g
):
    """:func:`simulate` stepping snntorch's ``Leaky`` module (:class:`Neuron`), new tensors at
    every step: the reference the fused update is checked against, and timed beside."""
    neuron = Neuron(config.decay)
    k = 1.0 / config.tau
    v, r, xr = state.v, state.r, state.x
    static = net.static_drive(params, x) if config.input == "current" else None
    counts = tuple(torch.zeros_like(ri) for ri in r)
    spikes = x.new_zeros(())
    block = None
    for t in range(steps):
        if config.input == "rate":
            if t % _BLOCK == 0:
                block = _input_spikes(x, min(_BLOCK, steps - t), generator)
            xr = torch.lerp(xr, block[t % _BLOCK], k)
            static = net.static_drive(params, xr)
        beta_t = beta(t)
        h = net.dphi(params, r, static, y, beta_t)
        new_v, new_r = [], []
        counting = count_from is not None and t >= count_from
        for hl, vl, rl, cl in zip(h, v, r, counts, strict=True):
            z, ns = neuron.step(hl.mul_(g) if g != 1 else hl, NeuronState(vl))
            new_v.append(ns.v)
            new_r.append(torch.lerp(rl, z, k))
            spikes += z.sum()
            if counting:
                cl += z
        v, r = tuple(new_v), tuple(new_r)
        if observe is not None:
            observe(t, r, beta_t)
    return SNNState(v, r, xr), counts, spikes / x.shape[0]


def phase(
    net,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor | None = None,
    beta: float = 0.0,
    state: SNNState | None = None,
    config: SNNConfig | None = None,
    generator: torch.Generator | None = None,
) -> Phase:
    """One phase at nudging ``beta``: ``config.settle`` steps, then ``config.window`` steps whose
    spikes are counted into the rate estimates (spikes per step, shapes of the layers).

    ``state`` is where it starts (default: all zeros); pass a previous phase's ``state`` to
    continue from it (a nudged phase from the free state).
    """
    config = config or SNNConfig()
    if beta != 0 and y is None:
        raise ValueError(f"a nudged phase (beta={beta}) needs targets y")
    if state is None:
        state = init_state(net, x, config)
    end, counts, spikes = simulate(
        net,
        params,
        x,
        y,
        state,
        config.steps,
        lambda t: beta,
        config,
        generator,
        count_from=config.settle,
    )
    for layer, ri in zip(net.spec.dynamic_layers, end.r, strict=True):
        if not bool(torch.isfinite(ri).all()):
            raise DivergenceError(f"spiking phase: layer {layer.name!r} has non-finite traces")
    return Phase(tuple(c / config.window for c in counts), end, float(spikes))
