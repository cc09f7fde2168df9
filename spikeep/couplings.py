"""Couplings between consecutive layers: the bilinear terms of the energy.

A coupling with weight ``W`` contributes ``<r_next, forward(W, r_prev)>`` to the primitive ``Phi``
(see :mod:`spikeep.energy`), where ``r`` are rates, shapes ``(B, *layer.shape)``. Its three closed
forms are all the dynamics and the estimators need:

- ``forward(W, r_prev)``: the drive of the upper layer, ``d<r_next, forward>/d r_next``;
- ``feedback(W, r_prev, r_next)``: the drive of the lower layer, ``d<r_next, forward>/d r_prev``;
- ``weight_grad(W, pairs)``: ``d/dW sum_k <g_k, forward(W, r_k)>`` for a list of ``(r_k, g_k)``
  (real ``W``; with complex ``g_k`` the real part of the result is the one that counts).

Adding a coupling: subclass :class:`Coupling`, implement these three and ``init_weight``, and map a
spec ``kind`` to it in :func:`build`. The tests compare every closed form with autograd of
``<r_next, forward(W, r_prev)>``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import pooling
from .spec import Coupling as CouplingSpec
from .spec import Layer

__all__ = ["Coupling", "Dense", "Conv", "build"]


class Coupling(ABC):
    """The coupling that drives ``layer`` from ``prev`` (per-sample shapes)."""

    holomorphic = True
    feedback_needs_forward = False  # whether ``feedback`` recomputes the forward pass

    def __init__(self, prev: Layer, layer: Layer, spec: CouplingSpec):
        self.prev, self.layer, self.spec = prev, layer, spec

    @property
    @abstractmethod
    def weight_shape(self) -> tuple[int, ...]: ...

    @property
    def fan_in(self) -> int:
        return math.prod(self.weight_shape[1:])

    @property
    def fan_out(self) -> int:
        return self.weight_shape[0] * math.prod(self.weight_shape[2:])

    @abstractmethod
    def forward(self, W: Tensor, r_prev: Tensor) -> Tensor: ...

    @abstractmethod
    def feedback(self, W: Tensor, r_prev: Tensor, r_next: Tensor) -> Tensor: ...

    @abstractmethod
    def weight_grad(self, W: Tensor, pairs: list[tuple[Tensor, Tensor]]) -> Tensor: ...

    def kernel(self, W: Tensor) -> Tensor | None:
        """What :meth:`drives` may be given as ``kernel``, formed from ``W`` once for many steps
        (the folded kernel of :class:`Conv`); None where the coupling has none."""
        return None

    def drives(self, W, r_prev, r_next, h_prev, h_next, kernel=None) -> tuple[Tensor, Tensor]:
        """``(h_prev + feedback, h_next + forward)``: the coupling's share of both layers' drive
        in one dynamics step (subclasses fuse and share work here). With ``r_next=None`` only
        the forward drive is formed (``h_prev`` is returned as given). ``kernel`` is
        :meth:`kernel` of this ``W`` (or None: formed here when needed)."""
        if r_next is None:
            return h_prev, h_next + self.forward(W, r_prev)
        return h_prev + self.feedback(W, r_prev, r_next), h_next + self.forward(W, r_prev)

    def forward_with_feedback(self, W, r_prev) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """``forward(W, r_prev)`` and the map ``r_next -> feedback(W, r_prev, r_next)``, which
        reuses the forward pass's work where the feedback needs it (max or softmax pooling): the
        alternating dynamics update the upper layer between the two."""
        return self.forward(W, r_prev), lambda r_next: self.feedback(W, r_prev, r_next)


class Dense(Coupling):
    """``forward = W flatten(r_prev)``, ``W`` of shape ``(n_next, n_prev)``."""

    @property
    def weight_shape(self):
        return (self.layer.size, self.prev.size)

    def forward(self, W, r_prev):
        return r_prev.flatten(1) @ W.T

    def feedback(self, W, r_prev, r_next):
        return (r_next @ W).view(r_next.shape[0], *self.prev.shape)

    def drives(self, W, r_prev, r_next, h_prev, h_next, kernel=None):
        h_next = torch.addmm(h_next, _rows(r_prev), W.T)
        if r_next is None:
            return h_prev, h_next
        if h_prev.dim() == 2:
            return torch.addmm(h_prev, r_next, W), h_next
        return self.feedback(W, r_prev, r_next).add_(h_prev), h_next

    def weight_grad(self, W, pairs):
        # Pairs that share the same r_prev (the clamped input) are summed before the product.
        dtype = pairs[0][1].dtype
        if len(pairs) == 1:
            r = _rows(pairs[0][0])
            return pairs[0][1].T @ (r if r.dtype == dtype else r.to(dtype))
        if all(r is pairs[0][0] for r, _ in pairs):
            return sum(g for _, g in pairs).T @ pairs[0][0].flatten(1).to(dtype)
        g = torch.cat([g for _, g in pairs])
        r = torch.cat([r.flatten(1).to(dtype) for r, _ in pairs])
        return g.T @ r


def _rows(r: Tensor) -> Tensor:
    """``r`` as ``(B, features)`` (``flatten(1)``; a matrix as it is, without the call)."""
    return r if r.dim() == 2 else r.flatten(1)


class Conv(Coupling):
    """``forward = pool(conv2d(r_prev, W))``, ``W`` of shape ``(C_next, C_prev, k, k)``.

    A stride-1 conv followed by ``s x s`` average pooling is one conv of stride ``s`` whose kernel
    is ``W`` convolved with the ``s x s`` box of ``1 / s^2`` (size ``k + s - 1``): real tensors
    take that form (``_folded``), and its transposed conv for the feedback. For 5x5 kernels and
    2x2 pools it does 2.8x fewer multiply-adds and no pooling copies; it equals the conv-then-pool
    to rounding (another order of summation).
    """

    def __init__(self, prev, layer, spec):
        super().__init__(prev, layer, spec)
        self.holomorphic = pooling.HOLOMORPHIC[spec.pool]
        self.feedback_needs_forward = spec.pool in ("max", "softmax")  # the pre-pool values
        self.folds = spec.pool == "avg" and spec.stride == 1 and spec.pool_size > 1

    def _folded(self, W, *r) -> Tensor | None:
        """The folded kernel of conv + average pool (class docstring), or None where the
        coupling does not fold (another pooling, a stride, complex tensors)."""
        if not self.folds or W.is_complex() or any(x is not None and x.is_complex() for x in r):
            return None
        s, k = self.spec.pool_size, W.shape[-1]
        box = W.new_full((1, 1, s, s), 1.0 / (s * s))
        K = F.conv2d(W.reshape(-1, 1, k, k), box, padding=s - 1)
        return K.reshape(*W.shape[:2], k + s - 1, k + s - 1)

    def _conv_folded(self, K, r_prev):
        r_prev = r_prev.contiguous(memory_format=torch.channels_last)
        return F.conv2d(r_prev, K, stride=self.spec.pool_size, padding=self.spec.padding)

    def _transpose_folded(self, K, g):
        """The adjoint of :meth:`_conv_folded`: the transposed conv of stride ``s``, with the
        rows and columns the pool dropped (a ragged edge) given back as zeros."""
        s, p = self.spec.pool_size, self.spec.padding
        g = g.contiguous(memory_format=torch.channels_last)
        pad = tuple(
            n - ((m - 1) * s - 2 * p + K.shape[-1])
            for n, m in zip(self.prev.shape[1:], g.shape[-2:], strict=True)
        )
        out = F.conv_transpose2d(g, K, stride=s, padding=p, output_padding=pad)
        return out.contiguous(memory_format=torch.channels_last)

    @property
    def weight_shape(self):
        k = self.spec.kernel
        return (self.layer.shape[0], self.prev.shape[0], k, k)

    def _conv(self, W, r_prev):
        r_prev = r_prev.contiguous(memory_format=torch.channels_last)  # faster CPU kernels
        return F.conv2d(r_prev, W, stride=self.spec.stride, padding=self.spec.padding)

    def forward(self, W, r_prev):
        K = self._folded(W, r_prev)
        if K is not None:
            return self._conv_folded(K, r_prev)
        return pooling.pool(self._conv(W, r_prev), self.spec.pool, self.spec.pool_size)

    def feedback(self, W, r_prev, r_next):
        sp = self.spec
        K = self._folded(W, r_prev, r_next)
        if K is not None:
            return self._transpose_folded(K, r_next)
        if self.feedback_needs_forward:
            _, g = pooling.pool_and_adjoint(self._conv(W, r_prev), r_next, sp.pool, sp.pool_size)
        else:
            shape = (*r_next.shape[:2], *self._conv_hw())
            g = pooling.adjoint(r_next, sp.pool, sp.pool_size, shape=shape)
        return self._transpose(W, g)

    def _transpose(self, W, g):
        """The transposed conv (the adjoint of ``_conv``), channels-last."""
        sp = self.spec
        g = g.contiguous(memory_format=torch.channels_last)
        full = sp.kernel - 1 - sp.padding
        if sp.stride == 1 and full >= 0:
            # A stride-1 transposed conv is a plain conv with the flipped kernel; this form takes
            # the fast CPU kernels (oneDNN) where conv_transpose2d falls back to a slow path.
            W_t = W.flip(2, 3).transpose(0, 1).contiguous(memory_format=torch.channels_last)
            return F.conv2d(g, W_t, padding=full)
        # output_padding restores rows and columns a strided conv never reached
        pad = tuple(
            n - ((m - 1) * sp.stride - 2 * sp.padding + sp.kernel)
            for n, m in zip(self.prev.shape[1:], g.shape[-2:], strict=True)
        )
        return F.conv_transpose2d(g, W, stride=sp.stride, padding=sp.padding, output_padding=pad)

    def kernel(self, W):
        return self._folded(W)

    def drives(self, W, r_prev, r_next, h_prev, h_next, kernel=None):
        sp = self.spec
        if r_next is None:
            return h_prev, h_next + self.forward(W, r_prev)
        if kernel is None or r_prev.is_complex() or r_next.is_complex():
            K = self._folded(W, r_prev, r_next)
        else:
            K = kernel
        if K is not None:
            forward = self._conv_folded(K, r_prev)
            return self._transpose_folded(K, r_next).add_(h_prev), forward.add_(h_next)
        z = self._conv(W, r_prev)  # shared by the forward drive and the pooled feedback
        forward, g = pooling.pool_and_adjoint(z, r_next, sp.pool, sp.pool_size)
        # both results are fresh tensors: add the other drives in place, no new allocation
        return self._transpose(W, g).add_(h_prev), forward.add_(h_next)

    def forward_with_feedback(self, W, r_prev):
        sp = self.spec
        K = self._folded(W, r_prev)
        if K is not None:

            def back(r_next):
                if r_next.is_complex():
                    shape = (*r_next.shape[:2], *self._conv_hw())
                    g = pooling.adjoint(r_next, sp.pool, sp.pool_size, shape=shape)
                    return self._transpose(W, g)
                return self._transpose_folded(K, r_next)

            return self._conv_folded(K, r_prev), back
        forward, adjoint_at_z = pooling.pool_with_adjoint(
            self._conv(W, r_prev), sp.pool, sp.pool_size
        )
        return forward, lambda r_next: self._transpose(W, adjoint_at_z(r_next))

    def _conv_hw(self):
        sp = self.spec
        return tuple((n + 2 * sp.padding - sp.kernel) // sp.stride + 1 for n in self.prev.shape[1:])

    def weight_grad(self, W, pairs):
        dtype = pairs[0][1].dtype
        if len(pairs) > 1 and all(r is pairs[0][0] for r, _ in pairs):
            # the same r_prev (the clamped input): sum_k <g_k, forward(W, r)> is
            # <sum_k g_k, forward(W, r)>, one conv (and pool) and one backward pass for all
            pairs = [(pairs[0][0], sum(g for _, g in pairs))]
        with torch.enable_grad():
            Wr = W.detach().requires_grad_(True)  # real leaf: d Re(total)/dW is what we need
            Wc = Wr.to(dtype)
            total = sum((g * self.forward(Wc, r.to(dtype))).sum() for r, g in pairs)
            (grad,) = torch.autograd.grad(total.real if total.is_complex() else total, Wr)
        return grad


def build(prev: Layer, layer: Layer) -> Coupling:
    """The coupling object for ``layer`` as its spec describes."""
    kinds = {"dense": Dense, "conv": Conv}
    return kinds[layer.coupling.kind](prev, layer, layer.coupling)
