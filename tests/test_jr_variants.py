"""The JR variants (:mod:`art_jacreg.training.jr_variants`): penalties against brute force, perturbations, warm-up,
validation, and the trainer options."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from art_jacreg.models import make_classifier, mnist_mlp
from art_jacreg.trainer import DEFAULT_REG_WEIGHTS, JacobianRegularizedTrainer
from art_jacreg.training.jr_variants import (
    VariantObjective,
    finite_difference_penalty,
    input_gradient_penalty,
    per_sample_scalar,
    warmup_factor,
)
from art_jacreg.training.objectives import JacobianRegularizedObjective
from art_jacreg.training.perturbations import perturb

NORMS = [2.0, math.inf]


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 4)).double()


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((5, 1, 3, 4), generator=g, dtype=torch.float64), torch.tensor([0, 3, 1, 2, 3])


def _brute_gradients(net: nn.Module, x: torch.Tensor, y: torch.Tensor, target: str, create_graph=False):
    """Per-sample input gradients of the scalar, one sample at a time with autograd.functional.jacobian."""
    rows = []
    for i in range(x.shape[0]):

        def scalar(z, i=i):
            return per_sample_scalar(target, net(z.unsqueeze(0)), y[i : i + 1]).squeeze(0)

        rows.append(torch.autograd.functional.jacobian(scalar, x[i], create_graph=create_graph))
    return torch.stack(rows)


def _dual(g: torch.Tensor, norm: float) -> torch.Tensor:
    return g.flatten(1).pow(2).sum(1) if norm == 2 else g.flatten(1).abs().sum(1)


def test_margin_and_loss_scalars_by_hand() -> None:
    logits = torch.tensor([[1.0, 3.0, -2.0], [0.5, 0.2, 0.1]])
    y = torch.tensor([0, 2])
    assert torch.allclose(per_sample_scalar("margin", logits, y), torch.tensor([-2.0, -0.4]))
    expected = -torch.log_softmax(logits, 1)[torch.arange(2), y]
    assert torch.allclose(per_sample_scalar("loss", logits, y), expected)


@pytest.mark.parametrize("target", ["loss", "margin"])
@pytest.mark.parametrize("norm", NORMS)
def test_input_gradient_penalty_matches_brute_force(target, norm) -> None:
    net, (x, y) = _net(), _batch()
    x_in = x.clone().requires_grad_(True)
    got = input_gradient_penalty(x_in, per_sample_scalar(target, net(x_in), y), norm)
    expected = _dual(_brute_gradients(net, x, y, target), norm)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    # Differentiable w.r.t. the weights: same weight gradient as double backprop through the brute force.
    (got_grad,) = torch.autograd.grad(got.sum(), net[1].weight)
    brute = _dual(_brute_gradients(net, x, y, target, create_graph=True), norm).sum()
    (brute_grad,) = torch.autograd.grad(brute, net[1].weight)
    assert torch.allclose(got_grad, brute_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("target", ["loss", "margin"])
@pytest.mark.parametrize("norm", NORMS)
def test_finite_difference_penalty_by_hand_and_small_step_limit(target, norm) -> None:
    net, (x, y) = _net(), _batch()
    g = _brute_gradients(net, x, y, target)
    for step in (0.5, 1e-6):
        x_in = x.clone().requires_grad_(True)
        values = per_sample_scalar(target, net(x_in), y)
        got = finite_difference_penalty(net, x_in, values, y, target, norm, step)
        d = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) if norm == 2 else g.sign()
        with torch.no_grad():
            diff = (per_sample_scalar(target, net(x + step * d), y) - per_sample_scalar(target, net(x), y)) / step
        assert torch.allclose(got, diff.pow(2) if norm == 2 else diff.abs(), rtol=1e-8, atol=1e-12)
    # A tiny step recovers the first-order penalty ||g||_2^2 / ||g||_1 (where the scalar is smooth).
    assert torch.allclose(got, _dual(g, norm), rtol=1e-4)
    # ... and it is differentiable w.r.t. the weights (first-order backprop only).
    (w_grad,) = torch.autograd.grad(got.sum(), net[1].weight)
    assert torch.isfinite(w_grad).all() and w_grad.abs().sum() > 0


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("kind", ["random", "fgsm"])
def test_perturbation_stays_in_the_ball_and_box(norm, kind) -> None:
    net, (x, y) = _net(), _batch()
    eps = 0.3 if norm == 2 else 0.05
    x_p = perturb(net, x, y, norm, eps, kind, (0.0, 1.0), torch.Generator().manual_seed(0))
    delta = (x_p - x).flatten(1)
    size = delta.norm(dim=1) if norm == 2 else delta.abs().amax(dim=1)
    assert (size <= eps * (1 + 1e-9)).all() and (size > 0).all()
    assert x_p.min() >= 0 and x_p.max() <= 1 and not x_p.requires_grad


def test_fgsm_linf_step_by_hand() -> None:
    """Random start in the box, then a signed step of 1.25 eps, projected to the ball and clipped."""
    net, (x, y) = _net(), _batch()
    eps = 0.05
    x_p = perturb(net, x, y, math.inf, eps, "fgsm", (0.0, 1.0), torch.Generator().manual_seed(3))
    start = (torch.rand(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype) * 2 - 1) * eps
    start = (x + start).clamp(0, 1)
    z = start.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net(z), y), z)
    expected = (x + (start - x + 1.25 * eps * g.sign()).clamp(-eps, eps)).clamp(0, 1)
    assert torch.allclose(x_p, expected)
    # The step raises the loss compared with the random start.
    with torch.no_grad():
        assert F.cross_entropy(net(x_p), y) > F.cross_entropy(net(start), y)


def test_warmup_factor() -> None:
    assert [warmup_factor(e, 0) for e in (1, 2)] == [1.0, 1.0]
    assert [warmup_factor(e, 3) for e in (1, 2, 3, 4, 5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def _objective(**kwargs) -> VariantObjective:
    return VariantObjective(2.0, 0.1, None, None, torch.Generator().manual_seed(0), **kwargs)


def test_default_variant_is_the_base_objective() -> None:
    net, (x, y) = _net(), _batch()
    base = JacobianRegularizedObjective(2.0, 0.1, 1, None, torch.Generator().manual_seed(5))
    variant = VariantObjective(2.0, 0.1, 1, None, torch.Generator().manual_seed(5))
    assert torch.equal(base(net, x, y).loss, variant(net, x, y).loss)


def test_perturbed_terms() -> None:
    net, (x, y) = _net(), _batch()
    with torch.no_grad():
        clean_ce = F.cross_entropy(net(x), y)
    # Only the regulariser at the perturbed point: the cross-entropy is the clean one.
    out = _objective(perturbation="fgsm", perturbed_terms="regularizer", eps=0.3)(net, x, y)
    assert torch.allclose(out.parts["cross_entropy"], clean_ce)
    # Both terms at the perturbed point; with reg_weight 0 this is single-step adversarial training alone.
    obj = VariantObjective(2.0, 0.0, None, None, torch.Generator().manual_seed(0), perturbation="fgsm", eps=0.3)
    out = obj(net, x, y)
    x_p = perturb(net, x, y, 2.0, 0.3, "fgsm", None, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(out.loss, F.cross_entropy(net(x_p), y))
    assert out.parts["regularizer"] is None and out.loss > clean_ce
    # Regulariser at the perturbed point, by hand.
    out = _objective(target="loss", perturbation="random", eps=0.3)(net, x, y)
    x_p = perturb(net, x, y, 2.0, 0.3, "random", None, torch.Generator().manual_seed(0))
    expected = _dual(_brute_gradients(net, x_p, y, "loss"), 2.0).mean()
    assert torch.allclose(out.parts["regularizer"], expected)


def _ddp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target": "loss"},
        {"target": "margin", "finite_difference": True, "eps": 0.3},
        {"perturbation": "fgsm", "eps": 0.3, "perturbed_terms": "regularizer"},
    ],
)
def test_variants_backward_under_ddp(kwargs, monkeypatch) -> None:
    """One process, gloo: the weight gradients under DistributedDataParallel equal those without it."""
    import torch.distributed as dist

    net, (x, y) = _net(), _batch()
    plain = _objective(**kwargs)(net, x, y).loss
    expected = torch.autograd.grad(plain, list(net.parameters()))
    monkeypatch.setitem(os.environ, "MASTER_ADDR", "127.0.0.1")
    monkeypatch.setitem(os.environ, "MASTER_PORT", str(_ddp_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(net)
        net.zero_grad()
        _objective(**kwargs)(ddp, x, y).loss.backward()
        for p, e in zip(net.parameters(), expected, strict=True):
            assert torch.allclose(p.grad, e, rtol=1e-9, atol=1e-12)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- trainer options


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"target": "jacobian"}, ValueError, "target"),
        ({"perturbation": "pgd", "eps": 0.1}, ValueError, "perturbation"),
        ({"perturbation": "fgsm"}, ValueError, "eps"),
        ({"eps": 0.1}, ValueError, "eps"),
        ({"perturbation": "fgsm", "eps": 0.0}, ValueError, "eps"),
        ({"perturbation": "fgsm", "eps": "1"}, TypeError, "eps"),
        ({"perturbation": "fgsm", "eps": 0.1, "perturbed_terms": "ce"}, ValueError, "perturbed_terms"),
        ({"finite_difference": True, "eps": 0.1}, ValueError, "finite_difference"),
        ({"target": "loss", "reg_weight": 1.0, "finite_difference": 1, "eps": 0.1}, TypeError, "finite_difference"),
        ({"target": "loss", "finite_difference": True, "reg_weight": 1.0}, ValueError, "eps"),
        ({"reg_warmup_epochs": -1}, ValueError, "reg_warmup_epochs"),
        ({"reg_warmup_epochs": 1.5}, TypeError, "reg_warmup_epochs"),
        ({"target": "loss", "reg_weight": 1.0, "n_projections": 4}, ValueError, "n_projections"),
        ({"target": "margin", "reg_weight": 1.0, "norm": "inf", "n_rows": 2}, ValueError, "n_rows"),
    ],
)
def test_bad_variant_options_are_rejected(kwargs, error, name) -> None:
    with pytest.raises(error, match=name):
        JacobianRegularizedTrainer(make_classifier(mnist_mlp(hidden=16)), **kwargs)


def test_target_defaults_and_set_params() -> None:
    clf = make_classifier(mnist_mlp(hidden=16))
    trainer = JacobianRegularizedTrainer(clf)
    assert (trainer.target, trainer.perturbation, trainer.finite_difference, trainer.eps) == (
        "logits",
        None,
        False,
        None,
    )
    assert trainer.reg_weight == DEFAULT_REG_WEIGHTS[2.0]
    # No default weight for the loss / margin targets: a clear error, nothing changed.
    with pytest.raises(ValueError, match="reg_weight"):
        trainer.set_params(target="loss")
    assert trainer.target == "logits" and trainer.reg_weight == DEFAULT_REG_WEIGHTS[2.0]
    with pytest.raises(ValueError, match="reg_weight.*margin"):
        JacobianRegularizedTrainer(clf, target="margin")
    trainer.set_params(target="loss", reg_weight=3.0)
    assert trainer.reg_weight == 3.0
    trainer.set_params(target="logits", reg_weight=None)
    trainer.set_params(norm="inf")
    assert trainer.reg_weight == DEFAULT_REG_WEIGHTS[np.inf]
    with pytest.raises(ValueError, match="eps"):
        trainer.set_params(perturbation="fgsm")
    assert trainer.perturbation is None  # nothing changed on error
    trainer.set_params(perturbation="fgsm", eps=0.1)
    assert trainer.get_params()["eps"] == 0.1
    fixed = JacobianRegularizedTrainer(clf, reg_weight=0.5)
    fixed.set_params(target="margin")
    assert fixed.reg_weight == 0.5


def test_trainer_warmup_history_and_compute_regularizer() -> None:
    from art_jacreg.data import load_mnist

    (x, y), _, _, _ = load_mnist()
    x, y = x[:96], y[:96]
    clf = make_classifier(mnist_mlp(seed=0, hidden=16), device_type="cpu")
    trainer = JacobianRegularizedTrainer(
        clf, target="loss", reg_weight=2.0, reg_warmup_epochs=2, seed=0, verbose=False, batch_size=32
    )
    trainer.fit(x, y, nb_epochs=4)
    weights = [(h["loss"] - h["cross_entropy"]) / h["regularizer"] for h in trainer.history]
    assert np.allclose(weights, [2.0 / 3, 4.0 / 3, 2.0, 2.0], rtol=1e-5)
    # compute_regularizer still reports the logit Jacobian norm, whatever the target.
    logits_trainer = JacobianRegularizedTrainer(clf, seed=0, verbose=False)
    assert np.allclose(trainer.compute_regularizer(x[:8]), logits_trainer.compute_regularizer(x[:8]))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target": "margin", "reg_weight": 0.1, "finite_difference": True, "eps": 1.0},
        {"norm": "inf", "target": "loss", "reg_weight": 0.1, "perturbation": "fgsm", "eps": 0.1},
        {"perturbation": "random", "eps": 1.0, "perturbed_terms": "regularizer"},
    ],
)
def test_trainer_fits_with_variants(kwargs) -> None:
    from art_jacreg.data import load_mnist

    (x, y), _, _, _ = load_mnist()
    clf = make_classifier(mnist_mlp(seed=0, hidden=16), device_type="cpu")
    before = [p.detach().clone() for p in clf.model.parameters()]
    trainer = JacobianRegularizedTrainer(clf, seed=0, verbose=False, **kwargs)
    trainer.fit(x[:256], y[:256], nb_epochs=3, batch_size=32)
    assert all(np.isfinite(h["loss"]) and h["regularizer"] > 0 for h in trainer.history)
    assert trainer.history[-1]["cross_entropy"] < trainer.history[0]["cross_entropy"]
    assert any(not torch.equal(b, p) for b, p in zip(before, clf.model.parameters(), strict=True))
