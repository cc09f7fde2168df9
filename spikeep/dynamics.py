r"""Relaxation dynamics: how states settle to a fixed point of the energy.

Three dynamics, chosen by the spec's ``dynamics`` key; all are pure step functions
``s_next = step(net, params, s, static, y, beta)`` on an explicit tuple of layer states.

``prototypical`` (discrete time, Ernoult et al. 2019). The states *are* rates::

    s_{t+1} = rho(dPhi_beta/dr (s_t))

Its fixed points ``s = rho(dPhi_beta/dr(s))`` are stationary points of an energy whose
parameter derivative is ``-dPhi_beta/dtheta`` at rates ``r = s``.

``alternating`` (discrete time). The prototypical update taken by half the layers at a time:
one half (every second layer), then the other from those new rates::

    s_l <- rho(dPhi_beta/dr_l (s))    for l = L, L-2, ...;    then for l = L-1, L-3, ...

(or the other half first: :func:`halves` picks the order that runs each conv once).

A layer's drive involves only the layers next to it, so the fixed points are the prototypical
ones, and so is the exact gradient (same ``s*(theta)``). What changes is that they are reached:
on the box of a hard sigmoid, where ``E(r) = 1/2 |r|^2 - Phi(r)``, each half-step minimises over
its layers a majorant of ``E`` that touches it at the current state (``Phi`` is linear in those
layers, or convex through max pooling of non-negative rates), so ``E`` never rises and there are
no cycles. The synchronous update has no such guarantee: on strongly coupled networks it falls
into period-2 cycles, the two halves of the network flipping in turn, and never settles (a
trained Fashion-MNIST convnet does, ``protocols/README.md``). The cost per step is the
synchronous one where every max- or softmax-pooled conv coupling's upper layer is in the half
that moves first: its pre-pool values then serve both its forward drive and, after the upper
layer has moved, its feedback (:meth:`spikeep.couplings.Coupling.forward_with_feedback`); each
coupling that is the other way round runs its conv twice. The GDU comparison
(:mod:`spikeep.gdu`) needs a synchronous step and refuses it.

``energy`` (continuous time, Scellier & Bengio 2017): Euler steps of the gradient flow
``ds/dt = -dF/ds`` with step ``dt``, projected onto the activation's box when it has one::

    s_{t+1} = P_box(s_t + dt (-s_t + rho'(s_t) * dPhi_beta/dr (rho(s_t))))

For ``hard_sigmoid`` (``rho' = 1`` on the box [0, 1]) both dynamics have the same fixed points,
``s = clip(dPhi/dr(s), 0, 1)``; for other activations each has its own, and each gets its own exact
reference (:mod:`spikeep.reference` differentiates through whichever map is in use).

:func:`relax` runs a phase: the static input drive is computed once, a state (the free fixed point,
or one kept from the previous batch) can seed it, it returns the state with its convergence
residual ``max |s_K - s_{K-1}| / dt``, and it raises :class:`DivergenceError` naming the layer and
step when a state turns non-finite or exceeds ``max_abs``. On dense networks with the prototypical
dynamics it runs the same arithmetic, bit for bit, in buffers allocated once per phase.
:func:`relax_points` relaxes several nudges from one start as one batch (holomorphic EP's points).

Noise (for robustness studies; Laborieux & Zenke 2022 use 0.04). At every step each neuron's
input gets Gaussian noise ``noise xi``, ``xi ~ N(0, 1)`` i.i.d. per unit and step, drawn from an
explicit, seeded ``torch.Generator`` (:meth:`Dynamics.noisy_step`, :func:`add_noise`):

    prototypical:  s_{t+1} = rho(dPhi_beta/dr(s_t) + noise xi_t)        (on the drive, inside rho;
                                                                          alternating: per half)
    energy:        s_{t+1} = P_box(s_t + dt (...)) + noise xi_t          (on the state, per step)

In both the noise sits on the neuron's state variable (the pre-activation, or synaptic current:
the prototypical dynamics' states are rates); for the prototypical dynamics that is where
Laborieux & Zenke's code puts it, and a saturated unit's rate barely moves. The noise is real:
on complex states (holomorphic EP) it perturbs the real part only, as a physical system's noise
would (the imaginary part is the mathematical continuation, which no neuron carries). Its std is
per step, whatever ``dt``; a noisy phase's residual measures the noise as well. ``noise = 0`` runs
the noise-free loop, untouched: no draws, bit-identical.

Shared noise (``noise_shared=True``; ``shared`` in the step functions): each step draws one
``xi`` per neuron and adds it to every sample of the batch (``xi`` of shape ``(1, *layer)``,
broadcast over the ``B`` samples), as Laborieux & Zenke's code does (its random key is not
batched). Where several nudges relax as one batch of rows (:func:`relax_points`), each point is
a relaxation of its own and gets its own draw, shared by its ``B`` rows. The default draws
independently per sample.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from . import _checks
from ._dtypes import COMPLEX_OF
from .couplings import Dense

__all__ = [
    "DivergenceError",
    "Relaxed",
    "Dynamics",
    "Prototypical",
    "Alternating",
    "GradientFlow",
    "for_spec",
    "relax",
    "prepare",
    "add_noise",
    "check_noise",
    "stepper",
    "cast_params",
    "halves",
    "relax_points",
    "relax_each",
]


class DivergenceError(RuntimeError):
    """A relaxation whose state became non-finite or unbounded."""


class Relaxed(NamedTuple):
    """A relaxed phase: the layer states, the last step's residual (a 0-d real tensor), and the
    static input drive it used, which later phases on the same input and parameters reuse."""

    s: tuple[Tensor, ...]
    residual: Tensor
    static: list[Tensor]


class Dynamics:
    """A fixed-point map ``s -> step(s)`` with step size ``dt`` and a state-to-rate map."""

    name = ""
    dt = 1.0
    gradient_step = True  # one step is the gradient map of a scalar function (spikeep.gdu)

    def rates(self, net, s: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def step(self, net, params, s, static, y=None, beta=0.0) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def noisy_step(self, net, params, s, static, y, beta, noise, generator, shared=False):
        """:meth:`step` with Gaussian noise of std ``noise`` on the neurons' state (module
        docstring), drawn from ``generator`` (``shared``: one draw per neuron for the whole
        batch); by default added to the new states."""
        return add_noise(self.step(net, params, s, static, y, beta), noise, generator, shared)


class Prototypical(Dynamics):
    """``s_{t+1} = rho(dPhi_beta/dr(s_t))``; states are rates."""

    name = "prototypical"

    def rates(self, net, s):
        return s

    def step(self, net, params, s, static, y=None, beta=0.0):
        return self._rates(net, net.dphi(params, s, static, y, beta))

    def noisy_step(self, net, params, s, static, y, beta, noise, generator, shared=False):
        h = net.dphi(params, s, static, y, beta)
        return self._rates(net, h, noise, generator, shared)

    @staticmethod
    def _rates(net, h, noise=0.0, generator=None, shared=False) -> tuple[Tensor, ...]:
        """``rho(h + noise xi)`` in place on the (fresh) drives ``h``: the noise on the drive."""
        if noise:
            add_noise(h, noise, generator, shared)
        return tuple(net.act.rho_(hi) for hi in h)


class Alternating(Prototypical):
    """The prototypical update taken by half the layers at a time (:func:`halves`), the second
    half from the first half's new rates (module docstring)."""

    name = "alternating"
    gradient_step = False

    def step(self, net, params, s, static, y=None, beta=0.0):
        return self._step(net, params, s, static, y, beta)

    def noisy_step(self, net, params, s, static, y, beta, noise, generator, shared=False):
        return self._step(net, params, s, static, y, beta, noise, generator, shared)

    def _step(self, net, params, s, static, y, beta, noise=0.0, generator=None, noise_shared=False):
        top, c = net.n_dynamic - 1, net.couplings  # c[i] links s[i-1] to s[i]; c[0] the input
        first, second = halves(net)
        new, feedback = list(s), {}
        for half in (first, second):
            h = []
            for i in half:
                terms = [static[i]]
                if i > 0:
                    W = params[f"W{i + 1}"]
                    if half is first:  # s[i-1] moves next: its feedback can share this conv
                        forward, feedback[i] = c[i].forward_with_feedback(W, new[i - 1])
                    else:
                        forward = c[i].forward(W, new[i - 1])
                    terms.append(forward)
                if i < top:
                    shared = feedback.get(i + 1)
                    terms.append(
                        shared(new[i + 1])
                        if shared
                        else c[i + 1].feedback(params[f"W{i + 2}"], new[i], new[i + 1])
                    )
                if i == top and beta != 0:
                    terms.append(-beta * net.dcost_dr(params, new[i], y))
                h.append(_sum(terms))
            for i, r in zip(half, self._rates(net, h, noise, generator, noise_shared), strict=True):
                new[i] = r
        return tuple(new)


def halves(net) -> tuple[list[int], list[int]]:
    """The alternating dynamics' two halves (indices into the dynamic layers), in update order:
    the top layer's half first, unless more of the couplings whose feedback needs the forward
    pass (max or softmax pooling) have their upper layer in the other half. A coupling's conv then
    serves both halves; the other way round it runs twice."""
    top = net.n_dynamic - 1
    shared = [i for i in range(1, top + 1) if net.couplings[i].feedback_needs_forward]
    with_top = sum((top - i) % 2 == 0 for i in shared)
    start = top if 2 * with_top >= len(shared) else top - 1
    first = [i for i in range(top, -1, -1) if (start - i) % 2 == 0]
    return first, [i for i in range(top, -1, -1) if (start - i) % 2]


def _sum(terms: list[Tensor]) -> Tensor:
    """A new tensor holding the sum of ``terms`` (never one of them: callers overwrite it)."""
    return terms[0].clone() if len(terms) == 1 else sum(terms[1:], terms[0])


class GradientFlow(Dynamics):
    """Euler steps of ``ds/dt = -dF/ds``, projected onto the activation's box."""

    name = "energy"

    def __init__(self, dt: float):
        self.dt = dt

    def rates(self, net, s):
        slope = net.act.slope  # states stay on the box, where rho(s) = slope * s
        if slope is not None:
            return s if slope == 1 else tuple(slope * si for si in s)
        return tuple(net.act.rho(si) for si in s)

    def step(self, net, params, s, static, y=None, beta=0.0):
        act, dt = net.act, self.dt
        h = net.dphi(params, self.rates(net, s), static, y, beta)
        if act.slope is not None:  # rho' is constant on the box: s + dt (slope h - s), clipped
            h = h if act.slope == 1 else tuple(act.slope * hi for hi in h)
            return tuple(
                torch.lerp(si, hi, dt).clamp_(*act.box) for si, hi in zip(s, h, strict=True)
            )
        out = tuple(si + dt * (act.drho(si) * hi - si) for si, hi in zip(s, h, strict=True))
        if act.box is not None:
            out = tuple(si.clamp(*act.box) for si in out)
        return out


def for_spec(spec) -> Dynamics:
    """The dynamics a spec names."""
    if spec.dynamics == "energy":
        return GradientFlow(spec.dt)
    return Alternating() if spec.dynamics == "alternating" else Prototypical()


def cast_params(params: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """Parameters in ``dtype`` (complex states need complex-cast weights)."""
    return {k: v.to(dtype) for k, v in params.items()}


def _state_dtype(net, params, x, beta, s) -> torch.dtype:
    real = next(iter(params.values())).dtype
    complex_run = isinstance(beta, complex) or (s is not None and s[0].is_complex())
    if not complex_run:
        return real
    if not net.holomorphic:
        raise ValueError(
            f"complex beta={beta} needs a holomorphic network, but {net.spec.source} uses "
            f"{net.not_holomorphic}; "
            f"use sigmoid4, holotanh or tanh, and softmax or avg pooling"
        )
    return COMPLEX_OF.get(real, real)


def prepare(net, params, x, y=None, beta=0.0, s=None, static=None):
    """The inputs of a phase in its state dtype: ``(params, x, y, static, s0)``.

    Complex when ``beta`` or ``s`` is complex (then ``params``, ``x``, ``y`` and ``static`` are
    cast, and a network that is not holomorphic is refused with a ValueError); ``static`` is
    computed when ``None``; ``s0`` defaults to zeros.
    """
    dtype = _state_dtype(net, params, x, beta, s)
    if dtype.is_complex:  # the real static drive, cast, equals the complex one
        params, x = cast_params(params, dtype), x.to(dtype)
        y = None if y is None else y.to(dtype)
    if static is None:
        static = net.static_drive(params, x)
    elif static[0].dtype != dtype:
        static = [h.to(dtype) for h in static]
    s0 = net.zeros(x) if s is None else tuple(si.to(dtype) for si in s)
    return params, x, y, static, s0


def add_noise(s: tuple[Tensor, ...], noise: float, generator: torch.Generator, shared=False):
    """``s_l + noise xi_l`` in place for every tensor ``s_l`` of shape ``(B, *shape)`` (``xi_l ~
    N(0, 1)``, real, drawn from ``generator`` on its device): of ``s_l``'s shape, or with
    ``shared`` of shape ``(1, *shape)``, one number per neuron added to all ``B`` samples.
    Returns ``s``. Complex tensors get it on their real part."""
    for si in s:
        real = si.real.dtype if si.is_complex() else si.dtype
        shape = (1, *si.shape[1:]) if shared else si.shape
        xi = torch.randn(shape, generator=generator, dtype=real, device=generator.device)
        si.add_(xi.to(si.device), alpha=noise)
    return s


def check_shared(noise_shared) -> bool:
    """``noise_shared`` (a bool), refused in one line otherwise."""
    if not isinstance(noise_shared, bool):
        raise ValueError(
            f"noise_shared must be True (one draw per neuron and step, shared by the batch) or "
            f"False (a draw per sample), got {noise_shared!r}"
        )
    return noise_shared


def check_noise(noise, generator=False) -> float:
    """``noise`` as a float, refused unless finite and >= 0; when ``generator`` is given (not
    ``False``) and ``noise > 0``, it must be a ``torch.Generator``."""
    if not (isinstance(noise, int | float) and not isinstance(noise, bool)) or not (
        0 <= noise < math.inf
    ):
        raise ValueError(
            f"noise must be a finite number >= 0 (a standard deviation), got {noise!r}"
        )
    if noise and generator is not False and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"noise={noise} needs an explicit torch.Generator (seeded, for reproducible draws), "
            f"got generator={generator!r}"
        )
    return float(noise)


def stepper(
    dyn: Dynamics,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    shared: bool = False,
):
    """``step(net, params, s, static, y, beta)`` of ``dyn``: the plain step when ``noise`` is 0
    (no draws), else :meth:`Dynamics.noisy_step` with ``noise``, ``generator`` and ``shared``."""
    if not noise:
        return dyn.step

    def noisy(net, params, s, static, y, beta):
        return dyn.noisy_step(net, params, s, static, y, beta, noise, generator, shared)

    return noisy


def relax(
    net,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor | None = None,
    beta: float | complex = 0.0,
    s: tuple[Tensor, ...] | None = None,
    steps: int = 20,
    static: list[Tensor] | None = None,
    max_abs: float = 1e6,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    noise_shared: bool = False,
) -> Relaxed:
    """Run ``steps`` steps of the network's dynamics with nudging ``beta``.

    Args:
        net: the :class:`~spikeep.energy.Network`.
        params: parameters (real); cast to complex here when ``beta`` or ``s`` is complex.
        x: input batch, shape ``(B, *input_shape)``.
        y: targets (one-hot), shape ``(B, n_out)``; needed when ``beta != 0``.
        beta: nudging strength (real or complex).
        s: initial states (default: zeros), e.g. the free fixed point or a persistent particle.
        steps: number of steps.
        static: precomputed :meth:`~spikeep.energy.Network.static_drive` for these ``params`` and
            ``x`` (e.g. ``free.static``); cast to the state dtype when needed.
        max_abs: a state larger than this in magnitude counts as diverged.
        noise: std of the Gaussian noise on every neuron at every step (where it enters: module
            docstring); 0 for none.
        generator: the ``torch.Generator`` the noise is drawn from (required when ``noise > 0``).
        noise_shared: one draw per neuron and step, added to every sample of the batch (module
            docstring); default a draw per sample.

    Returns:
        :class:`Relaxed` ``(s, residual)``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if beta != 0 and y is None:
        raise ValueError(f"a nudged phase (beta={beta}) needs targets y")
    _checks.check_batch(net, params, x, y if beta != 0 else None)  # named, before torch fails
    check_noise(noise, generator)
    check_shared(noise_shared)
    params, x, y, static, s0 = prepare(net, params, x, y, beta, s, static)
    dyn = net.dynamics
    state, prev = s0, s0
    replay = generator.get_state() if noise else None  # to replay the draws if it diverges
    real = not s0[0].is_complex()
    fast = real and _planar(net, flow=True) and not _tracked(params, x, s0, static)
    if fast and not (beta or noise) and len(s0) == 1 and type(dyn) is GradientFlow:
        # one layer, free, noise-free: the drive is the static one (the buffered loop's numbers)
        state, prev = _free_flow(net, static[0], s0[0] if s is None else s0[0].clone(), steps)
        boxed = max(abs(v) for v in net.act.box) <= max_abs
    elif fast:  # the same arithmetic in preallocated buffers
        run = _PlanarRun(net, params, y, [beta], [False], static, s0, steps, shared=noise_shared)
        run.run(steps, noise, generator)
        state, prev = tuple(run.cur), tuple(run.prev)
        boxed = run.boxed(max_abs)
    else:
        step = stepper(dyn, noise, generator, noise_shared)
        for _ in range(steps):
            prev, state = state, step(net, params, state, static, y, beta)
        boxed = False
    # One synchronisation at the end: the largest state magnitude (NaN propagates through amax)
    # and the last step's change. On failure, replay the phase to name the layer and step.
    peak, change = _peak_and_change(state, prev, boxed)
    if not (math.isfinite(float(change)) if boxed else float(peak) <= max_abs):  # NaN: false
        noisy = (noise, generator, replay, noise_shared)
        _locate(net, params, s0, static, y, beta, steps, max_abs, noisy)
    return Relaxed(state, change.div_(dyn.dt), static)


def _free_flow(net, h: Tensor, s: Tensor, steps: int) -> tuple[tuple[Tensor], tuple[Tensor]]:
    """A one-layer free phase of the energy dynamics of a boxed activation, noise-free, from
    ``s`` (overwritten): its drive is the static one ``h``, so every step is ``s <- clip(lerp(s,
    h, dt))`` (:meth:`GradientFlow.step`'s kernels), all but the last in place; the last goes
    into a new tensor, ``s`` keeping the state before it for the residual. ``(state, prev)``."""
    lo, hi = net.act.box
    dt = net.dynamics.dt
    for _ in range(steps - 1):
        s.lerp_(h, dt).clamp_(lo, hi)
    return (torch.lerp(s, h, dt).clamp_(lo, hi),), (s,)


def _peak_and_change(s, prev, boxed=False) -> tuple[Tensor | None, Tensor]:
    """``max |s|`` and ``max |s - prev|`` over every layer, as new 0-d tensors out of autograd
    (maxima are exact: the numbers of any order of taking them). ``boxed``: the states are in a
    box within ``max_abs`` or NaN (:meth:`_PlanarRun.boxed`): no peak (``None``); a NaN state
    shows in the change."""
    with torch.no_grad():
        changes = [(a - b).abs().amax() for a, b in zip(s, prev, strict=True)]
        if boxed:
            return None, changes[0] if len(s) == 1 else torch.stack(changes).amax()
        peaks = [si.abs().amax() for si in s]
        if len(s) == 1:
            return peaks[0], changes[0]
        return torch.stack(peaks).amax(), torch.stack(changes).amax()


def _locate(net, params, s0, static, y, beta, steps, max_abs, noisy):
    noise, generator, replay, shared = noisy
    if noise:
        generator = torch.Generator(device=generator.device)
        generator.set_state(replay)
    step = stepper(net.dynamics, noise, generator, shared)
    s = s0
    for t in range(1, steps + 1):
        s = step(net, params, s, static, y, beta)
        for layer, si in zip(net.spec.dynamic_layers, s, strict=True):
            finite = bool(torch.isfinite(si).all())
            if not finite or bool(si.abs().max() > max_abs):
                what = "non-finite" if not finite else f"larger than {max_abs:g} in magnitude"
                raise DivergenceError(
                    f"relaxation diverged: layer {layer.name!r} became {what} at step {t} of "
                    f"{steps} (beta={beta}, model {net.spec.source}); lower the learning rate or "
                    f"beta, or rescale the initial weights"
                )
    raise DivergenceError(f"relaxation diverged within {steps} steps (beta={beta})")


# -- several nudges as one relaxation ---------------------------------------------------------


def relax_points(
    net,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    betas,
    s: tuple[Tensor, ...] | None = None,
    steps: int = 20,
    static: list[Tensor] | None = None,
    max_abs: float = 1e6,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    noise_shared: bool = False,
) -> list[Relaxed]:
    """One phase per nudge ``beta_k`` of ``betas`` (real or complex), every one ``steps`` steps
    from the same start ``s``: what ``[relax(..., beta_k, s=s, ...) for beta_k in betas]``
    returns, computed as one batched relaxation.

    For the prototypical dynamics on dense couplings (the weights real, every drive linear in
    the rates) a complex state ``a + ib`` is carried as two real rows, ``a`` and ``b``: ``W (a +
    ib) = W a + i W b``, so each product is one real matrix product over the rows of every point,
    half the work of a complex product with the weights cast to complex. The rows are stacked as
    ``[real points | real parts | imaginary parts]`` (each block ``B`` rows); the static input
    drive and the noise enter the first two blocks only (module docstring: the noise is real).
    The nudge's cost term and ``rho`` combine a point's two rows. Other networks relax the
    points one after another (:func:`relax`). Noise-free, both give the same states to rounding;
    with noise the draws are taken in another order (the same distribution, other samples).
    With ``noise_shared`` each point, a relaxation of its own, gets its own draw per neuron and
    step, shared by its ``B`` rows (of a complex point: its real parts).

    Returns:
        a :class:`Relaxed` per nudge, in the order of ``betas`` (complex states for complex
        nudges); each residual is that point's own, ``static`` the real one given or computed.
    """
    betas = list(betas)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if y is None:
        raise ValueError(f"nudged phases (betas={betas}) need targets y")
    check_noise(noise, generator)
    check_shared(noise_shared)
    real_start = s is None or not s[0].is_complex()
    real_params = not next(iter(params.values())).is_complex()
    is_complex = [isinstance(b, complex) and b.imag != 0 for b in betas]
    planar = _planar(net, flow=not any(is_complex))
    if not (planar and real_start and real_params and not _tracked(params, x, s, static)):
        return [
            relax(net, params, x, y, b, s, steps, static, max_abs, noise, generator, noise_shared)
            for b in betas
        ]
    if any(is_complex):
        _state_dtype(net, params, x, 1j, None)  # refuses a network that is not holomorphic
    if static is None:
        static = net.static_drive(params, x)
    s0 = s or net.zeros(x)
    run = _PlanarRun(net, params, y, betas, is_complex, static, s0, steps, shared=noise_shared)
    for _ in range(steps):
        run.step(noise, generator)
    return run.results(max_abs, static)


def relax_each(
    net,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    betas,
    s: tuple[Tensor, ...] | None = None,
    steps: int = 20,
    static: list[Tensor] | None = None,
    max_abs: float = 1e6,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    noise_shared: bool = False,
) -> list[Relaxed]:
    """``[relax(net, params, x, y, b, s, steps, static, max_abs, noise, generator, noise_shared)
    for b in betas]`` (real nudges), with one setup. Noise-free on a network that runs the buffered
    loop (:func:`_planar`), the points relax as one batch of rows in which each point's nudge keeps
    the arithmetic of its own phase (``relax``'s, not :func:`relax_points`' per-row nudge): the same
    numbers wherever a row's matrix products do not depend on the rows beside it (MKL, here: the
    float32 MLPs at 20 rows a point, bit for bit; tiny float64 layers, or 1 to 3 rows a point,
    differ by rounding). With noise, or on other networks, one phase after another (the draws in
    that order)."""
    betas = [float(b) for b in betas]
    check_shared(noise_shared)
    state_real = (s is None or not s[0].is_complex()) and not next(
        iter(params.values())
    ).is_complex()
    if (
        noise
        or len(betas) < 2
        or not (state_real and _planar(net, flow=True))
        or _tracked(params, x, s, static)
    ):
        return [
            relax(net, params, x, y, b, s, steps, static, max_abs, noise, generator, noise_shared)
            for b in betas
        ]
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if y is None:
        raise ValueError(f"nudged phases (betas={betas}) need targets y")
    _checks.check_batch(net, params, x, y)
    p, x, y, static, s0 = prepare(net, params, x, y, betas[0], s, static)
    run = _PlanarRun(net, p, y, betas, [False] * len(betas), static, s0, steps, each=True)
    run.run(steps, 0.0, None)
    try:
        return run.results(max_abs, static)
    except DivergenceError:  # one phase after another names the layer and the step
        return [relax(net, params, x, y, b, s, steps, static, max_abs) for b in betas]


def _planar(net, flow: bool = False) -> bool:
    """Whether :func:`relax_points` can carry complex states as real rows (its docstring), or,
    with ``flow`` (real states only), run the buffered loop of :class:`_PlanarRun` at all: then
    also for the ``energy`` dynamics of an activation that is the identity on its box (the hard
    sigmoid), whose step is ``clip(lerp(s, h, dt))`` of the drive ``h`` at rates ``s``."""
    dyn, act = net.dynamics, net.act
    box_flow = type(dyn) is GradientFlow and act.slope == 1 and act.box is not None
    return (
        (type(dyn) is Prototypical or (flow and box_flow))
        and all(isinstance(c, Dense) for c in net.couplings)
        and all(len(layer.shape) == 1 for layer in net.spec.dynamic_layers)
    )


def _tracked(params, x, s, static) -> bool:
    """Whether autograd records the relaxation (then the buffers of :class:`_PlanarRun`, written
    in place, cannot be used)."""
    if not torch.is_grad_enabled():
        return False
    tensors = [*params.values(), x, *(s or ()), *(static or ())]
    return any(torch.is_tensor(v) and v.requires_grad for v in tensors)


class _Targets(NamedTuple):
    """Views of one of :class:`_PlanarRun`'s two buffer sets: the rows that get noise, per
    layer (``(nre B, n)``; with shared noise ``(B, nre, n)``, a point's draw ``(1, nre, n)``
    broadcast over its rows), and the tensors ``rho`` runs on (every layer at once when merged, else
    one per layer), each as ``(real points' rows, complex points' (..., 2, C B, n) pairs, the pairs'
    real parts, the pairs' views for _sigmoid_planar_ or None)``."""

    noisy: tuple[Tensor, ...]
    blocks: list[tuple[Tensor, Tensor, Tensor, _SplitSigmoid | None]]


class _PlanarRun:
    """The state of :func:`relax_points`' batched relaxation: per layer two buffers of ``(M B,
    n)`` rows, ``M = R + 2 C`` blocks for ``R`` real and ``C`` complex points, that swap roles
    at each step (no allocation for the drives). When several layers have one width the
    buffers are the layers of one ``(L, M B, n)`` tensor, so that ``rho`` runs once for all.
    With ``steps`` (the phase's length) the noise of several steps is drawn at once
    (:class:`_Draws`). What only some runs need (the views that noise and ``rho`` work on, the
    readout nudge's buffers) is made at its first use: a phase of a few steps pays for no more
    than it runs. ``shared``: each point's noise is one draw per neuron and step, added to its
    ``B`` rows (module docstring)."""

    def __init__(
        self, net, params, y, betas, is_complex, static, s0, steps=None, each=False, shared=False
    ):
        self.net, self.params, self.betas = net, params, betas
        self.real = [k for k, c in enumerate(is_complex) if not c]
        self.cplx = [k for k, c in enumerate(is_complex) if c]
        B = s0[0].shape[0]
        R, C = len(self.real), len(self.cplx)
        self.B, self.R, self.C = B, R, C
        self.nre = R + C  # blocks that carry real parts: static drive and noise go there
        self.M = M = R + 2 * C
        self.weights = [params[f"W{i + 1}"] for i in range(1, net.n_dynamic)]
        self.weights_T = [w.T for w in self.weights]
        self.sigmoid4 = net.act.name == "sigmoid4"
        if self.sigmoid4:  # its constants as 0-d tensors: the arithmetic of Python numbers,
            # without their conversion at every call
            self._four, self._two = (s0[0].new_tensor(v) for v in (4.0, 2.0))
        widths = [si.shape[1] for si in s0]
        self.merged = len(widths) > 1 and len(set(widths)) == 1
        # each: real points nudged one block of rows at a time, with the arithmetic of a run of
        # their own (relax_each), in place of the per-row nudge of _nudge_readout
        self.each = each and not C and R > 1
        # real points only: every row is written before it is read (no zeros needed); the
        # imaginary parts of complex points start at zero
        new = s0[0].new_zeros if C else s0[0].new_empty
        if self.merged:
            self.cur_all, self.nxt_all = (new((len(s0), M * B, widths[0])) for _ in "cn")
            self.cur, self.nxt = list(self.cur_all.unbind()), list(self.nxt_all.unbind())
            # each set of layers and the one tensor it is a view of
            self._whole = {id(self.cur): self.cur_all, id(self.nxt): self.nxt_all}
        else:
            self.cur = [new((M * B, n)) for n in widths]
            self.nxt = [torch.empty_like(c) for c in self.cur]
        self.static = []
        for h, si, cur in zip(static, s0, self.cur, strict=True):
            if M == 1 or (self.each and len(s0) == 1):  # one real point, or one layer whose
                # points read their drive block by block: the drive as it is (a bias broadcasts)
                self.static.append(h)
                cur.copy_(si) if M == 1 else torch.cat([si] * M, out=cur)
                continue
            if M == self.nre and h.dim() == 2:  # real points only: every row a copy
                S = torch.cat([h] * M)  # (a copy per block: cat is faster than repeat)
            else:
                S = torch.zeros_like(cur)
                S[: self.nre * B] = h if h.dim() == 1 else torch.cat([h] * self.nre)
            self.static.append(S)
            cur[: self.nre * B].view(self.nre, B, -1).copy_(si)
        real_dtype, device = s0[0].dtype, s0[0].device
        beta_r = [complex(betas[k]).real for k in self.real]
        self.nudged = any(beta_r)  # a free phase has no cost term (Network.dphi)
        self.single = beta_r[0] if R == 1 and not C else None  # exactly Network.dphi's sub
        self.beta_real = None  # per-row nudges, where the points' differ (not self.single)
        if y is not None:
            y = y if y.dtype == real_dtype else y.to(real_dtype)
            self.y_real = y if R == 1 else torch.cat([y] * R) if R else y[:0]
            if self.single is None and not (each and not C):
                beta_r = torch.tensor(beta_r, dtype=real_dtype, device=device)
                self.beta_real = beta_r.repeat_interleave(B).unsqueeze(1)
        if C:
            cdtype = COMPLEX_OF[real_dtype]
            if not net.readout:  # the readout's nudge stays in real products (_nudge_readout)
                self.cparams = cast_params(params, cdtype)
            self.y_cplx = torch.cat([y.to(cdtype)] * C)
            beta_c = torch.tensor([complex(betas[k]) for k in self.cplx], dtype=cdtype)
            self.beta_cplx = beta_c.to(device).repeat_interleave(B).unsqueeze(1)
        # the energy dynamics (real states only, _planar): s <- clip(lerp(s, h, dt)), then noise
        self.flow = type(net.dynamics) is GradientFlow
        if self.flow and C:
            raise ValueError("the buffered energy dynamics take real states only")
        self._views, self._scratch = {}, []  # per buffer set, made at first use (_views_of)
        self.readout = bool(net.readout)
        if self.readout:
            n = len(net.layers) - 1
            self.W_out, self.b_out = params[f"W{n}"], params[f"b{n}"]
            self.W_out_T = self.W_out.T
        self._rows = self._one = None  # the readout nudge's buffers (_nudge_readout, _dcost)
        if self.each:
            self._alphas = [complex(betas[k]).real for k in self.real]
            self._each_views = {}
        self._steps, self._draws = steps, None  # the drawer is made at the first noisy step
        self.shared = shared
        self._noisy = False  # whether a step added noise (boxed)

    def boxed(self, max_abs) -> bool:
        """Whether every state is, by construction, in the activation's box (within ``max_abs``)
        or NaN: real states of a boxed activation, prototypical (``rho`` of the drive, noise
        inside) or of the energy dynamics without noise (clipped at every step). Then a NaN
        shows in the last step's change, and the change alone is checked."""
        box = self.net.act.box
        return (
            box is not None
            and not self.C
            and max(abs(v) for v in box) <= max_abs
            and not (self.flow and self._noisy)
        )

    def _readout_rows(self):
        """The buffers and views of :meth:`_nudge_readout`, made once: the logits of every row,
        ``beta_k (softmax - y)`` as real rows, the real points' softmax work space, the complex
        points' logits as parts and as complex numbers."""
        B, R, C, nre = self.B, self.R, self.C, self.nre
        z = self.cur[0].new_empty((self.M * B, self.W_out.shape[0]))  # logits, every row
        e = torch.empty_like(z)  # beta_k (softmax - y), as real rows
        self._z, self._e, self._z_biased = z, e, z[: nre * B]
        if R:  # the real points' logits, softmax and its row sums, and their e rows
            zr = z[: R * B]
            work = (torch.empty_like(zr), torch.empty_like(zr), z.new_empty((R * B, 1)))
            self._real_softmax = (zr, zr, *work)
            self._e_real = e[: R * B]
        if C:  # the complex points' logits as parts and as complex numbers, softmax, sums
            zc = z.new_empty((C * B, z.shape[1]), dtype=COMPLEX_OF[z.dtype])
            pc = torch.empty_like(zc)
            self._zc_parts = (z[R * B : nre * B], z[nre * B :])
            self._cplx_softmax = (zc, zc.real, torch.empty_like(zc), pc, zc.new_empty((C * B, 1)))
            self._e_pairs = (e[R * B :].view(2, C * B, -1), torch.view_as_real(pc).movedim(-1, 0))
        self._rows = True

    def _views_of(self, layers: list[Tensor]) -> _Targets:
        """The views of one of the two buffer sets (:class:`_Targets`), made at first use."""
        views = self._views.get(id(layers))
        if views is None:
            views = self._views[id(layers)] = self._targets(layers, self._scratch)
        return views

    def _targets(self, layers: list[Tensor], scratch: list) -> _Targets:
        """The views of one buffer set; ``scratch`` (filled on the first call, shared by both
        sets) holds :func:`_sigmoid_planar_`'s buffers per rho target."""
        B, R, C = self.B, self.R, self.C
        whole = [self._whole[id(layers)]] if self.merged else layers
        blocks = []
        for j, h in enumerate(whole):
            rows = h.dim() - 2
            pair = h.narrow(rows, R * B, 2 * C * B).unflatten(rows, (2, C * B))
            split = None
            if self.sigmoid4 and C:
                split = _split_sigmoid(pair, scratch[j] if len(scratch) > j else None)
                if len(scratch) == j:
                    scratch.append((split.u, split.d, split.sign))
            blocks.append((h.narrow(rows, 0, R * B), pair, pair.select(-3, 0), split))
        noisy = tuple(hi[: self.nre * B] for hi in layers)
        if self.shared:  # the samples of each point on the first axis: one draw broadcasts
            noisy = tuple(hi.view(self.nre, B, -1).transpose(0, 1) for hi in noisy)
        return _Targets(noisy, blocks)

    def run(self, steps: int, noise, generator) -> None:
        """``steps`` calls of :meth:`step` (a one-layer free phase of the energy dynamics, whose
        drive is the static one, runs without this class: :func:`_free_flow`)."""
        for _ in range(steps):
            self.step(noise, generator)

    def step(self, noise, generator):
        net, cur, nxt, W = self.net, self.cur, self.nxt, self.weights
        top, B, R, nre = len(cur) - 1, self.B, self.R, self.nre
        if top == 0 and self.single is not None:  # one layer, one real point
            if not self.nudged and self.flow:  # the drive is the static one: read it there
                self._noise_and_rho(noise, generator, self.static)
                return
            if self.nudged:  # the static drive and the nudge in one op (Network.dphi's)
                self._nudge(nxt[0], self.static[0], self._dcost(cur[0]), self.single)
                self._noise_and_rho(noise, generator)
                return
        if top == 0 and self.each:  # the same per point, every point's block of rows
            d = self._dcost(cur[0])
            for S, dk, out, beta in self._blocks(nxt, d):
                self._nudge(out, S, dk, beta)
            self._noise_and_rho(noise, generator)
            return
        for i in range(top + 1):  # the order of Network.dphi: forward drive, then feedback
            if i > 0:
                torch.addmm(self.static[i], cur[i - 1], self.weights_T[i - 1], out=nxt[i])
                if i < top:
                    nxt[i].addmm_(cur[i + 1], W[i])
            elif i < top:  # the input layer's static drive and its feedback, one product
                torch.addmm(self.static[i], cur[i + 1], W[i], out=nxt[i])
            else:
                nxt[i].copy_(self.static[i])
        h, r = nxt[top], cur[top]
        if self.readout and self.single is None and not self.each and (self.nudged or self.C):
            self._nudge_readout(h, r)
            self._noise_and_rho(noise, generator)
            return
        if self.nudged:  # the nudge: - beta_k dC/dr_top, each point with its own beta
            if self.single is not None:
                self._nudge(h, h, self._dcost(r), self.single)
            elif self.each:
                for _, dk, out, beta in self._blocks(nxt, self._dcost(r)):
                    self._nudge(out, out, dk, beta)
            else:
                d = net.dcost_dr(self.params, r[: R * B], self.y_real)
                h[: R * B].sub_(d.mul_(self.beta_real))
        if self.C:
            rc = torch.complex(r[R * B : nre * B], r[nre * B :])
            d = net.dcost_dr(self.cparams, rc, self.y_cplx).mul_(self.beta_cplx)
            h[R * B : nre * B].sub_(d.real)
            h[nre * B :].sub_(d.imag)
        self._noise_and_rho(noise, generator)

    def _blocks(self, layers, d):
        """Per real point (``each``): its rows of the static drive, of ``d`` and of the top
        layer of ``layers``, and its nudge; the views made once per buffer set."""
        views = self._each_views.get(id(layers))
        if views is None:
            B, top = self.B, len(layers) - 1
            S = self.static[0]
            whole = S.shape[0] == B  # one drive for every point (a one-layer run)
            views = self._each_views[id(layers)] = [
                (
                    S if whole else S[k * B : (k + 1) * B],
                    d[k * B : (k + 1) * B],
                    layers[top][k * B : (k + 1) * B],
                    beta,
                )
                for k, beta in enumerate(self._alphas)
            ]
        return views

    def _dcost(self, r: Tensor) -> Tensor:
        """What :meth:`_nudge` takes for the real points' rows ``r``: the readout's error
        ``softmax(r W_out^T + b_out) - y`` (:meth:`Network.readout_error`, bit for bit), or
        ``r - y``, in buffers made at its first use (the same tensor at every call:
        :meth:`_blocks` keeps views of it)."""
        if self._one is None:
            if not self.readout:
                self._one = (r.new_empty(r.shape),)
            else:
                z = r.new_empty((r.shape[0], self.W_out.shape[0]))
                self._one = (z, torch.empty_like(z))
        if not self.readout:
            return torch.sub(r, self.y_real, out=self._one[0])
        z, p = self._one
        torch.addmm(self.b_out, r, self.W_out_T, out=z)
        return torch._softmax(z, 1, False, out=p).sub_(self.y_real)

    def _nudge(self, out: Tensor, h: Tensor, d: Tensor, beta: float) -> None:
        """``out = h - beta dC/dr`` from :meth:`_dcost`'s ``d`` (``out`` may be ``h``), with the
        arithmetic of :meth:`Network.dphi`: the readout's ``addmm(h, d, W_out, alpha=-beta)``
        (one product), or ``h - beta (r - y)``."""
        if self.readout:
            torch.addmm(h, d, self.W_out, alpha=-beta, out=out)
        else:
            torch.sub(h, d, alpha=beta, out=out)

    def set_beta(self, beta) -> None:
        """Nudge the run's one point with ``beta`` from the next step on (the oscillation); a
        complex point's ``beta`` may be a 0-d tensor of the complex dtype (used as it is)."""
        if self.C and torch.is_tensor(beta):
            self.beta_cplx = beta
        elif self.C:
            self.beta_cplx = self.beta_cplx.new_tensor(complex(beta))
        else:
            if self.beta_real is not None:
                self.beta_real.fill_(float(beta))
            self.single, self.nudged = float(beta), beta != 0

    def _noise_and_rho(self, noise, generator, drives=None):
        """The drives in ``nxt`` (or ``drives``, energy dynamics only) become the new states in
        ``nxt``: ``rho`` of the drive with its noise (prototypical), or the energy dynamics'
        Euler step from ``cur``, then its noise (the draws in the order of
        :meth:`Dynamics.noisy_step`, layer by layer)."""
        cur, nxt = self.cur, self.nxt
        if not self.flow:
            views = self._views_of(nxt)
            if noise:
                self._noise(views.noisy, noise, generator)
            for block in views.blocks:
                self._rho(*block)
        elif self.merged and drives is None:
            self._lerp(self.nxt_all, self.cur_all)
        else:
            for hi, si, out in zip(drives or nxt, cur, nxt, strict=True):
                self._lerp(hi, si, out)
        if self.merged:
            self.cur_all, self.nxt_all = self.nxt_all, self.cur_all
        if noise and self.flow:
            self._noise(self._views_of(nxt).noisy, noise, generator)
            self._noisy = True
        self.prev, self.cur, self.nxt = cur, nxt, cur

    def _noise(self, noisy, noise, generator):
        """``noisy += noise xi`` (:func:`add_noise`), the draws taken ahead where they can be."""
        if self._steps is not None:
            self._draws, self._steps = _Draws.ahead(noisy, self._steps, self.shared), None
        if self._draws is None:
            add_noise(noisy, noise, generator, self.shared)
            return
        for si, xi in zip(noisy, self._draws.next(generator), strict=True):
            si.add_(xi if xi.device == si.device else xi.to(si.device), alpha=noise)

    def _lerp(self, h, s, out=None):
        """The energy dynamics' new states ``clip(lerp(s, h, dt))`` in ``out`` (default: in
        place of the drives ``h``) (:meth:`GradientFlow.step`'s kernels)."""
        out = h if out is None else out
        torch.lerp(s, h, self.net.dynamics.dt, out=out).clamp_(*self.net.act.box)

    def _nudge_readout(self, h, r):
        """``h -= beta_k dC/dr_top`` for the cross-entropy readout, every row at once: the logits
        ``r W_out^T + b_out`` and ``dC/dr = (softmax - y) W_out`` are real products over all
        rows; only the softmax of a complex point combines its two rows. In buffers and views
        made once (the numbers of the out-of-place operations, bit for bit)."""
        if self._rows is None:
            self._readout_rows()
        torch.mm(r, self.W_out_T, out=self._z)
        self._z_biased.add_(self.b_out)
        if self.R:
            p = _softmax_into(*self._real_softmax)
            torch.sub(p, self.y_real, out=self._e_real).mul_(self.beta_real)
        if self.C:
            zc = torch.complex(*self._zc_parts, out=self._cplx_softmax[0])
            _softmax_into(zc, *self._cplx_softmax[1:]).sub_(self.y_cplx).mul_(self.beta_cplx)
            self._e_pairs[0].copy_(self._e_pairs[1])
        h.addmm_(self._e, self.W_out, alpha=-1)

    def _rho(self, real, pair, re, split):
        """``rho`` in place on the real points' rows ``real`` and the complex points' pairs of
        rows ``pair`` (``(..., 2, C B, n)``: real parts ``re``, imaginary parts) of one layer,
        or of every layer at once (``split``: :func:`_sigmoid_planar_`'s views)."""
        act = self.net.act
        if self.sigmoid4:
            if self.R:
                real.mul_(self._four).sub_(self._two).sigmoid_()
            if self.C:
                pair.mul_(self._four)
                re.sub_(self._two)
                _sigmoid_planar_(split)
            return
        if self.R:  # in place where the activation has an in-place form (Prototypical._rates' own)
            r = act.rho_(real)
            if r is not real:
                real.copy_(r)
        if self.C:
            re, im = pair.unbind(-3)
            r = act.rho(torch.complex(re, im))
            re.copy_(r.real)
            im.copy_(r.imag)

    def _point(self, layer: Tensor, k: int) -> Tensor:
        B, R, nre = self.B, self.R, self.nre
        if k in self.real:
            j = self.real.index(k)
            return layer[j * B : (j + 1) * B]
        j = self.cplx.index(k)
        re = layer[(R + j) * B : (R + j + 1) * B]
        return torch.complex(re, layer[(nre + j) * B : (nre + j + 1) * B])

    def results(self, max_abs, static) -> list[Relaxed]:
        """A :class:`Relaxed` per point. The residuals from the rows of every point at once
        (``|a + ib|`` as ``hypot(a, b)``: torch's complex magnitude, bit for bit); the states
        are checked point by point only where the bound ``|a + ib| <= sqrt(2) max(|a|, |b|)``
        over every row exceeds ``max_abs``."""
        B, R, C, nre = self.B, self.R, self.C, self.nre
        boxed = self.boxed(max_abs)
        peaks, residuals = [], []
        for c, p in zip(self.cur, self.prev, strict=True):  # per layer: real, complex points
            d, size = c - p, B * c.shape[1]
            if not boxed:
                peaks.append(c.abs().amax())
            if not C:
                residuals.append(d.abs_().view(R, size).amax(1))
                continue
            cplx = torch.hypot(d[R * B : nre * B], d[nre * B :])
            real = d[: R * B].abs()
            residuals.append(torch.cat([real.view(R, size), cplx.view(C, size)]).amax(1))
        residuals = residuals[0] if len(residuals) == 1 else torch.stack(residuals).amax(0)
        residuals = residuals.div_(self.net.dynamics.dt)
        if boxed:  # the states are in the box or NaN, and a NaN shows in the change
            diverged = not all(map(math.isfinite, residuals.tolist()))
        else:
            diverged = not float(torch.stack(peaks).amax()) * math.sqrt(2) <= max_abs  # NaN too
        if diverged:
            for k, beta in enumerate(self.betas):
                self._check(tuple(self._point(c, k) for c in self.cur), beta, max_abs)
        if not C:  # real points only: each one's rows and residual as views, one op a layer
            rows = [c.view(R, B, *c.shape[1:]).unbind() for c in self.cur]
            return [
                Relaxed(tuple(r[k] for r in rows), res, static)
                for k, res in enumerate(residuals.unbind())
            ]
        order = self.real + self.cplx  # the points' rows in the order of the residuals
        return [
            Relaxed(tuple(self._point(c, k) for c in self.cur), residuals[order.index(k)], static)
            for k in range(len(self.betas))
        ]

    def _check(self, s, beta, max_abs) -> None:
        """Raise a DivergenceError naming the first layer of the point's states ``s`` that is
        non-finite or above ``max_abs`` in magnitude."""
        for lay, si in zip(self.net.spec.dynamic_layers, s, strict=True):
            if not float(si.abs().amax()) <= max_abs:  # also true for NaN
                layer = lay.name
                raise DivergenceError(
                    f"relaxation diverged: layer {layer!r} became non-finite or larger than "
                    f"{max_abs:g} in magnitude (beta={beta}, one of {len(self.betas)} nudges "
                    f"relaxed together, model {self.net.spec.source}); lower the learning rate "
                    f"or beta, or rescale the initial weights"
                )


class _SplitSigmoid(NamedTuple):
    """:func:`_sigmoid_planar_`'s views: ``pair`` ``(..., 2, *S)``, its parts ``a`` and ``b``
    (real and imaginary), three scratch buffers of a part's shape (``u``, ``d``, ``sign``), ``u``
    and ``d`` broadcastable over ``pair``, and a 0-d one."""

    pair: Tensor
    a: Tensor
    b: Tensor
    u: Tensor
    d: Tensor
    sign: Tensor
    u_pair: Tensor
    d_pair: Tensor
    one: Tensor


def _split_sigmoid(pair: Tensor, buffers=None) -> _SplitSigmoid:
    """The views :func:`_sigmoid_planar_` works in, for ``pair`` ``(..., 2, *S)``; its scratch
    ``buffers`` (three of a part's shape and dtype) are new unless given."""
    a, b = pair.unbind(-3)
    u, d, sign = buffers or tuple(a.new_empty(a.shape) for _ in range(3))
    return _SplitSigmoid(pair, a, b, u, d, sign, u.unsqueeze(-3), d.unsqueeze(-3), a.new_tensor(1))


def _sigmoid_planar_(v: _SplitSigmoid) -> None:
    """``sigmoid(a + ib)`` in place on ``v.pair`` (:func:`_split_sigmoid`): its real part into
    ``a``, its imaginary part into ``b``. The arithmetic of :func:`spikeep.activations._sigmoid`
    (the same roundings) on split parts, in scratch buffers instead of new tensors; the two
    parts share the products with ``u`` and the division by ``D``. Where ``a >= 0`` the real
    part's numerator is ``1 + u cos b``, else ``u^2 + u cos b``: ``max(u^2, sign a) + u cos b``
    (``u^2 <= 1``, and ``u^2 = 1`` at ``a = 0``), with no boolean mask."""
    a, b, u = v.a, v.b, v.u
    torch.sign(a, out=v.sign)
    torch.exp(a.abs_().neg_(), out=u)  # u = e^{-|a|}
    torch.cos(b, out=a)
    b.sin_()
    v.pair.mul_(v.u_pair)  # a: u cos b, b: u sin b
    uu = u.mul_(u)
    torch.add(uu, v.one, out=v.d).add_(a, alpha=2)  # D = 1 + 2 u cos b + u^2
    a.add_(torch.maximum(uu, v.sign, out=v.sign))
    v.pair.div_(v.d_pair)


def _softmax_into(z: Tensor, z_real: Tensor, work: Tensor, out: Tensor, total: Tensor) -> Tensor:
    """``Network._softmax(z)`` (rows of ``z``) into ``out``, bit for bit, with ``z_real`` the
    view ``z.real``, ``work`` a buffer of ``z``'s shape and ``total`` a ``(rows, 1)`` one for
    the sums; returns ``out``. (The division is not in place: torch divides complex numbers
    in place with other roundings.)"""
    if not z.is_complex():  # torch's softmax, as Network._softmax's for real logits
        return torch._softmax(z, 1, False, out=out)
    torch.sub(z, z_real.amax(dim=1, keepdim=True), out=work).exp_()
    return torch.div(work, torch.sum(work, dim=1, keepdim=True, out=total), out=out)


class _Draws:
    """The Gaussian noise of the steps ahead, drawn in one call per chunk of steps into one
    buffer: the numbers of a draw per layer and step (:func:`add_noise`), bit for bit. A CPU
    generator fills a tensor of ``n`` numbers with ``n`` uniforms in turn, then turns each
    16 of them into normals (Box-Muller); so when every draw holds a multiple of 16 numbers,
    drawing them together gives the same numbers in the same order
    (``tests/test_dynamics.py`` checks it against this torch)."""

    CHUNK = 1 << 18  # numbers per call (1 MiB of float32), and at most STEPS steps
    STEPS = 32

    def __init__(self, shapes, steps, dtype):
        self.shapes, self.left = shapes, steps
        self.sizes = [math.prod(s) for s in shapes]
        per_step = sum(self.sizes)
        n = max(1, min(steps, self.STEPS, self.CHUNK // per_step))
        buffer = torch.empty((n, per_step), dtype=dtype)
        self.buffer, self.filled, self.used, self.on_cpu = buffer, 0, 0, None
        self.rows = [  # each step's draw per layer, as views made once
            [x.view(s) for x, s in zip(row.split(self.sizes), shapes, strict=True)]
            for row in buffer
        ]

    @classmethod
    def ahead(cls, noisy: tuple[Tensor, ...], steps: int, shared: bool = False):
        """A drawer for ``steps`` steps of noise on ``noisy`` (real tensors ``(B, *shape)``; with
        ``shared`` one draw ``(1, *shape)`` each, as :func:`add_noise`), or ``None`` where
        drawing ahead could change the numbers (a size not a multiple of 16, a dtype without
        the 16-wide fill)."""
        dtype = noisy[0].dtype
        shapes = [(1, *si.shape[1:]) if shared else si.shape for si in noisy]
        sizes = [math.prod(s) for s in shapes]
        if dtype not in (torch.float32, torch.float64) or any(n == 0 or n % 16 for n in sizes):
            return None
        return cls(shapes, steps, dtype)

    def next(self, generator) -> list[Tensor]:
        """This step's draw per layer, in the shapes given."""
        exhausted = self.left == 0 and self.used == self.filled  # past the steps announced
        if self.on_cpu is None:
            self.on_cpu = generator.device.type == "cpu"
        if exhausted or not self.on_cpu:  # a CUDA generator's stream is in another order
            return [
                torch.randn(
                    s, generator=generator, dtype=self.buffer.dtype, device=generator.device
                )
                for s in self.shapes
            ]
        if self.used == self.filled:
            n = min(self.left, self.buffer.shape[0])
            self.buffer[:n].normal_(generator=generator)
            self.filled, self.used, self.left = n, 0, self.left - n
        self.used += 1
        return self.rows[self.used - 1]
