r"""EP gradient estimators behind one interface.

Each estimator turns a relaxed free phase into an estimate of ``+dL/dtheta`` (descend it), as a
weighted sum of ``dF/dtheta`` at nudged fixed points (``F = E + beta C``, :mod:`spikeep.energy`),
and declares the order of its bias in ``beta``:

- ``one-sided`` (bias O(beta)): ``(dF/dtheta(s^beta) - dF/dtheta(s^0)) / beta``;
- ``random-sign`` (O(beta)): one-sided with the sign of ``beta`` drawn per batch;
- ``symmetric`` (O(beta^2)): ``(dF/dtheta(s^beta) - dF/dtheta(s^-beta)) / (2 beta)``;
- ``holomorphic`` (O(abs(beta)^N)): ``Re (1/N) sum_k dF/dtheta(s^beta_k) / beta_k`` with
  ``beta_k = abs(beta) e^{2 pi i k / N}``;
- ``continual`` (C-EP, O(beta) + O(lr/beta)): the weights move at every nudged step; returns
  ``(theta_0 - theta_K) / lr``. The weights' drift moves the fixed point by O(lr), which the
  ``1/beta`` of the update amplifies: keep ``lr`` well below ``beta``;
- ``oscillation`` (O(abs(beta)^K) complex, O(beta^2) real, plus O(K^-2) lag): one run in which
  ``beta`` turns once every ``K`` steps, the gradient demodulated online (the maths is in
  :mod:`spikeep.oscillation`); with ``hold = h`` the phase is held ``h`` steps at each of ``N =
  K / h`` values and sampled at each one's end: converged, the ``N``-point ``holomorphic``
  estimator, each point relaxed from the previous one (O(abs(beta)^N) complex, no lag).

``holomorphic`` relaxes only ``k = 0 .. N/2``: for real parameters and data ``s^conj(beta)`` is
``conj(s^beta)``, so the other half of the circle repeats their real parts (weight 2). ``k = 0``
and ``k = N/2`` are real nudges, so ``N = 2`` performs exactly the symmetric estimator's arithmetic.
The ``N/2 + 1`` points are relaxed together, as one batch (:func:`spikeep.dynamics.relax_points`:
on dense prototypical networks a complex state is two real rows and every product a real one);
``batched=False`` relaxes them one after another, to rounding the same.

Every estimator takes ``noise`` (default 0): the std of the Gaussian noise added to the states at
every step of its nudged phases (:meth:`spikeep.dynamics.Dynamics.noisy_step`), drawn from the
``generator`` passed to :meth:`Estimator.estimate`, and ``noise_shared`` (default ``False``):
``True`` draws one number per neuron and step and adds it to every sample of the batch (each
``holomorphic`` point, a relaxation of its own, with its own draw), as Laborieux & Zenke's code
does. With noise the half-circle shortcut of ``holomorphic`` is a sampling choice (independent
noise at each point), no longer an identity.

``bptt`` (:class:`TruncatedBPTT`, in :data:`BASELINES`) is not EP: it backpropagates through
free steps run on from the free state, so that training can set EP beside (close to) the exact
gradient.

Adding an estimator: subclass :class:`Estimator`, implement :meth:`~Estimator.estimate` and
``bias_order``, and add it to :data:`ESTIMATORS`; the parametrised tests then check it against the
implicit reference and fit its bias order.
"""

from __future__ import annotations

import cmath
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from . import oscillation, reference
from .dynamics import (
    Relaxed,
    check_noise,
    check_shared,
    relax,
    relax_each,
    relax_points,
    stepper,
)

__all__ = [
    "Estimate",
    "Estimator",
    "OneSided",
    "RandomSign",
    "Symmetric",
    "Holomorphic",
    "Continual",
    "Oscillation",
    "TruncatedBPTT",
    "ESTIMATORS",
    "BASELINES",
    "make",
]


@dataclass(frozen=True)
class Estimate:
    """An estimate of ``dL/dtheta`` and the nudged phases behind it.

    Attributes:
        grads: name -> estimated gradient (shapes of the parameters).
        betas: the nudging strength of each simulated nudged phase.
        residuals: each nudged phase's final residual (floats), aligned with ``betas``.
        nudged: the nudged states (last phase), e.g. to seed the next one.
    """

    grads: dict[str, Tensor]
    betas: list[complex | float] = field(default_factory=list)
    residuals: list[float] = field(default_factory=list)
    nudged: tuple[Tensor, ...] | None = None


class Estimator(ABC):
    """A gradient estimator with nudging strength ``beta``, ``steps`` nudged steps, ``noise``
    (std of the Gaussian noise added to the states at every nudged step; 0 for none) and
    ``noise_shared`` (one draw per neuron and step for the whole batch)."""

    name: ClassVar[str]

    def __init__(
        self, beta: float, steps: int = 20, *, noise: float = 0.0, noise_shared: bool = False
    ):
        if not (isinstance(beta, int | float) and math.isfinite(beta) and beta != 0):
            raise ValueError(f"beta must be a finite non-zero real number, got {beta!r}")
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"nudged steps must be a positive integer, got {steps!r}")
        self.beta, self.steps, self.noise = float(beta), steps, check_noise(noise)
        self.noise_shared = check_shared(noise_shared)

    @property
    @abstractmethod
    def bias_order(self) -> int:
        """``p`` such that the estimate's error is ``O(beta^p)``."""

    @abstractmethod
    def estimate(
        self, net, params, x: Tensor, y: Tensor, free: Relaxed, generator=None
    ) -> Estimate:
        """Estimate ``dL/dtheta`` from the free phase ``free`` on batch ``(x, y)``; random draws
        (signs, noise) come from ``generator`` (a ``torch.Generator``)."""

    def __repr__(self):
        return (
            f"{type(self).__name__}(beta={self.beta}, steps={self.steps}, noise={self.noise}"
            f"{self._shared_repr()})"
        )

    def _shared_repr(self) -> str:
        return ", noise_shared=True" if self.noise_shared else ""

    def _nudge(self, net, params, x, y, free: Relaxed, beta, generator=None):
        out = self._relax(relax, net, params, x, y, free, beta, generator)
        return out, net.dynamics.rates(net, out.s)

    def _relax(self, how, net, params, x, y, free: Relaxed, nudge, generator):
        """``how`` (:func:`relax` for one nudge, :func:`relax_each` or :func:`relax_points` for
        several) from the free state, with the estimator's steps and noise."""
        return how(
            net,
            params,
            x,
            y,
            nudge,
            free.s,
            self.steps,
            free.static,
            noise=self.noise,
            generator=generator,
            noise_shared=self.noise_shared,
        )


class OneSided(Estimator):
    """Scellier & Bengio 2017: one nudged phase at ``+beta``."""

    name = "one-sided"
    bias_order = 1

    def estimate(self, net, params, x, y, free, generator=None):
        return _one_sided(self, net, params, x, y, free, self.beta, generator)


def _one_sided(est, net, params, x, y, free, beta, generator):
    nudged, r_b = est._nudge(net, params, x, y, free, beta, generator)
    r_0 = net.dynamics.rates(net, free.s)
    grads = net.dF_dtheta(params, x, y, [(r_b, beta, 1 / beta), (r_0, 0.0, -1 / beta)])
    return Estimate(grads, [beta], [float(nudged.residual)], nudged.s)


class RandomSign(Estimator):
    """One-sided EP with the sign of ``beta`` drawn per call (per batch) from ``generator``."""

    name = "random-sign"
    bias_order = 1

    def estimate(self, net, params, x, y, free, generator=None):
        device = generator.device if generator is not None else None
        draw = torch.randint(0, 2, (1,), generator=generator, device=device)
        sign = 1.0 if draw.item() else -1.0
        return _one_sided(self, net, params, x, y, free, sign * self.beta, generator)


class Symmetric(Estimator):
    """Laborieux et al. 2021: nudged phases at ``+beta`` and ``-beta``, both from the free state."""

    name = "symmetric"
    bias_order = 2

    def estimate(self, net, params, x, y, free, generator=None):
        b = self.beta
        # the two phases with one setup, as one batch where it can
        plus, minus = self._relax(relax_each, net, params, x, y, free, [b, -b], generator)
        r_p, r_m = (net.dynamics.rates(net, out.s) for out in (plus, minus))
        grads = net.dF_dtheta(params, x, y, [(r_p, b, 1 / (2 * b)), (r_m, -b, -1 / (2 * b))])
        return Estimate(grads, [b, -b], [float(plus.residual), float(minus.residual)], plus.s)


class Holomorphic(Estimator):
    """Laborieux & Zenke 2022: ``N`` nudges on the circle of radius ``abs(beta)``, of which the
    ``N/2 + 1`` on the upper half are relaxed, as one batch unless ``batched=False``."""

    name = "holomorphic"

    def __init__(
        self,
        beta: float,
        steps: int = 20,
        points: int = 4,
        *,
        noise: float = 0.0,
        noise_shared: bool = False,
        batched: bool = True,
    ):
        super().__init__(beta, steps, noise=noise, noise_shared=noise_shared)
        if not (isinstance(points, int) and points >= 2):
            raise ValueError(f"points must be an integer >= 2, got {points!r}")
        self.points, self.batched = points, batched

    @property
    def bias_order(self):
        return self.points

    def __repr__(self):
        return (
            f"Holomorphic(beta={self.beta}, steps={self.steps}, points={self.points}, "
            f"noise={self.noise}{self._shared_repr()})"
        )

    def betas(self) -> list[tuple[complex | float, float]]:
        """``(beta_k, weight_k)`` for the simulated half circle ``k = 0 .. N // 2``."""
        N, a = self.points, abs(self.beta)
        out = []
        for k in range(N // 2 + 1):
            if k == 0:
                out.append((a, 1.0))
            elif 2 * k == N:
                out.append((-a, 1.0))
            else:
                out.append((a * cmath.exp(2j * math.pi * k / N), 2.0))
        return out

    def estimate(self, net, params, x, y, free, generator=None):
        N = self.points
        betas = [beta_k for beta_k, _ in self.betas()]
        if self.batched:  # the N/2 + 1 points as one relaxation (dynamics.relax_points)
            outs = self._relax(relax_points, net, params, x, y, free, betas, generator)
        else:  # one point after another
            outs = [self._nudge(net, params, x, y, free, b, generator)[0] for b in betas]
        points = [
            (net.dynamics.rates(net, out.s), beta_k, w / (N * beta_k))
            for out, (beta_k, w) in zip(outs, self.betas(), strict=True)
        ]
        residuals = [float(out.residual) for out in outs]
        return Estimate(net.dF_dtheta(params, x, y, points), betas, residuals, outs[0].s)


class Continual(Estimator):
    """C-EP (Ernoult et al. 2020): during the nudged phase, after every step ``t``,
    ``theta <- theta - lr (dF/dtheta(s_{t+1}) - dF/dtheta(s_t)) / beta`` (``s_0`` taken at
    ``beta = 0``, so the steps telescope to one-sided EP as ``lr -> 0``). Returns
    ``(theta_0 - theta_K) / lr``: one SGD step of size ``lr`` with it lands on ``theta_K``.
    ``lr`` is a float or a dict name -> float (per-parameter learning rates)."""

    name = "continual"
    bias_order = 1  # in beta, at fixed lr/beta -> 0

    def __init__(
        self,
        beta: float,
        steps: int = 20,
        lr: float | dict[str, float] = 1e-3,
        *,
        noise: float = 0.0,
        noise_shared: bool = False,
    ):
        super().__init__(beta, steps, noise=noise, noise_shared=noise_shared)
        self.lr = lr

    def _lr(self, name):
        return self.lr[name] if isinstance(self.lr, dict) else self.lr

    def estimate(self, net, params, x, y, free, generator=None):
        check_noise(self.noise, generator)
        b = self.beta
        theta = dict(params)
        s = free.s
        r_prev, beta_prev = net.dynamics.rates(net, s), 0.0
        prev = s
        step = stepper(net.dynamics, self.noise, generator, self.noise_shared)
        for _ in range(self.steps):
            static = net.static_drive(theta, x)
            prev, s = s, step(net, theta, s, static, y, b)
            r = net.dynamics.rates(net, s)
            g = net.dF_dtheta(theta, x, y, [(r, b, 1 / b), (r_prev, beta_prev, -1 / b)])
            theta = {k: v - self._lr(k) * g[k] for k, v in theta.items()}
            r_prev, beta_prev = r, b
        grads = {k: (params[k] - theta[k]) / self._lr(k) for k in params}
        residual = max(float((a - c).abs().max()) for a, c in zip(s, prev, strict=True))
        return Estimate(grads, [b], [residual / net.dynamics.dt], s)


class Oscillation(Estimator):
    """Continuous oscillation (:mod:`spikeep.oscillation`): one run in which ``beta`` turns once
    every ``steps`` (``K``) dynamics steps; ``warmup`` periods are discarded, ``periods`` are
    demodulated. ``real`` uses ``|beta| cos`` with real states; ``free`` starts from the free
    fixed point (else from zeros: no free phase is needed). ``hold`` (``h``, default 1): the
    phase is held ``h`` steps and only each held phase's last state demodulated, ``N = K / h``
    phases a period (Laborieux & Zenke's scheme). Bias: O(abs(beta)^N) complex (``N = K`` for
    ``h = 1``), O(beta^2) real, plus O(K^-2) from the states' lag behind the turning ``beta``
    (``h = 1``) or what each held phase leaves unrelaxed (``h > 1``)."""

    name = "oscillation"

    def __init__(
        self,
        beta: float,
        steps: int = 100,
        periods: int = 2,
        warmup: int = 1,
        real: bool = False,
        free: bool = True,
        *,
        noise: float = 0.0,
        noise_shared: bool = False,
        hold: int = 1,
    ):
        super().__init__(beta, steps, noise=noise, noise_shared=noise_shared)
        if steps < 3:
            raise ValueError(f"steps per period must be an integer >= 3, got {steps!r}")
        if not (isinstance(periods, int) and not isinstance(periods, bool) and periods >= 1):
            raise ValueError(f"periods must be a positive integer, got {periods!r}")
        if not (isinstance(warmup, int) and not isinstance(warmup, bool) and warmup >= 0):
            raise ValueError(f"warmup periods must be an integer >= 0, got {warmup!r}")
        for key, value in (("real", real), ("free", free)):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be True or False, got {value!r}")
        self.periods, self.warmup, self.real, self.free = periods, warmup, real, free
        self.hold = oscillation.check_hold(steps, hold)

    @property
    def steps_per_period(self) -> int:
        return self.steps

    @property
    def bias_order(self):
        return 2 if self.real else self.steps // self.hold

    def __repr__(self):
        return (
            f"Oscillation(beta={self.beta}, steps={self.steps}, periods={self.periods}, "
            f"warmup={self.warmup}, real={self.real}, free={self.free}, noise={self.noise}"
            f"{self._shared_repr()}{f', hold={self.hold}' if self.hold != 1 else ''})"
        )

    def estimate(self, net, params, x, y, free, generator=None):
        grads, residual, s = oscillation.oscillate(
            net,
            params,
            x,
            y,
            self.beta,
            self.steps,
            self.periods,
            self.warmup,
            self.real,
            s=free.s if self.free else None,
            static=free.static,
            noise=self.noise,
            generator=generator,
            noise_shared=self.noise_shared,
            hold=self.hold,
        )
        return Estimate(grads, [abs(self.beta)], [residual], s)


class TruncatedBPTT:
    """Not EP: ``dL/dtheta`` by backpropagation through ``steps`` free steps run on from the free
    state (:func:`spikeep.reference.bptt_gradient`), the BPTT side of Ernoult et al. 2019's GDU
    comparison. From a converged free phase it is recurrent backprop truncated at ``steps``
    terms, so it tends to the implicit gradient as ``steps`` grows. No nudging and no noise: a
    training baseline for what the network reaches with (close to) its exact gradient."""

    name = "bptt"

    def __init__(self, steps: int = 20, *, noise: float = 0.0):
        if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
            raise ValueError(f"bptt steps must be a positive integer, got {steps!r}")
        if check_noise(noise):
            raise ValueError(f"bptt backpropagates noise-free steps; noise must be 0, got {noise}")
        self.steps = steps

    def __repr__(self):
        return f"TruncatedBPTT(steps={self.steps})"

    def estimate(self, net, params, x, y, free, generator=None):
        grads = reference.bptt_gradient(net, params, x, y, steps=self.steps, s0=free.s)
        return Estimate(grads)


ESTIMATORS: dict[str, type[Estimator]] = {
    cls.name: cls for cls in (OneSided, RandomSign, Symmetric, Holomorphic, Continual, Oscillation)
}
# Gradient methods that train beside the EP estimators but estimate nothing from nudged phases.
BASELINES: dict[str, type] = {TruncatedBPTT.name: TruncatedBPTT}

_OPTIONS = {
    "holomorphic": {"points"},
    "continual": {"lr"},
    "oscillation": {"periods", "warmup", "real", "free", "hold"},
}


def make(name: str, beta: float, steps: int = 20, **options) -> Estimator | TruncatedBPTT:
    """Build the estimator ``name`` with ``steps`` nudged steps. Options (``None`` or not
    applicable: ignored): ``noise``, ``noise_shared`` (all); ``points`` (holomorphic); ``lr``
    (continual); ``steps_per_period`` (replaces ``steps``), ``periods``, ``warmup``, ``real``,
    ``free``, ``hold`` (oscillation). A name in :data:`BASELINES` (``bptt``) builds that
    baseline, with ``steps`` unrolled steps; ``beta`` is unused."""
    if name in BASELINES:
        return BASELINES[name](steps, noise=options.get("noise") or 0.0)
    try:
        cls = ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown estimator {name!r}; expected one of {sorted(ESTIMATORS)} or a baseline "
            f"{sorted(BASELINES)}"
        ) from None
    if name == "oscillation" and options.get("steps_per_period") is not None:
        steps = options["steps_per_period"]
    allowed = _OPTIONS.get(name, set()) | {"noise", "noise_shared"}
    return cls(beta, steps, **{k: v for k, v in options.items() if k in allowed and v is not None})
