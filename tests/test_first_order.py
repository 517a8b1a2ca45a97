"""The paper's first-order bounds: constants against brute force, and l <= l_FO <= l_hat_p on every sample."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from art_jacreg.first_order import first_order_bounds
from art_jacreg.models import mnist_cnn, mnist_mlp


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = mnist_cnn(seed=4).double().eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=gen)
    return model, x, y


def _brute(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    jacs, grads = [], []
    for xi, yi in zip(x, y):
        jac = torch.autograd.functional.jacobian(lambda z: model(z.unsqueeze(0)).squeeze(0), xi).reshape(10, -1)
        probs = torch.softmax(model(xi.unsqueeze(0)).squeeze(0), dim=0)
        g = probs - F.one_hot(yi, 10).double()
        jacs.append(jac)
        grads.append(jac.T @ g)
    return torch.stack(jacs), torch.stack(grads)


@pytest.mark.parametrize("norm", [2, math.inf])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.5])
def test_constants_match_theory(setup, norm: float, eps: float) -> None:
    model, x, y = setup
    bounds = first_order_bounds(model, x, y, eps, norm)
    jac, grad = _brute(model, x, y)
    loss = F.cross_entropy(model(x), y, reduction="none")
    torch.testing.assert_close(bounds.loss, loss.detach(), rtol=1e-10, atol=0)
    if norm == 2:
        fo = loss + eps * grad.norm(dim=1)
        sur = loss + math.sqrt(2) * eps * jac.pow(2).sum(dim=(1, 2)).sqrt()
    else:
        fo = loss + eps * grad.abs().sum(dim=1)
        sur = loss + eps * jac.abs().sum(dim=(1, 2))
    torch.testing.assert_close(bounds.first_order_loss, fo.detach(), rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(bounds.jacobian_surrogate_loss, sur.detach(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("norm", [2, math.inf])
def test_ordering_on_every_sample(norm: float) -> None:
    for seed in range(3):
        model = mnist_mlp(seed=seed, hidden=32).eval()
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(64, 1, 28, 28, generator=gen)
        y = torch.randint(0, 10, (64,), generator=gen)
        b = first_order_bounds(model, x, y, 0.3, norm)
        assert torch.all(b.loss <= b.first_order_loss + 1e-6)
        assert torch.all(b.first_order_loss <= b.jacobian_surrogate_loss + 1e-6)
        # The surrogate is strictly looser somewhere (it ignores the label): the test can fail if constants shrink.
        assert torch.any(b.jacobian_surrogate_loss > b.first_order_loss + 1e-4)


def test_first_order_is_exact_for_a_linear_model() -> None:
    # For a linear model the linearisation is the model: the max over the l2 ball of the linearised loss is an
    # upper bound of the true robust loss at every point of the ball, checked along the gradient direction.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).double()
    x = torch.rand(8, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    eps = 0.5
    b = first_order_bounds(model, x, y, eps, 2)
    x_req = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x_req), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x_req)
    step = eps * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    # Cross-entropy is convex in the logits and the model is linear: the loss at x + step is at least the
    # linearised value, and the first-order loss equals the linearised maximum there.
    attacked = F.cross_entropy(model(x + step), y, reduction="none")
    assert torch.all(attacked >= b.first_order_loss - 1e-9)


def test_bad_arguments() -> None:
    model = mnist_mlp(seed=0, hidden=8).eval()
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="eps"):
        first_order_bounds(model, x, torch.tensor([0, 1]), -0.1, 2)
    with pytest.raises(ValueError, match="norm"):
        first_order_bounds(model, x, torch.tensor([0, 1]), 0.1, 1)
    with pytest.raises(ValueError, match="`y`"):
        first_order_bounds(model, x, torch.tensor([0, 10]), 0.1, 2)
    with pytest.raises(ValueError, match="`y`"):
        first_order_bounds(model, x, torch.tensor([0]), 0.1, 2)


@pytest.mark.parametrize(
    ("spelling", "norm"), [("l2", 2), ("L2", 2), ("2", 2), ("linf", math.inf), ("l-inf", math.inf)]
)
def test_norm_spellings_of_the_other_entry_points_are_accepted(setup, spelling, norm) -> None:
    model, x, y = setup
    got, want = (
        first_order_bounds(model, x[:2], y[:2], 0.1, spelling),
        first_order_bounds(model, x[:2], y[:2], 0.1, norm),
    )
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
