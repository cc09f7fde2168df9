r"""Step-by-step comparison of EP updates with BPTT gradients (Ernoult et al. 2019, "GDU").

Run the free phase for ``T`` steps to ``s_T ~ s*`` and backpropagate ``L = C(rates(s_T))``
through its last ``K`` steps, each step with its own copy ``theta_t`` of the parameters:

    grad_s(k)     = B dL/ds_{T-k}  (per sample)        k = 0 .. K - 1
    grad_theta(k) = dL/dtheta_{T-k}  (+ the direct dL/dtheta of a readout, at k = 0)

Then run the nudged phase from ``s^beta_0 = s_T`` and form the per-step EP updates

    dEP_s(t)     = (s^beta_{t+1} - s^beta_t) / (beta dt)
    dEP_theta(t) = -(dF/dtheta(s^beta_{t+1}, beta) - dF/dtheta(s^beta_t, beta_t)) / beta,
                   beta_0 = 0, beta_t = beta for t > 0

(``dt`` is the step of the ``energy`` dynamics, 1 for ``prototypical``). The GDU property: when the
free phase has converged, ``dEP(t) -> -grad(t)`` for every ``t`` as ``beta -> 0``, with an error
O(beta). For the ``energy`` dynamics the step is the gradient of the primitive
``1/2 |s|^2 - dt F`` and this holds as written. For the ``prototypical`` dynamics
``s = rho(h)`` the step's Jacobian is ``D W`` with ``D = rho'(h*)``, so nudges propagate as
``(D W)^t D`` and adjoints as ``(W D)^t``: the states agree with the gradient with respect to the
pre-activation, ``grad_s(k) = B rho'(h*) dL/ds_{T-k} = B dL/dh_{T-k}``, which is what is reported.
Summed over ``t``, ``dEP_theta`` telescopes to minus the one-sided EP estimate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .dynamics import relax

__all__ = ["gdu_sequences", "gdu"]


def gdu_sequences(net, params, x, y, beta: float = 1e-4, free_steps: int = 300, K: int = 10):
    """The four sequences, each a list over steps: ``(ep_s, bptt_s, ep_theta, bptt_theta)``;
    states as flat ``(B, n)`` tensors, parameters as dicts. Also returns the free residual."""
    dyn = net.dynamics
    if not dyn.gradient_step:
        raise ValueError(
            f"the GDU property needs a step that is the gradient map of a scalar function; "
            f"the {dyn.name!r} dynamics of {net.spec.source} are not: use dynamics = "
            f"'prototypical' (the same fixed points as 'alternating') or 'energy'"
        )
    if K >= free_steps:
        raise ValueError(f"K={K} nudged steps must be fewer than free_steps={free_steps}")
    head = relax(net, params, x, steps=free_steps - K)
    with torch.enable_grad():
        thetas = [
            {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
            for _ in range(K)
        ]
        direct = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        states = [tuple(si.detach().clone().requires_grad_(True) for si in head.s)]
        for theta in thetas:  # thetas[j] drives s_{T-K+j} -> s_{T-K+j+1}
            states.append(dyn.step(net, theta, states[-1], net.static_drive(theta, x)))
            for si in states[-1]:
                si.retain_grad()
        L = net.loss(direct, dyn.rates(net, states[-1]), y)
        L.backward()
    flat = _flat
    scale = x.shape[0]  # L is a batch mean; per-sample state gradients are B dL/ds
    s_T = tuple(si.detach() for si in states[-1])
    if dyn.name == "prototypical":  # compare with dL/dh = rho'(h*) dL/ds, h the pre-activation
        h = net.dphi(params, s_T, net.static_drive(params, x))
        scale = scale * flat(tuple(net.act.drho(hi) for hi in h))
    bptt_s = [scale * flat(tuple(_grad(si) for si in states[K - k])) for k in range(K)]
    bptt_theta = []
    for k in range(K):
        g = {n: _grad(v) for n, v in thetas[K - 1 - k].items()}
        if k == 0:
            g = {n: g[n] + _grad(direct[n]) for n in g}
        bptt_theta.append(g)
    free_residual = max(float((a - b.detach()).abs().max()) for a, b in zip(s_T, states[-2]))
    free_residual /= dyn.dt

    ep_s, ep_theta = [], []
    static = net.static_drive(params, x)
    s, b_prev = s_T, 0.0
    for _ in range(K):
        s_next = dyn.step(net, params, s, static, y, beta)
        ep_s.append((flat(s_next) - flat(s)) / (beta * dyn.dt))
        points = [(dyn.rates(net, s_next), beta, -1 / beta), (dyn.rates(net, s), b_prev, 1 / beta)]
        ep_theta.append(net.dF_dtheta(params, x, y, points))
        s, b_prev = s_next, beta
    return ep_s, bptt_s, ep_theta, bptt_theta, free_residual


def _flat(s) -> Tensor:
    return torch.cat([si.flatten(1) for si in s], dim=1)


def _grad(v: Tensor) -> Tensor:
    return v.grad if v.grad is not None else torch.zeros_like(v)


def gdu(net, params, x, y, beta: float = 1e-4, free_steps: int = 300, K: int = 10) -> dict:
    """Per-step agreement of ``dEP`` with ``-grad`` (cosine and relative error), as a dict."""
    from .gradcheck import cosine, rel_error

    ep_s, bptt_s, ep_theta, bptt_theta, residual = gdu_sequences(
        net, params, x, y, beta, free_steps, K
    )
    rows = []
    for k in range(K):
        cat = lambda g: torch.cat([v.flatten() for v in g.values()])  # noqa: E731
        row = {
            "step": k,
            "states": {
                "cosine": cosine(ep_s[k], -bptt_s[k]),
                "rel_error": rel_error(ep_s[k], -bptt_s[k]),
            },
            "params": {
                "cosine": cosine(cat(ep_theta[k]), -cat(bptt_theta[k])),
                "rel_error": rel_error(cat(ep_theta[k]), -cat(bptt_theta[k])),
            },
            "per_param": {
                n: {
                    "cosine": cosine(ep_theta[k][n], -bptt_theta[k][n]),
                    "rel_error": rel_error(ep_theta[k][n], -bptt_theta[k][n]),
                }
                for n in params
            },
        }
        rows.append(row)
    return {
        "beta": beta,
        "free_steps": free_steps,
        "steps": K,
        "free_residual": residual,
        "per_step": rows,
    }
