r"""Export to NIR, the neuromorphic intermediate representation (the ``nir`` package), and back.

The exported graph is the free phase of :mod:`spikeep.snn.phases` for a dense spec: per dynamic
layer ``L`` a neuron node ``L`` and its spike trace ``L.trace``; per coupling ``i`` the forward
``W{i}`` (``nir.Affine``: ``W_i r_{i-1} + b_i``) from the trace below (the input ``x`` for
``i = 1``) to the neuron above, and the feedback ``W{i}.T`` (``nir.Linear``: ``W_i^T r_i``) from
the trace above to the neuron below: the symmetric couplings of the energy, both ways with the
one weight (a cyclic graph: :func:`read` turns NIR's type inference off). The output node ``y``
reads the last layer's trace. NIR is continuous time; spikeep's discrete steps
are read as Euler steps of ``DT`` seconds, snntorch's own convention
(``snntorch.export_nir``):

- ``decay = 1``: ``nir.IF`` with ``r = 1 / DT`` (``v += I`` per step), threshold 1;
- ``decay < 1``: ``nir.LIF`` with ``tau = DT / (1 - decay)``, ``r = tau / DT``, ``v_leak = 0``;
- trace: ``nir.LI`` with ``tau = tau_steps DT``, ``r = 1``, ``v_leak = 0``.

The teaching current is not part of the graph (a trained network runs free). The membrane clip
to [0, 2] and the delayed subtractive reset have no NIR field: they are recorded in the graph's
metadata (``spikeep`` key) with ``tau``, ``decay``, the activation's gain and the layer names.
NIR has no transposed convolution or max-unpooling, so conv specs are refused (weights are
exported multiplied by the activation's gain).
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


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def to_nir(net, params: dict[str, Tensor], config: SNNConfig | None = None) -> nir.NIRGraph:
    """The NIR graph of the spiking network ``net`` with ``params`` (module docstring)."""
    config = config or SNNConfig()
    g = gain(net)
    for layer in net.spec.layers[1:]:
        if layer.coupling.kind != "dense":
            raise ValueError(
                f"NIR export needs dense couplings (NIR has no transposed convolution or "
                f"max-unpooling for the feedback), but layer {layer.name!r} of {net.spec.source} "
                f"is {layer.coupling.kind!r}"
            )
    if net.readout:
        raise ValueError(f"NIR export needs cost 'mse' (no readout), {net.spec.source} has one")
    dynamic = net.spec.dynamic_layers
    names = [layer.name for layer in dynamic]
    x_name = net.spec.layers[0].name
    nodes: dict = {x_name: nir.Input({"input": np.array(net.spec.layers[0].shape)})}
    edges: list[tuple[str, str]] = []
    for i, layer in enumerate(dynamic, start=1):
        n = layer.size
        if config.decay == 1.0:
            nodes[layer.name] = nir.IF(r=np.full(n, 1 / DT), v_threshold=np.ones(n))
        else:
            tau = DT / (1 - config.decay)
            nodes[layer.name] = nir.LIF(
                tau=np.full(n, tau),
                r=np.full(n, tau / DT),
                v_leak=np.zeros(n),
                v_threshold=np.ones(n),
            )
        trace = f"{layer.name}.trace"
        nodes[trace] = nir.LI(tau=np.full(n, config.tau * DT), r=np.ones(n), v_leak=np.zeros(n))
        edges.append((layer.name, trace))
        W, b = params[f"W{i}"], params[f"b{i}"]
        nodes[f"W{i}"] = nir.Affine(weight=_np(g * W), bias=_np(g * b))
        below = x_name if i == 1 else f"{names[i - 2]}.trace"
        edges += [(below, f"W{i}"), (f"W{i}", layer.name)]
        if i >= 2:
            nodes[f"W{i}.T"] = nir.Linear(weight=_np(g * W.T))
            edges += [(trace, f"W{i}.T"), (f"W{i}.T", names[i - 2])]
    nodes["y"] = nir.Output({"output": np.array(dynamic[-1].shape)})
    edges.append((f"{names[-1]}.trace", "y"))
    metadata = {
        "spikeep": {
            "model": net.spec.source,
            "layers": names,
            "tau_steps": config.tau,
            "decay": config.decay,
            "gain": g,
            "v_clip": [0.0, V_MAX],
            "reset": "subtract, delayed one step (snntorch Leaky)",
            "dt": DT,
        }
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=False)


def from_nir(graph: nir.NIRGraph, dtype=torch.float64) -> tuple[dict[str, Tensor], dict]:
    """``(params, config)``: the rate engine's parameters (``W{i}``, ``b{i}``) and the
    :class:`~spikeep.snn.config.SNNConfig` fields ``decay`` and ``tau`` of a graph written by
    :func:`to_nir`; a ValueError names what is missing."""
    nodes = graph.nodes
    meta = (graph.metadata or {}).get("spikeep")
    if meta is None:
        raise ValueError("not a spikeep graph: its metadata has no 'spikeep' entry")
    layers = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["layers"]]
    g = float(meta["gain"])
    params = {}
    for i in range(1, len(layers) + 1):
        node = nodes.get(f"W{i}")
        if not isinstance(node, nir.Affine):
            raise ValueError(f"node 'W{i}' must be a nir.Affine, got {type(node).__name__}")
        params[f"W{i}"] = torch.as_tensor(np.asarray(node.weight), dtype=dtype) / g
        params[f"b{i}"] = torch.as_tensor(np.asarray(node.bias), dtype=dtype) / g
    neuron = nodes[layers[0]]
    decay = 1.0 if isinstance(neuron, nir.IF) else 1 - DT / float(np.asarray(neuron.tau)[0])
    trace = nodes[f"{layers[0]}.trace"]
    tau = float(np.asarray(trace.tau)[0]) / DT
    return params, {"decay": decay, "tau": tau}


def write(path, net, params: dict[str, Tensor], config: SNNConfig | None = None) -> None:
    """Write :func:`to_nir`'s graph to the NIR (HDF5) file ``path``."""
    nir.write(path, to_nir(net, params, config))


def read(path, dtype=torch.float64) -> tuple[dict[str, Tensor], dict]:
    """:func:`from_nir` of the NIR file ``path`` (read without NIR's type inference, which does
    not handle the feedback cycles of an EP network)."""
    return from_nir(nir.read(path, type_check=False), dtype)
