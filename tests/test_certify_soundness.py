"""The release blocker: no attack and no random point ever beats a certificate.

For every certified ``(x, radius)``: torchattacks PGD / PGDL2 and APGD (CE and DLR), a batched per-sample-radius PGD
and random points of ``B_p(x, radius) ∩ [0, 1]`` keep the prediction, stay inside ``logit_bounds`` and never exceed
``certified_loss_bound`` (relative tolerance 1e-5 for the float32 model).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from test_certify_helpers import CLIP, Normalized, eval_points, network, pgd_per_sample, sample_ball_box, trained

from art_jacreg.certify import certified_loss_bound, certified_radius, logit_bounds

TOL = 1e-5  # relative, float32 model vs float64 bounds

CASES = [
    ("mlp", 2.0, "interval"),
    ("mlp", math.inf, "interval"),
    ("mlp", 2.0, "linear"),
    ("mlp", math.inf, "linear"),
    ("cnn", 2.0, "interval"),
    ("cnn", math.inf, "interval"),
    ("cnn", 2.0, "linear"),  # CROWN with patch-form rows through the convolutions
    ("cnn", math.inf, "linear"),
    ("fcnn", 2.0, "interval"),
    ("fcnn", math.inf, "lipschitz"),
    ("fcnn", math.inf, "interval"),
]


def _torchattacks(model, x, y, eps: float, norm: float) -> list[torch.Tensor]:
    name = "L2" if norm == 2 else "Linf"
    attacks = [
        torchattacks.PGDL2(model, eps=eps, alpha=eps / 4, steps=10)
        if norm == 2
        else torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10),
        torchattacks.APGD(model, norm=name, eps=eps, steps=10, loss="ce", seed=0),
        torchattacks.APGD(model, norm=name, eps=eps, steps=10, loss="dlr", seed=0),
    ]
    return [atk(x, y) for atk in attacks]


def _check(model, net, x_adv, x, y, pred, radius, norm, lower, upper, bound):
    """All soundness checks for adversarial points ``x_adv`` (same shape as ``x``)."""
    e = radius.float()
    delta = (x_adv - x).flatten(1)
    dist = delta.norm(dim=1) if norm == 2 else delta.abs().amax(dim=1)
    assert (dist <= e * (1 + 1e-5) + 1e-7).all(), "attack left the ball"
    assert (x_adv >= CLIP[0]).all() and (x_adv <= CLIP[1]).all()
    with torch.no_grad():
        logits = model(x_adv).double()
    assert (logits.argmax(1) == pred).all(), "a certified prediction changed"
    tol = TOL * (1 + logits.abs().amax(1, keepdim=True))
    assert (logits >= lower - tol).all() and (logits <= upper + tol).all(), "logits outside the certified bounds"
    loss = F.cross_entropy(logits, y, reduction="none")
    assert (loss <= bound * (1 + TOL) + TOL).all(), "a loss exceeded the certified loss bound"


@pytest.mark.parametrize(("name", "norm", "method"), CASES)
def test_no_attack_beats_a_certificate(name, norm, method):
    torch.manual_seed(0)
    model, net = Normalized(trained(name)), network(name)
    n = 6 if method == "linear" else 10
    x, y = eval_points(n, offset=100)
    with torch.no_grad():
        pred = model(x).argmax(1)
    radius = certified_radius(net, x, pred, norm, CLIP, method)
    keep = radius > 0
    assert keep.sum() >= 2, "too few certified samples to test anything"
    x, y, pred, radius = x[keep], y[keep], pred[keep], radius[keep]
    lower, upper = logit_bounds(net, x, radius, norm, CLIP, method)
    bound = certified_loss_bound(net, x, y, radius, norm, CLIP, method)
    # random points (on the sphere / at the corners and inside)
    for p in sample_ball_box(x, radius.float() * (1 - 1e-6), norm, 16, torch.Generator().manual_seed(5)):
        _check(model, net, p, x, y, pred, radius, norm, lower, upper, bound)
    # batched PGD with one radius per sample, on the true label and on the certified prediction
    for target in (y, pred):
        adv = pgd_per_sample(model, x, target, radius.float() * (1 - 1e-6), norm, steps=20)
        _check(model, net, adv, x, y, pred, radius, norm, lower, upper, bound)
    # torchattacks, per sample (each has its own radius), on the first three certified samples
    for i in range(min(3, len(x))):
        sl = slice(i, i + 1)
        eps = float(radius[i]) * (1 - 1e-6)
        for adv in _torchattacks(model, x[sl], y[sl], eps, norm):
            _check(model, net, adv, x[sl], y[sl], pred[sl], radius[sl], norm, lower[sl], upper[sl], bound[sl])


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_loss_bound_is_sound_beyond_the_certified_radius(norm):
    """certified_loss_bound holds at any eps, also where the prediction is not certified (misclassified points)."""
    model, net = Normalized(trained("cnn")), network("cnn")
    x, y = eval_points(8, offset=150)
    eps = 1.0 if norm == 2 else 0.05
    bound = certified_loss_bound(net, x, y, eps, norm, CLIP, "interval")
    lower, upper = logit_bounds(net, x, eps, norm, CLIP, "interval")
    e = torch.full((len(x),), eps)
    adv = pgd_per_sample(model, x, y, e * (1 - 1e-6), norm, steps=20)
    with torch.no_grad():
        logits = model(adv).double()
    loss = F.cross_entropy(logits, y, reduction="none")
    assert (loss <= bound * (1 + TOL) + TOL).all()
    tol = TOL * (1 + logits.abs().amax(1, keepdim=True))
    assert (logits >= lower - tol).all() and (logits <= upper + tol).all()
    clean = F.cross_entropy(model(x).double(), y, reduction="none")
    assert (loss >= clean - 1e-4).all()  # the attack did its job (sanity of the check itself)
