"""Soundness of the certified-training bounds (art_jacreg.certify.objectives) against attacks and brute force.

Every margin lower bound the training objective uses must lie below the smallest margin an attack (PGD from
several starts, plus random points of the ball) finds inside ``B_p(x, eps) ∩ [0, 1]``; the same check must catch a
deliberately wrong bound (the bound's deviation term halved).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from art_jacreg.certify.graph import UnsupportedOperationError
from art_jacreg.certify.objectives import CertifiedMargins, certified_cross_entropy, worst_case_logits
from art_jacreg.certify.ops import Conv2d, Linear

PRE = (0.4, 0.3)


def tiny_cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=1, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 12),
        nn.ReLU(),
        nn.Linear(12, 5),
    )


def tiny_pool(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)
    )


def data(seed: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images labelled by a fixed linear rule (learnable, so certified training does not collapse)."""
    x = torch.rand((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    rule = torch.randn(64, 5, generator=torch.Generator().manual_seed(9))
    return x, (x.flatten(1) @ rule).argmax(1)


def certifiably_trained(bound: str, norm: float, eps: float, extra: object) -> nn.Sequential:
    """``tiny_cnn`` after 100 Adam steps on its own certified loss: its bounds are tight enough that halving the
    deviation term puts some of them above the attacked margins (on a random network they are 3 to 20 times loose)."""
    model = tiny_cnn(0)
    cm = CertifiedMargins(model, (1, 8, 8), PRE, (0.0, 1.0))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt, yt = data(7, n=64)
    for _ in range(100):
        logits, low = cm.margin_lower(xt, yt, eps, norm, bound, **_options(norm, extra))
        loss = certified_cross_entropy(logits, low, yt, kappa=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def margins_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = model((x - PRE[0]) / PRE[1])
    return z.gather(1, y[:, None]) - z  # (B, K), 0 at y


def project(x0: torch.Tensor, x: torch.Tensor, eps: float, norm: float) -> torch.Tensor:
    d = x - x0
    if norm == 2:
        n = d.flatten(1).norm(dim=1).clamp(min=1e-12).reshape(-1, 1, 1, 1)
        d = d * torch.clamp(eps / n, max=1.0)
    else:
        d = d.clamp(-eps, eps)
    return (x0 + d).clamp(0.0, 1.0)


def attacked_min_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: float) -> torch.Tensor:
    """Smallest margin of every class found by PGD (5 starts, 60 steps) and 400 random points of the ball-and-box."""
    gen = torch.Generator().manual_seed(1)
    best = margins_at(model, x, y).detach()
    for _ in range(400 // 50):
        noise = torch.randn((50, *x.shape), generator=gen)
        if norm == 2:
            noise = noise / noise.flatten(2).norm(dim=2)[..., None, None, None] * eps
        else:
            noise = noise.sign() * eps
        pts = project(
            x.expand(50, *x.shape).reshape(-1, *x.shape[1:]), (x + noise).reshape(-1, *x.shape[1:]), eps, norm
        )
        m = margins_at(model, pts, y.repeat(50)).reshape(50, *best.shape).amin(0)
        best = torch.minimum(best, m.detach())
    for j in range(best.shape[1]):
        for start in range(5):
            d = torch.randn(x.shape, generator=gen) * (0.0 if start == 0 else eps / 4)
            xa = project(x, x + d, eps, norm)
            for _ in range(60):
                xa.requires_grad_(True)
                m = margins_at(model, xa, y)[:, j]
                (g,) = torch.autograd.grad(m.sum(), xa)
                with torch.no_grad():
                    if norm == 2:
                        step = g / g.flatten(1).norm(dim=1).clamp(min=1e-12).reshape(-1, 1, 1, 1)
                    else:
                        step = g.sign()
                    xa = project(x, xa - eps / 8 * step, eps, norm)
                    best[:, j] = torch.minimum(best[:, j], margins_at(model, xa, y)[:, j])
    return best


CASES = [  # bound, norm, eps, crown (l-inf) or depth (l2)
    ("global", 2.0, 0.15, 1),
    ("local", 2.0, 0.15, 1),
    ("local", 2.0, 0.6, 1),
    ("local", 2.0, 0.3, None),
    ("global", math.inf, 0.03, False),
    ("local", math.inf, 0.03, False),
    ("local", math.inf, 0.03, True),
]


def _options(norm: float, extra: object) -> dict:
    return {"crown": bool(extra)} if norm == math.inf else {"depth": extra}


def _bounds(model, x, y, bound, norm, eps, extra):
    cm = CertifiedMargins(model, (1, 8, 8), PRE, (0.0, 1.0))
    with torch.no_grad():
        logits, low = cm.margin_lower(x, y, eps, norm, bound, n_iter=300, **_options(norm, extra))
    return logits, low


@pytest.mark.parametrize("bound,norm,eps,extra", CASES)
def test_bounds_below_attacked_margins_and_halved_bound_caught(bound, norm, eps, extra):
    x, y = data(0)
    untrained = tiny_cnn(0)
    _, low = _bounds(untrained, x, y, bound, norm, eps, extra)
    assert (low <= attacked_min_margins(untrained, x, y, eps, norm) + 1e-4).all()
    model = certifiably_trained(bound, norm, eps, extra)
    logits, low = _bounds(model, x, y, bound, norm, eps, extra)
    value = logits.gather(1, y[:, None]) - logits
    assert torch.allclose(value, margins_at(model, x, y), atol=1e-5)
    found = attacked_min_margins(model, x, y, eps, norm)
    tol = 1e-4 * (1 + logits.abs().max())
    assert (low <= found + tol).all(), f"bound above an attacked margin by {float((low - found).max()):.3g}"
    wrong = value - (value - low) / 2  # the deviation term halved
    assert not (wrong <= found + tol).all(), "the check failed to catch a halved bound"


def test_maxpool_model_bounds_are_sound():
    model = tiny_pool(1)
    x, y = data(1)
    for bound in ("global", "local"):
        logits, low = _bounds(model, x, y, bound, 2.0, 0.3, None)
        found = attacked_min_margins(model, x, y, 0.3, 2.0)
        assert (low <= found + 1e-4).all()


def test_global_constant_bounds_brute_force_jacobian():
    """``(m_j(x) - low_j) / eps`` is the global Lipschitz constant of ``m_j``: at least every Jacobian row norm."""
    model = tiny_cnn(2)
    x, y = data(2, n=3)
    eps = 0.2
    logits, low = _bounds(model, x, y, "global", 2.0, eps, 1)
    lip = (logits.gather(1, y[:, None]) - logits - low) / eps
    gen = torch.Generator().manual_seed(3)
    for b in range(x.shape[0]):
        for _ in range(20):
            xp = (x[b : b + 1] + 0.3 * torch.randn(x[b : b + 1].shape, generator=gen)).clamp(0, 1)
            jac = torch.autograd.functional.jacobian(lambda v, yb=y[b : b + 1]: margins_at(model, v, yb)[0], xp)
            norms = jac.reshape(jac.shape[0], -1).norm(dim=1)
            assert (norms <= lip[b] * (1 + 1e-5) + 1e-6).all()


def test_power_iteration_converges_to_exact_spectral_norm():
    model = tiny_cnn(3)
    cm = CertifiedMargins(model, (1, 8, 8), PRE, None)
    norms = cm.layer_norms(2.0, n_iter=500)
    checked = 0
    for op, value in zip(cm.ops, norms):
        if isinstance(op, Conv2d):
            mat = torch.autograd.functional.jacobian(
                lambda v, m=op: nn.functional.conv2d(v, m.weight, None, m.stride, m.padding),
                torch.zeros((1, *op.in_shape)),
            )
            exact = torch.linalg.matrix_norm(mat.reshape(-1, math.prod(op.in_shape)), ord=2)
            assert float(value.detach()) == pytest.approx(float(exact), rel=1e-4)
            checked += 1
        elif isinstance(op, Linear):
            exact = torch.linalg.matrix_norm(op.weight.detach(), ord=2)
            assert float(value.detach()) == pytest.approx(float(exact), rel=1e-4)
            checked += 1
    assert checked == 4


@pytest.mark.parametrize("bound,norm", [("global", 2.0), ("local", 2.0), ("global", math.inf), ("local", math.inf)])
def test_loss_is_differentiable_and_model_untouched(bound, norm):
    model = tiny_cnn(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = data(4)
    cm = CertifiedMargins(model, (1, 8, 8), PRE, (0.0, 1.0))
    logits, low = cm.margin_lower(x, y, 0.1, norm, bound, crown=norm == math.inf)
    assert all(p.grad is None for p in model.parameters())
    for variant in ("ce", "bottom"):
        loss = certified_cross_entropy(logits, low, y, kappa=0.3, variant=variant)
        grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
        assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training
    z = worst_case_logits(logits, low, y)
    assert torch.equal(z.gather(1, y[:, None]), logits.gather(1, y[:, None]))


def test_bad_arguments():
    model = tiny_cnn(5)
    cm = CertifiedMargins(model, (1, 8, 8), PRE)
    x, y = data(5)
    with pytest.raises(ValueError, match="bound"):
        cm.margin_lower(x, y, 0.1, 2, "exact")
    with pytest.raises(ValueError, match="norm"):
        cm.margin_lower(x, y, 0.1, 3, "local")
    with pytest.raises(ValueError, match="variant"):
        certified_cross_entropy(x[:, 0, 0, :5], torch.zeros(6, 5), y, variant="hinge")
    with pytest.raises(UnsupportedOperationError, match="Sigmoid"):
        CertifiedMargins(nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.Sigmoid()), (1, 8, 8))
