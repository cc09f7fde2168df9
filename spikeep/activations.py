"""Activations ``rho``: the rate of a neuron as a function of its state.

Every activation is registered once, with its closed-form derivative ``drho``, whether it is
holomorphic (so it may be evaluated on complex states, as holomorphic EP needs), and the box its
states are projected onto by the continuous-time dynamics (``None`` when unbounded).

| name                | rho(s)                                              | holomorphic | box    |
|---------------------|-----------------------------------------------------|-------------|--------|
| `hard_sigmoid`      | clip(s, 0, 1)                                       | no          | [0, 1] |
| `sigmoid4`          | sigmoid(4 s - 2)                                    | yes         | none   |
| `holotanh`          | (softplus(k s/2) - softplus(k (s/2 - 1))) / k, k=4  | yes         | none   |
| `tanh`              | tanh(s)                                             | yes         | none   |
| `hard_sigmoid_half` | clip(s/2, 0, 1) (Laborieux et al. 2021's convnets)  | no          | [0, 2] |
| `lif_rate`          | a leaky integrate-and-fire neuron's measured rate (below) | no  | none   |

``holotanh`` is spikeep's smooth holomorphic clip of ``s/2`` to [0, 1] (Laborieux & Zenke 2022 use a
clip of that kind for convnets): its derivative ``(sigmoid(k s/2) - sigmoid(k (s/2 - 1))) / 2`` is a
difference of two sigmoids, close to 1/2 on (0, 2) and to 0 outside.

``lif_rate`` is the rate function of the Brian2 engine's ``lif_bio`` neuron (membrane time constant
``tau_mem`` 20 ms, refractory ``t_ref`` 2 ms, ``r_max`` 200 Hz, ``dt`` 0.2 ms; a synaptic current
``s`` whose fluctuations have standard deviation 0.1 and correlation time 20 ms), divided by
``r_max``, as measured by :func:`spikeep.brian2.calibrate.transfer` and fitted by :func:`soft_lif`
(``scripts/bio_figures.py``): the LIF rate ``1 / (t_ref + tau_mem ln(1 + 1 / (a q)))`` of a drive
``q`` above threshold that is smoothed at the threshold and saturates at 1, times a logistic gate
for the chance that the fluctuating current is above threshold::

    z = g softplus(s / g),   q = exp(-softplus(-k ln z) / k)   (= z / (1 + z^k)^(1/k))
    rho(s) = sigmoid((s - c) / w) R(q) / R(1),   R(q) = 1 / (t_ref + tau_mem ln(1 + 1 / (a q)))

with ``(g, k, a, c, w)`` = :data:`LIF_RATE`; ``rho`` rises from 0 (``s`` below about -0.3) to 1
(``s`` above about 1.2), concave above threshold (``docs/spiking.md``, "A biological regime").

Adding an activation: write ``rho`` and ``drho`` for real and complex tensors and call
:func:`register`; the parametrised tests pick it up (``drho`` is checked against autograd).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Activation", "register", "get", "names", "soft_lif", "LIF_RATE"]


@dataclass(frozen=True)
class Activation:
    """One activation ``rho`` with its derivative.

    Attributes:
        name: registry key, as written in model specs.
        rho: elementwise ``rho(s)``; any shape, real or (if holomorphic) complex.
        drho: elementwise ``rho'(s)``, closed form.
        holomorphic: ``rho`` is complex-analytic near the real axis (complex states allowed).
        box: interval that the continuous-time dynamics project states onto, or ``None``.
        slope: ``rho'`` on the box when ``rho(s) = slope * s`` there (lets the dynamics skip
            ``drho``).
        rho_: in-place ``rho`` (overwrites its argument), for the hot loop; defaults to ``rho``.
    """

    name: str
    rho: Callable[[Tensor], Tensor]
    drho: Callable[[Tensor], Tensor]
    holomorphic: bool
    box: tuple[float, float] | None = None
    slope: float | None = None
    rho_: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self):
        if self.rho_ is None:
            object.__setattr__(self, "rho_", self.rho)


_REGISTRY: dict[str, Activation] = {}


def register(activation: Activation) -> Activation:
    """Add ``activation`` to the registry (an existing name is an error)."""
    if activation.name in _REGISTRY:
        raise ValueError(f"activation {activation.name!r} is already registered")
    _REGISTRY[activation.name] = activation
    return activation


def get(name: str) -> Activation:
    """The registered activation called ``name``; a clear error lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown activation {name!r}; expected one of {names()}") from None


def names() -> list[str]:
    """Names of all registered activations, sorted."""
    return sorted(_REGISTRY)


def _sigmoid(z: Tensor) -> Tensor:
    """``1 / (1 + e^{-z})``; torch.sigmoid has no complex kernel, so for ``z = a + ib`` it is
    formed in real arithmetic with ``u = e^{-|a|} <= 1`` (no overflow, unlike ``exp(-z)``, which
    turns into NaN for ``a`` below about -88 in complex64, and about 2-3x faster on CPU):
    ``D = 1 + 2 u cos b + u^2``, ``Re = (1 + u cos b) / D`` for ``a >= 0`` and
    ``(u cos b + u^2) / D`` for ``a < 0``, ``Im = u sin b / D``."""
    if not z.is_complex():
        return torch.sigmoid(z)
    a, b = z.real, z.imag
    u = torch.exp(-a.abs())
    uc = u * torch.cos(b)
    uu = u * u
    D = (1 + uu).add_(uc, alpha=2)
    re = torch.where(a >= 0, 1 + uc, uc + uu)
    return torch.complex(re.div_(D), (u * torch.sin(b)).div_(D))


def _softplus(z: Tensor) -> Tensor:
    # log(1 + e^z), split on Re z so that exp never overflows; both branches are the same
    # analytic function, so the result is holomorphic near the real axis.
    pos = z.real > 0
    zp = torch.where(pos, -z, z)
    return torch.where(pos, z, torch.zeros_like(z)) + torch.log1p(torch.exp(zp))


_HOLO_K = 4.0

register(
    Activation(
        "hard_sigmoid",
        rho=lambda s: s.clamp(0.0, 1.0),
        drho=lambda s: ((s >= 0) & (s <= 1)).to(s.dtype),  # inclusive: no unit sticks at 0
        rho_=lambda s: s.clamp_(0.0, 1.0),
        holomorphic=False,
        box=(0.0, 1.0),
        slope=1.0,
    )
)
register(
    Activation(
        "sigmoid4",
        rho=lambda s: _sigmoid(4.0 * s - 2.0),
        drho=lambda s: 4.0 * _sigmoid(4.0 * s - 2.0) * (1.0 - _sigmoid(4.0 * s - 2.0)),
        holomorphic=True,
    )
)
register(
    Activation(
        "holotanh",
        rho=lambda s: (_softplus(_HOLO_K * s / 2) - _softplus(_HOLO_K * (s / 2 - 1))) / _HOLO_K,
        drho=lambda s: (_sigmoid(_HOLO_K * s / 2) - _sigmoid(_HOLO_K * (s / 2 - 1))) / 2,
        holomorphic=True,
    )
)
register(
    Activation(
        "tanh",
        rho=torch.tanh,
        drho=lambda s: 1.0 - torch.tanh(s) ** 2,
        holomorphic=True,
    )
)
register(
    Activation(
        "hard_sigmoid_half",
        rho=lambda s: (s / 2).clamp(0.0, 1.0),
        rho_=lambda s: s.mul_(0.5).clamp_(0.0, 1.0),
        drho=lambda s: ((s >= 0) & (s <= 2)).to(s.dtype) / 2,
        holomorphic=False,
        box=(0.0, 2.0),
        slope=0.5,
    )
)


#: ``lif_rate``'s fitted ``(g, k, a, c, w)`` (``scripts/bio_figures.py transfer``), with the
#: neuron's ``t_ref`` (s) and ``tau_mem`` (s).
LIF_RATE = {
    "g": 0.0618,
    "k": 17.94,
    "a": 4.886,
    "c": -0.0238,
    "w": 0.0606,
    "t_ref": 0.002,
    "tau_mem": 0.02,
}


def _ratio(x: Tensor) -> Tensor:
    """``sigmoid(x) / softplus(x)``, finite for every real ``x`` (1 as ``x -> -inf``)."""
    far = x < -30
    xs = torch.where(far, torch.zeros_like(x), x)
    return torch.where(
        far, 1 - torch.exp(x) / 2, torch.sigmoid(xs) / torch.nn.functional.softplus(xs, 1, 40)
    )


def soft_lif(s: Tensor, g, k, a, c, w, t_ref, tau_mem, derivative: bool = False) -> Tensor:
    """The soft LIF rate function (module docstring), in units of its value at ``s -> inf``; or
    its derivative ``d rho / d s`` with ``derivative``. Real tensors, any shape."""

    def softplus(v):  # linear only where it is exactly so in float64 (torch's default: v > 20)
        return torch.nn.functional.softplus(v, 1, 40)

    x = s / g
    log_z = math.log(g) + torch.log(softplus(x))
    soft = softplus(-k * log_z)
    q = torch.exp(-soft / k)
    L = torch.log1p(1 / (a * q))
    R1 = 1 / (t_ref + tau_mem * math.log1p(1 / a))
    R = 1 / (t_ref + tau_mem * L) / R1
    gate = torch.sigmoid((s - c) / w)
    if not derivative:
        return gate * R
    # dq/ds = q sigmoid(-k ln z) dln z/ds, dln z/ds = sigmoid(x) / (g softplus(x));
    # dL/dq = -1 / (q (1 + a q)); dR/dL = -tau_mem R^2 R1 (R in units of R1)
    dL = -torch.sigmoid(-k * log_z) * _ratio(x) / (g * (1 + a * q))
    dR = -tau_mem * R * R * R1 * dL
    return gate * dR + gate * (1 - gate) / w * R


register(
    Activation(
        "lif_rate",
        rho=lambda s: soft_lif(s, **LIF_RATE),
        drho=lambda s: soft_lif(s, **LIF_RATE, derivative=True),
        holomorphic=False,
    )
)
