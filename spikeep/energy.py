r"""The energy of a layered network, written once; every engine and estimator derives from it.

Conventions (``docs/conventions.md`` explains them at length). Layer 0 is the clamped input ``x``;
``s = (s_1 .. s_L)`` are the states of the dynamic layers and ``r_l = rho(s_l)`` their rates
(``r_0 = x``). Per sample,

    Phi(r)   = sum_l <r_l, c_l(W_l, r_{l-1})> + <b_l, r_l>                       (primitive)
    E(s)     = sum_l 1/2 |s_l|^2 - Phi(rho(s))                                   (Hopfield energy)
    C(r)     = 1/2 |r_L - y|^2                                                   (mse), or
    C(r)     = CE(softmax(W_out r_{L-1} + b_out), y)                             (cross_entropy)
    F        = E + beta C,        Phi_beta = Phi - beta C,       L(theta) = mean_batch C(r^0)

where ``c_l`` is the coupling of layer ``l`` (dense ``W r`` or ``pool(conv(r))``, see
:mod:`spikeep.couplings`). With the cross-entropy readout the last spec layer is not a state: its
weights appear in ``C`` only. ``F`` and ``Phi_beta`` have opposite signs: gradient estimators
return ``+dF/dtheta``-based estimates of ``+dL/dtheta`` (descend them); ``Phi`` is what the dynamics
climb. Complex ``beta`` and complex rates are allowed wherever everything is holomorphic.

Everything here is a pure function of explicit ``params`` (a dict name -> tensor: ``W1, b1, ...``
for the coupling and bias of layer 1, ...), so the same network can be evaluated at perturbed,
complex-cast or per-step-updated parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import activations, couplings, dynamics
from ._dtypes import DTYPES
from .spec import ModelSpec

__all__ = ["Network"]


def _layout(s: Tensor) -> Tensor:
    """Feature maps live channels-last: the CPU conv kernels are faster and mixed layouts slow
    every elementwise op."""
    return s.contiguous(memory_format=torch.channels_last) if s.dim() == 4 else s


class Network:
    """The energy of one :class:`~spikeep.spec.ModelSpec`; holds structure, never parameters."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.act = activations.get(spec.activation)
        self.layers = spec.layers
        self.couplings = [couplings.build(a, b) for a, b in zip(spec.layers, spec.layers[1:])]
        self.n_dynamic = len(spec.dynamic_layers)
        self.readout = spec.readout
        self.holomorphic = self.act.holomorphic and all(c.holomorphic for c in self.couplings)
        self.dynamics = dynamics.for_spec(spec)
        self._weights = [f"W{i}" for i in range(1, len(spec.layers))]
        self._names = tuple(f"{p}{i}" for i in range(1, len(spec.layers)) for p in ("W", "b"))

    @property
    def not_holomorphic(self) -> str | None:
        """What keeps the network from being holomorphic (its activation, or "max pooling"),
        named for error messages; None when it is holomorphic."""
        if self.holomorphic:
            return None
        return self.spec.activation if not self.act.holomorphic else "max pooling"

    # -- parameters -------------------------------------------------------------------------

    def param_names(self) -> list[str]:
        return list(self._names)

    def init_params(self, seed: int = 0, dtype=None, device=None) -> dict[str, Tensor]:
        """Fresh parameters drawn from the spec's ``init`` with a seeded generator."""
        dtype = dtype or DTYPES[self.spec.dtype]
        g = torch.Generator().manual_seed(seed)
        init = self.spec.init
        params = {}
        for i, c in enumerate(self.couplings, start=1):
            shape = c.weight_shape
            if init.scheme == "glorot_uniform":
                a = math.sqrt(6.0 / (c.fan_in + c.fan_out))
                W = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * a
            elif init.scheme == "uniform_fan_in":
                a = 1.0 / math.sqrt(c.fan_in)
                W = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * a
            else:
                W = torch.randn(shape, generator=g, dtype=torch.float64) / math.sqrt(c.fan_in)
            if init.bias == "zeros":
                b = torch.zeros(c.layer.shape[0], dtype=torch.float64)
            else:
                a = 1.0 / math.sqrt(c.fan_in)
                b = (torch.rand(c.layer.shape[0], generator=g, dtype=torch.float64) * 2 - 1) * a
            params[f"W{i}"] = (W * init.scale).to(dtype=dtype, device=device)
            params[f"b{i}"] = b.to(dtype=dtype, device=device)
        return params

    # -- shapes -------------------------------------------------------------------------------

    def zeros(self, x: Tensor) -> tuple[Tensor, ...]:
        """All-zero states for a batch ``x`` (shape ``(B, *input_shape)``), in ``x``'s dtype."""
        B = x.shape[0]
        return tuple(_layout(x.new_zeros((B, *layer.shape))) for layer in self.spec.dynamic_layers)

    def _bias(self, b: Tensor, layer_shape) -> Tensor:
        return b if len(layer_shape) == 1 else b.view(-1, *([1] * (len(layer_shape) - 1)))

    # -- the primitive and its closed-form derivatives ---------------------------------------

    def static_drive(self, params, x: Tensor) -> list[Tensor]:
        """The part of ``dPhi/dr_l`` that does not depend on the states: ``b_l``, plus
        ``c_1(W_1, x)`` for layer 1. Computed once per input, shared by every phase."""
        drive = []
        for i, layer in enumerate(self.spec.dynamic_layers, start=1):
            b = self._bias(params[f"b{i}"], layer.shape)
            drive.append(
                self.couplings[0].drives(params["W1"], x, None, None, b)[1] if i == 1 else b
            )
        return drive

    def kernels(self, params) -> tuple:
        """Per coupling, what its ``drives`` can reuse across steps (a conv's kernel folded with
        its average pool, :meth:`spikeep.couplings.Coupling.kernel`), or None: :meth:`dphi`'s
        ``kernels`` for many steps at the same ``params``."""
        return tuple(
            c.kernel(params[w]) for c, w in zip(self.couplings, self._weights, strict=True)
        )

    def dphi(
        self, params, r: tuple[Tensor, ...], static: list[Tensor], y=None, beta=0.0, kernels=None
    ):
        """Closed-form ``dPhi_beta/dr_l`` for every dynamic layer (tuple, shapes of ``r``).
        ``kernels``: :meth:`kernels` of ``params`` (the same numbers, formed once), or None.

        The tensors returned are new (never ``static`` itself): callers may overwrite them.
        """
        h = list(static)
        for i, c in enumerate(self.couplings[1 : self.n_dynamic], start=1):
            # coupling i+1 links r[i-1] (below) and r[i] (above)
            k = None if kernels is None else kernels[i]
            h[i - 1], h[i] = c.drives(params[self._weights[i]], r[i - 1], r[i], h[i - 1], h[i], k)
        if beta != 0:
            h[-1] = self._nudged(params, h[-1], r[-1], y, beta)
        elif self.n_dynamic == 1:
            h[0] = h[0].clone()
        return tuple(h)

    def phi(self, params, r: tuple[Tensor, ...], x: Tensor, y=None, beta=0.0) -> Tensor:
        """``Phi_beta`` per sample, shape ``(B,)``: the autograd oracle for :meth:`dphi`."""
        below = (x, *r)
        total = 0
        for i, layer in enumerate(self.spec.dynamic_layers, start=1):
            drive = self.couplings[i - 1].forward(params[f"W{i}"], below[i - 1])
            drive = drive + self._bias(params[f"b{i}"], layer.shape)
            total = total + (r[i - 1] * drive).flatten(1).sum(1)
        if beta != 0:
            total = total - beta * self.cost(params, r, y)
        return total

    def energy(self, params, s: tuple[Tensor, ...], x: Tensor, y=None, beta=0.0) -> Tensor:
        """``F = E + beta C`` per sample, shape ``(B,)``, at states ``s`` (not rates): the energy
        the ``energy`` dynamics descend. The prototypical and alternating dynamics settle at the
        stationary points of another one, ``sum G(r) - Phi_beta(r)`` with ``G' = rho^-1``, on
        rates; the two agree for the hard sigmoid (``docs/conventions.md``, "Two energies")."""
        r = tuple(self.act.rho(si) for si in s)
        half = sum(0.5 * (si * si).flatten(1).sum(1) for si in s)
        return half - self.phi(params, r, x, y, beta)

    # -- cost ------------------------------------------------------------------------------

    def logits(self, params, r_last: Tensor) -> Tensor:
        """Cross-entropy readout ``W_out r_{L-1} + b_out``, shape ``(B, classes)``."""
        n = len(self.layers) - 1
        W, b = params[f"W{n}"], params[f"b{n}"]
        a = r_last if r_last.dim() == 2 else r_last.flatten(1)
        if a.dtype == W.dtype == b.dtype:  # one product with the bias
            return torch.addmm(b, a, W.T)
        return a @ W.T + b

    def output(self, params, r: tuple[Tensor, ...]) -> Tensor:
        """The network's prediction: output rates (mse) or logits (cross-entropy)."""
        return self.logits(params, r[-1]) if self.readout else r[-1]

    def cost(self, params, r: tuple[Tensor, ...], y: Tensor) -> Tensor:
        """``C`` per sample, shape ``(B,)``; ``y`` one-hot (or real targets for mse)."""
        return self.cost_and_output(params, r, y)[0]

    def cost_and_output(self, params, r: tuple[Tensor, ...], y: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`cost` and :meth:`output` at once (the readout's logits computed once)."""
        if self.readout:
            z = self.logits(params, r[-1])
            if not z.is_complex():  # torch's log-sum-exp; y . z in one op
                y = y if y.dtype == z.dtype else y.to(z.dtype)
                return torch.logsumexp(z, 1) - torch.linalg.vecdot(y, z), z
            shift = z.real.amax(dim=1, keepdim=True).detach()
            lse = shift.squeeze(1) + torch.log(torch.exp(z - shift).sum(1))
            return lse - (y * z).sum(1), z
        d = r[-1] - y
        return 0.5 * (d * d).flatten(1).sum(1), r[-1]

    def dcost_dr(self, params, r_last: Tensor, y: Tensor) -> Tensor:
        """Closed-form ``dC/dr_L`` (mse) or ``dC/dr_{L-1}`` through the readout:
        ``readout_error(params, r_last, y) W_out``."""
        if self.readout:
            n = len(self.layers) - 1
            return (self.readout_error(params, r_last, y) @ params[f"W{n}"]).view_as(r_last)
        return r_last - y

    def readout_error(self, params, r_last: Tensor, y: Tensor) -> Tensor:
        """The cross-entropy readout's ``softmax(W_out r_{L-1} + b_out) - y``, ``(B, classes)``."""
        return self._softmax(self.logits(params, r_last)) - y

    def _nudged(self, params, h: Tensor, r_last: Tensor, y: Tensor, beta) -> Tensor:
        """``h - beta dC/dr`` for the top layer's drive ``h``: for a real dense readout one
        product, ``addmm(h, readout_error, W_out, alpha=-beta)``."""
        real = isinstance(beta, int | float) and not (h.is_complex() or r_last.is_complex())
        if self.readout and real and h.dim() == 2 and r_last.dim() == 2:
            W = params[f"W{len(self.layers) - 1}"]
            if W.dtype == h.dtype:
                return torch.addmm(h, self.readout_error(params, r_last, y), W, alpha=-beta)
        return torch.sub(h, self.dcost_dr(params, r_last, y), alpha=beta)

    @staticmethod
    def _softmax(z: Tensor) -> Tensor:
        """The softmax of the rows of ``z`` (torch's for real ``z``; complex: the shifted
        exponentials over their sum, the shift out of autograd)."""
        if not z.is_complex():
            return torch.softmax(z, 1)
        e = torch.exp(z - z.real.amax(dim=1, keepdim=True).detach())
        return e / e.sum(dim=1, keepdim=True)

    def loss(self, params, r: tuple[Tensor, ...], y: Tensor) -> Tensor:
        """``L = mean_batch C``, a scalar."""
        return self.cost(params, r, y).mean()

    # -- parameter derivatives -----------------------------------------------------------------

    def dF_dtheta(self, params, x: Tensor, y, points) -> dict[str, Tensor]:
        """``Re sum_k c_k mean_batch dF/dtheta(r^(k), beta_k)`` in closed form.

        ``points`` is a list of ``(r, beta, c)``: rates of all dynamic layers, the nudging strength
        they were relaxed with, and a (possibly complex) coefficient. Every estimator is such a
        weighted sum, e.g. one-sided EP is ``[(r_beta, beta, 1/beta), (r_0, 0, -1/beta)]``.
        With ``F = E + beta C``: ``dF/dW_l = -d<r_l, c_l(W_l, r_{l-1})>/dW_l``, ``dF/db_l = -r_l``
        and, for the readout, ``beta dC/dtheta``.
        """
        B = x.shape[0]
        points = [(r, beta, c / B) for r, beta, c in points]  # mean over the batch, folded in
        complex_dtypes = [r[0].dtype for r, _, _ in points if r[0].is_complex()]
        if complex_dtypes:  # one dtype for every point: real nudges are promoted to complex
            points = [(tuple(ri.to(complex_dtypes[0]) for ri in r), b, c) for r, b, c in points]
        grads = {}
        for i, layer in enumerate(self.spec.dynamic_layers, start=1):
            c = self.couplings[i - 1]
            W = params[f"W{i}"]
            if i == 1:  # the clamped input is every point's: its coupling takes the summed g
                (r, _, ck), *rest = points
                g = torch.mul(r[0], -ck)
                for r, _, ck in rest:
                    g.add_(r[0], alpha=-ck)
                grads["W1"] = c.weight_grad(W, [(x, g)])  # one product
            else:
                pairs = [(r[i - 2], -ck * r[i - 1]) for r, _, ck in points]
                g = sum(g for _, g in pairs)
                grads[f"W{i}"] = c.weight_grad(W, pairs)
            grads[f"b{i}"] = g.sum(0).flatten(1).sum(1) if len(layer.shape) == 3 else g.sum(0)
        if self.readout:
            n = len(self.layers) - 1
            W, b = params[f"W{n}"], params[f"b{n}"]
            tracked = torch.is_grad_enabled() and (W.requires_grad or b.requires_grad)
            nudged = [
                (r[-1] if r[-1].dim() == 2 else r[-1].flatten(1), ck * beta)
                for r, beta, ck in points
                if beta != 0
            ]
            plain = not (tracked or any(a.is_complex() or a.requires_grad for a, _ in nudged))
            pairs = []
            if nudged and plain and all(a.dtype == W.dtype for a, _ in nudged):
                # every nudged point's rows at once: the logits, softmax - y, times ck beta
                a = torch.cat([a for a, _ in nudged]) if len(nudged) > 1 else nudged[0][0]
                e = torch.softmax(torch.addmm(b, a, W.T), 1)
                rows = e.view(len(nudged), -1, e.shape[1])
                rows.sub_(y)
                coefficients = [w for _, w in nudged]
                if len(set(coefficients)) == 1:
                    e.mul_(coefficients[0])
                else:
                    rows.mul_(e.new_tensor(coefficients).view(-1, 1, 1))
                pairs.append((a, e))
            else:
                for a, w in nudged:
                    z = self.logits({**params, f"W{n}": W.to(a.dtype)}, a)
                    pairs.append((a, w * (self._softmax(z) - y)))
            if len(pairs) == 1:  # every nudged point's rows in one pair
                ((a, e),) = pairs
                grads[f"W{n}"], grads[f"b{n}"] = e.T @ a, e.sum(0)
            elif pairs:
                grads[f"W{n}"] = torch.cat([g for _, g in pairs]).T @ torch.cat(
                    [a for a, _ in pairs]
                )
                grads[f"b{n}"] = sum(g.sum(0) for _, g in pairs)
            else:
                grads[f"W{n}"] = torch.zeros_like(W)
                grads[f"b{n}"] = torch.zeros_like(params[f"b{n}"])
        return {k: (v.real if v.is_complex() else v) for k, v in grads.items()}

    def dF_dtheta_autograd(self, params, x: Tensor, y, points) -> dict[str, Tensor]:
        """Autograd twin of :meth:`dF_dtheta` (the test oracle): one backward pass of
        ``Re sum_k c_k mean_batch F(r^(k), beta_k)`` with the rates held fixed."""
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            total = 0
            for r, beta, ck in points:
                dtype = r[0].dtype
                p = {k: v.to(dtype) for k, v in leaves.items()}
                F_k = -self.phi(p, tuple(ri.detach() for ri in r), x.to(dtype), y, beta)
                total = total + ck * F_k.mean()
            total = total.real if torch.is_tensor(total) and total.is_complex() else total
            grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
        return {
            k: (g if g is not None else torch.zeros_like(params[k]))
            for k, g in zip(leaves, grads, strict=True)
        }
