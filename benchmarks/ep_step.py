"""EP step timings: spikeep against the alternatives, a hand-fused step and the FLOP limit.

The published reference code of Laborieux et al. (2021) relaxes by taking, at every dynamics
step, the autograd gradient of the primitive ``Phi`` with respect to the states (which
recomputes the input layer's ``W_1 x`` each time), and gets the weight update from autograd of
``Phi`` at the two phase ends. ``AutogradMLP`` and ``AutogradCNN`` below re-implement that approach
(our code, same operations) so both run here, side by side, in one process, on the same inputs.

    python benchmarks/ep_step.py [--repeats 15] [--conv-repeats 3] [--before 2b439e4] [--threads N]
                                 [--json]

The workloads (``../shared/PERF.md``'s rate-engine rows):

- ``mlp``: the EP step of ``models/mlp_784_500_10.toml`` (batch 100, 20 free + 4 nudged steps,
  one-sided EP, SGD update), with the spec's ``energy`` dynamics and with ``prototypical`` ones
  (the reference's); beside it the autograd-per-step step and, for the prototypical dynamics, a
  hand-fused step (the same maths written out by hand for this one architecture, every
  operation fused or in place);
- ``protocol``: one step of the training loop on ``protocols/mnist_mlp.toml`` (784-500 with a
  cross-entropy readout, energy dynamics, batch 20, symmetric EP with 30 free and 4 + 4 nudged
  steps, the loss and training error, the finiteness check, momentum SGD), beside a hand-fused
  step of the same maths (checked against spikeep's update before timing);
- ``conv``: one dynamics step of ``models/conv_mnist.toml`` (batch 100) beside the autograd one;
- ``conv_ep`` (``--conv-repeats``, 0 to skip): one step of the training loop on
  ``protocols/mnist_conv.toml`` (batch 100, symmetric EP, 30 + 10 + 10 steps).

``before`` is spikeep as committed at ``--before`` (``git archive`` into a temporary folder,
imported as ``spikeep_before``), ``after`` the working tree; every variant of a workload is
timed in turn, repeat by repeat, so the machine's drift hits all alike; medians. The limit is a
workload's useful floating-point work (its matrix products and convolutions, 2 FLOPs a
multiply-add; elementwise work and the forward passes re-run for a max pool's arg-max not
counted) over the throughput measured in the same run with the same threads: a 1024^3 sgemm for
dense products, the conv_mnist 32 -> 64 5x5 convolution (batch 100, channels-last) for convs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from table1_epoch import load_before  # noqa: E402

from spikeep import _threads, spec  # noqa: E402
from spikeep.energy import Network  # noqa: E402
from spikeep.gradcheck import random_batch  # noqa: E402

BEFORE = "2b439e4"  # spikeep before the hot-loop work of issue 20 (docs/benchmarks.md)


class AutogradMLP:
    """Prototypical dynamics with ``s <- clip(dPhi/ds, 0, 1)``, ``dPhi/ds`` by autograd."""

    def __init__(self, params: dict, n_layers: int):
        self.W = [params[f"W{i}"].clone().requires_grad_(True) for i in range(1, n_layers + 1)]
        self.b = [params[f"b{i}"].clone().requires_grad_(True) for i in range(1, n_layers + 1)]

    def phi(self, x, y, s, beta):
        layers = [x, *s]
        total = 0
        for i, (W, b) in enumerate(zip(self.W, self.b)):
            total = total + ((layers[i] @ W.T + b) * layers[i + 1]).sum(1)
        if beta != 0:
            total = total - beta * 0.5 * ((s[-1] - y) ** 2).sum(1)
        return total

    def relax(self, x, y, s, steps, beta):
        for _ in range(steps):
            phi = self.phi(x, y, s, beta)
            grads = torch.autograd.grad(phi, s, grad_outputs=torch.ones_like(phi))
            s = [g.clamp(0, 1).requires_grad_(True) for g in grads]
        return s

    def ep_step(self, x, y, free_steps, nudged_steps, beta, lr):
        s0 = [torch.zeros(x.shape[0], W.shape[0], requires_grad=True) for W in self.W]
        free = self.relax(x, y, s0, free_steps, 0.0)
        nudged = self.relax(x, y, free, nudged_steps, beta)
        params = self.W + self.b
        for p in params:
            p.grad = None
        delta = (self.phi(x, y, nudged, beta).mean() - self.phi(x, y, free, 0.0).mean()) / beta
        (-delta).backward()
        with torch.no_grad():
            for p in params:
                p -= lr * p.grad


class AutogradCNN:
    """``conv_mnist``: two conv + max-pool couplings and a dense output; one autograd step."""

    def __init__(self, params: dict):
        self.p = {k: v.clone().requires_grad_(True) for k, v in params.items()}

    def phi(self, x, s):
        p = self.p
        h1 = F.max_pool2d(F.conv2d(x, p["W1"], p["b1"]), 2)
        h2 = F.max_pool2d(F.conv2d(s[0], p["W2"], p["b2"]), 2)
        h3 = s[1].flatten(1) @ p["W3"].T + p["b3"]
        return (h1 * s[0]).sum((1, 2, 3)) + (h2 * s[1]).sum((1, 2, 3)) + (h3 * s[2]).sum(1)

    def step(self, x, s):
        phi = self.phi(x, s)
        grads = torch.autograd.grad(phi, s, grad_outputs=torch.ones_like(phi))
        return [g.clamp(0, 1).requires_grad_(True) for g in grads]


class AutogradReadoutMLP:
    """``mnist_mlp``'s maths the autograd way: energy dynamics ``s <- clip(lerp(s, dPhi_beta/ds,
    dt), 0, 1)`` with ``dPhi_beta/ds`` by autograd at every step (``W_1 x`` recomputed each
    time), the cross-entropy readout inside ``Phi_beta``, the symmetric estimate by autograd of
    ``Phi_beta`` at the two nudged ends, the free phase's loss and error, momentum SGD."""

    def __init__(self, params: dict):
        self.p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        self.mom = {k: torch.zeros_like(v) for k, v in params.items()}

    def phi(self, x, labels, s, beta):
        p = self.p
        total = ((x @ p["W1"].T + p["b1"]) * s).sum(1)
        if beta != 0:
            z = s @ p["W2"].T + p["b2"]
            total = total - beta * F.cross_entropy(z, labels, reduction="none")
        return total

    def relax(self, x, labels, s, steps, beta, dt):
        for _ in range(steps):
            (g,) = torch.autograd.grad(self.phi(x, labels, s, beta).sum(), s)
            s = torch.lerp(s, g, dt).clamp(0, 1).detach().requires_grad_(True)
        return s

    def step(self, x, labels, lrs, mu, beta, free_steps, nudged_steps, dt):
        s0 = x.new_zeros(x.shape[0], self.p["W1"].shape[0], requires_grad=True)
        free = self.relax(x, labels, s0, free_steps, 0.0, dt)
        with torch.no_grad():
            z = free @ self.p["W2"].T + self.p["b2"]
            loss = float(F.cross_entropy(z, labels, reduction="sum"))
            wrong = int((z.argmax(1) != labels).sum())
        plus = self.relax(x, labels, free, nudged_steps, beta, dt)
        minus = self.relax(x, labels, free, nudged_steps, -beta, dt)
        phi = self.phi(x, labels, plus, beta).mean() - self.phi(x, labels, minus, -beta).mean()
        names = list(self.p)
        grads = dict(zip(names, torch.autograd.grad(-phi / (2 * beta), list(self.p.values()))))
        with torch.no_grad():
            if not math.isfinite(float(sum(g.sum() for g in grads.values())) + loss):
                raise RuntimeError("non-finite")
            for k, v in self.p.items():
                self.mom[k].mul_(mu).add_(grads[k])
                v.sub_(self.mom[k], alpha=lrs[int(k[1:]) - 1])
        return grads, wrong


def hand_fused_mlp(params: dict, x, y, free_steps, nudged_steps, beta, lr):
    """The floor: the same prototypical EP step written by hand for 784-500-10, every operation
    fused or in place (static drive once, addmm + in-place clip, in-place weight updates)."""
    W1, b1, W2, b2 = (params[k] for k in ("W1", "b1", "W2", "b2"))
    B = x.shape[0]
    st1 = torch.addmm(b1, x, W1.T)
    r1, r2 = x.new_zeros(B, W1.shape[0]), x.new_zeros(B, W2.shape[0])
    for _ in range(free_steps):
        r1, r2 = torch.addmm(st1, r2, W2).clamp_(0, 1), torch.addmm(b2, r1, W2.T).clamp_(0, 1)
    f1, f2 = r1, r2
    by = beta * y
    for _ in range(nudged_steps):
        h2 = torch.addmm(b2, r1, W2.T).sub_(r2, alpha=beta).add_(by)
        r1, r2 = torch.addmm(st1, r2, W2).clamp_(0, 1), h2.clamp_(0, 1)
    a = lr / beta
    W1.addmm_((r1 - f1).T, x, alpha=a)
    W2.addmm_(r2.T, r1, alpha=a).addmm_(f2.T, f1, alpha=-a)
    b1.add_((r1 - f1).sum(0), alpha=a)
    b2.add_((r2 - f2).sum(0), alpha=a)


def hand_fused_protocol_step(p, mom, x, y, labels, lrs, mu, beta, free_steps, nudged_steps, dt):
    """The ``mnist_mlp`` training step written out by hand: 784-500 with a cross-entropy readout,
    energy dynamics ``s <- clip(lerp(s, h, dt), 0, 1)``, symmetric EP from the free state, the
    loss and error of the free phase, a finiteness check (one sum) and momentum SGD in place.
    Returns the gradient estimate (to check it against spikeep's)."""
    W1, b1, W2, b2 = (p[k] for k in ("W1", "b1", "W2", "b2"))
    B = x.shape[0]
    static = torch.addmm(b1, x, W1.T)
    s = x.new_zeros(B, W1.shape[0])
    for _ in range(free_steps):
        s.lerp_(static, dt).clamp_(0, 1)
    z = torch.addmm(b2, s, W2.T)
    loss = float(torch.nn.functional.cross_entropy(z, labels, reduction="sum"))
    wrong = int((z.argmax(1) != labels).sum())
    ends = []
    for b in (beta, -beta):
        r, h = s.clone(), torch.empty_like(s)
        for _ in range(nudged_steps):
            e = torch.addmm(b2, r, W2.T).softmax(1).sub_(y)
            torch.addmm(static, e, W2, alpha=-b, out=h)
            r.lerp_(h, dt).clamp_(0, 1)
        ends.append((r, torch.addmm(b2, r, W2.T).softmax(1).sub_(y)))
    (rp, ep), (rm, em) = ends
    c = 1 / (2 * beta * B)
    d = rm - rp  # dF/dW1 = -r x^T: (r^-beta - r^beta) / (2 beta)
    g = {
        "W1": (d.T @ x).mul_(c),
        "b1": d.sum(0).mul_(c),
        "W2": torch.cat([ep, em]).T.mm(torch.cat([rp, rm])).mul_(1 / (2 * B)),
        "b2": (ep + em).sum(0).mul_(1 / (2 * B)),
    }
    if not math.isfinite(float(torch.stack([v.sum() for v in g.values()]).sum()) + loss):
        raise RuntimeError("non-finite")
    for k, v in p.items():
        mom[k].mul_(mu).add_(g[k])
        v.add_(mom[k], alpha=-lrs[int(k[1:]) - 1])
    return g, wrong


class Version:
    """One version of the spikeep package (``spikeep`` or ``spikeep_before``)."""

    def __init__(self, pkg: str):
        self.pkg = pkg
        for name in ("spec", "energy", "estimators", "bench", "protocol", "engine", "train"):
            setattr(self, name, importlib.import_module(f"{pkg}.{name}"))
        self.checkpoint = importlib.import_module(f"{pkg}.checkpoint")

    def net(self, model: Path, **top):
        if not top:
            return self.energy.Network(self.spec.load(model))
        return self.energy.Network(self.spec.from_dict({**_raw(model), **top}, str(model)))

    def mlp_step(self, params, x, y, dynamics):
        net = self.net(ROOT / "models" / "mlp_784_500_10.toml", dynamics=dynamics)
        est = self.estimators.make("one-sided", 0.5, 4)
        params = {k: v.clone() for k, v in params.items()}
        return lambda: self.bench.ep_step(net, params, x, y, est, 20, 0.01)

    def loop_step(self, protocol: str, x, labels, seed=0):
        """One step of the training loop (``train._train_step``'s work on a prepared batch)."""
        p = self.protocol.load(ROOT / "protocols" / f"{protocol}.toml")
        net = self.energy.Network(self.spec.load(p.model))
        engine = self.engine.RateEngine(p, net)
        params = net.init_params(seed, dtype=torch.float32)
        state = self.checkpoint.TrainState(
            params, {k: torch.zeros_like(v) for k, v in params.items()}
        )
        y = F.one_hot(labels, 10).float()
        lrs = self.protocol.learning_rates(p, 0)
        g = torch.Generator().manual_seed(seed)

        def step():
            st = engine.step(net, state.params, x, y, None, g, 0, None)
            if hasattr(net, "cost_and_output"):  # the loop's work as the version does it
                cost, output = net.cost_and_output(state.params, st.rates, y)
            else:
                cost, output = (
                    net.cost(state.params, st.rates, y),
                    net.output(state.params, st.rates),
                )
            wrong = (output.argmax(1) != labels).sum()
            loss = float(cost.sum())
            self.train._descend(state, st.grads, p, lrs, loss, "bench", 1.0, 1)
            float(wrong)
            return st.grads

        return step, state, p


# -- throughput and FLOPs -------------------------------------------------------------------------


_A, _B = torch.randn(1024, 1024), torch.randn(1024, 1024)
_R = torch.rand(100, 32, 12, 12).contiguous(memory_format=torch.channels_last)
_W = torch.randn(64, 32, 5, 5)
SGEMM = 2 * 1024**3
# the throughput kernels, timed among each workload's variants: a 1024^3 sgemm (dense products)
# and conv_mnist's 32 -> 64 5x5 conv, batch 100, channels-last (convolutions)
KERNELS = {"sgemm": lambda: _A @ _B, "conv": lambda: F.conv2d(_R, _W)}


CONV1 = 2 * 100 * 32 * 24 * 24 * 25  # conv_mnist's first conv, batch 100
CONV2 = 2 * 100 * 64 * 8 * 8 * 32 * 25  # its second
DENSE3 = 2 * 100 * 1024 * 10  # its 1024 -> 10 product


def flops() -> dict:
    """Useful FLOPs of each workload: ``(dense, conv)``."""
    B, n = 100, 784 * 500
    mlp = 2 * B * n + 24 * 2 * 2 * B * 500 * 10 + 2 * B * n + 2 * 2 * B * 500 * 10
    b = 20  # mnist_mlp: static drive, 8 nudged steps (logits and feedback), W1 and readout grads,
    # the free phase's logits (loss and error)
    protocol = 2 * b * n + 8 * 4 * b * 5000 + 2 * b * n + 2 * 2 * b * 5000 + 2 * b * 5000
    conv_step = (2 * DENSE3, 2 * CONV2)
    steps = 30 + 10 + 10  # mnist_conv: the dynamics, the readout's nudge, the weight gradients
    conv_ep = (
        steps * 2 * DENSE3 + 20 * 2 * DENSE3 + 3 * DENSE3,
        CONV1 + steps * 2 * CONV2 + CONV1 + 2 * CONV2,
    )
    return {"mlp": (mlp, 0), "protocol": (protocol, 0), "conv": conv_step, "conv_ep": conv_ep}


def limit_ms(work: tuple[float, float], r: dict) -> float:
    """The limit of ``work`` (dense, conv FLOPs) at the kernels' median times in ``r`` (ms)."""
    dense = work[0] * r["sgemm"] / SGEMM
    return dense + (work[1] * r["conv"] / CONV2 if work[1] else 0.0)


def gflops(r: dict) -> dict:
    return {k: f / r[k] / 1e6 for k, f in (("sgemm", SGEMM), ("conv", CONV2)) if k in r}


# -- the workloads --------------------------------------------------------------------------------


def _time(fn) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()`` (CPU time: what waiting for a busy core leaves out)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _nograd(fn):
    def run():
        with torch.no_grad():
            return fn()

    return run


def _interleave(fns: dict, repeats: int, warmup: int, kernels=("sgemm",)) -> dict:
    """Median wall time (ms) of each function, and of the throughput ``kernels``, run in turn
    repeat by repeat, in an order shuffled at every repeat (seeded), so that none always follows
    the same one: the large sgemm leaves the caches cold for whatever runs next, and a rotating
    order keeps the neighbours (one variant would always follow it); under ``"cpu"`` the median
    CPU times."""
    fns = {**fns, **{k: KERNELS[k] for k in kernels}}
    names = list(fns)
    times = {k: [] for k in fns}
    order = random.Random(0)
    for i in range(warmup + repeats):
        for k in order.sample(names, len(names)):
            d = _time(fns[k])
            if i >= warmup:
                times[k].append(d)
    out = {k: 1e3 * statistics.median(w for w, _ in ts) for k, ts in times.items()}
    out["cpu"] = {k: 1e3 * statistics.median(c for _, c in ts) for k, ts in times.items()}
    return out


def bench_mlp(versions: dict, repeats: int) -> dict:
    model = ROOT / "models" / "mlp_784_500_10.toml"
    net = Network(spec.load(model))
    params = net.init_params(0, dtype=torch.float32)
    x, y = random_batch(net, 100, 0, torch.float32)
    out = {}
    for dynamics in ("energy", "prototypical"):
        fns = {k: _nograd(v.mlp_step(params, x, y, dynamics)) for k, v in versions.items()}
        ref = AutogradMLP(params, 2)
        fns["autograd"] = lambda ref=ref: ref.ep_step(x, y, 20, 4, 0.5, 0.01)
        if dynamics == "prototypical":
            fused = {k: v.clone() for k, v in params.items()}
            fns["fused"] = _nograd(partial(hand_fused_mlp, fused, x, y, 20, 4, 0.5, 0.01))
        out[dynamics] = _interleave(fns, repeats, 3)
    return out


def bench_protocol(versions: dict, repeats: int) -> dict:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(20, 784, generator=g)
    labels = torch.randint(0, 10, (20,), generator=g)
    fns = {}
    for k, v in versions.items():
        fns[k], state, p = v.loop_step("mnist_mlp", x, labels)
    net = versions["after"].energy.Network(versions["after"].spec.load(p.model))
    fp = net.init_params(0, dtype=torch.float32)
    mom = {k: torch.zeros_like(t) for k, t in fp.items()}
    ref = AutogradReadoutMLP(fp)  # its own copy of the initial parameters
    y = F.one_hot(labels, 10).float()
    est, opt = p.estimator, p.optimizer
    lrs = versions["after"].protocol.learning_rates(p, 0)
    args = (y, labels, lrs, opt.momentum, est.beta, est.free_steps, est.nudged_steps, net.spec.dt)

    def fused():
        return hand_fused_protocol_step(fp, mom, x, *args)

    # the first step of each from the same parameters: the estimates agree to rounding
    with torch.no_grad():
        ours = fns["after"]()
        theirs, _ = fused()
        check = max(float((ours[k] - theirs[k]).abs().max() / ours[k].abs().max()) for k in ours)
        fns["fused"] = fused
    auto, _ = ref.step(x, labels, *args[2:])
    fns["autograd"] = partial(ref.step, x, labels, *args[2:])
    out = _interleave({k: _nograd(f) if k != "autograd" else f for k, f in fns.items()}, repeats, 5)
    out["fused_relative_difference"] = check
    out["autograd_relative_difference"] = max(
        float((ours[k] - auto[k]).abs().max() / ours[k].abs().max()) for k in ours
    )
    return out


def bench_conv(versions: dict, repeats: int, steps: int = 3) -> dict:
    model = ROOT / "models" / "conv_mnist.toml"
    fns = {}
    for k, v in versions.items():
        net = v.net(model)
        params = net.init_params(0, dtype=torch.float32)
        x, _ = random_batch(Network(spec.load(model)), 100, 0, torch.float32)
        with torch.no_grad():
            static = net.static_drive(params, x)
            s0 = importlib.import_module(f"{v.pkg}.dynamics").relax(net, params, x, steps=5).s

        def ours(net=net, params=params, static=static, s0=s0):
            s = s0
            for _ in range(steps):
                s = net.dynamics.step(net, params, s, static)

        fns[k] = _nograd(ours)
    ref = AutogradCNN(params)
    s_ref = [si.detach().contiguous().requires_grad_(True) for si in s0]

    def theirs():
        s = s_ref
        for _ in range(steps):
            s = ref.step(x, s)

    fns["autograd"] = theirs
    out = _interleave(fns, repeats, 2, ("sgemm", "conv"))
    per = {k: t if k in KERNELS else t / steps for k, t in out.items() if k != "cpu"}
    per["cpu"] = {k: t if k in KERNELS else t / steps for k, t in out["cpu"].items()}
    return per


def bench_conv_ep(versions: dict, repeats: int) -> dict:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(100, 1, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (100,), generator=g)
    fns = {k: v.loop_step("mnist_conv", x, labels)[0] for k, v in versions.items()}
    with torch.no_grad():
        return _interleave(fns, repeats, 1, ("sgemm", "conv"))


def _raw(model: Path) -> dict:
    import tomllib

    return tomllib.loads(Path(model).read_text())


def measure(repeats: int, conv_repeats: int, before: str | None) -> dict:
    versions = {"after": Version("spikeep")}
    with tempfile.TemporaryDirectory() as tmp:
        if before:
            load_before(before, Path(tmp))
            versions["before"] = Version("spikeep_before")
        out = {
            "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "before": before,
            "loadavg": os.getloadavg()[0],
            "mlp": bench_mlp(versions, repeats),
            "protocol": bench_protocol(versions, repeats * 4),
            "conv": bench_conv(versions, max(3, repeats // 3)),
        }
        if conv_repeats:
            out["conv_ep"] = bench_conv_ep(versions, conv_repeats)
    work = flops()
    for _, path, lim, _ in ROWS:
        r = _get(out, path)
        if r is not None:
            r["limit"] = limit_ms(work[lim], r)
            r["gflops"] = gflops(r)
    return out


def _get(out: dict, path):
    for key in path:
        out = out.get(key) if isinstance(out, dict) else None
    return out


ROWS = [
    # key, path in the results, its limit, its label
    (
        "mlp",
        ("mlp", "energy"),
        "mlp",
        "MLP EP step 784-500-10, batch 100, 20+4, one-sided (energy dynamics, the spec's)",
    ),  # noqa: E501
    ("mlp", ("mlp", "prototypical"), "mlp", "the same, prototypical dynamics"),
    (
        "protocol",
        ("protocol",),
        "protocol",
        "mnist_mlp training step (batch 20, symmetric, 30+4+4)",
    ),  # noqa: E501
    ("conv", ("conv",), "conv", "conv_mnist dynamics step, batch 100"),
    (
        "conv_ep",
        ("conv_ep",),
        "conv_ep",
        "mnist_conv training step (batch 100, symmetric, 30+10+10)",
    ),  # noqa: E501
]


def report(out: dict) -> str:
    lines = [
        f"EP step timings: {out['threads']} thread(s), OpenMP wait policy "
        f"{out['omp_wait_policy']}, load average {out['loadavg']:.1f}; medians of interleaved "
        f"repeats; the limit from the throughput kernels timed among them",
    ]
    for _, path, _, label in ROWS:
        r = _get(out, path)
        if r is None:
            continue
        after, limit = r["after"], r["limit"]
        tp = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in r["gflops"].items())
        parts = [f"spikeep {after:.2f} ms"]
        if "before" in r:
            cpu = r["cpu"]["after"] / r["cpu"]["before"]
            parts.append(
                f"before {r['before']:.2f} ms (after/before {after / r['before']:.2f}; in CPU "
                f"time {cpu:.2f})"
            )
        if "autograd" in r:
            parts.append(
                f"autograd-per-step {r['autograd']:.2f} ms ({r['autograd'] / after:.1f}x slower)"
            )  # noqa: E501
        if "fused" in r:
            parts.append(f"hand-fused {r['fused']:.2f} ms (spikeep/fused {after / r['fused']:.2f})")  # noqa: E501
        parts.append(f"limit {limit:.2f} ms (spikeep/limit {after / limit:.2f}; {tp})")
        lines.append(f"{label}:\n  " + "\n  ".join(parts))
    if "protocol" in out:
        lines.append(
            f"(the first mnist_mlp step's estimate, relative to spikeep's: hand-fused "
            f"{out['protocol']['fused_relative_difference']:.1e}, autograd-per-step "
            f"{out['protocol']['autograd_relative_difference']:.1e})"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--conv-repeats", type=int, default=3, help="mnist_conv steps (0: none)")
    parser.add_argument(
        "--before", default=None, help=f"git revision to time beside the working tree ({BEFORE})"
    )
    parser.add_argument("--threads", default=None, help="torch threads (default: spikeep's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.conv_repeats < 0:
        parser.error(
            f"--repeats must be >= 1 and --conv-repeats >= 0, got {args.repeats}, "
            f"{args.conv_repeats}"
        )
    try:
        flag = None if args.threads is None else _threads.parse(args.threads, "--threads")
        _threads.apply(_threads.choose(flag)[0])
    except ValueError as err:
        parser.error(str(err))
    out = measure(args.repeats, args.conv_repeats, args.before)
    print(json.dumps(out) if args.json else report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
