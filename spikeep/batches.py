"""From a dataset to model inputs: subsets, normalisation, batches, and scoring a free phase.

Every engine reads its data through these functions, so a rate-trained network and its spiking
twins see the same inputs: ``x = (images / 255 - mean) / std`` (per channel, when the protocol
normalises), reshaped to the input layer's shape, and one-hot targets ``y``.
"""

from __future__ import annotations

import torch

from . import _dist, data
from .energy import Network
from .protocol import Protocol, ProtocolError

__all__ = [
    "prepare_batch",
    "check_data",
    "subset",
    "split_train",
    "normalization",
    "checkpoint_normalization",
    "score",
]


def prepare_batch(
    net: Network,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    normalize=None,
    dtype=torch.float32,
    device="cpu",
):
    """uint8 images ``(B, C, H, W)`` and labels -> model inputs and one-hot targets."""
    x = data.to_float(images.to(device), normalize).to(dtype)
    shape = net.layers[0].shape
    x = x.reshape(x.shape[0], *shape)
    y = data.one_hot(labels.to(device), classes).to(dtype)
    return x, y


def check_data(net: Network, ds: data.Dataset, protocol: Protocol):
    """Refuse, naming the protocol, a dataset whose images or classes do not fit ``net``."""
    n_in, n_out = net.layers[0].size, net.layers[-1].size
    sample = ds.images[0].numel()
    if sample != n_in:
        raise ProtocolError(
            f"{protocol.source}: data {ds.name!r} has {tuple(ds.images.shape[1:])} images "
            f"({sample} values) but model {protocol.model.name} expects {n_in} inputs"
        )
    if ds.classes != n_out:
        raise ProtocolError(
            f"{protocol.source}: data {ds.name!r} has {ds.classes} classes but model "
            f"{protocol.model.name} has {n_out} outputs"
        )
    side = min(ds.images.shape[-2:])
    if protocol.data.crop_padding >= side:
        raise ProtocolError(
            f"{protocol.source}: data.crop_padding: {protocol.data.crop_padding} would shift whole "
            f"{ds.name} images out of the frame, expected less than {side} (their side)"
        )


def subset(ds: data.Dataset, n: int) -> data.Dataset:
    """The first ``n`` examples of ``ds`` (all of them when ``n`` is 0 or too large)."""
    if n == 0 or n >= len(ds.labels):
        return ds
    return data.Dataset(ds.images[:n], ds.labels[:n], ds.name, ds.split, ds.classes)


def split_train(
    ds: data.Dataset, validation: int, train_subset: int, seed: int, source: str = "<protocol>"
) -> tuple[data.Dataset, data.Dataset | None]:
    """The training images and the ``validation`` images held out of the training split ``ds``.

    The held-out images are the first ``validation`` of a permutation of ``ds`` drawn from a
    generator seeded with ``seed + 2**32`` (``seed`` is ``train.seed``; the epochs' generators use
    other seeds), kept in their order in ``ds``; the training images are the first
    ``train_subset`` (0: all) of the others, in their order. ``validation = 0``: ``ds`` (subset)
    and None. ``source`` names the protocol in the error for too many held-out images.
    """
    if validation == 0:
        return subset(ds, train_subset), None
    n = len(ds.labels)
    if validation >= n:
        raise ProtocolError(
            f"{source}: data.validation: {validation} would hold out every one of the {n} "
            f"{ds.name} training images, expected fewer"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 2**32))
    held = torch.zeros(n, dtype=torch.bool)
    held[perm[:validation]] = True
    val, rest = held.nonzero().flatten(), (~held).nonzero().flatten()
    pick = lambda idx: data.Dataset(  # noqa: E731
        ds.images[idx], ds.labels[idx], ds.name, ds.split, ds.classes
    )
    return subset(pick(rest), train_subset), pick(val)


def normalization(name: str, normalize: bool, std_scale: float = 1.0):
    """``(mean, std)`` per channel for dataset ``name``, or None when not normalising."""
    if not normalize:
        return None
    mean, std = data.STATS[name]
    return mean, tuple(std_scale * s for s in std)


def checkpoint_normalization(raw: dict, name: str):
    """:func:`normalization` of dataset ``name`` as the run whose protocol table (a checkpoint's
    ``"protocol"``) is ``raw`` normalised its inputs."""
    d = raw.get("data", {})
    return normalization(name, d.get("normalize", False), d.get("std_scale", 1.0))


@torch.no_grad()
def score(
    net: Network,
    params,
    ds: data.Dataset,
    free,
    normalize=None,
    batch_size: int = 1000,
    shard: tuple[int, int] = (0, 1),
) -> dict:
    """Error (%) and mean cost on ``ds`` (or a shard of it) of the free rates that ``free(x)``
    gives for each batch of inputs ``x`` (any engine's free phase)."""
    dtype = next(iter(params.values())).dtype
    device = next(iter(params.values())).device
    rank, world = shard
    idx = torch.arange(rank, len(ds.labels), world)
    wrong, cost, count = 0.0, 0.0, 0
    for start in range(0, len(idx), batch_size):
        i = idx[start : start + batch_size]
        x, y = prepare_batch(net, ds.images[i], ds.labels[i], ds.classes, normalize, dtype, device)
        rates = free(x)
        wrong += float((net.output(params, rates).argmax(1) != ds.labels[i].to(device)).sum())
        cost += float(net.cost(params, rates, y).sum())
        count += len(i)
    totals = _dist.all_reduce([wrong, cost, float(count)], world)
    return {"error": 100.0 * totals[0] / totals[2], "loss": totals[1] / totals[2]}
