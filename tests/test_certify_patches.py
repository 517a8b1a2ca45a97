"""Patch-form CROWN rows through MaxPool, dilated and grouped convolutions and AvgPool.

Each new patch rule is compared with the dense rows (:func:`~art_jacreg.certify.intervals.backward_lower`) to 1e-10 at
every layer boundary the patch form reaches, and the ``"linear"`` certificates of a max-pool CNN, whose CROWN rows now
go through the pooling as patches, are attacked (PGD on the true label and on the prediction, random points of the
ball and the box).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from test_certify_helpers import (
    CLIP,
    MEAN,
    NORMS,
    STD,
    Normalized,
    _train,
    eval_points,
    pgd_per_sample,
    sample_ball_box,
)
from torch import nn

from art_jacreg.certify import build_network, certified_radius, logit_bounds
from art_jacreg.certify._common import input_set
from art_jacreg.certify.intervals import backward_lower, interval_bounds
from art_jacreg.certify.ops import MaxPool2d, Reshape
from art_jacreg.certify.patches import patch_lower, patch_supported
from art_jacreg.models import mnist_maxpool_cnn

EPS = {2.0: 0.5, math.inf: 0.03}


def _pool_zoo() -> nn.Module:
    """Tiling, overlapping-padded and dilated max-pooling, a dilated and a grouped convolution, an AvgPool."""
    torch.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # tiles the image: 14 x 14
        nn.Conv2d(4, 4, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),  # overlapping windows with padding: 7 x 7
        nn.Conv2d(4, 6, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.MaxPool2d(2, stride=1, dilation=2),  # dilated windows: 5 x 5
        nn.AvgPool2d(2, stride=1),  # a depthwise convolution: 4 x 4
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 10),
    ).eval()


@pytest.mark.parametrize("norm", NORMS)
def test_patch_rows_through_pooling_equal_dense_rows(norm):
    net = build_network(_pool_zoo(), (1, 28, 28), (MEAN, STD))
    x, _ = eval_points(3, offset=160)
    s = input_set(x.double(), torch.full((3,), EPS[norm], dtype=torch.float64), norm, CLIP)
    bounds = interval_bounds(net, s)
    ends = [e for e in range(1, len(net.ops) + 1) if patch_supported(net, e) and len(net.ops[e - 1].out_shape) == 3]
    pools = [i for i, op in enumerate(net.ops) if isinstance(op, MaxPool2d)]
    assert len(pools) == 3 and max(ends) > pools[-1] + 1  # every pooling is crossed in patch form
    gen = torch.Generator().manual_seed(1)
    for end in ends:
        shape = net.ops[end - 1].out_shape
        n = math.prod(shape)
        idx = torch.stack([torch.randperm(n, generator=gen)[: min(n, 12)] for _ in range(3)])
        rows = torch.zeros(3, idx.shape[1], n, dtype=torch.float64).scatter_(2, idx[:, :, None], 1.0)
        rows = torch.cat([rows, -rows], 1).reshape(3, -1, *shape)
        dense = backward_lower(net, s, bounds, rows, end)
        patch = patch_lower(net, s, bounds.lower, bounds.upper, end, idx)
        assert torch.isfinite(dense).all()
        torch.testing.assert_close(patch, dense, rtol=1e-10, atol=1e-10)


def test_patch_form_covers_the_maxpool_cnn_up_to_its_flatten():
    net = build_network(mnist_maxpool_cnn(seed=0).eval(), (1, 28, 28), (MEAN, STD))
    flatten = next(i for i, op in enumerate(net.ops) if isinstance(op, Reshape))
    assert all(patch_supported(net, e) for e in range(1, flatten + 1))
    assert not patch_supported(net, flatten + 1)  # Reshape and Linear stay dense


def test_no_attack_beats_linear_certificates_of_a_maxpool_cnn():
    torch.manual_seed(0)
    model = _train(mnist_maxpool_cnn(seed=0), n_train=600)
    attacked, net = Normalized(model), build_network(model, (1, 28, 28), (MEAN, STD))
    x, y = eval_points(4, offset=100)
    with torch.no_grad():
        pred = attacked(x).argmax(1)
    for norm in NORMS:
        radius = certified_radius(net, x, pred, norm, CLIP, "linear", n_bisect=4)
        keep = radius > 0
        assert keep.sum() >= 2
        xs, ys, ps, rs = x[keep], y[keep], pred[keep], radius[keep]
        lower, upper = logit_bounds(net, xs, rs, norm, CLIP, "linear")
        points = list(sample_ball_box(xs, rs.float() * (1 - 1e-6), norm, 16, torch.Generator().manual_seed(5)))
        points += [pgd_per_sample(attacked, xs, t, rs.float() * (1 - 1e-6), norm, steps=20) for t in (ys, ps)]
        for p in points:
            with torch.no_grad():
                logits = attacked(p).double()
            tol = 1e-5 * (1 + logits.abs().amax(1, keepdim=True))
            assert (logits.argmax(1) == ps).all(), "a certified prediction changed"
            assert (logits >= lower - tol).all() and (logits <= upper + tol).all()
            assert F.cross_entropy(logits, ys, reduction="none").isfinite().all()


def test_maxpool_names_the_inputs_that_can_be_the_maximum_of_their_window():
    pool = MaxPool2d((1, 4, 4), (2, 2), (2, 2), (0, 0), (1, 1))
    lo = torch.tensor([[0.0, 1.0, 5.0, 0.0], [0.5, 2.0, 1.0, 1.0], [0.0, 0.0, 3.0, 3.0], [0.0, 0.0, 3.0, 3.0]])
    hi = lo + torch.tensor([[0.5, 0.5, 0.1, 4.0], [0.1, 0.1, 0.1, 0.1], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    expected = torch.tensor(
        [
            [False, False, True, False],  # window 1: only [2, 2.1] reaches its largest lower bound 2; window 2:
            [False, True, False, False],  # only [5, 5.1] (the others' upper bounds stay below 5)
            [True, True, True, True],  # window 3: four ties at 0; window 4: [3, 4] and three 3's
            [True, True, True, True],
        ]
    )
    assert torch.equal(pool.units_to_tighten(lo[None, None].double(), hi[None, None].double())[0, 0], expected)


def test_linear_bounds_of_a_sample_do_not_depend_on_its_batch():
    # Each sample bounds its own units (no padding with other units up to the longest list of the batch), so the
    # bounds of a digit are those it gets alone, to rounding.
    from art_jacreg.certify.intervals import linear_bounds

    net = build_network(_train(mnist_maxpool_cnn(seed=0), n_train=300), (1, 28, 28), (MEAN, STD))
    x, _ = eval_points(4, offset=40)
    eps = torch.tensor([0.3, 0.05, 0.6, 0.15], dtype=torch.float64)  # very different numbers of unstable units
    together = linear_bounds(net, input_set(x.double(), eps, 2.0, CLIP))
    for i in range(4):
        alone = linear_bounds(net, input_set(x[i : i + 1].double(), eps[i : i + 1], 2.0, CLIP))
        for t, u in zip(together.lower + together.upper, alone.lower + alone.upper, strict=True):
            torch.testing.assert_close(t[i : i + 1], u, rtol=1e-9, atol=1e-9)


def test_bounding_the_possible_maxima_is_as_tight_as_bounding_every_unit():
    # A ReLU followed by a MaxPool: CROWN bounds the unstable units and the units that can be the maximum of their
    # window; bounding every unit of the layer gives the same bounds from the pooling on (and the same radii).
    import art_jacreg.certify.intervals as intervals

    net = build_network(_train(mnist_maxpool_cnn(seed=0), n_train=300), (1, 28, 28), (MEAN, STD))
    x, _ = eval_points(3, offset=70)
    s = input_set(x.double(), torch.tensor([0.05, 0.1, 0.2], dtype=torch.float64), 2.0, CLIP)
    named = intervals.linear_bounds(net, s)
    every = intervals._units_to_tighten
    try:
        intervals._units_to_tighten = lambda net, end, lo, hi: torch.ones_like(lo, dtype=torch.bool)
        full = intervals.linear_bounds(net, s)
    finally:
        intervals._units_to_tighten = every
    relu_input = next(i for i, op in enumerate(net.ops) if i > 4 and not op.affine)  # the second ReLU
    unstable = intervals.interval_bounds(net, s)
    extra = every(net, relu_input, named.lower[relu_input], named.upper[relu_input])
    only = (unstable.lower[relu_input] < 0) & (unstable.upper[relu_input] > 0)
    assert bool((extra & ~only).any())  # the pooling adds units beyond the unstable ones
    for i in range(relu_input + 2, len(net.ops) + 1):  # from the pooling on: the same bounds
        torch.testing.assert_close(named.lower[i], full.lower[i], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(named.upper[i], full.upper[i], rtol=1e-9, atol=1e-9)
