r"""One checkpoint on every registered engine, side by side (``spikeep compare``).

    spikeep compare CHECKPOINT [--images 1000] [--raster PNG] [--json]

Each engine of the registry (:mod:`spikeep.engine`) is built from the run's own protocol as
``spikeep eval --engine NAME`` builds it (``training=False``; the evaluation settings are the
protocol's: ``[estimator] eval_free_steps``, ``[snntorch] eval_settle``/``eval_window``,
``[brian2] eval_settle``/``eval_window``, else the engine's defaults), and its own free phase
classifies the same first ``images`` test images of the run's data set (``data.test_subset``
applies first). An engine that cannot realise the network (the brian2 engine needs a ``[spiking]``
section) gives a row that says why instead of numbers. Per engine: the test error (%), the spikes
per image (all layers, the free phase; ``None`` for the rate engine), the time one image is
simulated (steps, or seconds of biological time) and the wall seconds (building the engine and
compiling included).

The raster (:func:`raster`) is one test image, the first, through the model's Brian2 network
(its ``[spiking]`` section; Brian2's runtime device, numpy target, so nothing is compiled): a
free phase, then the nudged phases of the run's estimator (symmetric: ``+beta`` then ``-beta``;
any other: one ``+beta`` phase), each ``[spiking] settle + window`` seconds, with the teaching
current ``beta (y - r)`` toward the image's label on the output neurons.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from . import checkpoint, data, spec
from . import engine as engines
from . import protocol as proto
from .batches import checkpoint_normalization, prepare_batch, subset
from .energy import Network

__all__ = ["CompareError", "compare", "raster"]


class CompareError(ValueError):
    """A checkpoint or data set that cannot be compared (one line)."""


def _load(path) -> tuple[dict, Network]:
    """The checkpoint at ``path`` and its network (the stored spec), checked against each other."""
    try:
        ckpt = checkpoint.load(path)
        net = Network(checkpoint.model_spec(ckpt))
        checkpoint.check_params(ckpt, net, path)
    except (checkpoint.CheckpointError, spec.SpecError) as err:
        raise CompareError(str(err)) from None
    return ckpt, net


def _test_images(raw: dict, images: int, data_dir=None) -> data.Dataset:
    """The first ``images`` test images the run was measured on (``data.test_subset`` first)."""
    d = raw.get("data", {})
    try:
        ds = data.load(d.get("name", "mnist-embedded"), "test", data_dir or d.get("dir"))
    except ValueError as err:
        raise CompareError(str(err)) from None
    return subset(subset(ds, d.get("test_subset", 0)), images)


def _per_image(result: dict) -> str:
    """The simulated time of one image: the rate engine's steps, the snntorch engine's
    ``settle + window`` steps (integers, as its protocol section reads them) or the brian2
    engine's seconds (floats)."""
    if "free_steps" in result:
        return f"{result['free_steps']} steps"
    settle, window = result["settle"], result["window"]
    if isinstance(settle, int) and isinstance(window, int):
        return f"{settle} + {window} steps"
    return f"{settle * 1e3:g} + {window * 1e3:g} ms"


def compare(path, images: int = 1000, data_dir=None) -> dict:
    """Score the checkpoint at ``path`` with every registered engine's free phase on the first
    ``images`` test images.

    Returns:
        ``checkpoint``, ``data``, ``images``, ``epoch`` and ``rows``: per engine ``engine`` and
        either ``error`` (%), ``loss``, ``spikes_per_image`` (``None``: no spikes),
        ``per_image`` (the simulated time, text) and ``wall_s``, or ``skipped`` (why the engine
        cannot run this network, one line).

    Raises:
        CompareError: a missing or invalid checkpoint, an unknown data set, ``images < 1``.
    """
    if not (isinstance(images, int) and images >= 1):
        raise CompareError(f"images must be a positive integer, got {images!r}")
    ckpt, net = _load(path)
    raw = ckpt["protocol"]
    ds = _test_images(raw, images, data_dir)
    normalize = checkpoint_normalization(raw, ds.name)
    rows = []
    for name in engines.names():
        engine_cls = engines.get(name)
        where = {"model": str(Path(ckpt["model_source"]).resolve()), "train.engine": name}
        start = time.perf_counter()
        try:
            overrides = {**engine_cls.eval_defaults(raw, net), **where}
            p = proto.from_dict(raw, source=str(path), overrides=overrides, check_model=False)
            engine = engine_cls(p, net, training=False)
            try:
                result = engine.score(net, ckpt["params"], ds, normalize)
            finally:
                engine.close()
        except proto.ProtocolError as err:
            rows.append({"engine": name, "skipped": str(err)})
            continue
        rows.append(
            {
                "engine": name,
                "error": result["error"],
                "loss": result["loss"],
                "spikes_per_image": result.get("spikes_per_sample"),
                "per_image": _per_image(result),
                "wall_s": time.perf_counter() - start,
            }
        )
    return {
        "checkpoint": str(path),
        "data": ds.name,
        "images": len(ds),
        "epoch": ckpt["epoch"],
        "rows": rows,
    }


def raster(path, png, index: int = 0, data_dir=None) -> dict:
    """Write the Brian2 spike raster of test image ``index`` (module docstring) to ``png``.

    Returns:
        ``png``, ``label``, ``prediction`` (the output's most active neuron in the free window),
        ``phases`` (``(name, start, end)`` in seconds) and ``spikes`` (per layer, all phases).

    Raises:
        CompareError: the checkpoint's model has no ``[spiking]`` section, or as :func:`compare`.
    """
    ckpt, net = _load(path)
    cfg = net.spec.spiking
    if cfg is None:
        raise CompareError(
            f"{path}: no raster: the model {net.spec.name} has no [spiking] section "
            f"(docs/spiking.md)"
        )
    raw = ckpt["protocol"]
    ds = _test_images(raw, index + 1, data_dir)
    if index >= len(ds.labels):
        raise CompareError(f"index must be below the {len(ds.labels)} test images, got {index}")
    normalize = checkpoint_normalization(raw, ds.name)
    x, y = prepare_batch(
        net, ds.images[index : index + 1], ds.labels[index : index + 1], ds.classes, normalize,
        torch.float64,
    )  # fmt: skip
    try:  # the run's estimator, its defaults filled in
        where = {"model": str(Path(ckpt["model_source"]).resolve())}
        est = proto.from_dict(raw, source=str(path), overrides=where, check_model=False).estimator
    except proto.ProtocolError as err:
        raise CompareError(str(err)) from None
    return _raster(net, ckpt["params"], x, y, est.name, est.beta, png)


def _raster(net, params, x, y, estimator, beta: float, png) -> dict:
    import brian2 as b2

    from .brian2 import build, schedules

    cfg = net.spec.spiking
    make = schedules.symmetric if estimator == "symmetric" else schedules.one_sided
    schedule = make(abs(beta), cfg)
    params = {k: v.detach().to(torch.float64) for k, v in params.items()}
    target = b2.prefs.codegen.target
    b2.prefs.codegen.target = "numpy"  # runtime, nothing to compile for one image
    try:
        sn = build(net.spec, params, x.numpy()[None], y.numpy()[None], schedule, freeze=False)
        names = [layer.name for layer in net.spec.layers[1:]]
        monitors = [b2.SpikeMonitor(g) for g in sn.groups[1:]]
        sn.network.add(*monitors)
        sn.run()
        spikes = {n: (m.t[:] / b2.second, m.i[:].copy()) for n, m in zip(names, monitors)}
    finally:
        b2.prefs.codegen.target = target
    phases, start = [], 0.0
    labels = ["free"] + [f"nudged, beta {p.beta:+g}" for p in schedule.phases[1:]]
    for label, phase in zip(labels, schedule.phases):
        phases.append((label, start, start + phase.duration))
        start += phase.duration
    free = phases[0]
    t_out, i_out = spikes[names[-1]]
    window = (t_out >= free[2] - schedule.phases[0].window) & (t_out < free[2])
    counts = torch.bincount(torch.from_numpy(i_out[window].astype("int64")), minlength=y.shape[1])
    label, prediction = int(y.argmax()), int(counts.argmax())
    _plot(spikes, [layer.size for layer in net.spec.layers[1:]], phases, png, label, prediction)
    return {
        "png": str(png),
        "label": label,
        "prediction": prediction,
        "phases": phases,
        "spikes": {n: int(len(t)) for n, (t, _) in spikes.items()},
    }


def _plot(spikes: dict, sizes: list[int], phases, png, label: int, prediction: int) -> None:
    """One panel per layer (output below), the phases shaded and named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [max(1.0, 2.5 * n / max(sizes)) for n in sizes]
    fig, axes = plt.subplots(
        len(spikes), 1, sharex=True, figsize=(9, 1.2 + 1.3 * sum(heights)),
        gridspec_kw={"height_ratios": heights},
    )  # fmt: skip
    for k, (ax, (name, (t, i)), n) in enumerate(zip(axes, spikes.items(), sizes)):
        for j, (what, a, b) in enumerate(phases):
            ax.axvspan(a * 1e3, b * 1e3, color=f"C{j}", alpha=0.08, lw=0)
            if k == 0:
                ax.text((a + b) / 2 * 1e3, n * 1.02, what, ha="center", va="bottom", fontsize=9)
        ax.plot(t * 1e3, i, "|", markersize=2 if n > 50 else 5, color="k")
        ax.set_ylim(-0.5, n - 0.5)
        ax.set_ylabel(f"{name}\nneuron")
        if n <= 10:
            ax.set_yticks(range(n))
    axes[-1].set_xlabel("time (ms)")
    axes[-1].set_xlim(0, phases[-1][2] * 1e3)
    fig.suptitle(
        f"one test image (label {label}, predicted {prediction}) in Brian2: a free phase, then "
        f"nudged toward the label",
        y=0.995,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
