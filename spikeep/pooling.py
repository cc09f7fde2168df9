"""Non-overlapping 2-D pooling and its adjoint, for conv couplings.

``pool(z)`` maps ``(B, C, H, W)`` to ``(B, C, H // k, W // k)`` (trailing rows and columns that do
not fill a window are dropped). ``adjoint(z, g)`` is the gradient of ``<g, pool(z)>`` with respect
to ``z``: the feedback a pooled coupling sends to the layer below.

- ``max``: the window's maximum; adjoint routes ``g`` to the arg-max (real states only).
- ``avg``: the window's mean; adjoint spreads ``g / k^2``. Real tensors take torch's pooling and
  nearest-neighbour upsampling (no window copies): the windows' spread bitwise, their mean bitwise
  for 2x2 windows and to rounding for larger ones (another order of summation).
- ``softmax``: ``sum_j p_j z_j`` with ``p = softmax(z)`` over the window (temperature 1), the
  holomorphic pooling of Laborieux & Zenke 2022; adjoint ``g p_j (1 + z_j - pool(z))``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pool", "adjoint", "pool_and_adjoint", "pool_with_adjoint", "HOLOMORPHIC"]

HOLOMORPHIC = {"none": True, "avg": True, "softmax": True, "max": False}


def _windows(z: Tensor, k: int) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, C, H//k, W//k, k*k)``, dropping the ragged edge."""
    b, c, h, w = z.shape
    hk, wk = h // k, w // k
    z = z[:, :, : hk * k, : wk * k].reshape(b, c, hk, k, wk, k)
    return z.permute(0, 1, 2, 4, 3, 5).reshape(b, c, hk, wk, k * k)


def _unwindows(t: Tensor, k: int, shape: torch.Size) -> Tensor:
    """Inverse of :func:`_windows`, zero on the dropped edge."""
    b, c, hk, wk, _ = t.shape
    t = t.reshape(b, c, hk, wk, k, k).permute(0, 1, 2, 4, 3, 5).reshape(b, c, hk * k, wk * k)
    h, w = shape[-2:]
    return F.pad(t, (0, w - wk * k, 0, h - hk * k))


def _softmax_weights(win: Tensor) -> Tensor:
    # Subtracting a per-window constant leaves the softmax unchanged, so the real part's max
    # (treated as a constant) keeps exp finite while the result stays holomorphic in z.
    shift = win.real.amax(dim=-1, keepdim=True).detach()
    e = torch.exp(win - shift)
    return e / e.sum(dim=-1, keepdim=True)


def pool(z: Tensor, kind: str, k: int) -> Tensor:
    """Pool ``z`` over non-overlapping ``k x k`` windows."""
    if kind == "none":
        return z
    if kind == "max":
        return F.max_pool2d(z, k)
    if kind == "avg" and not z.is_complex():
        return F.avg_pool2d(z, k)
    win = _windows(z, k)
    if kind == "avg":
        return win.mean(dim=-1)
    if kind == "softmax":
        return (_softmax_weights(win) * win).sum(dim=-1)
    raise ValueError(f"unknown pooling {kind!r}; expected one of {sorted(HOLOMORPHIC)}")


def adjoint(g: Tensor, kind: str, k: int, z: Tensor | None = None, shape=None) -> Tensor:
    """Gradient of ``<g, pool(z)>`` (bilinear, no conjugation) with respect to ``z``.

    ``max`` and ``softmax`` need the pre-pool values ``z``; the linear pools only its ``shape``.
    """
    if kind == "none":
        return g
    if kind == "avg" and not g.is_complex():
        spread = F.interpolate(g / (k * k), scale_factor=k, mode="nearest")
        h, w = shape[-2:]
        return F.pad(spread, (0, w - spread.shape[-1], 0, h - spread.shape[-2]))
    if kind == "avg":
        return _unwindows(g.unsqueeze(-1).expand(*g.shape, k * k) / (k * k), k, shape)
    if kind == "max":
        _, idx = F.max_pool2d(z, k, return_indices=True)
        return F.max_unpool2d(g, idx, k, output_size=z.shape[-2:])
    if kind == "softmax":
        win = _windows(z, k)
        p = _softmax_weights(win)
        y = (p * win).sum(dim=-1, keepdim=True)
        return _unwindows(g.unsqueeze(-1) * p * (1 + win - y), k, z.shape)
    raise ValueError(f"unknown pooling {kind!r}; expected one of {sorted(HOLOMORPHIC)}")


def pool_and_adjoint(z: Tensor, g: Tensor, kind: str, k: int) -> tuple[Tensor, Tensor]:
    """``(pool(z), adjoint(g, z))`` sharing the work both need (arg-max, softmax weights)."""
    out, adjoint_at_z = pool_with_adjoint(z, kind, k)
    return out, adjoint_at_z(g)


def pool_with_adjoint(z: Tensor, kind: str, k: int) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``pool(z)`` and the map ``g -> adjoint(g, z)``, which reuses the arg-max or softmax weights
    (for a ``g`` known only later, as in the alternating dynamics)."""
    if kind == "max":
        out, idx = F.max_pool2d(z, k, return_indices=True)
        return out, lambda g: _unpool(g, idx, z, k)
    if kind == "softmax":
        win = _windows(z, k)
        p = _softmax_weights(win)
        y = (p * win).sum(dim=-1, keepdim=True)
        return y.squeeze(-1), lambda g: _unwindows(g.unsqueeze(-1) * p * (1 + win - y), k, z.shape)
    return pool(z, kind, k), lambda g: adjoint(g, kind, k, z=z, shape=z.shape)


def _unpool(g: Tensor, idx: Tensor, z: Tensor, k: int) -> Tensor:
    """``g`` routed to the arg-max positions ``idx`` (flat per plane) of ``z``, in ``z``'s memory
    layout (a channels-last ``z`` gives a channels-last result with no extra copy)."""
    if z.is_contiguous() or not z.is_contiguous(memory_format=torch.channels_last):
        return F.max_unpool2d(g, idx, k, output_size=z.shape[-2:])
    b, c, h, w = z.shape
    out = z.new_zeros(b, h * w, c)  # the channels-last storage of the result
    index = idx.permute(0, 2, 3, 1).reshape(b, -1, c)
    out.scatter_(1, index, g.permute(0, 2, 3, 1).reshape(b, -1, c))
    return out.view(b, h, w, c).permute(0, 3, 1, 2)
