"""The exact reference of a fidelity study, once per model, and its check against itself.

:func:`compute` relaxes the free phase for ``free_steps`` steps and takes the implicit gradient
there (:func:`spikeep.gradcheck.problem`: the :class:`~spikeep.gradcheck.Problem` every point of
the model reuses). It then computes the same gradient twice more, by other routes, and records
how far they land from it (relative error ``|g - g_ref| / |g_ref|``, all parameters):

- ``implicit_rel_diff``: the implicit gradient at a free phase of ``check_steps`` steps, solved by
  fixed-point iteration of the adjoint instead of the dense solve (``"auto"`` picks dense up to
  2048 units);
- ``bptt_rel_diff``: backpropagation through ``check_steps`` unrolled steps of the free phase
  (:func:`spikeep.reference.bptt_gradient`), which shares nothing with the adjoint solve.

Both are float64; a converged reference agrees with them to about 1e-10 (the free phase's
residual bounds the gap).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from .. import reference
from ..dynamics import relax
from ..energy import Network
from ..gradcheck import Problem, cosine, problem, rel_error

__all__ = ["compute"]


def _flat(g: dict[str, Tensor]) -> Tensor:
    return torch.cat([v.flatten() for v in g.values()])


def compute(
    net: Network, batch: int, seed: int, free_steps: int, check_steps: int
) -> tuple[Problem, dict]:
    """The model's :class:`Problem` and its self-check record (module docstring): ``free_steps``,
    ``check_steps``, ``free_residual``, ``check_residual``, ``implicit_rel_diff``,
    ``bptt_rel_diff``, ``bptt_cosine``, ``wall_s`` (seconds, reference alone) and
    ``check_wall_s``."""
    start = time.perf_counter()
    prob = problem(net, batch, seed, free_steps)
    wall = time.perf_counter() - start
    long = relax(net, prob.params, prob.x, steps=check_steps)
    again = reference.implicit_gradient(
        net, prob.params, prob.x, prob.y, s_star=long.s, solver="iterative"
    )
    bptt = reference.bptt_gradient(net, prob.params, prob.x, prob.y, steps=check_steps)
    ref = _flat(prob.grads)
    return prob, {
        "model": net.spec.name,
        "free_steps": free_steps,
        "check_steps": check_steps,
        "free_residual": float(prob.free.residual),
        "check_residual": float(long.residual),
        "implicit_rel_diff": rel_error(_flat(again), ref),
        "bptt_rel_diff": rel_error(_flat(bptt), ref),
        "bptt_cosine": cosine(_flat(bptt), ref),
        "norm": float(ref.norm()),
        "wall_s": wall,
        "check_wall_s": time.perf_counter() - start - wall,
    }
