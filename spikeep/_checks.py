"""Argument checks at the public entry points of the rate physics: a tensor of the wrong type,
shape, dtype or device, or an empty batch, is refused with a ValueError naming the argument
before it reaches torch (whose own message, e.g. ``amax()`` on an empty tensor, names none)."""

from __future__ import annotations

import torch

__all__ = ["check_batch"]


def check_batch(net, params, x, y=None, where: str = "relax") -> None:
    """Refuse, naming the argument, ``params`` without the network's parameters, ``x`` that is
    not a non-empty batch ``(B, *input shape)`` of the parameters' dtype and device, or targets
    ``y`` that are not ``(B, n_out)`` alike."""
    if not isinstance(params, dict):
        raise ValueError(
            f"{where}: params: expected a dict of tensors, got {type(params).__name__}"
        )
    names = net.param_names()
    missing = [k for k in names if k not in params]
    if missing:
        raise ValueError(f"{where}: params: missing {missing} (the network has {names})")
    w = params[names[0]]
    real = w.real.dtype if w.is_complex() else w.dtype
    shape = tuple(net.layers[0].shape)
    _tensor(where, "x", x, (None, *shape), real, w.device)
    if x.shape[0] == 0:
        raise ValueError(f"{where}: x: an empty batch (shape {list(x.shape)}), expected B >= 1")
    if y is not None:
        _tensor(where, "y", y, (x.shape[0], net.layers[-1].size), real, w.device)


def _tensor(where, name, t, shape, real, device) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{where}: {name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
        want = "(" + ", ".join("B" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{where}: {name}: shape {list(t.shape)}, expected {want}")
    got = t.real.dtype if t.is_complex() else t.dtype
    if not t.is_floating_point() and not t.is_complex() or got != real:
        raise ValueError(f"{where}: {name}: dtype {t.dtype}, expected {real} like the parameters")
    if t.device != device:
        raise ValueError(f"{where}: {name}: on {t.device}, but the parameters are on {device}")
