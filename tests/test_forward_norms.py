"""Forward-mode and finite-difference estimators of ||J||_F^2 against brute force, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from art_jacreg.data import load_mnist
from art_jacreg.models import mnist_cnn, mnist_mlp
from art_jacreg.norms import (
    ESTIMATORS,
    finite_difference_jvp,
    frobenius_norm_sq,
    frobenius_norm_sq_finite_difference,
    frobenius_norm_sq_jvp,
    jacobian_vector_product,
    random_unit_directions,
    validate_estimator,
)


def _digits(n: int) -> torch.Tensor:
    (x, _), _, _, _ = load_mnist()
    return torch.from_numpy(x[:n]).double()


def _smooth_mlp() -> nn.Module:
    """A C-infinity network (tanh), for which the central difference has an O(h^2) error."""
    torch.manual_seed(7)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 24), nn.Tanh(), nn.Linear(24, 16), nn.Tanh(), nn.Linear(16, 10))


MODELS = {
    "mlp": lambda: mnist_mlp(seed=1, hidden=32),
    "cnn": lambda: mnist_cnn(seed=2),
    "smooth": _smooth_mlp,
}


@pytest.fixture(params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> nn.Module:
    return MODELS[request.param]().double().eval()


def _brute_force_jvp(model: nn.Module, x: torch.Tensor, u: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    jac = torch.autograd.functional.jacobian(model, x, create_graph=create_graph)  # (B, K, B, *input)
    jac = jac.flatten(3).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # (B, K, d): each sample's own Jacobian
    return torch.einsum("bkd,bd->bk", jac, u.flatten(1))


def test_jacobian_vector_product_is_exact_and_keeps_the_logits(model: nn.Module) -> None:
    x = _digits(3)
    u = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    x_before, u_before = x.clone(), u.clone()
    logits, ju = jacobian_vector_product(model, x, u)
    torch.testing.assert_close(logits, model(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(ju, _brute_force_jvp(model, x, u), rtol=1e-10, atol=1e-12)
    assert torch.equal(x, x_before) and torch.equal(u, u_before)


def test_the_jvp_is_differentiable_in_the_weights_like_the_explicit_jacobian(model: nn.Module) -> None:
    """Reverse over forward gives the same weight gradient of ||J u||^2 as differentiating the explicit Jacobian."""
    x = _digits(2)
    u = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(2))
    params = list(model.parameters())
    _, ju = jacobian_vector_product(model, x, u)
    got = torch.autograd.grad(ju.pow(2).sum(), params, allow_unused=True)
    want = torch.autograd.grad(_brute_force_jvp(model, x, u, create_graph=True).pow(2).sum(), params, allow_unused=True)
    assert any(g is not None and g.abs().max() > 0 for g in got)
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_the_jvp_estimate_is_unbiased(name: str) -> None:
    """Mean of 2,000 one-direction estimates per digit against the exact norm.

    Measured (4,000 draws, seed 0): relative standard deviation of one draw 0.48-0.68, so the standard error of the
    mean of 2,000 is at most 1.6%; the test allows 4 standard errors (z-score from the draws) and 7% relative.
    """
    net = MODELS[name]().double().eval()
    x, n = _digits(2), 2000
    exact = frobenius_norm_sq(net, x)
    _, draws = frobenius_norm_sq_jvp(net, x.repeat(n, 1, 1, 1), 1, generator=torch.Generator().manual_seed(0))
    draws = draws.reshape(n, x.shape[0])
    mean, std_error = draws.mean(dim=0), draws.std(dim=0) / n**0.5
    assert torch.all((mean - exact).abs() < 4 * std_error), ((mean - exact) / std_error).tolist()
    assert torch.all((mean - exact).abs() < 0.07 * exact)
    assert torch.all(draws.std(dim=0) > 0.3 * exact)  # really random: one direction alone is not the norm


def test_the_mean_over_directions_is_the_mean_of_the_single_direction_estimates() -> None:
    net, x = MODELS["cnn"]().double().eval(), _digits(2)
    _, many = frobenius_norm_sq_jvp(net, x, 5, generator=torch.Generator().manual_seed(3))
    directions = random_unit_directions(x, 5, torch.Generator().manual_seed(3))
    singles = torch.stack([784 * jacobian_vector_product(net, x, u)[1].pow(2).sum(dim=1) for u in directions])
    torch.testing.assert_close(many, singles.mean(dim=0), rtol=1e-12, atol=0)


def test_directions_are_unit_and_reproducible() -> None:
    x = torch.zeros(4, 1, 5, 5, dtype=torch.float32)
    u = random_unit_directions(x, 3, torch.Generator().manual_seed(0))
    assert u.shape == (3, 4, 1, 5, 5) and u.dtype == torch.float32
    torch.testing.assert_close(u.flatten(2).norm(dim=2), torch.ones(3, 4))
    assert torch.equal(u, random_unit_directions(x, 3, torch.Generator().manual_seed(0)))


def test_central_differences_converge_to_the_jvp_like_h_squared_on_a_smooth_network() -> None:
    """Bias O(h^2): ten times smaller a step, about a hundred times smaller an error (float64)."""
    net, x = _smooth_mlp().double().eval(), _digits(3)
    _, want = frobenius_norm_sq_jvp(net, x, 4, generator=torch.Generator().manual_seed(5))
    errors = []
    for step in (1e-1, 1e-2, 1e-3):
        got = frobenius_norm_sq_finite_difference(net, x, 4, step=step, generator=torch.Generator().manual_seed(5))
        errors.append(((got - want).abs() / want).max().item())
    assert errors[0] > 1e-6  # the difference is measurably biased at a large step
    assert 30 < errors[0] / errors[1] < 300 and 30 < errors[1] / errors[2] < 300, errors
    assert errors[2] < 1e-5


def test_central_differences_converge_on_a_relu_network_and_match_the_jvp_inside_a_linear_region() -> None:
    net, x = mnist_cnn(seed=2).double().eval(), _digits(3)
    _, want = frobenius_norm_sq_jvp(net, x, 8, generator=torch.Generator().manual_seed(6))
    errors = []
    for step in (1.0, 1e-2, 1e-6):
        got = frobenius_norm_sq_finite_difference(net, x, 8, step=step, generator=torch.Generator().manual_seed(6))
        errors.append(((got - want).abs() / want).max().item())
    assert errors[0] > errors[1] > errors[2] and errors[0] > 1e-3, errors
    assert errors[2] < 1e-6  # a tiny step stays inside the linear region: the secant is the tangent


def test_finite_differences_see_the_same_dropout_mask_on_both_sides() -> None:
    """In training mode both forward passes draw the same mask: the difference is J u of that masked network."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.Tanh(), nn.Dropout(0.5), nn.Linear(32, 10)).double()
    x = _digits(4)
    u = random_unit_directions(x, 1, torch.Generator().manual_seed(1))[0]
    torch.manual_seed(11)
    diff = finite_difference_jvp(net, x, u, step=1e-4)
    torch.manual_seed(11)
    _, ju = jacobian_vector_product(net, x, u)
    torch.testing.assert_close(diff, ju, rtol=1e-5, atol=1e-8)


def test_no_graph_without_create_graph_and_a_differentiable_one_with_it() -> None:
    net, x = mnist_mlp(seed=1, hidden=16).eval(), _digits(2).float()
    _, est = frobenius_norm_sq_jvp(net, x, 1, generator=torch.Generator().manual_seed(0))
    fd = frobenius_norm_sq_finite_difference(net, x, 1, generator=torch.Generator().manual_seed(0))
    assert not est.requires_grad and not fd.requires_grad
    for value in (
        frobenius_norm_sq_jvp(net, x, 1, create_graph=True)[1],
        frobenius_norm_sq_finite_difference(net, x, 1, create_graph=True),
    ):
        value.sum().backward()
        assert next(net.parameters()).grad.abs().max() > 0
        net.zero_grad()


class _NoForwardMode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad


def test_an_operation_without_forward_mode_gives_a_clear_error() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).double()
    with pytest.raises(NotImplementedError, match="estimator='vjp'"):
        frobenius_norm_sq_jvp(lambda z: _NoForwardMode.apply(net(z)), _digits(2), 1)


def test_bad_arguments_are_refused_at_the_boundary() -> None:
    net, x = mnist_mlp(seed=1, hidden=8).double(), _digits(2)
    assert ESTIMATORS == ("vjp", "jvp", "finite_difference")
    assert validate_estimator(" JVP ") == "jvp"
    with pytest.raises(ValueError, match="`estimator` must be one of"):
        validate_estimator("forward")
    with pytest.raises(ValueError, match="`n_projections` must be an integer >= 1"):
        frobenius_norm_sq_jvp(net, x, 0)
    with pytest.raises(ValueError, match="`n_projections` must be an integer >= 1"):
        frobenius_norm_sq_finite_difference(net, x, True)
    for step in (0.0, -1e-2, float("nan")):
        with pytest.raises(ValueError, match="`step` must be a finite number > 0"):
            frobenius_norm_sq_finite_difference(net, x, 1, step=step)
    with pytest.raises(ValueError, match="`u` must be a tensor of the shape of `x`"):
        jacobian_vector_product(net, x, torch.zeros(2, 784, dtype=x.dtype))
    with pytest.raises(TypeError, match="`x` must be a torch.Tensor"):
        frobenius_norm_sq_jvp(net, x.numpy(), 1)
    with pytest.raises(ValueError, match="`x` must be a floating-point tensor"):
        frobenius_norm_sq_finite_difference(net, x.long(), 1)
    with pytest.raises(ValueError, match="`func` must map a batch"):
        frobenius_norm_sq_jvp(lambda z: net(z).sum(), x, 1)
    with pytest.raises(ValueError, match="`func` must map a batch"):
        frobenius_norm_sq_finite_difference(lambda z: net(z)[:1], x, 1)
