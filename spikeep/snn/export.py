r"""Export to NIR, the neuromorphic intermediate representation (the ``nir`` package), and back.

The exported graph is the free phase of :mod:`spikeep.snn.phases` for a dense spec: per dynamic
layer ``L`` a neuron node ``L`` and its spike trace ``L.trace``; per coupling ``i`` the forward
``W{i}`` (``nir.Affine``: ``W_i r_{i-1} + b_i``) from the trace below (the input ``x`` for
``i = 1``) to the neuron above, and the feedback ``W{i}.T`` (``nir.Linear``: ``W_i^T r_i``) from
the trace above to the neuron below: the symmetric couplings of the energy, both ways with the
one weight (a cyclic graph: :func:`read` turns NIR's type inference off). The output node ``output``
reads the last layer's trace (or the readout's logits, below). NIR is continuous time;
spikeep's discrete steps are read as Euler steps of ``DT`` seconds, snntorch's own convention
(``snntorch.export_nir``):

- ``decay = 1``: ``nir.IF`` with ``r = 1 / DT`` (``v += I`` per step), threshold 1;
- ``decay < 1``: ``nir.LIF`` with ``tau = DT / (1 - decay)``, ``r = tau / DT``, ``v_leak = 0``;
- trace: ``nir.LI`` with ``tau = tau_steps DT``, ``r = 1``, ``v_leak = 0``.

Convolutional specs. A conv coupling ``W_i`` (stride 1, no pooling) is a ``nir.Conv2d`` forward
(``W_i``, per-channel ``b_i``, the spec's padding ``p``) and a ``nir.Conv2d`` feedback: the
transposed convolution, which at stride 1 is exactly the convolution with the kernel flipped in
space and its channel axes swapped, padding ``k - 1 - p``. A dense coupling that reads a conv
layer (``C, H, W``) is the convolution whose kernel covers the whole image (``W_i`` reshaped to
``(n, C, H, W)``, output ``(n, 1, 1)``), with the feedback a ``Conv2d`` of the flipped kernel,
padding ``H - 1, W - 1``: NIR has no reshape between a flat vector and an image, so such a layer's
nodes have shape ``(n, 1, 1)`` (its ``nir_shape`` in the metadata). Refused, in one line: conv
couplings with pooling or stride > 1 (their feedback is an upsampling, or the pool's adjoint,
followed by a transposed convolution; NIR 1.0 has ``Conv2d``, ``AvgPool2d`` and ``SumPool2d`` but no
transposed convolution, upsampling or max-unpooling, so that feedback has no faithful NIR form).

The cross-entropy readout (``cost = "cross_entropy"``: the last layer is no state) is exported as
what classifies a free-running network: the ``nir.Affine`` ``W_L r_{L-1} + b_L`` (the logits,
weights without the gain: they feed no neuron) from the last dynamic layer's trace to the output
node; the softmax belongs to the cost alone and has no node (NIR has none).

The teaching current is not part of the graph (a trained network runs free). The membrane clip
to [0, 2] and the delayed subtractive reset have no NIR field: they are recorded in the graph's
metadata (``spikeep`` key) with ``tau``, ``decay``, the activation's gain and the layer names
(weights are exported multiplied by the activation's gain).
:func:`from_nir` reads the parameters (the rate engine's ``params`` dict) and the
:class:`~spikeep.snn.config.SNNConfig` fields back.
"""

from __future__ import annotations

import nir
import numpy as np
import torch
from torch import Tensor

from .config import SNNConfig
from .neuron import V_MAX
from .phases import gain

__all__ = ["DT", "to_nir", "from_nir", "write", "read"]

DT = 1e-4  # seconds per step in the exported graph (snntorch's convention)
OUTPUT = "output"  # the graph's output node (not "y": specs name their output layer y)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def to_nir(net, params: dict[str, Tensor], config: SNNConfig | None = None) -> nir.NIRGraph:
    """The NIR graph of the spiking network ``net`` with ``params`` (module docstring)."""
    config = config or SNNConfig()
    g = gain(net)
    for layer in net.spec.layers[1:]:
        c = layer.coupling
        if c.kind == "conv" and (c.pool != "none" or c.stride != 1):
            raise ValueError(
                f"NIR export needs conv couplings of stride 1 without pooling (their feedback, "
                f"the pool's adjoint then a transposed conv, has no NIR node: NIR has no "
                f"transposed conv, upsampling or max-unpooling), but layer {layer.name!r} of "
                f"{net.spec.source} has pool {c.pool!r}, stride {c.stride}"
            )
    dynamic = net.spec.dynamic_layers
    names = [layer.name for layer in dynamic]
    x_name = net.spec.layers[0].name
    nodes: dict = {x_name: nir.Input({"input": np.array(net.spec.layers[0].shape)})}
    edges: list[tuple[str, str]] = []
    shapes = [tuple(net.spec.layers[0].shape)]  # each layer's shape in the graph
    for i, layer in enumerate(dynamic, start=1):
        W, b = params[f"W{i}"], params[f"b{i}"]
        fwd, back, shape = _coupling(layer.coupling, g * W, g * b, shapes[-1], layer.shape)
        shapes.append(shape)
        n = np.zeros(shape)
        if config.decay == 1.0:
            nodes[layer.name] = nir.IF(r=n + 1 / DT, v_threshold=n + 1)
        else:
            tau = DT / (1 - config.decay)
            nodes[layer.name] = nir.LIF(tau=n + tau, r=n + tau / DT, v_leak=n, v_threshold=n + 1)
        trace = f"{layer.name}.trace"
        nodes[trace] = nir.LI(tau=n + config.tau * DT, r=n + 1, v_leak=n.copy())
        edges.append((layer.name, trace))
        nodes[f"W{i}"] = fwd
        below = x_name if i == 1 else f"{names[i - 2]}.trace"
        edges += [(below, f"W{i}"), (f"W{i}", layer.name)]
        if i >= 2:
            nodes[f"W{i}.T"] = back
            edges += [(trace, f"W{i}.T"), (f"W{i}.T", names[i - 2])]
    last = f"{names[-1]}.trace"
    if net.readout:  # the logits W_L r_{L-1} + b_L, read off the last trace (no gain)
        i = len(dynamic) + 1
        layer = net.spec.layers[i]
        W, b = params[f"W{i}"], params[f"b{i}"]
        nodes[f"W{i}"], _, shape = _coupling(layer.coupling, W, b, shapes[-1], layer.shape)
        edges += [(last, f"W{i}"), (f"W{i}", OUTPUT)]
        shapes.append(shape)
        last = f"W{i}"
    nodes[OUTPUT] = nir.Output({"output": np.array(shapes[-1])})
    edges.append((last, OUTPUT))
    metadata = {
        "spikeep": {
            "model": net.spec.source,
            "layers": names,
            "kinds": [layer.coupling.kind for layer in dynamic],
            "nir_shape": [list(s) for s in shapes[1:]],
            "tau_steps": config.tau,
            "decay": config.decay,
            "gain": g,
            "readout": bool(net.readout),
            "v_clip": [0.0, V_MAX],
            "reset": "subtract, delayed one step (snntorch Leaky)",
            "dt": DT,
        }
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=False)


def _coupling(c, W: Tensor, b: Tensor, prev: tuple, shape: tuple):
    """``(forward, feedback, shape)``: the NIR nodes of a coupling (gain applied to ``W``, ``b``)
    from a layer of graph shape ``prev`` to one of spec shape ``shape``, and the graph shape of the
    layer it feeds (module docstring)."""
    if len(prev) == 1:  # dense from a vector
        return nir.Affine(weight=_np(W), bias=_np(b)), nir.Linear(weight=_np(W.T)), tuple(shape)
    if c.kind == "dense":  # dense from an image: the conv whose kernel covers it
        W = W.reshape(W.shape[0], *prev)
        shape, padding = (W.shape[0], 1, 1), 0
    else:
        padding = c.padding
    k = np.array(W.shape[2:])
    fwd = nir.Conv2d(prev[1:], _np(W), 1, padding, 1, 1, _np(b))
    W_t = W.flip(2, 3).transpose(0, 1)  # the stride-1 transposed conv (spikeep.couplings)
    zero = np.zeros(W_t.shape[0])
    back = nir.Conv2d(
        tuple(shape[1:]), _np(W_t), 1, tuple(int(p) for p in k - 1 - padding), 1, 1, zero
    )
    return fwd, back, tuple(shape)


def from_nir(graph: nir.NIRGraph, dtype=torch.float64) -> tuple[dict[str, Tensor], dict]:
    """``(params, config)``: the rate engine's parameters (``W{i}``, ``b{i}``) and the
    :class:`~spikeep.snn.config.SNNConfig` fields ``decay`` and ``tau`` of a graph written by
    :func:`to_nir`; a ValueError names what is missing."""
    nodes = graph.nodes
    meta = (graph.metadata or {}).get("spikeep")
    if meta is None:
        raise ValueError("not a spikeep graph: its metadata has no 'spikeep' entry")
    layers = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["layers"]]
    kinds = [k.decode() if isinstance(k, bytes) else str(k) for k in meta.get("kinds", [])]
    params = {}
    readout = bool(meta.get("readout", False))
    for i in range(1, len(layers) + 1 + readout):
        g = 1.0 if i > len(layers) else float(meta["gain"])  # the readout's weights have no gain
        node = nodes.get(f"W{i}")
        if not isinstance(node, nir.Affine | nir.Conv2d):
            raise ValueError(
                f"node 'W{i}' must be a nir.Affine or nir.Conv2d, got {type(node).__name__}"
            )
        W = torch.as_tensor(np.asarray(node.weight), dtype=dtype) / g
        if isinstance(node, nir.Conv2d) and (
            i > len(layers) or (kinds and kinds[i - 1] == "dense")
        ):
            W = W.reshape(W.shape[0], -1)  # the image-wide kernel of a dense coupling
        params[f"W{i}"] = W
        params[f"b{i}"] = torch.as_tensor(np.asarray(node.bias), dtype=dtype) / g
    neuron = nodes[layers[0]]
    decay = 1.0 if isinstance(neuron, nir.IF) else 1 - DT / float(np.asarray(neuron.tau).flat[0])
    trace = nodes[f"{layers[0]}.trace"]
    tau = float(np.asarray(trace.tau).flat[0]) / DT
    return params, {"decay": decay, "tau": tau}


def write(path, net, params: dict[str, Tensor], config: SNNConfig | None = None) -> None:
    """Write :func:`to_nir`'s graph to the NIR (HDF5) file ``path``."""
    nir.write(path, to_nir(net, params, config))


def read(path, dtype=torch.float64) -> tuple[dict[str, Tensor], dict]:
    """:func:`from_nir` of the NIR file ``path`` (read without NIR's type inference, which does
    not handle the feedback cycles of an EP network)."""
    return from_nir(nir.read(path, type_check=False), dtype)
