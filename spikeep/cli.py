"""The ``spikeep`` command line.

    spikeep gradcheck --model PATH --estimator NAME|all --beta B [--points N] [--batch 16]
                      [--seed 0] [--dtype float64] [--free-steps 300] [--nudged-steps 300]
                      [--noise SIGMA] [--steps-per-period K] [--periods P] [--warmup W]
                      [--real] [--no-free] [--hold H] [--json]
    spikeep gradcheck --engine brian2 --model PATH --estimator one-sided|symmetric|oscillation
                      --beta B [--rule endpoint|stdp] [--settle S] [--window S] [--period S]
    spikeep gradcheck --engine snntorch --model PATH --estimator one-sided|symmetric|oscillation
                      --beta B [--time-steps T] [--tau STEPS] [--input current|rate]
    spikeep gdu --model PATH [--beta 1e-4] [--steps 10] [--free-steps 300] [--json]
    spikeep bench ep-step --model PATH [--batch 100] [--free-steps 20] [--nudged-steps 4] [--json]
    spikeep train PROTOCOL [--set section.key=value ...] [--out DIR] [--resume | --overwrite]
                  [--json]
    spikeep fidelity PROTOCOL [--set key=value ...] --out DIR [--jobs N] [--json]
    spikeep eval CHECKPOINT [--split test|val|train] [--data NAME] [--data-dir DIR]
                 [--noise SIGMA] [--json]
    spikeep compare CHECKPOINT [--images 1000] [--raster PNG] [--json]
                                       the test error on every engine, and a Brian2 raster
    spikeep plot OUT
    spikeep export CHECKPOINT --format nir --out FILE [--tau STEPS] [--decay D]
    spikeep list                       the built-in models and protocols (usable by name)
    spikeep data fetch NAME --to DIR

PROTOCOL and --model PATH take a file or a built-in name (``quickstart``, ``tiny``).

Every command that computes (gradcheck, gdu, bench, train, fidelity, eval, compare) takes
``--threads N``: torch's CPU threads, default ``$SPIKEEP_THREADS``, else 1 (``spikeep._threads``);
above one the program restarts itself once with ``OMP_WAIT_POLICY=PASSIVE`` unless that variable
is set.

A bad argument prints one line and exits with status 2; a relaxation or a training run that
diverges, or a run out of memory, prints one line and exits with 1; a training run stopped by
Ctrl-C saves its last finished step, says how to resume it and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys

from . import estimators, spec
from .dynamics import DivergenceError
from .engine import ENGINES as _ENGINES

__all__ = ["main"]

DTYPE_CHOICES = ("float32", "float64")
ENGINE_NAMES = tuple(_ENGINES)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit status 2 (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


class UsageError(Exception):
    """A bad value found after parsing (e.g. an invalid model file): exit status 2."""


def _number(kind, check, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_beta = _number(float, lambda v: math.isfinite(v) and v != 0, "a finite non-zero number")
_positive_beta = _number(float, lambda v: math.isfinite(v) and v > 0, "a finite positive number")
_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_points = _number(int, lambda v: v >= 2, "an integer >= 2")
_seed = _number(int, lambda v: 0 <= v < 2**32, "an integer in [0, 2^32)")
_lr = _number(float, lambda v: math.isfinite(v) and v > 0, "a finite positive learning rate")
_noise = _number(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
_period_steps = _number(int, lambda v: v >= 3, "an integer >= 3")
_non_negative_int = _number(int, lambda v: v >= 0, "a non-negative integer")
_seconds = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive duration in seconds")
_time_steps = _number(int, lambda v: v >= 5, "an integer number of steps >= 5")
_trace_tau = _number(float, lambda v: math.isfinite(v) and v >= 1, "a number of steps >= 1")


def _device(text: str) -> str:
    from .protocol import DEVICE

    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def _add_threads(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU threads (spikeep._threads: else SPIKEEP_THREADS, else 1)."""
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads for torch (default: $SPIKEEP_THREADS, else 1; per process under "
        "torchrun; above 1, OpenMP waits passively)",
    )


def _add_set(parser: argparse.ArgumentParser, metavar: str, example: str) -> None:
    """``--set`` (repeatable): a protocol value overridden in TOML syntax."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar=metavar,
        help=f"override a protocol value (TOML syntax), e.g. {example}",
    )


def _load(path: str) -> spec.ModelSpec:
    """A model spec: a file, or a built-in model's name (``tiny``)."""
    from . import catalog

    try:
        return spec.load(catalog.resolve(path, "models"))
    except spec.SpecError as err:
        raise UsageError(_unknown_name(str(err), path, "models")) from None


def _unknown_name(message: str, text: str, kind: str) -> str:
    """``message``, plus where built-in names are listed when ``text`` is a bare name."""
    from pathlib import Path

    if "no such" in message and len(Path(text).parts) == 1:
        return f"{message} (nor a built-in {kind[:-1]}: `spikeep list` names them)"
    return message


def _protocol_file(text: str):
    from . import catalog

    return catalog.resolve(text, "protocols")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="spikeep",
        description="Equilibrium Propagation in rate-based and spiking networks (rate, snntorch "
        "and brian2 engines): train from protocols, evaluate, plot and export checkpoints, "
        "check gradient estimates against exact gradients, study their fidelity, benchmark.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("gradcheck", help="compare an EP estimator with the implicit gradient")
    g.add_argument("--model", required=True, help="model spec (TOML)")
    g.add_argument("--estimator", required=True, choices=[*estimators.ESTIMATORS, "all"])
    g.add_argument("--beta", required=True, type=_beta, help="nudging strength")
    g.add_argument("--points", type=_points, default=4, help="holomorphic: points N (default 4)")
    g.add_argument("--batch", type=_positive_int, default=16)
    g.add_argument("--seed", type=_seed, default=0)
    g.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default=None,
        help="estimator dtype (default: the model's); the reference is float64",
    )
    g.add_argument("--free-steps", type=_positive_int, default=300)
    g.add_argument("--nudged-steps", type=_positive_int, default=300)
    g.add_argument("--lr", type=_lr, default=1e-6, help="continual EP learning rate (default 1e-6)")
    g.add_argument(
        "--noise", type=_noise, default=0.0, help="std of the state noise per step (default 0)"
    )
    g.add_argument(
        "--steps-per-period",
        type=_period_steps,
        default=100,
        help="oscillation: dynamics steps per period K (default 100)",
    )
    g.add_argument(
        "--periods", type=_positive_int, default=2, help="oscillation: periods demodulated (2)"
    )
    g.add_argument(
        "--warmup", type=_non_negative_int, default=1, help="oscillation: periods discarded (1)"
    )
    g.add_argument(
        "--real", action="store_true", help="oscillation: real beta cos(wt), real states"
    )
    g.add_argument(
        "--no-free",
        dest="from_free",
        action="store_false",
        help="oscillation: start from zeros, not from the free fixed point",
    )
    g.add_argument(
        "--hold",
        type=_positive_int,
        default=1,
        help="oscillation: steps per held phase, each held phase's end sampled (default 1: "
        "beta turns at every step)",
    )
    g.add_argument("--json", action="store_true", help="print one JSON object")
    _add_threads(g)
    g.add_argument("--engine", choices=list(ENGINE_NAMES), default="rate", help="default: rate")
    g.add_argument("--rule", choices=["endpoint", "stdp"], default="endpoint", help="brian2 only")
    for flag, what in (("settle", "settling time"), ("window", "averaging window")):
        g.add_argument(f"--{flag}", type=_seconds, default=None, help=f"brian2: {what} (s)")
    g.add_argument("--period", type=_seconds, default=None, help="brian2 oscillation period (s)")
    g.add_argument(
        "--time-steps",
        type=_time_steps,
        default=1000,
        help="snntorch: steps per phase, or per oscillation period (default 1000)",
    )
    g.add_argument(
        "--tau", type=_trace_tau, default=10.0, help="snntorch: trace time constant (steps)"
    )
    g.add_argument(
        "--input", choices=["current", "rate"], default="current", help="snntorch input coding"
    )

    d = sub.add_parser(
        "gdu", help="per-step EP updates versus BPTT gradients (Ernoult et al. 2019)"
    )
    d.add_argument("--model", required=True)
    d.add_argument("--beta", type=_beta, default=1e-4)
    d.add_argument("--steps", type=_positive_int, default=10, help="nudged steps K compared")
    d.add_argument("--free-steps", type=_positive_int, default=300)
    d.add_argument("--batch", type=_positive_int, default=8)
    d.add_argument("--seed", type=_seed, default=0)
    d.add_argument("--json", action="store_true")
    _add_threads(d)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="what", required=True, parser_class=_Parser)
    e = bsub.add_parser("ep-step", help="time the whole EP step (free, nudged, update)")
    e.add_argument("--model", required=True)
    e.add_argument("--batch", type=_positive_int, default=100)
    e.add_argument("--free-steps", type=_positive_int, default=20)
    e.add_argument("--nudged-steps", type=_positive_int, default=4)
    e.add_argument(
        "--estimator",
        choices=[*estimators.ESTIMATORS, *estimators.BASELINES],
        default="one-sided",
        help="an EP estimator, or the bptt baseline (through --nudged-steps free steps)",
    )
    e.add_argument("--beta", type=_positive_beta, default=0.5)
    e.add_argument("--repeats", type=_positive_int, default=20)
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    e.add_argument("--json", action="store_true")
    _add_threads(e)
    tr = sub.add_parser("train", help="train with EP as a protocol describes")
    tr.add_argument("protocol", help="protocol file (TOML) or built-in name (spikeep list)")
    _add_set(tr, "SECTION.KEY=VALUE", "train.epochs=2")
    tr.add_argument("--out", default=None, help="output folder (default out/<protocol name>)")
    again = tr.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an OUT that holds a run (its metrics and checkpoint are replaced)",
    )
    tr.add_argument("--data-dir", default=None, help="where the datasets are")
    tr.add_argument("--device", type=_device, default=None, help="cpu, cuda, cuda:N or auto")
    tr.add_argument("--json", action="store_true", help="end with one JSON line of results")
    _add_threads(tr)

    fi = sub.add_parser(
        "fidelity", help="every engine's and estimator's gradient against the exact one"
    )
    fi.add_argument("protocol", help="fidelity protocol file (TOML), e.g. protocols/fidelity_quick")
    _add_set(fi, "KEY=VALUE", "rate.sweep.beta=[0.01, 0.1]")
    fi.add_argument("--out", required=True, help="output folder (results.csv, .json, figures)")
    fi.add_argument(
        "--jobs", type=_positive_int, default=None, help="worker processes (default min(2, cores))"
    )
    fi.add_argument("--json", action="store_true", help="end with one JSON line of results")
    _add_threads(fi)

    ev = sub.add_parser("eval", help="test error of a checkpoint")
    ev.add_argument("checkpoint")
    ev.add_argument("--data", default=None, help="dataset (default: the protocol's)")
    ev.add_argument("--data-dir", default=None)
    ev.add_argument(
        "--split",
        choices=["test", "val", "train"],
        default="test",
        help="test (default), val (the images the run held out: data.validation) or train (the "
        "images it trained on)",
    )
    ev.add_argument(
        "--all",
        action="store_true",
        help="score the whole split (default: the first data.train_subset / test_subset images "
        "the run itself was measured on, when the data set is the run's; train: never the "
        "images it held out)",
    )
    ev.add_argument(
        "--free-steps",
        type=_positive_int,
        default=None,
        help="rate engine: free steps to classify (default: the protocol's eval_free_steps, "
        "else its free_steps)",
    )
    ev.add_argument(
        "--noise",
        type=_noise,
        default=None,
        help="state noise while evaluating (default: the protocol's eval_noise, else its noise)",
    )
    ev.add_argument(
        "--engine",
        choices=list(ENGINE_NAMES),
        default="rate",
        help="whose free phase classifies: rate (default), brian2 (spiking, compiled) or "
        "snntorch (spiking, discrete time; settings with --set snntorch.eval_settle=...)",
    )
    _add_set(ev, "SECTION.KEY=VALUE", "snntorch.eval_window=400")
    for flag in ("settle", "window"):
        ev.add_argument(
            f"--{flag}",
            type=_seconds,
            default=None,
            help=f"brian2: the free phase's {flag} (s; default: [brian2] eval_{flag}, else the "
            "model's)",
        )
    ev.add_argument("--json", action="store_true")
    _add_threads(ev)

    co = sub.add_parser(
        "compare",
        help="a checkpoint on every engine side by side (test error, spikes, time per image) "
        "and a Brian2 spike raster of one test image's free and nudged phases",
    )
    co.add_argument("checkpoint")
    co.add_argument(
        "--images",
        type=_positive_int,
        default=1000,
        help="the first N test images of the run's data set (default 1000)",
    )
    co.add_argument(
        "--raster",
        default=None,
        help="the raster's PNG (default: raster.png beside the checkpoint)",
    )
    co.add_argument("--data-dir", default=None)
    co.add_argument("--json", action="store_true", help="print one JSON object")
    _add_threads(co)

    pl = sub.add_parser("plot", help="training curves of an output folder (PNG)")
    pl.add_argument("out")

    ex = sub.add_parser("export", help="a checkpoint's spiking network as a NIR graph")
    ex.add_argument("checkpoint")
    ex.add_argument("--format", choices=["nir"], default="nir", help="nir (the only one)")
    ex.add_argument("--out", required=True, help="the file to write (NIR: HDF5)")
    ex.add_argument(
        "--tau",
        type=_trace_tau,
        default=None,
        help="trace time constant (steps; default: the run's [snntorch] tau, else 10)",
    )
    ex.add_argument(
        "--decay",
        type=_number(float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
        default=None,
        help="membrane decay per step (default: the run's [snntorch] decay, else 1: IF)",
    )

    sub.add_parser("list", help="the built-in models and protocols, with their descriptions")

    da = sub.add_parser("data", help="datasets")
    dsub = da.add_subparsers(dest="what", required=True, parser_class=_Parser)
    fe = dsub.add_parser("fetch", help="download a dataset and verify its SHA-256")
    fe.add_argument("name", choices=["mnist", "fashion-mnist"])
    fe.add_argument("--to", required=True, help="folder to write NAME/ into")
    return p


def _train(args) -> int:
    from . import _dist, checkpoint, data
    from . import protocol as proto
    from .train import Interrupted, OutputError, TrainingError, train

    try:
        p = proto.load(_protocol_file(args.protocol), proto.parse_overrides(args.set))
    except (proto.ProtocolError, spec.SpecError) as err:
        raise UsageError(_unknown_name(str(err), args.protocol, "protocols")) from None
    out = args.out or f"out/{p.name}"
    try:
        summary = train(
            p,
            out,
            resume=args.resume,
            data_dir=args.data_dir,
            device=args.device,
            overwrite=args.overwrite,
        )
    except TrainingError as err:
        print(f"spikeep train: {err}", file=sys.stderr)
        return 1
    except (
        proto.ProtocolError,
        spec.SpecError,
        checkpoint.CheckpointError,
        data.DataError,
        OutputError,
    ) as err:
        raise UsageError(str(err)) from None  # bad data folder, shapes, checkpoint, ...
    except Interrupted as stop:
        again = [a for a in args.argv if a != "--overwrite"]
        again += [] if "--resume" in again else ["--resume"]
        if _dist.rank() == 0:
            print(
                f"spikeep train: interrupted at epoch {stop.epoch + 1}, batch {stop.batch}; "
                f"saved {stop.checkpoint}; continue with: spikeep {shlex.join(again)}",
                file=sys.stderr,
            )
        return 128 + int(stop.signum)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    except KeyboardInterrupt:
        if _dist.rank() == 0:
            print(
                f"spikeep train: interrupted; {out}/checkpoint.pt (if any) holds the last saved "
                f"step: continue with --resume",
                file=sys.stderr,
            )
        return 130
    if _dist.rank() != 0:  # under torchrun, one summary: the first process's
        return 0
    if args.json:
        print(_json(summary))
    else:
        val = summary.get("val_error")
        print(
            f"{p.name}: test error {summary['test_error']:.2f}%  "
            + (f"val error {val:.2f}%  " if val is not None else "")
            + f"train error {summary['train_error']:.2f}%  {summary['epochs']} epochs  "
            f"{summary['wall_s']:.1f} s  -> {summary['out']}"
        )
    return 0


def _fidelity(args) -> int:
    from . import fidelity
    from . import protocol as proto
    from .fidelity.sweep import default_jobs, progress_printer

    try:
        p = fidelity.load(_protocol_file(args.protocol), proto.parse_overrides(args.set))
    except (proto.ProtocolError, spec.SpecError) as err:
        raise UsageError(_unknown_name(str(err), args.protocol, "protocols")) from None
    for m in p.models:  # a model behind the protocol that is not a valid spec: before writing
        _load(m.spec)
    summary = fidelity.study(p, args.out, args.jobs or default_jobs(), progress_printer())
    line = {k: summary[k] for k in ("out", "rows", "ok", "errors", "na", "wall_s")}
    if args.json:
        print(_json(line))
    else:
        print(
            f"{p.name}: {summary['rows']} points ({summary['ok']} ok, {summary['errors']} "
            f"errors, {summary['na']} n/a) in {summary['wall_s']:.1f} s -> {summary['out']}"
        )
    return 0


EVAL_FLAGS = ("free_steps", "noise", "settle", "window")  # engines' eval_settings draw on these


def _eval_overrides(args, engine_cls) -> dict:
    """The protocol keys that ``--set`` and the engine's own flags (its ``eval_settings``) set;
    a flag that belongs to another engine is refused in one line, before any file is read."""
    from . import engine as engines
    from . import protocol as proto

    own = engine_cls.eval_settings
    for flag in EVAL_FLAGS:
        if getattr(args, flag) is None or flag in own:
            continue
        owners = [n for n in engines.names() if flag in engines.get(n).eval_settings]
        takes = "/".join(f"--{f.replace('_', '-')}" for f in own) or "--set only"
        raise UsageError(
            f"--{flag.replace('_', '-')}: the {engine_cls.name} engine has none (it takes "
            f"{takes}); it is the {' or '.join(owners)} engine's: add --engine {owners[0]}"
        )
    try:
        overrides = proto.parse_overrides(args.set)
    except proto.ProtocolError as err:
        raise UsageError(str(err)) from None
    for flag, key in own.items():
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    return overrides


def _eval(args) -> int:
    from pathlib import Path

    from . import checkpoint, data
    from . import engine as engines
    from . import protocol as proto
    from .batches import checkpoint_normalization, split_train, subset
    from .energy import Network

    engine_cls = engines.get(args.engine)
    overrides = _eval_overrides(args, engine_cls)
    warn = lambda line: print(line, file=sys.stderr)  # noqa: E731
    try:
        ckpt = checkpoint.load(args.checkpoint)
        net = Network(checkpoint.model_spec(ckpt, warn))  # the stored spec, when it has one
        checkpoint.check_params(ckpt, net, args.checkpoint)
    except (checkpoint.CheckpointError, spec.SpecError) as err:
        raise UsageError(str(err)) from None
    raw = ckpt["protocol"]
    own = raw.get("data", {}).get("name", "mnist-embedded")
    name = args.data or own
    d, seed = raw.get("data", {}), raw.get("train", {}).get("seed", 0)
    held = d.get("validation", 0)
    if args.split == "val" and (name != own or not held):
        raise UsageError(
            f"--split val: {args.checkpoint} held out no validation images (data.validation = 0)"
            if not held
            else f"--split val: the run's validation images are {own} training images; drop "
            f"--data {name}"
        )
    try:
        split = "train" if args.split == "val" else args.split
        ds = data.load(name, split, args.data_dir or d.get("dir"))
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.split != "test" and name == own and held:  # the run's split, from its seed
        trained, val = split_train(ds, held, 0 if args.all else d.get("train_subset", 0), seed)
        ds = val if args.split == "val" else trained
    elif not args.all and name == own:  # the images the run was measured on
        ds = subset(ds, d.get(f"{args.split}_subset", 0))
    normalize = checkpoint_normalization(raw, name)
    # the run's own protocol, on this engine, with the evaluation settings given here
    where = {"model": str(Path(ckpt["model_source"]).resolve()), "train.engine": args.engine}
    try:
        overrides = {**engine_cls.eval_defaults(raw, net), **overrides, **where}
        p = proto.from_dict(raw, source=args.checkpoint, overrides=overrides, check_model=False)
        engine = engine_cls(p, net, training=False)
    except proto.ProtocolError as err:
        raise UsageError(str(err)) from None
    if engine.spiking:  # a simulation: minutes on 10,000 images, never silent
        n = f"{len(ds):,} {name} {args.split} images"
        warn(f"spikeep eval: {n} in spikes on the {args.engine} engine")
    try:
        result = engine.score(net, ckpt["params"], ds, normalize)
    except proto.ProtocolError as err:
        raise UsageError(str(err)) from None
    finally:
        engine.close()
    settings = {k: v for k, v in result.items() if k not in ("error", "loss", "noise")}
    noise = result.get("noise", 0.0)
    out = {
        "checkpoint": args.checkpoint,
        "engine": args.engine,  # whose free phase classified, whichever engine trained
        "data": name,
        "split": args.split,
        "images": len(ds),
        "epoch": ckpt["epoch"],
        "error": result["error"],
        "loss": result["loss"],
        "noise": noise,
        **settings,
    }
    shown = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in settings.items())
    print(
        _json(out)
        if args.json
        else f"{args.checkpoint}: {name} {args.split} ({len(ds)} images) error "
        f"{out['error']:.2f}%  "
        f"loss {out['loss']:.4f}  ({args.engine} engine"
        + (f", {shown})" if shown else ")")
        + (f"  noise {noise}" if noise else "")
    )
    return 0


def _compare(args) -> int:
    """Every engine's free phase on the same test images (:mod:`spikeep.compare`), then the
    raster; an engine that cannot run the network is a row saying why."""
    from pathlib import Path

    from .compare import CompareError, compare, raster

    png = Path(args.raster or Path(args.checkpoint).parent / "raster.png")
    if args.raster and not png.parent.is_dir():  # before the engines run
        raise UsageError(f"--raster {png}: {png.parent} is not a folder")
    try:
        out = compare(args.checkpoint, args.images, args.data_dir)
    except CompareError as err:
        raise UsageError(str(err)) from None
    try:
        out["raster"] = raster(args.checkpoint, png, data_dir=args.data_dir)
    except CompareError as err:  # no [spiking] section: the table alone
        out["raster"] = {"skipped": str(err)}
    except OSError as err:
        raise UsageError(f"--raster {png}: cannot write there ({err.strerror or err})") from None
    if args.json:
        print(_json(out))
        return 0
    print(
        f"{out['checkpoint']} (epoch {out['epoch']}): {out['data']} test, the first "
        f"{out['images']} images"
    )
    print(f"{'engine':<10}{'test error':>11}{'spikes/image':>14}  {'per image':<16}{'wall s':>7}")
    for r in out["rows"]:
        if "skipped" in r:
            print(f"{r['engine']:<10}  skipped: {r['skipped']}")
            continue
        spikes = "-" if r["spikes_per_image"] is None else f"{r['spikes_per_image']:.0f}"
        print(
            f"{r['engine']:<10}{r['error']:>10.2f}%{spikes:>14}  {r['per_image']:<16}"
            f"{r['wall_s']:>7.1f}"
        )
    ras = out["raster"]
    if "skipped" in ras:
        print(f"raster: skipped: {ras['skipped']}")
    else:
        phases = ", ".join(f"{name} {1e3 * (b - a):g} ms" for name, a, b in ras["phases"])
        print(
            f"raster: {ras['png']} (Brian2, the first test image, label {ras['label']}, "
            f"predicted {ras['prediction']}; {phases})"
        )
    return 0


def _export(args) -> int:
    """The checkpoint's network as snntorch neurons, written as a NIR graph
    (:mod:`spikeep.snn.export`); what NIR cannot express is refused in one line."""
    from . import checkpoint
    from .energy import Network

    try:
        from .snn import export
        from .snn.config import SNNConfig
    except ImportError as err:  # nir is an optional extra
        raise UsageError(
            f"--format nir needs the nir package ({err}): pip install spikeep[nir]"
        ) from None
    try:
        ckpt = checkpoint.load(args.checkpoint)
        net = Network(checkpoint.model_spec(ckpt))
        checkpoint.check_params(ckpt, net, args.checkpoint)
    except (checkpoint.CheckpointError, spec.SpecError) as err:
        raise UsageError(str(err)) from None
    own = ckpt["protocol"].get("snntorch", {})
    try:
        config = SNNConfig(
            decay=args.decay or own.get("decay", 1.0), tau=args.tau or own.get("tau", 10.0)
        )
        export.write(args.out, net, ckpt["params"], config)
    except ValueError as err:  # a network NIR cannot express
        raise UsageError(f"{args.checkpoint}: {err}") from None
    except OSError as err:
        raise UsageError(f"--out {args.out}: cannot write there ({err.strerror or err})") from None
    neuron = "IF" if config.decay == 1 else f"LIF, decay {config.decay:g}"
    print(
        f"{args.out}: {net.spec.name} as NIR ({neuron} neurons, traces of tau {config.tau:g} steps)"
    )
    return 0


def _plot(args) -> int:
    from .plots import PlotError, plot_run

    try:
        print(plot_run(args.out))
    except PlotError as err:
        raise UsageError(str(err)) from None
    return 0


def _data(args) -> int:
    from pathlib import Path

    from . import data

    if Path(args.to).exists() and not Path(args.to).is_dir():
        raise UsageError(f"--to {args.to}: a file, expected the folder to write {args.name}/ into")
    try:
        path = data.fetch(args.name, args.to)
    except data.DataError as err:
        print(f"spikeep data: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _list(args) -> int:
    from . import catalog

    for kind in catalog.KINDS:
        rows = catalog.entries(kind)
        width = max((len(name) for name, _, _ in rows), default=0)
        print(f"{kind} ({len(rows)}):")
        for name, description, _ in rows:
            print(f"  {name:<{width}}  {description}".rstrip())
    return 0


def _json(obj) -> str:
    """Strict JSON: a non-finite float (e.g. a relative error against a zero reference) is null."""

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [clean(v) for v in o]
        return o

    return json.dumps(clean(obj), allow_nan=False)


def _gradcheck(args) -> int:
    from . import engine as engines
    from .gradcheck import gradcheck

    model = _load(args.model)
    engine_cls = engines.get(args.engine)
    if engine_cls.spiking:
        return _spiking_gradcheck(args, engine_cls, model)
    names = list(estimators.ESTIMATORS) if args.estimator == "all" else [args.estimator]
    rows = []
    for name in names:
        try:
            rows.append(
                gradcheck(
                    model,
                    name,
                    args.beta,
                    args.points,
                    args.batch,
                    args.seed,
                    args.dtype,
                    args.free_steps,
                    args.nudged_steps,
                    args.lr,
                    args.noise,
                    args.steps_per_period,
                    args.periods,
                    args.warmup,
                    args.real,
                    args.from_free,
                    hold=args.hold,
                )
            )
        except ValueError as err:  # e.g. a complex nudge on a non-holomorphic model
            if args.estimator != "all":
                raise UsageError(str(err)) from None
            rows.append({"estimator": name, "error": str(err)})
    if args.json:
        print(_json(rows[0] if len(rows) == 1 else rows))
        return 0
    first = next((r for r in rows if "error" not in r), None)
    if first:
        print(
            f"model {first['model']}  beta {args.beta}  batch {first['batch']}  "
            f"dtype {first['dtype']}  reference implicit  free residual "
            f"{first['free_residual']:.2e}" + (f"  noise {args.noise}" if args.noise else "")
        )
    print(f"{'estimator':<21}{'bias':>8}{'cosine':>14}{'rel_error':>12}  nudged residual")
    for r in rows:
        if "error" in r:
            print(f"{r['estimator']:<21}  skipped: {r['error']}")
            continue
        name = r["estimator"] + (f" N={r['points']}" if r["points"] else "")
        if r["steps_per_period"]:
            name += f" K={r['steps_per_period']}" + (" cos" if r["real"] else "")
            name += f" h={r['hold']}" if r["hold"] != 1 else ""
        print(
            f"{name:<21}{'O(b^' + str(r['bias_order']) + ')':>8}{r['cosine']:>14.10f}"
            f"{r['rel_error']:>12.3e}  {max(r['nudged_residuals']):.1e}"
        )
    if len(rows) == 1:
        print("per parameter:")
        for k, v in rows[0]["per_param"].items():
            print(f"  {k:<8} cosine {v['cosine']:.10f}  rel_error {v['rel_error']:.3e}")
    return 0


def _spiking_gradcheck(args, engine_cls, model) -> int:
    """A spiking engine's gradcheck: refuse its missing estimators, run, print JSON or text."""
    known = engine_cls.gradcheck_estimators
    if args.hold != 1:
        raise UsageError(
            f"--hold: the {engine_cls.name} engine turns beta at every step; expected 1, got "
            f"{args.hold}"
        )
    if args.estimator not in known:
        raise UsageError(
            f"--estimator: the {engine_cls.name} engine has {list(known)}, not {args.estimator!r}"
        )
    try:
        r = engine_cls.gradcheck(model, args)
    except ValueError as err:  # e.g. no [spiking] section, an activation no neuron has
        raise UsageError(str(err)) from None
    if args.json:
        print(_json(r))
        return 0
    print(
        f"model {r['model']}  {engine_cls.gradcheck_header(r)}  {r['spikes']:.0f} spikes per "
        f"sample  {r['wall_s']:.2f} s wall"
    )
    print(f"cosine {r['cosine']:.6f}  rel_error {r['rel_error']:.3e}  reference implicit")
    for k, v in r["per_param"].items():
        print(f"  {k:<8} cosine {v['cosine']:.6f}  rel_error {v['rel_error']:.3e}")
    return 0


def _gdu(args) -> int:
    from .energy import Network
    from .gdu import gdu
    from .gradcheck import random_batch

    model = _load(args.model)
    net = Network(model)
    import torch

    params = net.init_params(args.seed, dtype=torch.float64)
    x, y = random_batch(net, args.batch, args.seed)
    if args.steps >= args.free_steps:
        raise UsageError(f"--steps {args.steps} must be fewer than --free-steps {args.free_steps}")
    try:
        out = {
            "model": model.source,
            **gdu(net, params, x, y, args.beta, args.free_steps, args.steps),
        }
    except ValueError as err:  # a model whose dynamics have no GDU property
        raise UsageError(str(err)) from None
    if args.json:
        print(_json(out))
        return 0
    print(f"model {model.source}  beta {args.beta}  free residual {out['free_residual']:.2e}")
    print(f"{'step':>4}  {'states cos':>12}{'rel_err':>11}  {'params cos':>12}{'rel_err':>11}")
    for r in out["per_step"]:
        s, p = r["states"], r["params"]
        print(
            f"{r['step']:>4}  {s['cosine']:>12.8f}{s['rel_error']:>11.2e}  "
            f"{p['cosine']:>12.8f}{p['rel_error']:>11.2e}"
        )
    return 0


def _bench(args) -> int:
    import torch

    from .bench import bench_ep_step

    model = _load(args.model)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available")
    elif device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"--device: expected cpu, cuda, cuda:N or auto, got {device!r}")
    out = bench_ep_step(
        model,
        args.batch,
        args.free_steps,
        args.nudged_steps,
        args.estimator,
        args.beta,
        repeats=args.repeats,
        device=device,
    )
    if args.json:
        print(_json(out))
    else:
        print(
            f"{out['model']}  batch {out['batch']}  {out['free_steps']} free + "
            f"{out['nudged_steps']} nudged steps  {out['estimator']}  {out['device']} "
            f"({out['threads']} thread{'s' if out['threads'] > 1 else ''}"
            + (f", OpenMP wait policy {out['omp_wait_policy']})" if out["threads"] > 1 else ")")
        )
        print(
            f"ms_per_batch {out['ms_per_batch']:.3f}  samples_per_s {out['samples_per_s']:.0f}  "
            f"ms_per_free_step {out['ms_per_free_step']:.3f}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    console = argv is None  # run as the spikeep program (not called from Python)
    argv = sys.argv[1:] if console else list(argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    if hasattr(args, "threads"):  # a command that computes: torch's threads, before any work
        from . import _threads

        try:
            n, _ = _threads.choose(args.threads)
        except ValueError as err:
            print(f"spikeep {args.command}: error: {err}", file=sys.stderr)
            return 2
        if n > 1 and console and "OMP_WAIT_POLICY" not in os.environ:
            # OpenMP reads its wait policy when torch loads: start again with the passive one,
            # so that idle threads sleep instead of spinning on cores others need
            # (this very package first on the path, not whatever the current folder holds)
            from pathlib import Path

            here = str(Path(__file__).resolve().parents[1])
            path = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = here + (os.pathsep + path if path else "")
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
            sys.stdout.flush()
            os.execv(sys.executable, [sys.executable, "-P", "-m", "spikeep.cli", *argv])
        _threads.apply(n)
    commands = {
        "gradcheck": _gradcheck,
        "gdu": _gdu,
        "bench": _bench,
        "train": _train,
        "fidelity": _fidelity,
        "eval": _eval,
        "compare": _compare,
        "plot": _plot,
        "export": _export,
        "list": _list,
        "data": _data,
    }
    try:
        return commands[args.command](args)
    except UsageError as err:
        print(f"spikeep {args.command}: error: {err}", file=sys.stderr)
        return 2
    except DivergenceError as err:
        print(f"spikeep {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
