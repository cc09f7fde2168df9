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

:class:`Demodulator` is the lock-in, separate from the rate-engine loop :func:`oscillate`, so that
the spiking engines demodulate their own samples (e.g. ``r_i r_j`` per synapse) with it.
"""

from __future__ import annotations

import cmath
import math

import torch
from torch import Tensor

from .dynamics import DivergenceError, check_noise, prepare, stepper

__all__ = ["Demodulator", "teaching_signal", "oscillate"]


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


def teaching_signal(amplitude: float, steps_per_period: int, t: int, real: bool):
    """``(phi_t, beta_t)``: the phase ``2 pi t / K`` and ``|beta| e^{i phi_t}`` (or the real
    ``|beta| cos(phi_t)``)."""
    phase = 2 * math.pi * (t % steps_per_period) / steps_per_period
    if real:
        return phase, amplitude * math.cos(phase)
    return phase, amplitude * cmath.exp(1j * phase)


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

    Returns:
        ``(grads, residual, s)``: the demodulated estimate of ``+dL/dtheta`` (shapes of
        ``params``), the change of the state over the last period ``max |s_t - s_{t-K}|``, and
        the final state.
    """
    K, a = steps_per_period, abs(beta)
    check_noise(noise, generator)
    if not (real or net.holomorphic):
        raise ValueError(
            f"the complex oscillation needs a holomorphic network, but {net.spec.source} uses "
            f"{net.not_holomorphic}; use real=True (--real: the cosine teaching signal with real "
            f"states), or sigmoid4, holotanh or tanh with softmax or avg pooling"
        )
    p, _, ys, static, s = prepare(net, params, x, y, a if real else complex(a), s, static)
    dyn = net.dynamics
    gain = 2.0 if real else 1.0
    step = stepper(dyn, noise, generator)
    demod = Demodulator()
    window = []
    start = s
    for t in range((warmup + periods) * K):
        phase, beta_t = teaching_signal(a, K, t, real)
        s = step(net, p, s, static, ys, beta_t)
        if t >= warmup * K:
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
