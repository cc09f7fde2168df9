r"""Continuous oscillation: one run with a turning teaching signal, the gradient demodulated online.

No separate phases. Step ``t = 0, 1, ...`` of the dynamics is taken with the nudging

    beta_t = |beta| e^{i phi_t}  (complex states)  or  beta_t = |beta| cos(phi_t)  (real states),
    phi_t  = 2 pi t / K,

so ``beta`` turns once every ``K`` steps and the states follow, ``s_{t+1} = T(s_t, beta_t)``. After
``W`` warm-up periods, discarded so that the transient from the start state does not bias it, ``P``
whole periods (``n = P K`` steps) are demodulated against the same phase reference:

    c_1 = (1/n) sum_t g_t e^{-i phi_t},        g_t = dF/dtheta(s_{t+1}, beta_t)
    complex:  dL/dtheta ~ Re c_1 / |beta|     = Re (1/n) sum_t g_t / beta_t
    real:     dL/dtheta ~ 2 Re c_1 / |beta|   = (2 / (n |beta|)) sum_t g_t cos(phi_t)

Why. Write ``g(beta) = dF/dtheta(s*(beta), beta) = sum_m g_m beta^m``; EP's theorem is
``g_1 = dL/dtheta``. If the states sat at the nudged fixed point at every step (quasi-static), the
complex sum is the holomorphic estimator with ``N = K`` points (:mod:`spikeep.estimators`): it keeps
``g_1`` and aliases only ``g_{K+1} |beta|^K``. The real sum keeps ``m`` odd, weighted by the mean of
``cos^{m+1}``: ``g_1 + (3/4) g_3 |beta|^2 + ...``, an O(beta^2) bias like symmetric EP's.
The states trail ``beta`` by their relaxation time ``tau`` (steps): to first order the response to
a nudge turning at ``omega = 2 pi / K`` is multiplied by ``H = 1 + i omega tau + O(omega^2)``. The
imaginary first-order term drops out of ``Re``, leaving an error O((tau / K)^2), independent of
``beta``: it falls as ``K^-2``. The residual reported is the state's change over the last period,
``max |s_t - s_{t-K}|`` (0 on a periodic orbit).

Held phases (``hold = h``, Laborieux & Zenke's scheme). The phase is piecewise constant: the
``j``-th held phase, steps ``t = j h .. j h + h - 1``, takes

    phi_j = 2 pi j / N,    beta_j = |beta| e^{i phi_j}  (or |beta| cos(phi_j)),    N = K / h

(``h`` must divide ``K``, with ``N >= 3`` phases a period), and only the state at the end of each
held phase is demodulated: ``n = P N`` samples ``g_j = dF/dtheta(s_{(j+1) h}, beta_j)``,

    complex:  dL/dtheta ~ Re (1/n) sum_j g_j / beta_j
    real:     dL/dtheta ~ (2 / (n |beta|)) sum_j g_j cos(phi_j)

If every held phase has converged, ``s_{(j+1) h} = s*(beta_j)``, each period's complex sum is
exactly the holomorphic ``N``-point estimator (:class:`spikeep.estimators.Holomorphic`: the
conjugate points repeat the real parts it weighs twice), each point relaxed from the previous
phase's state rather than from the free state, and the ``P`` periods repeat it: bias
O(abs(beta)^N) and no lag term, only what each phase leaves unrelaxed (``e^{-h/tau}``). The real
sum keeps ``g_1`` exactly for ``N >= 3`` (the mean of ``cos^2`` over ``N`` equally spaced phases
is 1/2; for ``N = 2`` it is 1) and an O(beta^2) bias. ``h = 1`` is the every-step scheme above;
``h > 1`` also takes ``h`` times fewer samples, and the lock-in's products with them.

:class:`Demodulator` is the lock-in, separate from the rate-engine loop :func:`oscillate`, so that
the spiking engines demodulate their own samples (e.g. ``r_i r_j`` per synapse) with it. On dense
prototypical networks :func:`oscillate` carries a complex state as two real rows and forms the
lock-in from them with real products (:func:`_oscillate_planar`): the same estimate, to rounding.
"""

from __future__ import annotations

import cmath
import math

import torch
from torch import Tensor

from ._dtypes import COMPLEX_OF
from .dynamics import (
    DivergenceError,
    _planar,
    _PlanarRun,
    _tracked,
    check_noise,
    check_shared,
    prepare,
    stepper,
)

__all__ = ["Demodulator", "teaching_signal", "check_hold", "oscillate"]


class Demodulator:
    """Online lock-in: ``Re c_1`` of samples ``f_t`` taken at phases ``phi_t``.

    ``add(f, phi)`` accumulates ``Re(f e^{-i phi})`` (``f cos(phi)`` for a real ``f``); ``f`` is a
    tensor or a dict name -> tensor, real or complex. ``coefficient()`` is the mean,
    ``Re c_1 = Re (1/n) sum_t f_t e^{-i phi_t}``, in the samples' structure (real tensors).
    Samples that are linear in a weight (``dF/dtheta`` is linear in its coefficient) can be
    demodulated by the caller in bulk: weigh sample ``t`` by :meth:`reference` ``(phi_t)`` and hand
    the real sum of ``count`` samples to :meth:`add_folded`.
    """

    def __init__(self):
        self.total = None
        self.count = 0

    @staticmethod
    def reference(phase: float) -> complex:
        """The demodulation weight ``e^{-i phase}``."""
        return cmath.exp(-1j * phase)

    def add(self, sample, phase: float) -> None:
        w = self.reference(phase)

        def demod(f: Tensor) -> Tensor:
            return f * w.real if not f.is_complex() else (f * w).real

        folded = (
            {k: demod(v) for k, v in sample.items()} if isinstance(sample, dict) else demod(sample)
        )
        self.add_folded(folded, 1)

    def add_folded(self, total, count: int) -> None:
        """Add ``sum Re(f_t e^{-i phi_t})`` over ``count`` samples, already formed."""
        if self.total is None:
            self.total = dict(total) if isinstance(total, dict) else total
        elif isinstance(total, dict):
            self.total = {k: self.total[k] + v for k, v in total.items()}
        else:
            self.total = self.total + total
        self.count += count

    def coefficient(self):
        """``Re c_1`` (the mean); a ValueError before any sample."""
        if not self.count:
            raise ValueError("no samples to demodulate yet")
        if isinstance(self.total, dict):
            return {k: v / self.count for k, v in self.total.items()}
        return self.total / self.count


def teaching_signal(amplitude: float, steps_per_period: int, t: int, real: bool, hold: int = 1):
    """``(phi_t, beta_t)``: the phase ``2 pi t / K`` and ``|beta| e^{i phi_t}`` (or the real
    ``|beta| cos(phi_t)``); with ``hold = h`` the phase of step ``t``'s held phase,
    ``2 pi j / N``, ``j = t // h`` modulo ``N = K / h``."""
    phases = steps_per_period // hold
    phase = 2 * math.pi * ((t // hold) % phases) / phases
    if real:
        return phase, amplitude * math.cos(phase)
    return phase, amplitude * cmath.exp(1j * phase)


def check_hold(steps_per_period: int, hold: int) -> int:
    """``hold``, if it is a positive integer that divides ``steps_per_period`` into ``N >= 3``
    held phases (module docstring); else a one-line ValueError naming both."""
    if not (
        isinstance(hold, int)
        and not isinstance(hold, bool)
        and hold >= 1
        and steps_per_period % hold == 0
        and steps_per_period // hold >= 3
    ):
        raise ValueError(
            f"hold must be a positive integer dividing steps_per_period into at least 3 held "
            f"phases, got hold={hold!r} for steps_per_period={steps_per_period!r}"
        )
    return hold


WINDOW = 8  # steps folded into one dF/dtheta call: the input layer's product is shared by them


def oscillate(
    net,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    beta: float,
    steps_per_period: int,
    periods: int,
    warmup: int = 1,
    real: bool = False,
    s: tuple[Tensor, ...] | None = None,
    static: list[Tensor] | None = None,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    max_abs: float = 1e6,
    noise_shared: bool = False,
    hold: int = 1,
) -> tuple[dict[str, Tensor], float, tuple[Tensor, ...]]:
    """Run ``warmup + periods`` periods of the turning nudge and demodulate the last ``periods``.

    Args:
        net, params, x, y: the network, its (real) parameters, a batch ``(B, *input_shape)`` and its
            one-hot targets ``(B, n_out)``.
        beta: the amplitude ``|beta|`` (its sign is irrelevant).
        steps_per_period: ``K`` dynamics steps per period (``>= 3``).
        periods, warmup: periods demodulated (``P >= 1``) and discarded before (``W >= 0``).
        real: the real cosine nudge with real states, instead of the complex turning one.
        s: the start state (e.g. the free fixed point); zeros when ``None``.
        static: the static drive of ``params`` and ``x`` (e.g. ``free.static``), or ``None``.
        noise, generator: per-step Gaussian state noise and its generator
            (:meth:`spikeep.dynamics.Dynamics.noisy_step`).
        noise_shared: one draw per neuron and step, shared by the batch's samples (see
            :mod:`spikeep.dynamics`); default a draw per sample.
        hold: steps per held phase ``h`` (module docstring): the phase is held ``h`` steps and
            only each held phase's last state demodulated; ``K / h`` must be an integer ``>= 3``.
            1 (default): ``beta`` turns and is demodulated at every step.

    Returns:
        ``(grads, residual, s)``: the demodulated estimate of ``+dL/dtheta`` (shapes of
        ``params``), the change of the state over the last period ``max |s_t - s_{t-K}|``, and
        the final state.
    """
    K, a = steps_per_period, abs(beta)
    check_hold(K, hold)
    check_noise(noise, generator)
    check_shared(noise_shared)
    if not (real or net.holomorphic):
        raise ValueError(
            f"the complex oscillation needs a holomorphic network, but {net.spec.source} uses "
            f"{net.not_holomorphic}; use real=True (--real: the cosine teaching signal with real "
            f"states), or sigmoid4, holotanh or tanh with softmax or avg pooling"
        )
    if _planar(net) and (s is None or not s[0].is_complex()) and not _tracked(params, x, s, static):
        noisy = (noise, generator, noise_shared)
        return _oscillate_planar(
            net, params, x, y, a, K, periods, warmup, real, s, static, noisy, max_abs, hold
        )
    p, _, ys, static, s = prepare(net, params, x, y, a if real else complex(a), s, static)
    dyn = net.dynamics
    gain = 2.0 if real else 1.0
    step = stepper(dyn, noise, generator, noise_shared)
    demod = Demodulator()
    window = []
    start = s
    for t in range((warmup + periods) * K):
        phase, beta_t = teaching_signal(a, K, t, real, hold)
        s = step(net, p, s, static, ys, beta_t)
        if t >= warmup * K and (t + 1) % hold == 0:  # the end of a held phase (every step: h = 1)
            w = demod.reference(phase)  # a real g_t needs only Re(w) = cos(phi_t)
            window.append((dyn.rates(net, s), beta_t, gain * (w.real if real else w) / a))
            if len(window) == WINDOW:
                demod.add_folded(net.dF_dtheta(params, x, y, window), len(window))
                window = []
        if (t + 1) % K == 0:  # end of a period
            _check_finite(net, s, max_abs, (t + 1) // K, warmup + periods, beta)
            residual, start = max(float((u - v).abs().amax()) for u, v in zip(s, start)), s
    if window:
        demod.add_folded(net.dF_dtheta(params, x, y, window), len(window))
    return demod.coefficient(), residual, s


PLANAR_WINDOW = 30  # steps whose samples are demodulated by one product per weight


def _oscillate_planar(
    net, params, x, y, a, K, periods, warmup, real, s, static, noisy, max_abs, hold=1
):
    """:func:`oscillate` on dense prototypical networks: the states in the real rows of
    :class:`spikeep.dynamics._PlanarRun` (a complex state is two real rows), and the lock-in
    formed from them with real products. Per demodulated step ``t``, with weight ``c_t =
    gain e^{-i phi_t} / |beta|`` (real: ``gain cos(phi_t) / |beta|``) and rates ``r = u + iv``,
    ``Re(c_t r_l)^T`` times ``r_{l-1}`` is ``[Re(c_t r_l); -Im(c_t r_l)]^T [u_{l-1}; v_{l-1}]``:
    the samples of a window of steps stack into one real product per coupling. The input layer's
    coupling sums ``Re(c_t r_1)`` over every step first (``x`` is the same). The readout's sample
    is ``Re(c_t beta_t (softmax(z_t) - y)^T r_top)``. The same estimate as the general loop, to
    rounding. ``noisy``: ``(noise, generator, shared)``. With ``hold = h`` the run goes held
    phase by held phase: ``beta`` set once, ``h`` steps, the last one's state sampled."""
    noise, generator, shared = noisy
    B = x.shape[0]
    s = net.zeros(x) if s is None else s
    static = net.static_drive(params, x) if static is None else static
    steps = (warmup + periods) * K
    run = _PlanarRun(net, params, y, [a], [not real], static, s, steps, shared=shared)
    rows = B if real else 2 * B
    N = K // hold  # held phases a period (K with h = 1)
    n_w = min(PLANAR_WINDOW, periods * N)
    window = [si.new_empty((n_w, rows, si.shape[1])) for si in s]
    slots = [list(w) for w in zip(*window)]  # per window step, its row in every layer's window
    # the teaching signal of a period, computed once; a complex one as 0-d tensors as well
    signal = [teaching_signal(a, N, j, real) for j in range(N)]  # per held phase
    if not real:
        cdtype = COMPLEX_OF[s[0].dtype]
        nudges = torch.tensor([b for _, b in signal], dtype=cdtype, device=s[0].device).unbind()
    coef, qbeta = [], []  # c_t and c_t beta_t of the window's steps (complex numbers)
    top = len(s) - 1
    n_out = len(net.layers) - 1
    grads = {k: torch.zeros_like(v) for k, v in params.items()}
    g1 = torch.zeros_like(s[0])  # sum_t Re(c_t r_1,t), (B, n_1)
    gain = 2.0 if real else 1.0
    filled, count = 0, 0

    def fold(n):
        c = torch.tensor([[z.real, z.imag] for z in coef], dtype=s[0].dtype).to(s[0].device)
        q = torch.tensor([[z.real, z.imag] for z in qbeta], dtype=s[0].dtype).to(s[0].device)
        coef.clear(), qbeta.clear()
        cr, ci = c[:, 0].view(n, 1, 1), c[:, 1].view(n, 1, 1)
        g = []  # per layer, [Re(c r); -Im(c r)] stacked over the window's steps
        for i, w in enumerate(window):
            u = w[:n, :B]
            if real:
                g.append(u * cr)
            elif i == 0:  # the input layer: Re(c r) alone (its sum over steps is all it needs)
                g.append(torch.mul(u, cr).sub_(w[:n, B:] * ci))
            else:  # [u cr; -v cr] - [v ci; u ci]: [u cr - v ci; -(v cr + u ci)], bit for bit
                uv = w[:n].view(n, 2, B, -1)
                gi = uv * torch.cat([cr, -cr], dim=1).unsqueeze(-1)
                uv_ci = uv * ci.unsqueeze(-1)
                gi[:, 0].sub_(uv_ci[:, 1])
                gi[:, 1].sub_(uv_ci[:, 0])
                g.append(gi.view(n, 2 * B, -1))
        g1.add_(g[0][:, :B].sum(0))
        for i in range(1, top + 1):  # coupling W{i+1} between dynamic layers i-1 and i
            below = window[i - 1][:n]
            lhs, rhs = g[i].flatten(0, 1), below.flatten(0, 1)
            grads[f"W{i + 1}"].addmm_(lhs.T, rhs, alpha=-1 / B)
            grads[f"b{i + 1}"].sub_(g[i][:, :B].sum((0, 1)), alpha=1 / B)
        if net.readout:  # + Re(c_t beta_t (softmax(z_t) - y))^T r_top
            W, b = params[f"W{n_out}"], params[f"b{n_out}"]
            r_top = window[top][:n]
            u = r_top[:, :B]
            qr = q[:, 0].view(n, 1, 1)
            u2 = u.flatten(0, 1)  # (n B, n_top): the softmax runs over each row's classes
            if real:
                e = (net._softmax(u2 @ W.T + b).view(n, B, -1) - y).mul_(qr)
                lhs = e
            else:
                v2 = r_top[:, B:].flatten(0, 1)
                z = torch.complex(u2 @ W.T + b, v2 @ W.T)
                e = net._softmax(z).view(n, B, -1) - y
                e = e * torch.complex(qr, q[:, 1].view(n, 1, 1))
                lhs, e = torch.cat([e.real, -e.imag], dim=1), e.real
            W_grad = grads[f"W{n_out}"]
            W_grad.addmm_(lhs.flatten(0, 1).T, r_top.flatten(0, 1), alpha=1 / B)
            grads[f"b{n_out}"].add_(e.sum((0, 1)), alpha=1 / B)

    start = [c.clone() for c in run.cur]
    residual = 0.0
    for j in range((warmup + periods) * N):  # held phase j: steps j h .. j h + h - 1
        phase, beta_t = signal[j % N]
        run.set_beta(beta_t if real else nudges[j % N])
        for _ in range(hold):
            run.step(noise, generator)
        if j >= warmup * N:  # its last state, demodulated
            c = gain * Demodulator.reference(phase) / a
            coef.append(c)
            qbeta.append(complex(c * beta_t))
            for w, cur in zip(slots[filled], run.cur, strict=True):
                w.copy_(cur)
            filled += 1
            count += 1
            if filled == n_w:
                fold(filled)
                filled = 0
        if (j + 1) % N == 0:  # end of a period
            state = _split(run.cur, B, real)
            _check_finite(net, state, max_abs, (j + 1) // N, warmup + periods, a)
            before = _split(start, B, real)
            residual = max(float((u - v).abs().amax()) for u, v in zip(state, before))
            for c0, c1 in zip(start, run.cur, strict=True):
                c0.copy_(c1)
    if filled:
        fold(filled)
    grads["W1"] = -(g1.T @ x.flatten(1).to(g1)) / B
    grads["b1"] = -g1.sum(0) / B
    return {k: v / count for k, v in grads.items()}, residual, _split(run.cur, B, real)


def _split(planar, B, real):
    """The states of a one-point planar run: real rows, or ``u + iv`` from two blocks."""
    return tuple(c if real else torch.complex(c[:B], c[B:]) for c in planar)


def _check_finite(net, s, max_abs, period, total, beta):
    for layer, si in zip(net.spec.dynamic_layers, s, strict=True):
        peak = float(si.abs().amax())
        if not peak <= max_abs:  # also true for NaN
            what = (
                "non-finite" if not math.isfinite(peak) else f"larger than {max_abs:g} in magnitude"
            )
            raise DivergenceError(
                f"oscillation diverged: layer {layer.name!r} became {what} in period {period} of "
                f"{total} (|beta|={abs(beta)}, model {net.spec.source}); lower |beta| or the "
                f"learning rate"
            )
