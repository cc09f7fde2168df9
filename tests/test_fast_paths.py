"""The fast paths give the numbers of the slow ones: the fused in-place spiking step is bitwise
snntorch's ``Leaky`` module, a conv with average pooling folded into one strided conv equals the
conv then the pool to rounding, and torch's average pooling is bitwise the windows' mean."""

from __future__ import annotations

import pytest
import torch
from conftest import variant

from spikeep import pooling, spec
from spikeep.energy import Network
from spikeep.snn import SNNConfig
from spikeep.snn.phases import init_state, simulate


@pytest.mark.parametrize(
    "model,dtype",
    [
        ("spiking_small", "float64"),
        ("spiking_small", "float32"),
        ("spiking_small_conv", "float64"),
        ("snn_conv_tiny_ce", "float32"),
    ],
)
@pytest.mark.parametrize("decay,coding", [(1.0, "current"), (0.9, "current"), (1.0, "rate")])
@pytest.mark.parametrize("half", [False, True], ids=["gain1", "gain_half"])
def test_fused_step_is_bitwise_snntorchs_leaky(model, dtype, decay, coding, half):
    """The fused in-place step (gain folded into the couplings, a conv's folded kernel formed
    once per phase) gives the membranes, traces and spike counts of stepping snntorch's Leaky,
    free and nudged (both signs, from the free state)."""
    top = {"activation": "hard_sigmoid_half", "dynamics": "prototypical"} if half else {}
    net = variant(model, dtype=dtype, **top)
    dt = getattr(torch, dtype)
    params = {k: 3 * v for k, v in net.init_params(0, dtype=dt).items()}  # busy neurons
    x = torch.rand(
        5, *net.spec.layers[0].shape, dtype=dt, generator=torch.Generator().manual_seed(0)
    )
    n = net.spec.layers[-1].shape[0]
    y = torch.nn.functional.one_hot(torch.arange(5) % n, n).to(dt)
    cfg = SNNConfig(decay=decay, tau=4, settle=7, window=13, input=coding)
    start = init_state(net, x, cfg)
    out = {}
    for fused in (False, True):
        runs = []
        for beta in (0.0, 0.5, -0.5):
            state = start if beta == 0 else runs[0][0]
            gen = torch.Generator().manual_seed(3)
            runs.append(
                simulate(
                    net,
                    params,
                    x,
                    y,
                    state,
                    30,
                    lambda t, b=beta: b,
                    cfg,
                    gen,
                    7,
                    reference=not fused,
                )  # fmt: skip
            )
        out[fused] = runs
    for (s, c, n), (s_ref, c_ref, n_ref) in zip(out[True], out[False], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(s.v + s.r + c, s_ref.v + s_ref.r + c_ref))
        assert float(n) == pytest.approx(float(n_ref), rel=1e-6) and float(n) > 0


def test_a_phase_leaves_the_state_it_started_from_alone():
    net = Network(spec.load("models/spiking_small.toml"))
    params = net.init_params(0)
    x = torch.rand(3, 20, dtype=torch.float64)
    cfg = SNNConfig(tau=4)
    start = simulate(net, params, x, None, init_state(net, x, cfg), 20, lambda t: 0.0, cfg)[0]
    kept = [t.clone() for t in (*start.v, *start.r)]
    simulate(net, params, x, None, start, 20, lambda t: 0.0, cfg)
    assert all(torch.equal(a, b) for a, b in zip(kept, (*start.v, *start.r)))


@pytest.mark.parametrize(
    "layers",
    [
        {1: {"pool": "avg"}, 2: {"pool": "avg"}},  # 8x8, pad 1: 8 -> 4 -> 2
        {1: {"pool": "avg", "padding": 0}, 2: {"pool": "avg"}},  # 8 -> 3 -> 1 (ragged)
        {1: {"pool": "avg", "pool_size": 3, "padding": 0}, 2: {"pool": "none"}},
    ],
    ids=["pad1", "ragged", "pool3"],
)
def test_folded_conv_and_pool_equals_conv_then_pool(layers):
    net = variant("tiny_conv", layers)  # float64
    params = net.init_params(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64, generator=g)
    r = tuple(
        torch.rand(4, *layer.shape, dtype=torch.float64, generator=g)
        for layer in net.spec.dynamic_layers
    )
    assert any(c.folds for c in net.couplings)
    folded = net.dphi(params, r, net.static_drive(params, x))
    phi = net.phi(params, r, x)
    for c in net.couplings:
        c.folds = False
    plain = net.dphi(params, r, net.static_drive(params, x))
    for a, b in zip(folded, plain):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(phi, net.phi(params, r, x), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (3, 4, 9, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_avg_pooling_is_bitwise_the_windows(shape, dtype):
    z = torch.randn(*shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
    pooled = pooling.pool(z, "avg", 2)
    assert torch.equal(pooled, pooling._windows(z, 2).mean(-1))
    g = torch.randn(*pooled.shape, dtype=dtype)
    spread = g.unsqueeze(-1).expand(*g.shape, 4) / 4
    assert torch.equal(
        pooling.adjoint(g, "avg", 2, shape=z.shape), pooling._unwindows(spread, 2, z.shape)
    )
