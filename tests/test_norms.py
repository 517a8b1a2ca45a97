"""Jacobian norms against brute force (torch.autograd.functional.jacobian) in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from art_jacreg.models import mnist_cnn, mnist_mlp
from art_jacreg.norms import (
    frobenius_norm_sq,
    jacobian,
    l11_norm,
    spectral_norm_estimate,
    vector_jacobian_product,
)


class FunctionalCNN(nn.Module):
    """CNN written with functional calls and a BatchNorm (used in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def _functional_cnn() -> nn.Module:
    torch.manual_seed(3)
    model = FunctionalCNN()
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.1, 0.1)
    return model


MODELS = {
    "mlp": lambda: mnist_mlp(seed=1, hidden=32),
    "sequential_cnn": lambda: mnist_cnn(seed=2),
    "functional_cnn": _functional_cnn,
}


@pytest.fixture(params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> nn.Module:
    return MODELS[request.param]().double().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def brute_force_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    rows = []
    for sample in x:
        jac = torch.autograd.functional.jacobian(lambda z: model(z.unsqueeze(0)).squeeze(0), sample)
        rows.append(jac.reshape(jac.shape[0], -1))
    return torch.stack(rows)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_jacobian_matches_brute_force(model: nn.Module, x: torch.Tensor) -> None:
    expected = brute_force_jacobian(model, x)
    got = jacobian(model, x)
    assert got.shape == (5, 10, 784)
    assert rel_err(got, expected) < 1e-5


def test_exact_norms_match_brute_force(model: nn.Module, x: torch.Tensor) -> None:
    expected = brute_force_jacobian(model, x)
    assert rel_err(frobenius_norm_sq(model, x), expected.pow(2).sum(dim=(1, 2))) < 1e-5
    assert rel_err(l11_norm(model, x), expected.abs().sum(dim=(1, 2))) < 1e-5


def test_vector_jacobian_product_single_and_batched(model: nn.Module, x: torch.Tensor) -> None:
    expected = brute_force_jacobian(model, x)
    v = torch.randn(3, 5, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batched = vector_jacobian_product(model, x, v)
    assert rel_err(batched, torch.einsum("mbk,bkd->mbd", v, expected)) < 1e-5
    single = vector_jacobian_product(model, x, v[0])
    assert rel_err(single, torch.einsum("bk,bkd->bd", v[0], expected)) < 1e-5


def test_spectral_estimate_is_a_lower_estimate_close_to_svd(model: nn.Module, x: torch.Tensor) -> None:
    exact = torch.linalg.matrix_norm(brute_force_jacobian(model, x), ord=2)
    estimate = spectral_norm_estimate(model, x, n_iter=100, generator=torch.Generator().manual_seed(0))
    assert torch.all(estimate <= exact * (1 + 1e-9))
    assert rel_err(estimate, exact) < 1e-4


def test_frobenius_projection_estimate_is_unbiased() -> None:
    # Mean of 10,000 single-projection draws per sample (the batch repeated 100 times, 100 projections each); the
    # measured relative std of one draw is at most 0.54 on this model and batch, so the standard error of the mean is
    # about 0.0054: a 3% margin is 5.5 standard errors.
    model = mnist_mlp(seed=2, hidden=32).double().eval()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = frobenius_norm_sq(model, x)
    gen = torch.Generator().manual_seed(123)
    many = frobenius_norm_sq(model, x.repeat(100, 1, 1, 1), n_projections=100, generator=gen).reshape(100, 4)
    assert torch.all((many.mean(dim=0) / exact - 1).abs() < 0.03)
    # A single draw is genuinely random (not the exact value in disguise).
    single = frobenius_norm_sq(model, x.repeat(50, 1, 1, 1), n_projections=1, generator=gen).reshape(50, 4)
    assert float((single.std(dim=0) / exact).min()) > 0.05


def test_l11_row_sampling_is_unbiased_and_exact_with_all_rows() -> None:
    model = mnist_cnn(seed=2).double().eval()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = l11_norm(model, x)
    gen = torch.Generator().manual_seed(7)
    # With all K rows sampled without replacement the estimate is exact.
    assert rel_err(l11_norm(model, x, n_rows=10, generator=gen), exact) < 1e-12
    # 1 row: the mean over 3,000 draws; measured relative std of one draw at most 0.07 here (0.24 on a trained
    # model), so the standard error is about 0.0013: a 1% margin is > 7 standard errors.
    draws = torch.stack(
        [l11_norm(model, x.repeat(100, 1, 1, 1), n_rows=1, generator=gen).reshape(100, 4) for _ in range(30)]
    )
    mean = draws.reshape(-1, 4).mean(dim=0)
    assert torch.all((mean / exact - 1).abs() < 0.01)


def test_sampled_rows_are_distinct() -> None:
    # Draw 9 of 10 rows of an identity "Jacobian": each drawn row adds exactly 1 unless a row was drawn twice.
    func = lambda z: z[:, :10]  # noqa: E731 - J = [I 0]
    x = torch.rand(64, 12, dtype=torch.float64)
    est = l11_norm(func, x, n_rows=9, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(est, torch.full_like(est, 10.0 / 9 * 9))


@pytest.mark.parametrize("which", ["frobenius", "l11"])
def test_create_graph_gives_weight_gradients_equal_to_brute_force(which: str) -> None:
    model = mnist_mlp(seed=1, hidden=16).double().eval()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    params = list(model.parameters())

    if which == "frobenius":
        value = frobenius_norm_sq(model, x, create_graph=True).sum()
    else:
        value = l11_norm(model, x, create_graph=True).sum()
    grads = torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True)

    jac = torch.stack(
        [
            torch.autograd.functional.jacobian(
                lambda z: model(z.unsqueeze(0)).squeeze(0), s, create_graph=True
            ).reshape(10, -1)
            for s in x
        ]
    )
    ref_value = jac.pow(2).sum() if which == "frobenius" else jac.abs().sum()
    ref_grads = torch.autograd.grad(ref_value, params, allow_unused=True, materialize_grads=True)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    for got, ref in zip(grads, ref_grads):
        assert float((got - ref).norm()) <= 1e-6 * max(float(ref.norm()), 1e-12)


def test_inputs_are_not_modified_and_bad_inputs_rejected() -> None:
    model = mnist_mlp(seed=1, hidden=16).eval()
    x = torch.rand(2, 1, 28, 28)
    before = x.clone()
    frobenius_norm_sq(model, x, n_projections=2)
    assert torch.equal(x, before) and not x.requires_grad
    with pytest.raises(ValueError, match="n_projections"):
        frobenius_norm_sq(model, x, n_projections=0)
    with pytest.raises(ValueError, match="n_rows"):
        l11_norm(model, x, n_rows=11)
    with pytest.raises(TypeError, match="`x`"):
        jacobian(model, x.numpy())
    with pytest.raises(ValueError, match="`func`"):
        jacobian(lambda z: z.sum(), x)


def test_sqrt_of_frobenius_bounds_spectral() -> None:
    model = mnist_cnn(seed=2).double().eval()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    assert torch.all(spectral_norm_estimate(model, x) <= frobenius_norm_sq(model, x).sqrt() * (1 + 1e-12))
    assert math.isfinite(float(l11_norm(model, x).sum()))
