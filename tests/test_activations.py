import pytest
import torch

from spikeep import activations

NAMES = activations.names()


def test_registry_has_the_required_activations():
    assert {"hard_sigmoid", "sigmoid4", "holotanh", "tanh"} <= set(NAMES)


def test_unknown_activation_names_the_known_ones():
    with pytest.raises(KeyError, match="sigmoid4"):
        activations.get("relu6")


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        activations.register(activations.get("tanh"))


@pytest.mark.parametrize("name", NAMES)
def test_drho_matches_autograd(name):
    act = activations.get(name)
    s = torch.linspace(-3, 3, 601, dtype=torch.float64)
    s = s[(s - 0).abs() > 1e-3]  # keep away from the kinks of the clipped activations
    for kink in (1.0, 2.0):
        s = s[(s - kink).abs() > 1e-3]
    s.requires_grad_(True)
    (g,) = torch.autograd.grad(act.rho(s).sum(), s)
    torch.testing.assert_close(act.drho(s.detach()), g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in NAMES if activations.get(n).holomorphic])
def test_holomorphic_activations_satisfy_cauchy_riemann(name):
    # For holomorphic rho, torch's gradient of Re(rho) at z is conj(rho'(z)).
    act = activations.get(name)
    g = torch.Generator().manual_seed(0)
    z = torch.complex(
        torch.rand(50, generator=g, dtype=torch.float64) * 3 - 1,
        torch.rand(50, generator=g, dtype=torch.float64) * 0.4 - 0.2,
    )
    z.requires_grad_(True)
    (grad,) = torch.autograd.grad(act.rho(z).real.sum(), z)
    torch.testing.assert_close(act.drho(z.detach()), grad.conj(), rtol=1e-10, atol=1e-12)
    # and it extends the real function
    x = z.detach().real
    torch.testing.assert_close(act.rho(x.to(torch.complex128)).real, act.rho(x))


def test_named_values():
    s = torch.tensor([-1.0, 0.25, 2.0], dtype=torch.float64)
    torch.testing.assert_close(activations.get("hard_sigmoid").rho(s), s.clamp(0, 1))
    torch.testing.assert_close(activations.get("sigmoid4").rho(s), torch.sigmoid(4 * s - 2))
    h = activations.get("holotanh").rho(torch.tensor([-20.0, 1.0, 22.0], dtype=torch.float64))
    assert abs(h[0]) < 1e-6 and abs(h[2] - 1) < 1e-6 and 0.4 < h[1] < 0.6


@pytest.mark.parametrize("name", NAMES)
def test_box_projected_activations_are_linear_on_their_box(name):
    act = activations.get(name)
    if act.box is None:
        assert act.slope is None
        return
    s = torch.linspace(*act.box, 11, dtype=torch.float64)
    if act.slope is not None:
        torch.testing.assert_close(act.rho(s), act.slope * s)
