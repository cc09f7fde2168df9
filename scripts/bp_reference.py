"""The backprop ceiling of a protocol's architecture: its feedforward twin trained by backprop.

An EP network at its free fixed point is not a feedforward network (the feedback couplings pull on
every layer), but its feedforward twin -- the same couplings from input to readout, each followed
by ``rho``, with no feedback -- trained by exact backprop on the same data, batch size, learning
rates, momentum and cosine schedule tells what the architecture can reach in the protocol's
epochs. When the twin cannot reach a protocol's target, EP training is unlikely to: the
architecture, not the gradient, is then the limit (a guide, not a bound: the EP network with its
feedback computes a different function).

Supports the hard-sigmoid (``hard_sigmoid``, ``hard_sigmoid_half``) dense and conv couplings of
``models/`` (conv with ``max`` or ``avg`` pooling) and a cross-entropy readout. PyTorch's default
initialisation; one thread recommended.
Prints one line per epoch: the test error (on ``test_subset`` images when set) and the training
error on the first 5,000 training images, both in evaluation mode. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bp_reference.py protocols/fmnist_conv.toml \
        [--set data.normalize=false --set train.epochs=6 ...]
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn

from spikeep import activations, data, protocol, spec
from spikeep.batches import normalization, subset
from spikeep.protocol import layer_lr, learning_rates


class Twin(nn.Module):
    """The feedforward twin of a hard-sigmoid spec with a cross-entropy readout."""

    def __init__(self, model: spec.ModelSpec):
        super().__init__()
        self.slope = activations.get(model.activation).slope  # rho(s) = clip(slope s, 0, 1)
        if self.slope is None or not model.readout:
            raise SystemExit(
                f"{model.source}: the twin needs a hard-sigmoid activation ('hard_sigmoid', "
                f"'hard_sigmoid_half') and a cross_entropy readout, got {model.activation!r} and "
                f"{model.cost!r}"
            )
        self.couplings, self.pools = nn.ModuleList(), []
        for prev, layer in zip(model.layers, model.layers[1:]):
            c = layer.coupling
            if c.kind == "conv":
                if c.pool not in ("none", "max", "avg"):
                    raise SystemExit(f"{model.source}: pool {c.pool!r} has no twin (max or avg)")
                self.couplings.append(
                    nn.Conv2d(prev.shape[0], layer.shape[0], c.kernel, c.stride, c.padding)
                )
                self.pools.append((c.pool, c.pool_size))
            else:
                self.couplings.append(nn.Linear(prev.size, layer.size))
                self.pools.append(("none", 1))

    def forward(self, x):
        last = len(self.couplings) - 1
        for i, (w, (pool, k)) in enumerate(zip(self.couplings, self.pools)):
            x = w(x.flatten(1) if isinstance(w, nn.Linear) else x)
            if pool == "max":
                x = F.max_pool2d(x, k)
            elif pool == "avg":
                x = F.avg_pool2d(x, k)
            if i < last:
                x = (self.slope * x).clamp(0.0, 1.0)  # rho = clip(slope s, 0, 1)
        return x


@torch.no_grad()
def error(net, images, labels, normalize, shape) -> float:
    wrong = 0
    for i in range(0, len(labels), 1000):
        x = data.to_float(images[i : i + 1000], normalize).reshape(-1, *shape)
        wrong += int((net(x).argmax(1) != labels[i : i + 1000]).sum())
    return 100.0 * wrong / len(labels)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("protocol")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    p = protocol.load(args.protocol, protocol.parse_overrides(args.set))
    model = spec.load(p.model)
    torch.manual_seed(p.train.seed)
    g = torch.Generator().manual_seed(p.train.seed)
    train_set = subset(data.load(p.data.name, "train", p.data.dir), p.data.train_subset)
    test_set = subset(data.load(p.data.name, "test", p.data.dir), p.data.test_subset)
    normalize = normalization(p.data.name, p.data.normalize, p.data.std_scale)
    shape = model.layers[0].shape
    net = Twin(model)
    groups = [{"params": list(w.parameters())} for w in net.couplings]
    opt = torch.optim.SGD(
        groups, lr=0.0, momentum=p.optimizer.momentum, weight_decay=p.optimizer.weight_decay
    )
    B, n = p.train.batch_size, len(train_set.labels)
    print(f"{p.name}: backprop twin of {model.source}, {p.train.epochs} epochs", flush=True)
    for epoch in range(p.train.epochs):
        lrs = learning_rates(p, epoch)
        for i, group in enumerate(opt.param_groups):
            group["lr"] = layer_lr(lrs, f"W{i + 1}")  # coupling i + 1, as EP trains it
        net.train()
        perm = torch.randperm(n, generator=g)
        for b in range(n // B):
            idx = perm[b * B : (b + 1) * B]
            x = data.to_float(train_set.images[idx], normalize)
            if p.data.augment:
                x = data.augment(x, g, p.data.crop_padding, p.data.flip)
            loss = F.cross_entropy(net(x.reshape(-1, *shape)), train_set.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        test = error(net, test_set.images, test_set.labels, normalize, shape)
        train = error(net, train_set.images[:5000], train_set.labels[:5000], normalize, shape)
        print(f"epoch {epoch + 1}  test error {test:.2f}%  train error {train:.2f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
