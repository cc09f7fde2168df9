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
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from . import _checks
from ._dtypes import COMPLEX_OF

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

    def noisy_step(self, net, params, s, static, y, beta, noise, generator):
        """:meth:`step` with Gaussian noise of std ``noise`` on the neurons' state (module
        docstring), drawn from ``generator``; by default added to the new states."""
        return add_noise(self.step(net, params, s, static, y, beta), noise, generator)


class Prototypical(Dynamics):
    """``s_{t+1} = rho(dPhi_beta/dr(s_t))``; states are rates."""

    name = "prototypical"

    def rates(self, net, s):
        return s

    def step(self, net, params, s, static, y=None, beta=0.0):
        return self._rates(net, net.dphi(params, s, static, y, beta))

    def noisy_step(self, net, params, s, static, y, beta, noise, generator):
        return self._rates(net, net.dphi(params, s, static, y, beta), noise, generator)

    @staticmethod
    def _rates(net, h, noise=0.0, generator=None) -> tuple[Tensor, ...]:
        """``rho(h + noise xi)`` in place on the (fresh) drives ``h``: the noise on the drive."""
        if noise:
            add_noise(h, noise, generator)
        return tuple(net.act.rho_(hi) for hi in h)


class Alternating(Prototypical):
    """The prototypical update taken by half the layers at a time (:func:`halves`), the second
    half from the first half's new rates (module docstring)."""

    name = "alternating"
    gradient_step = False

    def step(self, net, params, s, static, y=None, beta=0.0):
        return self._step(net, params, s, static, y, beta)

    def noisy_step(self, net, params, s, static, y, beta, noise, generator):
        return self._step(net, params, s, static, y, beta, noise, generator)

    def _step(self, net, params, s, static, y, beta, noise=0.0, generator=None):
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
            for i, r in zip(half, self._rates(net, h, noise, generator), strict=True):
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


def add_noise(s: tuple[Tensor, ...], noise: float, generator: torch.Generator):
    """``s_l + noise xi_l`` in place for every tensor ``s_l`` (``xi_l ~ N(0, 1)``, real, drawn
    from ``generator`` on its device); returns ``s``. Complex tensors get it on their real part."""
    for si in s:
        real = si.real.dtype if si.is_complex() else si.dtype
        xi = torch.randn(si.shape, generator=generator, dtype=real, device=generator.device)
        si.add_(xi.to(si.device), alpha=noise)
    return s


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


def stepper(dyn: Dynamics, noise: float = 0.0, generator: torch.Generator | None = None):
    """``step(net, params, s, static, y, beta)`` of ``dyn``: the plain step when ``noise`` is 0
    (no draws), else :meth:`Dynamics.noisy_step` with ``noise`` and ``generator``."""
    if not noise:
        return dyn.step

    def noisy(net, params, s, static, y, beta):
        return dyn.noisy_step(net, params, s, static, y, beta, noise, generator)

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

    Returns:
        :class:`Relaxed` ``(s, residual)``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if beta != 0 and y is None:
        raise ValueError(f"a nudged phase (beta={beta}) needs targets y")
    _checks.check_batch(net, params, x, y if beta != 0 else None)  # named, before torch fails
    check_noise(noise, generator)
    params, x, y, static, s0 = prepare(net, params, x, y, beta, s, static)
    dyn = net.dynamics
    state, prev = s0, s0
    replay = generator.get_state() if noise else None  # to replay the draws if it diverges
    real = not s0[0].is_complex()
    fast = _planar(net, flow=real) and real and not _tracked(params, x, s0, static)
    if fast:  # the same arithmetic in preallocated buffers
        run = _PlanarRun(net, params, y, [beta], [False], static, s0)
        for _ in range(steps):
            run.step(noise, generator)
        state, prev = tuple(run.cur), tuple(run.prev)
    else:
        step = stepper(dyn, noise, generator)
        for _ in range(steps):
            prev, state = state, step(net, params, state, static, y, beta)
    # One synchronisation at the end: the largest state magnitude (NaN propagates through amax)
    # and the last step's change. On failure, replay the phase to name the layer and step.
    stats = torch.stack(
        [si.abs().amax() for si in state] + [(a - b).abs().amax() for a, b in zip(state, prev)]
    ).detach()
    peak = float(stats[: len(state)].amax())
    if not peak <= max_abs:  # also true for NaN
        _locate(net, params, s0, static, y, beta, steps, max_abs, noise, generator, replay)
    return Relaxed(state, stats[len(state) :].amax() / dyn.dt, static)


def _locate(net, params, s0, static, y, beta, steps, max_abs, noise, generator, replay):
    if noise:
        generator = torch.Generator(device=generator.device)
        generator.set_state(replay)
    step = stepper(net.dynamics, noise, generator)
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
    real_start = s is None or not s[0].is_complex()
    real_params = not next(iter(params.values())).is_complex()
    is_complex = [isinstance(b, complex) and b.imag != 0 for b in betas]
    planar = _planar(net, flow=not any(is_complex))
    if not (planar and real_start and real_params and not _tracked(params, x, s, static)):
        return [
            relax(net, params, x, y, b, s, steps, static, max_abs, noise, generator) for b in betas
        ]
    if any(is_complex):
        _state_dtype(net, params, x, 1j, None)  # refuses a network that is not holomorphic
    if static is None:
        static = net.static_drive(params, x)
    run = _PlanarRun(net, params, y, betas, is_complex, static, s or net.zeros(x))
    for _ in range(steps):
        run.step(noise, generator)
    return run.results(max_abs, static)


def _planar(net, flow: bool = False) -> bool:
    """Whether :func:`relax_points` can carry complex states as real rows (its docstring), or,
    with ``flow`` (real states only), run the buffered loop of :class:`_PlanarRun` at all: then
    also for the ``energy`` dynamics of an activation that is the identity on its box (the hard
    sigmoid), whose step is ``clip(lerp(s, h, dt))`` of the drive ``h`` at rates ``s``."""
    from .couplings import Dense

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


class _PlanarRun:
    """The state of :func:`relax_points`' batched relaxation: per layer two buffers of ``(M B,
    n)`` rows, ``M = R + 2 C`` blocks for ``R`` real and ``C`` complex points, that swap roles
    at each step (no allocation for the drives). When every layer has the same width the
    buffers are the layers of one ``(L, M B, n)`` tensor, so that ``rho`` runs once for all."""

    def __init__(self, net, params, y, betas, is_complex, static, s0):
        self.net, self.params, self.betas = net, params, betas
        self.real = [k for k, c in enumerate(is_complex) if not c]
        self.cplx = [k for k, c in enumerate(is_complex) if c]
        B = s0[0].shape[0]
        R, C = len(self.real), len(self.cplx)
        self.B, self.R, self.C = B, R, C
        self.nre = R + C  # blocks that carry real parts: static drive and noise go there
        M = R + 2 * C
        self.weights = [params[f"W{i + 1}"] for i in range(1, net.n_dynamic)]
        widths = [si.shape[1] for si in s0]
        self.merged = len(set(widths)) == 1
        if self.merged:
            both = s0[0].new_zeros((2, len(s0), M * B, widths[0]))
            self.cur_all, self.nxt_all = both[0], both[1]
            self.cur, self.nxt = list(both[0]), list(both[1])
        else:
            self.cur = [si.new_zeros((M * B, n)) for si, n in zip(s0, widths, strict=True)]
            self.nxt = [torch.empty_like(c) for c in self.cur]
        self.static = []
        for h, si, cur in zip(static, s0, self.cur, strict=True):
            if M == 1:  # one real point: the drive as it is (a bias broadcasts in the products)
                self.static.append(h)
                cur.copy_(si)
                continue
            S = torch.zeros_like(cur)
            S[: self.nre * B] = h if h.dim() == 1 else h.repeat(self.nre, 1)
            self.static.append(S)
            cur[: self.nre * B] = si.repeat(self.nre, 1)
        real_dtype, device = s0[0].dtype, s0[0].device
        beta_r = [complex(betas[k]).real for k in self.real]
        self.nudged = any(beta_r)  # a free phase has no cost term (Network.dphi)
        self.single = beta_r[0] if R == 1 and not C else None  # exactly Network.dphi's sub
        self.beta_real = None  # per-row nudges, where the points' differ (not self.single)
        if y is not None:
            self.y_real = y.to(real_dtype) if R == 1 else y.to(real_dtype).repeat(R, 1)
            if self.single is None:
                beta_r = torch.tensor(beta_r, dtype=real_dtype, device=device)
                self.beta_real = beta_r.repeat_interleave(B).unsqueeze(1)
        if C:
            cdtype = COMPLEX_OF[real_dtype]
            if not net.readout:  # the readout's nudge stays in real products (_nudge_readout)
                self.cparams = cast_params(params, cdtype)
            self.y_cplx = y.to(cdtype).repeat(C, 1)
            beta_c = torch.tensor([complex(betas[k]) for k in self.cplx], dtype=cdtype)
            self.beta_cplx = beta_c.to(device).repeat_interleave(B).unsqueeze(1)
        self.sigmoid4 = net.act.name == "sigmoid4"
        # the energy dynamics (real states only, _planar): s <- clip(lerp(s, h, dt)), then noise
        self.flow = type(net.dynamics) is GradientFlow
        if self.flow and C:
            raise ValueError("the buffered energy dynamics take real states only")
        if self.sigmoid4 and C:  # flat scratch for the complex blocks of every layer at once
            size = len(s0) * C * B * max(widths)
            mask = torch.empty(size, dtype=torch.bool, device=device)
            self._scratch = (s0[0].new_empty((2, size)), mask)
        self.readout = bool(net.readout)
        if self.readout:
            n = len(net.layers) - 1
            self.W_out, self.b_out = params[f"W{n}"], params[f"b{n}"]

    def step(self, noise, generator):
        net, cur, nxt, W = self.net, self.cur, self.nxt, self.weights
        top, B, R, nre = len(cur) - 1, self.B, self.R, self.nre
        if top == 0 and self.single is not None:  # one layer, one real point
            if not self.nudged and self.flow:  # the drive is the static one: read it there
                self._noise_and_rho(noise, generator, self.static)
                return
            if self.nudged:  # the static drive and the nudge in one op (Network.dphi's sub)
                d = net.dcost_dr(self.params, cur[0], self.y_real)
                torch.sub(self.static[0], d, alpha=self.single, out=nxt[0])
                self._noise_and_rho(noise, generator)
                return
        for i in range(top + 1):  # the order of Network.dphi: forward drive, then feedback
            if i > 0:
                torch.addmm(self.static[i], cur[i - 1], W[i - 1].T, out=nxt[i])
                if i < top:
                    nxt[i].addmm_(cur[i + 1], W[i])
            elif i < top:  # the input layer's static drive and its feedback, one product
                torch.addmm(self.static[i], cur[i + 1], W[i], out=nxt[i])
            else:
                nxt[i].copy_(self.static[i])
        h, r = nxt[top], cur[top]
        if self.readout and self.single is None and (self.nudged or self.C):
            self._nudge_readout(h, r)
            self._noise_and_rho(noise, generator)
            return
        if self.nudged:  # the nudge: - beta_k dC/dr_top, each point with its own beta
            d = net.dcost_dr(self.params, r[: R * B], self.y_real)
            if self.single is not None:
                h.sub_(d, alpha=self.single)
            else:
                h[: R * B].sub_(d.mul_(self.beta_real))
        if self.C:
            rc = torch.complex(r[R * B : nre * B], r[nre * B :])
            d = net.dcost_dr(self.cparams, rc, self.y_cplx).mul_(self.beta_cplx)
            h[R * B : nre * B].sub_(d.real)
            h[nre * B :].sub_(d.imag)
        self._noise_and_rho(noise, generator)

    def set_beta(self, beta) -> None:
        """Nudge the run's one point with ``beta`` from the next step on (the oscillation)."""
        if self.C:
            self.beta_cplx.fill_(complex(beta))
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
        noisy = tuple(hi[: self.nre * self.B] for hi in nxt) if noise else ()
        if noise and not self.flow:
            add_noise(noisy, noise, generator)
        if self.merged and drives is None:
            self._new(self.nxt_all, self.cur_all)
        else:
            for hi, si, out in zip(drives or nxt, cur, nxt, strict=True):
                self._new(hi, si, out)
        if self.merged:
            self.cur_all, self.nxt_all = self.nxt_all, self.cur_all
        if noise and self.flow:
            add_noise(noisy, noise, generator)
        self.prev, self.cur, self.nxt = cur, nxt, cur

    def _new(self, h, s, out=None):
        """The new states in ``out`` (default: in place of the drives ``h``), from the states
        ``s``: ``rho(h)``, or ``clip(lerp(s, h, dt))`` for the energy dynamics
        (:meth:`GradientFlow.step`'s kernels)."""
        if self.flow:
            out = h if out is None else out
            torch.lerp(s, h, self.net.dynamics.dt, out=out).clamp_(*self.net.act.box)
        else:
            self._rho(h)

    def _nudge_readout(self, h, r):
        """``h -= beta_k dC/dr_top`` for the cross-entropy readout, every row at once: the logits
        ``r W_out^T + b_out`` and ``dC/dr = (softmax - y) W_out`` are real products over all
        rows; only the softmax of a complex point combines its two rows."""
        B, R, nre, W = self.B, self.R, self.nre, self.W_out
        z = r @ W.T
        z[: nre * B] += self.b_out
        e = torch.empty_like(z)
        if R:
            e[: R * B] = (self.net._softmax(z[: R * B]) - self.y_real).mul_(self.beta_real)
        if self.C:
            zc = torch.complex(z[R * B : nre * B], z[nre * B :])
            ec = (self.net._softmax(zc) - self.y_cplx).mul_(self.beta_cplx)
            e[R * B : nre * B] = ec.real
            e[nre * B :] = ec.imag
        h.addmm_(e, W, alpha=-1)

    def _scratch_like(self, a: Tensor):
        """Buffers of ``a``'s shape for :func:`_sigmoid_planar_`, views of the flat scratch."""
        (cd, mask), n = self._scratch, a.numel()
        return cd[0, :n].view(a.shape), cd[1, :n].view(a.shape), mask[:n].view(a.shape)

    def _rho(self, h):
        """``rho`` in place on one layer's rows ``(M B, n)``, or every layer's ``(L, M B, n)``:
        real points, then each complex point's pair."""
        act, B, R, nre = self.net.act, self.B, self.R, self.nre
        rows = h.dim() - 2
        blocks = ((0, R), (R, nre), (nre, nre + self.C))
        real, re, im = (h.narrow(rows, a * B, (b - a) * B) for a, b in blocks)
        if self.sigmoid4:
            real.mul_(4.0).sub_(2.0).sigmoid_()
            if self.C:
                _sigmoid_planar_(re.mul_(4.0).sub_(2.0), im.mul_(4.0), self._scratch_like(re))
            return
        if R:  # in place where the activation has an in-place form (Prototypical._rates' own)
            r = act.rho_(real)
            if r is not real:
                real.copy_(r)
        if self.C:
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
        out = []
        for k, beta in enumerate(self.betas):
            s = tuple(self._point(c, k) for c in self.cur)
            prev = tuple(self._point(c, k) for c in self.prev)
            stats = torch.stack(
                [si.abs().amax() for si in s] + [(a - b).abs().amax() for a, b in zip(s, prev)]
            )
            peak = float(stats[: len(s)].amax())
            if not peak <= max_abs:  # also true for NaN
                layer = next(
                    lay.name
                    for lay, si in zip(self.net.spec.dynamic_layers, s, strict=True)
                    if not float(si.abs().amax()) <= max_abs
                )
                raise DivergenceError(
                    f"relaxation diverged: layer {layer!r} became non-finite or larger than "
                    f"{max_abs:g} in magnitude (beta={beta}, one of {len(self.betas)} nudges "
                    f"relaxed together, model {self.net.spec.source}); lower the learning rate "
                    f"or beta, or rescale the initial weights"
                )
            out.append(Relaxed(s, stats[len(s) :].amax() / self.net.dynamics.dt, static))
        return out


def _sigmoid_planar_(a: Tensor, b: Tensor, scratch: tuple[Tensor, Tensor, Tensor]) -> None:
    """``sigmoid(a + ib)`` in place, its real part into ``a`` and imaginary part into ``b``: the
    arithmetic of :func:`spikeep.activations._sigmoid` (the same roundings) on split parts, in
    ``scratch`` (two buffers of ``a``'s shape and dtype and one boolean) instead of new tensors."""
    c, d, pos = scratch
    torch.ge(a, 0, out=pos)
    u = a.abs_().neg_().exp_()  # a: u = e^{-|a|}
    uc = torch.cos(b, out=c).mul_(u)
    us = b.sin_().mul_(u)  # b: u sin b
    uu = u.mul_(u)  # a: u^2
    D = torch.add(uu, 1, out=d).add_(uc, alpha=2)
    # the real part: (1 + u cos b) / D where a >= 0, else (u cos b + u^2) / D
    uu.masked_fill_(pos, 1.0).add_(uc).div_(D)
    us.div_(D)
