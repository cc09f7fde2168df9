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

``holotanh`` is spikeep's smooth holomorphic clip of ``s/2`` to [0, 1] (Laborieux & Zenke 2022 use a
clip of that kind for convnets): its derivative ``(sigmoid(k s/2) - sigmoid(k (s/2 - 1))) / 2`` is a
difference of two sigmoids, close to 1/2 on (0, 2) and to 0 outside.

Adding an activation: write ``rho`` and ``drho`` for real and complex tensors and call
:func:`register`; the parametrised tests pick it up (``drho`` is checked against autograd).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Activation", "register", "get", "names"]


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
