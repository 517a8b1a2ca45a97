"""The fast paths of the certification engines give the numbers of their generic rules, to the last bit.

MaxPool2d with windows that tile the image (``kernel_size == stride``, no padding or dilation) uses native pooling
kernels and one product per row tensor instead of copying windows out and folding them back; ReLU pulls intervals
back in fewer passes. Inputs with many exact ties (bounds on a grid of halves, zeros after a ReLU) check that the
first-maximum index of ``max_pool2d`` agrees with ``Tensor.max``. Conv2d skips gathering its padding mask and its bias
under patches that lie inside the image. The brute-force checks of the rules themselves (against autograd Jacobians
and sampled points) run on a tiling MaxPool in ``test_certify_ops.py``. Interval propagation takes the values at the
centres from the input set when a radius search computed them once.

Two fast paths give the same numbers up to rounding, not to the last bit: a ReLU followed by a tiling MaxPool is
applied in one patch-form rule (the ReLU's relaxation on the routed coefficients, before they are spread), and
Conv2d's patch rows go through a GEMM or the convolution's input gradient instead of ``conv_transpose2d``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_certify_helpers import CLIP, eval_points, network

from art_jacreg.certify._common import input_set
from art_jacreg.certify.intervals import interval_bounds
from art_jacreg.certify.ops import MaxPool2d, ReLU
from art_jacreg.certify.ops.base import PiecewiseOp
from art_jacreg.certify.ops.maxpool import maxpool_windows
from art_jacreg.certify.ops.patch_geometry import PatchGeometry


def _tied_bounds(g: torch.Generator, shape: tuple[int, ...], relu_after: bool) -> tuple[torch.Tensor, torch.Tensor]:
    lower = (torch.randn(5, *shape, generator=g, dtype=torch.float64) * 2).round() / 2
    if relu_after:
        lower = lower.clamp(min=0)
    upper = lower + (torch.rand(5, *shape, generator=g, dtype=torch.float64) * 2).round() / 2
    return lower, upper


def _same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return all(x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True))


class _Generic(MaxPool2d):
    """The same pooling forced onto the generic (unfold / fold) rules."""

    def _tiles(self) -> bool:
        return False


@pytest.mark.parametrize("shape", [(3, 6, 6), (2, 7, 5), (4, 12, 12)])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("relu_after", [False, True])
def test_tiling_maxpool_rules_equal_the_generic_ones(shape, k, relu_after):
    g = torch.Generator().manual_seed(11)
    fast, slow = MaxPool2d(shape, (k, k), (k, k), (0, 0), (1, 1)), _Generic(shape, (k, k), (k, k), (0, 0), (1, 1))
    assert fast._tiles() and not slow._tiles()
    lower, upper = _tied_bounds(g, shape, relu_after)
    lower[0, 0, 0, 0] = float("nan")  # propagated like max_pool2d does
    pooled = torch.nn.functional.max_pool2d(lower, k, k)
    out = fast.forward(lower)
    assert torch.equal(out.nan_to_num(7.0), pooled.nan_to_num(7.0)) and bool(out.isnan().any())
    lower[0, 0, 0, 0] = 0.0
    assert _same(maxpool_windows(fast, lower, upper), maxpool_windows(slow, lower, upper))
    for batch in (5, 1):  # rows of every sample, and rows shared by all samples
        c = torch.randn(batch, 3, *fast.out_shape, generator=g, dtype=torch.float64)
        r = torch.rand(batch, 3, *fast.out_shape, generator=g, dtype=torch.float64)
        rho = torch.rand(batch, 3, generator=g, dtype=torch.float64)
        const = torch.randn(5, 3, generator=g, dtype=torch.float64)
        for op_a, op_b in ((fast, slow), (fast, fast)):
            generic = PiecewiseOp.pull_back_interval(op_b, c, r, lower, upper)  # from pull_back_hull
            assert _same(op_a.pull_back_interval(c, r, lower, upper), generic)
        for norm in (2.0, float("inf")):
            ball = (c, rho, lower, upper, norm, 1.5)
            assert _same(fast.ball_step(*ball), slow.ball_step(*ball))
        assert _same(fast.relax_backward(c, const, lower, upper), slow.relax_backward(c, const, lower, upper))


@pytest.mark.parametrize("batch", [4, 1])
def test_relu_pull_back_equals_its_hull(batch):
    g = torch.Generator().manual_seed(12)
    op = ReLU((2, 5, 5))
    lower, upper = _tied_bounds(g, op.in_shape, False)
    lower, upper = lower[:4] - 0.25, upper[:4] - 0.25
    lower[0, 0, 0, 0] = upper[0, 0, 0, 0] = 0.0  # a unit fixed at 0 counts as active
    c = torch.randn(batch, 3, *op.out_shape, generator=g, dtype=torch.float64)
    r = torch.rand(batch, 3, *op.out_shape, generator=g, dtype=torch.float64)
    assert _same(op.pull_back_interval(c, r, lower, upper), PiecewiseOp.pull_back_interval(op, c, r, lower, upper))


def test_patches_inside_the_image_are_recognised():
    """``PatchGeometry.inside`` (which lets Conv2d skip gathering its padding mask and bias) is exactly "gathering
    an all-ones image gives all ones"."""
    g = torch.Generator().manual_seed(13)
    seen = set()
    for _ in range(200):
        size = tuple(int(v) for v in torch.randint(1, 6, (2,), generator=g))
        stride = tuple(int(v) for v in torch.randint(1, 3, (2,), generator=g))
        off = tuple(int(v) for v in torch.randint(-1, 2, (2,), generator=g))
        grid = tuple(int(v) for v in torch.randint(1, 5, (2,), generator=g))
        pos = torch.randint(0, grid[0] * grid[1], (2, 3), generator=g)
        geometry = PatchGeometry(size, stride, off, grid, pos)
        full = bool((geometry.gather(torch.ones(1, 1, 7, 6, dtype=torch.float64)) == 1).all())
        every = PatchGeometry(size, stride, off, grid, torch.arange(grid[0] * grid[1])[None])
        full_every = bool((every.gather(torch.ones(1, 1, 7, 6, dtype=torch.float64)) == 1).all())
        assert geometry.inside(7, 6) == every.inside(7, 6) == full_every
        assert full or not full_every
        seen.add(full_every)
    assert seen == {True, False}


def test_a_one_by_one_pooling_leaves_the_callers_rows_alone():
    g = torch.Generator().manual_seed(14)
    op = MaxPool2d((2, 4, 4), (1, 1), (1, 1), (0, 0), (1, 1))
    lower, upper = _tied_bounds(g, op.in_shape, False)
    c = torch.randn(5, 3, *op.out_shape, generator=g, dtype=torch.float64)
    rho = torch.rand(5, 3, generator=g, dtype=torch.float64)
    before, version = c.clone(), c._version
    out, _ = op.ball_step(c, rho, lower, upper, 2.0, 1.0)
    assert c._version == version and torch.equal(c, before)  # not even written in place (autograd would object)
    assert torch.equal(out, c)  # every 1x1 window is dominated: the rows pass unchanged


@pytest.mark.parametrize("norm", [2.0, float("inf")])
def test_interval_bounds_from_known_centres_are_the_same(norm):
    net = network("fcnn")
    x, _ = eval_points(6)
    x = x.to(torch.float64)
    s = input_set(x, torch.linspace(0.01, 0.5, 6, dtype=torch.float64), norm, CLIP)
    fresh = interval_bounds(net, s)
    given = [t.clone() for t in fresh.centre]
    known = interval_bounds(net, replace(s, centres=given))
    assert all(k is g for k, g in zip(known.centre[1:], given[1:], strict=True))  # taken, not recomputed
    for a, b in zip(fresh.lower + fresh.upper, known.lower + known.upper, strict=True):
        assert torch.equal(a, b)
    idx = torch.tensor([4, 1])
    sub = replace(s, centres=given).subset(idx)
    assert sub.centres is not None and all(torch.equal(a, b[idx]) for a, b in zip(sub.centres, given, strict=True))


@pytest.mark.parametrize("k", [2, 3])
def test_a_relu_then_a_tiling_maxpool_in_one_patch_rule_equals_the_two_rules(k):
    # The combined rule applies the ReLU's relaxation to the routed coefficients before spreading them: the numbers
    # of the two rules one after the other, up to rounding.
    g = torch.Generator().manual_seed(5)
    shape = (3, 4 * k, 4 * k)
    pool, relu = MaxPool2d(shape, (k, k), (k, k), (0, 0), (1, 1)), ReLU(shape)
    assert pool.patch_absorbs_elementwise() and relu.elementwise_relaxation(*_tied_bounds(g, shape, False)) is not None
    pre_lo, pre_hi = _tied_bounds(g, shape, False)  # many exact ties and stable / unstable units
    lo, hi = relu.interval(pre_lo, pre_hi)
    b, rows, (ph, pw) = 5, 7, (2, 3)
    grid = (4 - ph + 1, 4 - pw + 1)
    pos = torch.randint(0, grid[0] * grid[1], (b, rows), generator=g)
    geometry = PatchGeometry((ph, pw), (1, 1), (0, 0), grid, pos)
    a = torch.randn(b, rows, 3, ph, pw, generator=g, dtype=torch.float64).round(decimals=1)  # exact zeros too
    const = torch.randn(b, rows, generator=g, dtype=torch.float64)
    a1, c1, g1 = pool.patch_backward(a, const, geometry, lo, hi)
    two = relu.patch_backward(a1, c1, g1, pre_lo, pre_hi)
    one = pool.patch_backward_after(a, const, geometry, lo, hi, relu.elementwise_relaxation(pre_lo, pre_hi))
    torch.testing.assert_close(one[0], two[0], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(one[1], two[1], rtol=1e-13, atol=1e-13)
    assert (one[2].size, one[2].stride, one[2].off) == (two[2].size, two[2].stride, two[2].off)
    assert not _Generic(shape, (k, k), (k, k), (0, 0), (1, 1)).patch_absorbs_elementwise()  # windows may overlap
    assert not MaxPool2d(shape, (3, 3), (2, 2), (1, 1), (1, 1)).patch_absorbs_elementwise()
    assert ReLU(shape).patch_absorbs_elementwise() is False and pool.elementwise_relaxation(lo, hi) is None


@pytest.mark.parametrize(
    ("size", "stride", "dilation", "groups"), [((1, 1), 1, 1, 1), ((1, 1), 2, 1, 2), ((3, 2), 2, 2, 1)]
)
def test_conv_patch_rows_equal_the_transposed_convolution(size, stride, dilation, groups):
    # one-pixel rows go through one GEMM, larger ones through the convolution's input gradient
    from art_jacreg.certify.ops import Conv2d

    g = torch.Generator().manual_seed(3)
    weight = torch.randn(6, 4 // groups, 3, 3, generator=g, dtype=torch.float64)
    conv = Conv2d(weight, None, (4, 16, 16), (stride, stride), (0, 0), (dilation, dilation), groups)
    a = torch.randn(2, 5, 6, *size, generator=g, dtype=torch.float64)
    geometry = PatchGeometry(size, (1, 1), (0, 0), (4, 4), torch.randint(0, 16, (2, 5), generator=g))
    out, _, moved = conv.patch_backward(a, torch.zeros(2, 5, dtype=torch.float64), geometry, None, None)
    expected = torch.nn.functional.conv_transpose2d(
        a.reshape(10, 6, *size), weight, stride=stride, dilation=dilation, groups=groups
    )
    assert moved.size == tuple(expected.shape[-2:])
    torch.testing.assert_close(out.reshape(expected.shape), expected, rtol=1e-13, atol=1e-13)
