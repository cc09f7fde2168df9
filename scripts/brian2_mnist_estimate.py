"""The Brian2 engine's EP estimate on real MNIST images, against the rate engine's.

For a checkpoint of a 784-500-10 network (any engine's; its ``params``), or ``init`` (the model's
initialisation, ``init_params(--seed)``), and ``--batch`` embedded MNIST test images, prints per
parameter (and over all parameters) the cosine of

- the rate engine's EP estimate at the same ``beta`` (``--steps`` free and nudged steps,
  converged; for ``oscillation`` the real ``|beta| cos`` oscillation with ``--steps`` steps per
  period, one warm-up and two demodulated periods from the free state) against the exact implicit
  gradient (EP's own bias at ``beta``);
- the spiking estimate (``B`` copies of the network in runtime mode, numpy target, one sample of
  the estimator's schedule, learning rate 0) against the exact gradient and against the rate
  estimate (the spiking error: settling, lag, rate resolution);

and the largest distance between the spiking rates of the first window (the free window; the
mean rate ``m`` over the demodulated periods when oscillating) and the rate fixed point.

``--previous``: each copy first runs one sample of another test image (image ``B + c`` with its
label) and the second sample, which starts where the first ended (no reset), is the one measured,
as in a training chunk; without it each copy starts from rest. ``--compare-rules``: the spiking
estimate is the endpoint rule's, and the stdp rule's under each pairing of :data:`PAIRINGS` is
set against it on the same spikes (cosine and relative error per parameter). ``--rate-max``,
``--settle``, ``--window`` and ``--period`` override the model's ``[spiking]`` values. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/brian2_mnist_estimate.py CHECKPOINT|init \
        [--estimator one-sided|symmetric|oscillation] [--beta 0.5] [--rule endpoint|stdp] \
        [--settle 0.055] [--window 0.02] [--period 0.1 --periods 1 --warmup 1] \
        [--rate-max 1000] [--previous] [--compare-rules] [--batch 16] [--json] \
        [--model models/spiking_784_500_10.toml]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import brian2 as b2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikeep import Network, checkpoint, data, estimators, load_spec, reference  # noqa: E402
from spikeep.brian2 import schedules  # noqa: E402
from spikeep.brian2.lowering import build  # noqa: E402
from spikeep.dynamics import relax  # noqa: E402
from spikeep.gradcheck import compare  # noqa: E402


def cosines(g, ref) -> dict[str, float]:
    """Cosine per parameter and over all of them (``all``)."""
    c = compare(g, ref)
    return {**{k: v["cosine"] for k, v in c["per_param"].items()}, "all": c["cosine"]}


def norms(g, ref) -> dict[str, float]:
    """``|g| / |ref|`` per parameter: how much larger a step the estimate takes."""
    return {k: float(g[k].norm() / ref[k].norm()) for k in ref}


def line(c: dict[str, float], fmt: str = "+.3f") -> str:
    return "  ".join(f"{k} {v:{fmt}}" for k, v in c.items())


def images(name: str, B: int, offset: int = 0):
    """``B`` test images from ``offset`` as float64 rows in [0, 1] and their one-hot labels."""
    test = data.load(name, "test")
    if offset + B > len(test.labels):
        raise SystemExit(f"{name} has {len(test.labels)} test images; {offset + B} needed")
    sl = slice(offset, offset + B)
    x = data.to_float(test.images[sl]).reshape(B, -1).to(torch.float64)
    y = torch.nn.functional.one_hot(test.labels[sl].long(), 10).to(torch.float64)
    return x, y


def informative(net, params, x, y, free) -> int:
    """How many of the images have a non-zero exact gradient (on a trained network most
    outputs sit clipped at their targets, where the gradient is exactly 0)."""
    count = 0
    for k in range(len(x)):
        one = tuple(s[k : k + 1] for s in free.s)
        g = reference.implicit_gradient(net, params, x[k : k + 1], y[k : k + 1], s_star=one)
        count += any(float(v.abs().max()) > 0 for v in g.values())
    return count


def rate_estimate(args, net, params, x, y, free):
    """The rate engine's estimate at ``args.beta`` (converged)."""
    if args.estimator == "oscillation":
        est = estimators.make(
            "oscillation", args.beta, steps_per_period=args.steps, periods=2, warmup=1, real=True
        )
    else:
        est = estimators.make(args.estimator, args.beta, args.steps)
    return est.estimate(net, params, x, y, free).grads


def spiking_estimate(spec, params, x, y, schedule, rule, seed, x_prev=None, y_prev=None):
    """``rule`` 's estimate of one sample per copy (of the second sample with ``x_prev``), the
    first window's rates per layer and the spikes per copy and sample."""
    if x_prev is not None:
        x, y = torch.stack([x_prev, x]), torch.stack([y_prev, y])
    b2.prefs.codegen.target = "numpy"
    sn = build(spec, params, x, y, schedule, rule=rule, seed=seed)
    counters = [b2.SpikeMonitor(g, record=False) for g in sn.groups if "v" in g.variables]
    sn.network.add(*counters)
    B = sn.copies
    if x_prev is None:
        sn.run()
        g, spikes = sn.gradient(), sum(int(c.num_spikes) for c in counters)
    else:  # the second sample's share of the summed estimate
        sn.run(1)
        first = {k: v * B for k, v in sn.gradient().items()}
        before = sum(int(c.num_spikes) for c in counters)
        sn.run(1)
        g = {k: v * 2 * B - first[k] for k, v in sn.gradient().items()}
        g = {k: v / B for k, v in g.items()}
        spikes = sum(int(c.num_spikes) for c in counters) - before
    return g, sn.rates(schedule.accumulators[0])[1:], spikes / B


#: The STDP-like rule's pairings that ``--compare-rules`` sets beside the endpoint rule:
#: ``(stdp_trace, tau_trace in s)``, ``None`` for the model's ``tau_trace``.
PAIRINGS = (("running", None), ("running", 0.02), ("running", 0.04), ("count", None))


def compare_rules(spec, params, x, y, schedule, endpoint, spikes, args, x_prev, y_prev) -> list:
    """The stdp rule's estimate under each of :data:`PAIRINGS` against the endpoint rule's on
    the same images and spikes: cosine and relative error ``|g - g_endpoint| / |g_endpoint|``
    per parameter. ``endpoint`` (with ``spikes`` per sample) is the endpoint estimate under the
    model's ``tau_trace``; another ``tau_trace`` also changes the output's rate trace, and so
    the spikes, and the endpoint estimate is measured again under it. The learning rate is 0, so
    both rules see the same spikes (``same_spikes`` checks it)."""
    rows = []
    inputs = (params, x, y, schedule)
    for trace, tau in PAIRINGS:
        cfg = dataclasses.replace(spec.spiking, stdp_trace=trace)
        cfg = dataclasses.replace(cfg, tau_trace=tau) if tau is not None else cfg
        varied = dataclasses.replace(spec, spiking=cfg)
        ref, n_ref = endpoint, spikes
        if cfg.tau_trace != spec.spiking.tau_trace:
            ref, _, n_ref = spiking_estimate(varied, *inputs, "endpoint", args.seed, x_prev, y_prev)
        g, _, n = spiking_estimate(varied, *inputs, "stdp", args.seed, x_prev, y_prev)
        rows.append(
            {
                "stdp_trace": trace,
                "tau_trace": cfg.tau_trace,
                "vs_endpoint": cosines(g, ref),
                "relative_error": {k: float((g[k] - ref[k]).norm() / ref[k].norm()) for k in ref},
                "same_spikes": n == n_ref,
            }
        )
    return rows


def measure(args) -> dict:
    spec = load_spec(args.model)
    cfg = spec.spiking
    changes = {"rate_max": args.rate_max, "period": args.period}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    spec = dataclasses.replace(spec, spiking=cfg)
    net = Network(spec)
    if args.checkpoint == "init":
        params = net.init_params(args.seed, dtype=torch.float64)
    else:
        params = {
            k: v.to(torch.float64) for k, v in checkpoint.load(args.checkpoint)["params"].items()
        }
    B = args.batch
    x, y = images(args.data, B)
    x_prev = y_prev = None
    if args.previous:
        x_prev, y_prev = images(args.data, B, offset=B)

    free = relax(net, params, x, steps=args.steps)
    exact = reference.implicit_gradient(net, params, x, y, s_star=free.s)
    ep = rate_estimate(args, net, params, x, y, free)

    schedule = schedules.for_estimator(
        args.estimator,
        args.beta,
        cfg,
        args.settle,
        args.window,
        periods=args.periods,
        warmup=args.warmup,
    )
    start = time.perf_counter()
    rule = "endpoint" if args.compare_rules else args.rule
    spiking, rates, spikes = spiking_estimate(
        spec, params, x, y, schedule, rule, args.seed, x_prev, y_prev
    )
    wall = time.perf_counter() - start
    r_ref = [r.numpy() for r in net.dynamics.rates(net, free.s)]
    gap = max(float(np.abs(a - b).max()) for a, b in zip(rates, r_ref, strict=True))
    out = {
        "checkpoint": args.checkpoint,
        "model": str(spec.source),
        "estimator": args.estimator,
        "rule": rule,
        "beta": args.beta,
        "rate_max": cfg.rate_max,
        "batch": B,
        "informative": informative(net, params, x, y, free),
        "previous": args.previous,
        "ms_per_sample": 1e3 * schedule.duration,
        "rate_vs_exact": cosines(ep, exact),
        "spiking_vs_exact": cosines(spiking, exact),
        "spiking_vs_rate": cosines(spiking, ep),
        "norm_vs_exact": norms(spiking, exact),
        "rate_gap": gap,
        "spikes_per_sample": spikes,
        "wall_s": wall,
    }
    if args.compare_rules:
        out["rules"] = compare_rules(
            spec, params, x, y, schedule, spiking, spikes, args, x_prev, y_prev
        )
    if schedule.oscillating:
        out.update(period=schedule.period, periods=schedule.periods, warmup=schedule.warmup)
    else:
        phase = schedule.phases[0]
        out.update(settle=phase.settle, window=phase.window)
    return out


def report(r: dict) -> str:
    if "period" in r:
        how = (
            f"period {r['period'] * 1e3:g} ms, {r['warmup']} warm-up + {r['periods']} "
            f"demodulated periods"
        )
    else:
        how = f"settle {r['settle'] * 1e3:g} ms, window {r['window'] * 1e3:g} ms"
    start = "after another image" if r["previous"] else "from rest"
    return "\n".join(
        [
            f"{r['estimator']} beta {r['beta']}, rule {r['rule']}, {r['batch']} MNIST test images, "
            f"{r['checkpoint']}, {r['model']}; {r['informative']} with a non-zero exact gradient",
            f"  rate EP vs exact:          {line(r['rate_vs_exact'])}",
            f"  spiking ({r['rate_max']:g} Hz, {how}, {r['ms_per_sample']:g} ms per sample, "
            f"{start}, {r['spikes_per_sample']:.0f} spikes per sample)",
            f"    vs exact:                {line(r['spiking_vs_exact'])}",
            f"    vs rate EP:              {line(r['spiking_vs_rate'])}",
            f"    norm / exact norm:       {line(r['norm_vs_exact'])}",
            f"    first window's rates, largest gap from the free fixed point: {r['rate_gap']:.3f}",
        ]
        + [
            f"  stdp, {p['stdp_trace']} pairing, tau_trace {p['tau_trace'] * 1e3:g} ms, vs the "
            f"endpoint rule (same spikes: {p['same_spikes']}):\n"
            f"    cosine:                  {line(p['vs_endpoint'])}\n"
            f"    relative error:          {line(p['relative_error'], '.2e')}"
            for p in r.get("rules", [])
        ]
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a checkpoint, or 'init' (init_params(--seed))")
    ap.add_argument("--model", default=str(ROOT / "models/spiking_784_500_10.toml"))
    ap.add_argument("--data", default="mnist-embedded", help="the test images' data set")
    ap.add_argument(
        "--estimator", choices=["one-sided", "symmetric", "oscillation"], default="symmetric"
    )
    ap.add_argument("--rule", choices=["endpoint", "stdp"], default="endpoint")
    ap.add_argument("--beta", type=float, default=0.5, help="|beta| when oscillating")
    ap.add_argument("--settle", type=float, default=None, help="s (default: the model's)")
    ap.add_argument("--window", type=float, default=None, help="s (default: the model's)")
    ap.add_argument("--period", type=float, default=None, help="s (default: the model's)")
    ap.add_argument("--periods", type=int, default=1, help="demodulated periods")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up periods (discarded)")
    ap.add_argument("--rate-max", type=float, default=None, help="Hz (default: the model's)")
    ap.add_argument("--previous", action="store_true", help="measure after another sample")
    ap.add_argument(
        "--compare-rules",
        action="store_true",
        help="also the stdp rule's pairings against the endpoint rule on the same spikes",
    )
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300, help="rate engine steps per phase/period")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = measure(args)
    print(json.dumps(r) if args.json else report(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
