"""The seed papers' networks: exactness at full size (slow) and the CUDA path (gpu)."""

import pytest
import torch
from conftest import load, rel, setup

from spikeep import estimators, reference
from spikeep.dynamics import relax


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp_784_500_10", "mlp_784_256x2_10"])
def test_full_size_mlp_in_float64(name):
    net = load(name)
    params, x, y = setup(net, batch=4)
    free = relax(net, params, x, steps=600)
    assert float(free.residual) < 1e-10
    implicit = reference.implicit_gradient(net, params, x, y, s_star=free.s, solver="iterative")
    bptt = reference.bptt_gradient(net, params, x, y, steps=600)
    assert rel(bptt, implicit) < 1e-6
    g = estimators.Symmetric(1e-3, 600).estimate(net, params, x, y, free).grads
    assert rel(g, implicit) < 1e-3


@pytest.mark.slow
def test_conv_mnist_symmetric_estimate_in_float64():
    net = load("conv_mnist")
    params, x, y = setup(net, batch=2)
    free = relax(net, params, x, steps=200)
    implicit = reference.implicit_gradient(net, params, x, y, s_star=free.s, solver="iterative")
    g = estimators.Symmetric(1e-3, 200).estimate(net, params, x, y, free).grads
    assert rel(g, implicit) < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["tiny", "tiny_conv"])
def test_cuda_matches_cpu(name):
    net = load(name)
    params, x, y = setup(net)
    cpu = estimators.Holomorphic(0.1, 100, points=4)
    free = relax(net, params, x, steps=100)
    expected = cpu.estimate(net, params, x, y, free).grads
    dev = {k: v.cuda() for k, v in params.items()}
    free_d = relax(net, dev, x.cuda(), steps=100)
    got = cpu.estimate(net, dev, x.cuda(), y.cuda(), free_d).grads
    for k in params:
        torch.testing.assert_close(got[k].cpu(), expected[k], rtol=1e-9, atol=1e-12)
