r"""Exact references for ``dL/dtheta``, ``L(theta) = mean_batch C(rates(s*(theta)))``.

Both differentiate the fixed-point map ``T`` of the network's own dynamics
(:mod:`spikeep.dynamics`), ``s* = T(s*, theta)``:

- :func:`implicit_gradient` (recurrent backprop): solve the adjoint system
  ``(I - dT/ds)^T lambda = dL/ds`` at ``s*``, then
  ``dL/dtheta = lambda^T dT/dtheta + dL/dtheta|_s``.
  ``solver="dense"`` builds each sample's Jacobian and solves exactly (small networks);
  ``"iterative"`` iterates ``lambda <- dL/ds + (dT/ds)^T lambda`` to a tolerance.
- :func:`bptt_gradient`: autograd through ``steps`` unrolled steps from the initial state;
  converges to the implicit gradient as ``steps`` grows and the free phase converges.

Both are float64 tools for tests and fidelity studies, not for training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .dynamics import relax

__all__ = ["implicit_gradient", "bptt_gradient", "loss"]


def _leaves(params):
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def _step(net, params, x, s):
    return net.dynamics.step(net, params, s, net.static_drive(params, x))


def _flat(s: tuple[Tensor, ...]) -> Tensor:
    return torch.cat([si.flatten(1) for si in s], dim=1)


def _unflat(v: Tensor, like: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    out, i = [], 0
    for si in like:
        n = si[0].numel()
        out.append(v[:, i : i + n].view_as(si))
        i += n
    return tuple(out)


def loss(net, params, x, y, steps: int = 500, s=None) -> Tensor:
    """``L = mean_batch C`` at the free state after ``steps`` steps (for finite differences)."""
    free = relax(net, params, x, s=s, steps=steps)
    return net.loss(params, net.dynamics.rates(net, free.s), y)


def implicit_gradient(
    net,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    s_star: tuple[Tensor, ...] | None = None,
    steps: int = 500,
    solver: str = "auto",
    tol: float = 1e-13,
    max_iter: int = 10_000,
) -> dict[str, Tensor]:
    """``dL/dtheta`` by implicit differentiation at the free fixed point.

    Args:
        s_star: the free fixed point; relaxed here for ``steps`` steps when ``None``.
        solver: ``"dense"``, ``"iterative"`` or ``"auto"`` (dense up to 2048 state units).
        tol, max_iter: stopping rule of the iterative solver (max-abs change of ``lambda``).

    Returns:
        a dict name -> gradient, shapes of ``params``.
    """
    if s_star is None:
        s_star = relax(net, params, x, steps=steps).s
    s_star = tuple(si.detach() for si in s_star)
    n = sum(si[0].numel() for si in s_star)
    if solver == "auto":
        solver = "dense" if n <= 2048 else "iterative"
    if solver not in ("dense", "iterative"):
        raise ValueError(f"solver must be 'dense', 'iterative' or 'auto', got {solver!r}")
    with torch.enable_grad():
        leaves = _leaves(params)
        s = tuple(si.clone().requires_grad_(True) for si in s_star)
        L = net.loss(leaves, net.dynamics.rates(net, s), y)
        dL_ds = torch.autograd.grad(L, s, retain_graph=True, allow_unused=True)
        dL_ds = tuple(
            d if d is not None else torch.zeros_like(si) for d, si in zip(dL_ds, s, strict=True)
        )
        direct = torch.autograd.grad(L, list(leaves.values()), allow_unused=True)
        T = _step(net, leaves, x, s)
        c = _flat(dL_ds)
        if solver == "dense":
            lam = _dense_adjoint(T, s, c, n)
        else:
            lam = _iterative_adjoint(T, s, c, tol, max_iter)
        through = torch.autograd.grad(
            T, list(leaves.values()), grad_outputs=_unflat(lam, s), allow_unused=True
        )
    out = {}
    for (k, v), d, t in zip(params.items(), direct, through, strict=True):
        g = torch.zeros_like(v)
        out[k] = g + (d if d is not None else 0) + (t if t is not None else 0)
    return out


def _dense_adjoint(T, s, c: Tensor, n: int) -> Tensor:
    B = c.shape[0]
    J = c.new_zeros(B, n, n)  # J[b, i, j] = dT_i / ds_j for sample b
    Tf = _flat(T)
    for i in range(n):
        e = torch.zeros_like(Tf)
        e[:, i] = 1
        rows = torch.autograd.grad(Tf, s, grad_outputs=e, retain_graph=True, allow_unused=True)
        J[:, i, :] = _flat(
            tuple(
                r if r is not None else torch.zeros_like(si) for r, si in zip(rows, s, strict=True)
            )
        )
    eye = torch.eye(n, dtype=c.dtype, device=c.device)
    return torch.linalg.solve((eye - J).transpose(1, 2), c.unsqueeze(-1)).squeeze(-1)


def _iterative_adjoint(T, s, c: Tensor, tol: float, max_iter: int) -> Tensor:
    lam = c.clone()
    for _ in range(max_iter):
        vjp = torch.autograd.grad(
            T, s, grad_outputs=_unflat(lam, s), retain_graph=True, allow_unused=True
        )
        new = c + _flat(
            tuple(
                v if v is not None else torch.zeros_like(si) for v, si in zip(vjp, s, strict=True)
            )
        )
        done = (new - lam).abs().max() <= tol * max(1.0, float(new.abs().max()))
        lam = new
        if done:
            return lam
    raise RuntimeError(
        f"adjoint iteration did not converge in {max_iter} iterations; "
        f"the free fixed point may not be attracting (use solver='dense')"
    )


def bptt_gradient(
    net, params: dict[str, Tensor], x: Tensor, y: Tensor, steps: int = 500, s0=None
) -> dict[str, Tensor]:
    """``dL/dtheta`` by backpropagation through ``steps`` unrolled free-phase steps."""
    with torch.enable_grad():
        leaves = _leaves(params)
        L = loss(net, leaves, x, y, steps=steps, s=s0)
        grads = torch.autograd.grad(L, list(leaves.values()), allow_unused=True)
    return {
        k: (g if g is not None else torch.zeros_like(params[k]))
        for k, g in zip(params, grads, strict=True)
    }
