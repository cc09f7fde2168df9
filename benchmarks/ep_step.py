"""EP step timings: spikeep's closed-form engine against the autograd-per-step approach.

The published reference code of Laborieux et al. (2021) relaxes by taking, at every dynamics
step, the autograd gradient of the primitive ``Phi`` with respect to the states (which
recomputes the input layer's ``W_1 x`` each time), and gets the weight update from autograd of
``Phi`` at the two phase ends. ``AutogradMLP`` and ``AutogradCNN`` below re-implement that approach
(our code, same operations) so both run here, side by side, in one process, on the same inputs.

    python benchmarks/ep_step.py [--repeats 10] [--json]

Reports, for ``models/mlp_784_500_10.toml`` (batch 100, 20 free + 4 nudged steps, one-sided EP,
SGD update): milliseconds per EP step and the speed-up, beside a hand-fused floor (the same
prototypical step written out by hand for this one architecture, every operation fused or in
place: what no general engine beats on this machine); and for ``models/conv_mnist.toml``
(batch 100) milliseconds per dynamics step and the speed-up, and the alternating dynamics' step
beside the synchronous one (same model and states). The two are interleaved repeat by
repeat, so drift in machine speed hits both alike; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikeep import estimators, spec  # noqa: E402
from spikeep.bench import ep_step  # noqa: E402
from spikeep.dynamics import relax  # noqa: E402
from spikeep.energy import Network  # noqa: E402
from spikeep.gradcheck import random_batch  # noqa: E402


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


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_mlp(repeats: int, warmup: int = 3) -> dict:
    model = spec.load(ROOT / "models" / "mlp_784_500_10.toml")
    results = {}
    for dynamics in ("energy", "prototypical"):
        net = Network(spec.from_dict({**_raw(model), "dynamics": dynamics}, model.source))
        params = net.init_params(0, dtype=torch.float32)
        x, y = random_batch(net, 100, 0, torch.float32)
        ours = _ours_mlp(net, params, x, y)
        theirs = _theirs_mlp(AutogradMLP(params, 2), x, y)
        fused = _fused_mlp({k: v.clone() for k, v in params.items()}, x, y)
        t_ours, t_ref, t_fused = _interleave([ours, theirs, fused], repeats, warmup)
        results[dynamics] = {"ours_ms": t_ours, "reference_ms": t_ref, "speedup": t_ref / t_ours}
        if dynamics == "prototypical":  # the hand-fused step is the prototypical one
            results[dynamics].update(hand_fused_ms=t_fused, hand_fused_speedup=t_ref / t_fused)
    return results


def _ours_mlp(net, params, x, y):
    est = estimators.make("one-sided", 0.5, 4)

    def run():
        with torch.no_grad():
            ep_step(net, params, x, y, est, 20, 0.01)

    return run


def _fused_mlp(params, x, y):
    def run():
        with torch.no_grad():
            hand_fused_mlp(params, x, y, 20, 4, 0.5, 0.01)

    return run


def _theirs_mlp(ref, x, y):
    return lambda: ref.ep_step(x, y, 20, 4, 0.5, 0.01)


def bench_cnn(repeats: int, warmup: int = 2, steps: int = 5) -> dict:
    net = Network(spec.load(ROOT / "models" / "conv_mnist.toml"))
    params = net.init_params(0, dtype=torch.float32)
    x, _ = random_batch(net, 100, 0, torch.float32)
    ref = AutogradCNN(params)
    static = net.static_drive(params, x)
    s_ours = relax(net, params, x, steps=5).s
    s_ref = [si.detach().contiguous().requires_grad_(True) for si in s_ours]

    def ours():
        nonlocal s_ours
        with torch.no_grad():
            for _ in range(steps):
                s_ours = net.dynamics.step(net, params, s_ours, static)

    def theirs():
        nonlocal s_ref
        for _ in range(steps):
            s_ref = ref.step(x, s_ref)

    alt = Network(spec.from_dict({**_raw(net.spec), "dynamics": "alternating"}, net.spec.source))
    s_alt = s_ours

    def alternating():
        nonlocal s_alt
        with torch.no_grad():
            for _ in range(steps):
                s_alt = alt.dynamics.step(alt, params, s_alt, static)

    # The floor: the coupling's two convolutions alone (forward, and its transpose for the feedback)
    coupling, W = net.couplings[1], params["W2"]
    r1 = s_ours[0].contiguous(memory_format=torch.channels_last)
    g = torch.rand((100, 64, 8, 8)).contiguous(memory_format=torch.channels_last)

    def convs():
        for _ in range(steps):
            F.conv2d(r1, W)
            coupling._transpose(W, g)

    t_ours, t_ref, t_convs, t_alt = _interleave([ours, theirs, convs, alternating], repeats, warmup)
    return {
        "ours_ms": t_ours / steps,
        "alternating_ms": t_alt / steps,
        "two_convs_ms": t_convs / steps,
        "reference_ms": t_ref / steps,
        "speedup": t_ref / t_ours,
    }


def _interleave(fns, repeats, warmup):
    """Median wall time (ms) of each function, run in turn repeat by repeat."""
    times = [[] for _ in fns]
    for i in range(warmup + repeats):
        for fn, ts in zip(fns, times):
            d = _time(fn)
            if i >= warmup:
                ts.append(d)
    return [1e3 * statistics.median(ts) for ts in times]


def _raw(model: spec.ModelSpec) -> dict:
    import tomllib

    return tomllib.loads(Path(model.source).read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    out = {
        "threads": torch.get_num_threads(),
        "mlp_784_500_10": bench_mlp(args.repeats),
        "conv_mnist_step": bench_cnn(max(3, args.repeats // 3)),
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"EP step timings, {out['threads']} threads, median of interleaved repeats")
    for dyn, r in out["mlp_784_500_10"].items():
        print(
            f"mlp_784_500_10 ({dyn} dynamics), batch 100, 20+4 steps, whole EP step: "
            f"spikeep {r['ours_ms']:.2f} ms, autograd-per-step {r['reference_ms']:.2f} ms, "
            f"speed-up {r['speedup']:.1f}x"
        )
    r = out["mlp_784_500_10"]["prototypical"]
    print(
        f"  hand-fused floor of the prototypical step: {r['hand_fused_ms']:.2f} ms "
        f"({r['hand_fused_speedup']:.1f}x); spikeep is {r['ours_ms'] / r['hand_fused_ms']:.2f}x "
        f"the floor"
    )
    r = out["conv_mnist_step"]
    print(
        f"conv_mnist, batch 100, one dynamics step: spikeep {r['ours_ms']:.2f} ms, "
        f"autograd-per-step {r['reference_ms']:.2f} ms, speed-up {r['speedup']:.1f}x"
    )
    print(
        f"  its two convolutions alone (forward and transpose, oneDNN, channels-last): "
        f"{r['two_convs_ms']:.2f} ms ({r['reference_ms'] / r['two_convs_ms']:.1f}x)"
    )
    print(
        f"  the same step with the alternating dynamics: {r['alternating_ms']:.2f} ms "
        f"({r['alternating_ms'] / r['ours_ms']:.2f}x the synchronous step)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
