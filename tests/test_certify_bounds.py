"""Bounds against brute force: layer norms vs SVD/power iteration, interval Jacobians vs autograd, bound nesting."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_certify_helpers import CLIP, MEAN, NORMS, STD, Normalized, eval_points, network, sample_ball_box, trained
from torch import nn

from art_jacreg.certify import (
    build_network,
    certified_loss_bound,
    certified_radius,
    certify_at,
    global_lipschitz_bound,
    layer_operator_norms,
    logit_bounds,
)
from art_jacreg.certify._common import input_set, margin_rows
from art_jacreg.certify.intervals import interval_bounds, linear_bounds
from art_jacreg.certify.local_jacobian import jacobian_interval
from art_jacreg.certify.ops import Conv2d, Linear, MaxPool2d

# The operations own these rules now; the same (op, in_scale) call signature as the former lipschitz helpers.
_conv_circular_bound = Conv2d.circular_spectral_bound


def _explicit_matrix(op, in_scale):
    return op.explicit_matrix(in_scale)


REL = 1e-9  # float64 tolerance of the bound computations themselves


def _power_iteration(op, n_iter: int = 100) -> float:
    v = torch.randn((1, *op.in_shape), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for _ in range(n_iter):
        v = op.lin_t(op.lin(v))
        v = v / v.norm()
    return float(op.lin(v).norm())


@pytest.mark.parametrize("name", ["mlp", "cnn", "fcnn"])
def test_layer_norms_upper_bound_power_iteration_and_exact_svd(name):
    net = network(name)
    norms2, norms_inf = layer_operator_norms(net, 2), layer_operator_norms(net, "inf")
    assert len(norms2) == len(net.ops) == len(norms_inf)
    for op, n2, ninf in zip(net.ops, norms2, norms_inf):
        if isinstance(op, (Linear, Conv2d)):
            assert n2 >= _power_iteration(op) * (1 - REL)
            if min(math.prod(op.in_shape), math.prod(op.out_shape)) <= 300:  # keep the test fast
                mat = _explicit_matrix(op, None)
                exact = float(torch.linalg.matrix_norm(mat, 2))
                assert exact * (1 - REL) <= n2 <= exact * 1.10  # exact SVD, or the circular bound (a few % above)
                assert ninf == pytest.approx(float(mat.abs().sum(1).max()), rel=1e-8)
        if isinstance(op, MaxPool2d):
            overlap = 9 if op.stride == (1, 1) else 1  # 3x3 windows with stride 1 overlap 9 times
            assert n2 == pytest.approx(math.sqrt(overlap), rel=1e-8) and ninf == 1.0
    # global bounds dominate the Jacobian norm at sample points
    x, _ = eval_points(4)
    jac = torch.autograd.functional.jacobian(lambda z: net(z).sum(0), x.double()).permute(1, 0, 2, 3, 4).flatten(2)
    assert float(torch.linalg.matrix_norm(jac, 2).max()) <= global_lipschitz_bound(net, 2)
    inf_to_1 = jac.abs().sum((1, 2)).max()  # >= ||J||_{inf->1}
    assert float(jac.sign().mul(jac).sum(1).max()) <= float(inf_to_1) + 1e-9
    assert float(jac.abs().sum(1).amax(1).max()) <= global_lipschitz_bound(net, math.inf)


@pytest.mark.parametrize(
    ("c_in", "c_out", "k", "stride", "pad", "dil", "groups", "size"),
    [(1, 16, 4, 2, 1, 1, 1, 12), (3, 6, 3, 1, 1, 1, 1, 9), (4, 6, 3, 2, 0, 2, 2, 11), (2, 4, 5, 3, 2, 1, 1, 10)],
)
def test_circular_conv_bound_is_an_upper_bound_of_the_exact_norm(c_in, c_out, k, stride, pad, dil, groups, size):
    gen = torch.Generator().manual_seed(k * 7 + stride)
    w = torch.randn(c_out, c_in // groups, k, k, generator=gen)
    op = Conv2d(w, None, (c_in, size, size), (stride, stride), (pad, pad), (dil, dil), groups)
    scale = torch.rand(c_in, 1, 1, generator=gen, dtype=torch.float64).expand(c_in, size, size) + 0.5
    for s in (None, scale):
        exact = float(torch.linalg.matrix_norm(_explicit_matrix(op, s), 2))
        bound = _conv_circular_bound(op, s)
        assert exact * (1 - REL) <= bound <= 1.5 * exact  # sound; loose only on tiny dilated grids


@pytest.mark.parametrize("name", ["mlp", "cnn", "fcnn"])
@pytest.mark.parametrize("norm", NORMS)
def test_interval_jacobian_contains_exact_jacobians_in_the_set(name, norm):
    net = network(name)
    x, _ = eval_points(3, offset=20)
    x = x.double()
    eps = torch.full((3,), 0.3 if norm == 2 else 0.02, dtype=torch.float64)
    s = input_set(x, eps, norm, CLIP)
    rows, _ = margin_rows(net(x).argmax(1), 10)
    methods = [interval_bounds(net, s)] + ([linear_bounds(net, s)] if name != "cnn" else [])
    points = sample_ball_box(x, eps, norm, 4, torch.Generator().manual_seed(1))
    for bounds in methods:
        for r in (rows, torch.eye(10, dtype=torch.float64)[None]):
            centre, radius = jacobian_interval(net, bounds, r)
            for p in points:
                jac = torch.autograd.functional.jacobian(lambda z: net(z).sum(0), p)  # (K, B, ...)
                jac = jac.permute(1, 0, *range(2, jac.ndim))  # (B, K, ...)
                rows_j = torch.einsum("bmk,bk...->bm...", r.expand(3, -1, -1), jac)
                slack = 1e-9 * (1 + radius.abs().max())
                assert ((rows_j - centre).abs() <= radius + slack).all()


@pytest.mark.parametrize("name", ["mlp", "fcnn"])
@pytest.mark.parametrize("norm", NORMS)
def test_linear_bounds_are_inside_interval_bounds_and_contain_samples(name, norm):
    net = network(name)
    x, _ = eval_points(4, offset=30)
    x = x.double()
    eps = torch.full((4,), 0.5 if norm == 2 else 0.03, dtype=torch.float64)
    s = input_set(x, eps, norm, CLIP)
    ibp, lin = interval_bounds(net, s), linear_bounds(net, s)
    tighter = 0
    for lo_i, hi_i, lo_l, hi_l in zip(ibp.lower, ibp.upper, lin.lower, lin.upper):
        assert (lo_l >= lo_i).all() and (hi_l <= hi_i).all() and (lo_l <= hi_l).all()
        tighter += int((hi_l - lo_l).sum() < (hi_i - lo_i).sum())
    assert tighter >= 2  # strictly tighter somewhere (at least the logits and one hidden layer)
    points = sample_ball_box(x, eps, norm, 8, torch.Generator().manual_seed(2))
    for p in points:
        h = p
        for i, op in enumerate(net.ops):
            assert (h >= lin.lower[i] - 1e-9).all() and (h <= lin.upper[i] + 1e-9).all()
            h = op.forward(h)


@pytest.mark.parametrize("name", ["mlp", "cnn", "fcnn"])
def test_logit_bounds_contain_sampled_logits_and_nest_across_methods(name):
    net, model = network(name), Normalized(trained(name))
    x, _ = eval_points(4, offset=40)
    for norm in NORMS:
        eps = 0.4 if norm == 2 else 0.03
        methods = ["lipschitz", "interval"] + (["linear"] if name == "mlp" else [])
        results = {m: logit_bounds(net, x, eps, norm, CLIP, m) for m in methods}
        points = sample_ball_box(x, torch.full((4,), eps), norm, 16, torch.Generator().manual_seed(3))
        with torch.no_grad():
            logits = torch.stack([model(p) for p in points]).double()
        for lo, hi in results.values():
            tol = 1e-5 * (1 + logits.abs().max())
            assert (logits >= lo - tol).all() and (logits <= hi + tol).all()
        for cheap, rich in zip(methods, methods[1:]):
            assert (results[rich][0] >= results[cheap][0] - REL).all()
            assert (results[rich][1] <= results[cheap][1] + REL).all()


def test_radii_nest_across_methods_and_report_ratios(capsys):
    for name in ("mlp", "fcnn"):
        net = network(name)
        x, _ = eval_points(5, offset=50)
        pred = net(x).argmax(1)
        methods = ("lipschitz", "interval", "linear") if name == "mlp" else ("lipschitz", "interval")
        for norm in NORMS:
            r = {m: certified_radius(net, x, pred, norm, CLIP, m, n_bisect=6) for m in methods}
            r.setdefault("linear", r["interval"])
            assert (r["interval"] >= r["lipschitz"]).all() and (r["linear"] >= r["interval"]).all()
            assert (r["lipschitz"] > 0).any()
            ok = r["lipschitz"] > 0
            ratios = ", ".join(f"{m}/lipschitz {(r[m][ok] / r['lipschitz'][ok]).median():.3g}" for m in methods[1:])
            with capsys.disabled():
                print(f"\n{name} norm={norm}: median radius lipschitz {r['lipschitz'].median():.4g}, {ratios}")
            for m in methods:  # certify_at holds at the returned radius
                radius = r[m]
                assert certify_at(net, x, pred, radius, norm, CLIP, m)[radius > 0].all()


def test_radii_do_not_grow_when_last_layer_is_scaled_up():
    model = trained("mlp")
    x, _ = eval_points(5, offset=60)
    net = network("mlp")
    pred = net(x).argmax(1)
    bigger = copy.deepcopy(model)
    with torch.no_grad():
        bigger[-1].weight.mul_(2)
        bigger[-1].bias.mul_(2)
    net2 = build_network(bigger, (1, 28, 28), preprocessing=(MEAN, STD))
    for norm in NORMS:
        for method in ("lipschitz", "interval"):
            r1 = certified_radius(net, x, pred, norm, CLIP, method, n_bisect=8)
            r2 = certified_radius(net2, x, pred, norm, CLIP, method, n_bisect=8)
            assert (r2 <= r1 * (1 + 1e-2) + 1e-12).all()  # equal in exact arithmetic up to the bisection precision


def test_affine_network_lipschitz_radius_is_the_exact_distance_to_the_boundary():
    """For a purely affine model the certificate is tight: the constants (dual norms) must be exactly right."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    net = build_network(model, (3, 2, 2), preprocessing=(0.5, 0.25))
    x = torch.randn(6, 3, 2, 2)
    pred = net(x).argmax(1)
    w = model[1].weight.detach().double() / 0.25  # gradient of the logits w.r.t. the raw input
    for norm, dual in ((2, 2), (math.inf, 1)):
        radius = certified_radius(net, x, pred, norm, method="interval", n_bisect=20)
        rows, others = margin_rows(pred, 4)
        margins = (rows * net(x)[:, None]).sum(-1)
        diff = (w[pred][:, None] - w[others]).norm(p=dual, dim=-1)
        exact = (margins / diff).min(1).values
        assert (radius <= exact).all() and (radius >= exact * (1 - 1e-3)).all()
        # just past the radius, the worst-case perturbation flips the prediction
        j = (margins / diff).argmin(1)
        g = w[pred] - w[others.gather(1, j[:, None])[:, 0]]
        step = -g / g.norm(dim=1, keepdim=True) if norm == 2 else -g.sign()
        flipped = net(x.double() + (exact * 1.001).reshape(-1, 1, 1, 1) * step.reshape(x.shape))
        assert (flipped.argmax(1) != pred).all()


def test_certified_loss_bound_methods_and_lower_limit():
    net = network("mlp")
    x, y = eval_points(6, offset=70)
    logits = net(x)
    clean = torch.logsumexp(logits, 1) - logits.gather(1, y[:, None])[:, 0]
    for norm in NORMS:
        zero = certified_loss_bound(net, x, y, 0.0, norm, CLIP)
        torch.testing.assert_close(zero, clean, rtol=1e-9, atol=1e-9)
        eps = 0.2 if norm == 2 else 0.01
        bounds = [certified_loss_bound(net, x, y, eps, norm, CLIP, m) for m in ("lipschitz", "interval", "linear")]
        assert (bounds[0] >= bounds[1] - REL).all() and (bounds[1] >= bounds[2] - REL).all()
        assert (bounds[2] >= clean - REL).all()


def test_argument_validation():
    net = network("mlp")
    x, y = eval_points(2)
    with pytest.raises(ValueError, match="norm"):
        certify_at(net, x, y, 0.1, 3)
    with pytest.raises(ValueError, match="method"):
        certify_at(net, x, y, 0.1, 2, method="crown")
    with pytest.raises(ValueError, match="eps"):
        certify_at(net, x, y, -0.1, 2)
    with pytest.raises(ValueError, match="labels"):
        certify_at(net, x, y[:1], 0.1, 2)
    with pytest.raises(ValueError, match="x"):
        certify_at(net, x[:, :, :5], y, 0.1, 2)
    with pytest.raises(ValueError, match="clip_values"):
        certify_at(net, x, y, 0.1, 2, clip_values=(1.0, 0.0))
    with pytest.raises(TypeError, match="net"):
        certify_at(trained("mlp"), x, y, 0.1, 2)
    assert certify_at(net, x, torch.nn.functional.one_hot(y, 10), 0.0, "linf").shape == (2,)
