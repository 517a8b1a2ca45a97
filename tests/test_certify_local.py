"""The local bounds behind ``method="interval"`` against brute force (autograd Jacobians, sampled and attacked points).

Deviation-tightened pre-activation bounds, interval Jacobians at every layer boundary, the centre-and-ball
representation of the rows, segment Lipschitz constants, the row refinement of ``functional_lower_bounds``, and the
patch form of CROWN's rows against the dense one.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_certify_helpers import CLIP, NORMS, eval_points, network, project, sample_ball_box
from torch import nn

from art_jacreg.certify import build_network, certified_radius
from art_jacreg.certify._common import input_set, margin_rows
from art_jacreg.certify.intervals import _ibp_step, backward_lower, interval_bounds
from art_jacreg.certify.lipschitz import segment_lipschitz
from art_jacreg.certify.local_jacobian import _ball_step, _dual, local_deviation_lower, pull_back
from art_jacreg.certify.ops import AffineOp, MaxPool2d
from art_jacreg.certify.ops.relu import relu_relaxation
from art_jacreg.certify.patches import patch_lower, patch_supported
from art_jacreg.certify.radius import functional_lower_bounds

NAMES = ("mlp", "cnn", "fcnn")
EPS = {2.0: 0.3, math.inf: 0.02}
ROUND = 1e-9  # float64 rounding of the bound computations


def _setup(name: str, norm: float, n: int = 3, offset: int = 100, scale: float = 1.0):
    net = network(name)
    x, _ = eval_points(n, offset=offset)
    x = x.double()
    s = input_set(x, torch.full((n,), EPS[norm] * scale, dtype=torch.float64), norm, CLIP)
    rows, _ = margin_rows(net(x).argmax(1), 10)
    return net, x, s, rows


def _points(x: torch.Tensor, s, norm: float, n: int = 6) -> torch.Tensor:
    return sample_ball_box(x, s.eps, norm, n, torch.Generator().manual_seed(7))


def _activations(net, p: torch.Tensor) -> list[torch.Tensor]:
    hs = [p]
    for op in net.ops:
        hs.append(op.forward(hs[-1]))
    return hs


def _row_jacobian(net, h: torch.Tensor, i: int, rows: torch.Tensor) -> torch.Tensor:
    """Exact ``rows · d f / d h_i`` at ``h`` by autograd, ``(B, M, *shape_i)``."""

    def tail(z: torch.Tensor) -> torch.Tensor:
        for op in net.ops[i:]:
            z = op.forward(z)
        return z.sum(0)

    jac = torch.autograd.functional.jacobian(tail, h)  # (K, B, *shape_i)
    jac = jac.permute(1, 0, *range(2, jac.ndim))
    return torch.einsum("bmk,bk...->bm...", rows.expand(h.shape[0], -1, -1), jac)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("norm", NORMS)
def test_interval_bounds_contain_every_activation_and_beat_plain_ibp(name, norm):
    net, x, s, _ = _setup(name, norm)
    bounds = interval_bounds(net, s)
    for p in _points(x, s, norm):
        for lo, h, hi in zip(bounds.lower, _activations(net, p), bounds.upper):
            assert (h >= lo - ROUND).all() and (h <= hi + ROUND).all()
    lo, hi, tighter = s.lo, s.hi, 0
    for i, op in enumerate(net.ops):  # plain IBP, for comparison: never tighter
        lo, hi = _ibp_step(op, lo, hi)
        assert (bounds.lower[i + 1] >= lo - ROUND).all() and (bounds.upper[i + 1] <= hi + ROUND).all()
        tighter += int((bounds.upper[i + 1] - bounds.lower[i + 1]).sum() < 0.99 * (hi - lo).sum())
    assert tighter >= (3 if norm == 2 else 0)  # the l2 ball is much smaller than its box: deep layers gain


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("norm", NORMS)
def test_pull_back_contains_exact_row_jacobians_at_every_boundary(name, norm):
    net, x, s, rows = _setup(name, norm)
    bounds = interval_bounds(net, s)
    intervals = {i: (c, r) for i, c, r in pull_back(net, bounds, rows)}
    assert sorted(intervals) == list(range(len(net.ops) + 1))
    for p in _points(x, s, norm, 3):
        hs = _activations(net, p)
        for i, (c, r) in intervals.items():
            if i == len(net.ops):
                continue
            exact = _row_jacobian(net, hs[i], i, rows)
            assert ((exact - c).abs() <= r + ROUND * (1 + r.abs().max())).all(), f"boundary {i}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("norm", NORMS)
def test_centre_ball_contains_exact_row_jacobians_below_where_it_starts(name, norm):
    """The invariant of ``_ball_step``: ``||rows · J_i(x') - c_i||_{p*} <= rho_i`` at every boundary below the start."""
    net, x, s, rows = _setup(name, norm)
    bounds = interval_bounds(net, s)
    starts = [i for i, op in enumerate(net.ops) if not isinstance(op, AffineOp)] + [len(net.ops)]
    intervals = {i: (c, r) for i, c, r in pull_back(net, bounds, rows)}
    points = _points(x, s, norm, 3)
    acts = [_activations(net, p) for p in points]
    for k in starts:
        c, r = intervals[k]
        balls = {k: (c, _dual(r, norm))}
        for i in range(k - 1, -1, -1):
            balls[i] = _ball_step(net, i, bounds, *balls[i + 1], norm)
        for hs in acts:
            for i, (bc, rho) in balls.items():
                if i == len(net.ops):
                    continue
                exact = _row_jacobian(net, hs[i], i, rows)
                assert (_dual(exact - bc, norm) <= rho * (1 + 1e-9) + ROUND).all(), f"start {k}, boundary {i}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("norm", NORMS)
def test_local_deviation_lower_holds_at_sampled_and_attacked_points(name, norm):
    net, x, s, rows = _setup(name, norm)
    bounds = interval_bounds(net, s)
    lower = local_deviation_lower(net, bounds, rows, s, spawn={len(net.ops)} | set(range(len(net.ops))))
    attacked, sampled, value = _attacked_and_sampled(net, x, s, rows, norm)
    slack = 1e-9 * (1 + value.abs())
    assert (attacked >= lower - slack).all() and (sampled >= lower - slack).all()
    assert (lower <= 0).all()  # x itself is in the set


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("norm", NORMS)
def test_depth_limited_local_deviation_lower_holds_at_sampled_and_attacked_points(name, norm):
    """``stop > 0`` (what certified training uses): rows pulled back to a boundary, the prefix bounded by norms."""
    net, x, s, rows = _setup(name, norm)
    bounds = interval_bounds(net, s)
    attacked, sampled, value = _attacked_and_sampled(net, x, s, rows, norm)
    slack = 1e-9 * (1 + value.abs())
    nonlinear = [i for i, op in enumerate(net.ops) if not op.affine]
    for stop in (nonlinear[-1], nonlinear[len(nonlinear) // 2]):
        lower = local_deviation_lower(net, bounds, rows, s, stop=stop)
        assert (attacked >= lower - slack).all() and (sampled >= lower - slack).all()
        assert (lower <= 0).all()
    with pytest.raises(ValueError, match="stop"):
        local_deviation_lower(net, bounds, rows, s, stop=len(net.ops) + 1)


def _attacked_and_sampled(net, x, s, rows, norm):
    """``rows · (f(x') - f(x))`` at PGD points (per row) and at sampled points of the set, and ``rows · f(x)``."""
    value = (rows * net(x)[:, None]).sum(-1)
    # an attack on each row functional: projected gradient descent on rows · f, from a random start
    m = rows.shape[1]
    xr = x.repeat_interleave(m, 0)
    rr = rows.reshape(-1, 1, 10)
    eps_r = s.eps.repeat_interleave(m)
    delta = (_points(xr, input_set(xr, eps_r, norm, CLIP), norm, 1)[0] - xr).requires_grad_(True)
    for _ in range(20):
        obj = (rr[:, 0] * net(xr + delta)).sum()
        (grad,) = torch.autograd.grad(obj, delta)
        with torch.no_grad():
            e = eps_r.reshape(-1, 1, 1, 1)
            if norm == math.inf:
                step = -grad.sign() * e / 8
            else:
                step = -grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).reshape(-1, 1, 1, 1) * e / 8
            delta.copy_(project(delta + step, xr, eps_r, norm))
    attacked = (rr[:, 0] * net(xr + delta.detach())).sum(-1).reshape(-1, m) - value
    sampled = torch.stack([(rows * net(p)[:, None]).sum(-1) - value for p in _points(x, s, norm, 8)])
    return attacked, sampled, value


def test_centre_ball_tightens_l2_bounds_on_the_cnn():
    """Measured, not hoped: on the briefly trained CNN the centre-and-ball candidates shrink the interval-only
    deviation bound of every margin row at this eps to 0.78-0.89 of it (the interval Jacobian loses its signs through
    the unstable first layer); the test asks for at most 0.92."""
    net, x, s, rows = _setup("cnn", 2.0, n=4, scale=0.5)
    bounds = interval_bounds(net, s)
    without = local_deviation_lower(net, bounds, rows, s, spawn=set())
    with_balls = local_deviation_lower(net, bounds, rows, s)
    assert (with_balls >= without - ROUND).all()
    assert (with_balls >= 0.92 * without).all()  # lower bounds are negative: closer to 0 is tighter


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("norm", NORMS)
def test_segment_lipschitz_bounds_exact_segment_jacobians(name, norm):
    net, x, s, _ = _setup(name, norm, n=2)
    n = len(net.ops)
    for p in _points(x, s, norm, 2):
        hs = _activations(net, p)
        for start, stop in ((0, n), (1, n - 1), (2, max(2, n - 2)), (0, 3)):

            def seg(z: torch.Tensor, start=start, stop=stop) -> torch.Tensor:
                for op in net.ops[start:stop]:
                    z = op.forward(z)
                return z.sum(0)

            jac = torch.autograd.functional.jacobian(seg, hs[start])  # (*out, B, *in)
            out_dims = jac.ndim - hs[start].ndim
            jac = jac.flatten(0, out_dims - 1).transpose(0, 1).flatten(2)  # (B, n_out, n_in)
            exact = torch.linalg.matrix_norm(jac, 2) if norm == 2 else jac.abs().sum(2).amax(1)
            assert (exact <= segment_lipschitz(net, start, stop, norm) * (1 + 1e-9)).all(), (start, stop)
    assert segment_lipschitz(net, 3, 3, norm) == 1.0
    assert segment_lipschitz(net, 0, n, norm) <= segment_lipschitz(net, 0, 2, norm) * segment_lipschitz(
        net, 2, n, norm
    ) * (1 + 1e-9)


def test_relu_relaxation_is_sound_in_every_case():
    lo = torch.tensor([-2.0, -1.0, 0.0, 0.0, 0.5, -3.0, -1.0, -1e-300], dtype=torch.float64)
    hi = torch.tensor([-1.0, 0.0, 0.0, 2.0, 1.5, 1.0, 3.0, 1e-300], dtype=torch.float64)
    low_slope, up_slope, up_icpt = relu_relaxation(lo, hi)
    assert torch.isfinite(up_slope).all() and ((low_slope == 0) | (low_slope == 1)).all()
    t = torch.linspace(0, 1, 101, dtype=torch.float64)[:, None]
    z = lo + t * (hi - lo)
    assert (low_slope * z <= z.clamp(min=0) + 1e-12).all()
    assert (z.clamp(min=0) <= up_slope * z + up_icpt + 1e-12).all()
    torch.testing.assert_close(up_slope[[0, 1, 4]], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(up_slope[5], torch.tensor(0.25, dtype=torch.float64))  # the chord 1/(1+3)


@pytest.mark.parametrize("norm", NORMS)
def test_input_set_deviation_bounds_real_deviations(norm):
    x, _ = eval_points(4, offset=120)
    x = x.double()
    s = input_set(x, torch.full((4,), EPS[norm], dtype=torch.float64), norm, CLIP)
    for p in sample_ball_box(x, s.eps, norm, 8, torch.Generator().manual_seed(3)):
        d = (p - x).flatten(1)
        assert (d.norm(dim=1) <= s.deviation(2.0) + 1e-12).all()
        assert (d.abs().amax(dim=1) <= s.deviation(math.inf) + 1e-12).all()
    assert (s.deviation(norm) <= s.eps).all()
    free = input_set(x, s.eps, norm, None)
    torch.testing.assert_close(free.deviation(norm), s.eps)


@pytest.mark.parametrize("norm", NORMS)
def test_row_refinement_matches_full_refinement(norm):
    """``target`` refines only the rows that need it: those get exactly the full bound, the others keep theirs."""
    net, x, s, rows = _setup("fcnn", norm, n=5, offset=130, scale=0.3)
    logits = net(x)
    full = functional_lower_bounds(net, s, rows, "interval", logits)
    lipschitz = functional_lower_bounds(net, s, rows, "lipschitz", logits)
    target = torch.quantile(lipschitz, 0.5, dim=1, keepdim=True)  # about half of each sample's rows need work
    part = functional_lower_bounds(net, s, rows, "interval", logits, target)
    need = lipschitz <= target
    assert need.any() and (~need).any()
    torch.testing.assert_close(part[need], full[need], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(part[~need], lipschitz[~need], rtol=0, atol=0)


def test_interval_radius_beats_lipschitz_on_the_cnn():
    """The point of the local bounds, measured on the briefly trained CNN (5 digits): the interval radius over the
    global one was 1.62-5.2 (median 2.25) for l2 and 4.8-27 (median 7.9) for l-inf; the test asks for medians of
    1.8 and 4."""
    net = network("cnn")
    x, _ = eval_points(5, offset=140)
    pred = net(x).argmax(1)
    for norm, floor in ((2.0, 1.8), (math.inf, 4.0)):
        lip = certified_radius(net, x, pred, norm, CLIP, "lipschitz")
        local = certified_radius(net, x, pred, norm, CLIP, "interval", n_bisect=6)
        ok = lip > 0
        assert ok.sum() >= 3
        assert float((local[ok] / lip[ok]).median()) >= floor


def _odd_conv_net():
    """Non-square kernels and strides, padding 0 and 2, a BatchNorm, three convolutions."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, (3, 5), stride=(2, 1), padding=(1, 2)),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=3, padding=0),
        nn.ReLU(),
        nn.Conv2d(4, 2, (2, 3), stride=1, padding=(2, 0)),
        nn.Flatten(),
        nn.Linear(98, 10),
    ).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 2.0)
    return build_network(model, (1, 28, 28), preprocessing=(0.1307, 0.3081))


@pytest.mark.parametrize("name", ["cnn", "odd"])
@pytest.mark.parametrize("norm", NORMS)
def test_patch_crown_equals_dense_crown(name, norm):
    """Patch-form rows are the dense rows restricted to receptive fields: the same bounds to float64 rounding."""
    net = _odd_conv_net() if name == "odd" else network("cnn")
    x, _ = eval_points(3, offset=150)
    x = x.double()
    s = input_set(x, torch.full((3,), EPS[norm], dtype=torch.float64), norm, CLIP)
    bounds = interval_bounds(net, s)
    ends = [e for e in range(1, len(net.ops) + 1) if patch_supported(net, e) and len(net.ops[e - 1].out_shape) == 3]
    assert len(ends) >= (5 if name == "odd" else 3)
    gen = torch.Generator().manual_seed(0)
    for end in ends:
        shape = net.ops[end - 1].out_shape
        n = math.prod(shape)
        idx = torch.stack([torch.randperm(n, generator=gen)[: min(n, 9)] for _ in range(3)])
        rows = torch.zeros(3, idx.shape[1], n, dtype=torch.float64).scatter_(2, idx[:, :, None], 1.0)
        rows = torch.cat([rows, -rows], 1).reshape(3, -1, *shape)
        dense = backward_lower(net, s, bounds, rows, end)
        patch = patch_lower(net, s, bounds.lower, bounds.upper, end, idx)
        torch.testing.assert_close(patch, dense, rtol=1e-12, atol=1e-12)


def test_patch_form_refuses_what_it_cannot_do():
    net = network("fcnn")  # conv, BatchNorm, ReLU, MaxPool, ...
    first_pool = next(i for i, op in enumerate(net.ops) if isinstance(op, MaxPool2d))
    assert patch_supported(net, first_pool)
    assert patch_supported(net, first_pool + 1)  # MaxPool has a patch rule (tests/test_certify_patches.py)
    first_flat = next(i for i, op in enumerate(net.ops) if len(op.out_shape) == 1)
    assert not patch_supported(net, first_flat + 1)  # a flattening reshape has none
    assert not patch_supported(network("mlp"), 2)  # a Linear layer
    assert not patch_supported(network("cnn"), 0)


def test_new_arguments_are_validated_with_their_names():
    net, x, s, rows = _setup("cnn", 2.0, n=2)
    n = len(net.ops)
    with pytest.raises(ValueError, match="`start` and `stop`"):
        segment_lipschitz(net, 3, 2, 2.0)
    with pytest.raises(ValueError, match="`start` and `stop`"):
        segment_lipschitz(net, 0, n + 1, 2.0)
    with pytest.raises(ValueError, match="`norm`"):
        segment_lipschitz(net, 0, n, 1)
    with pytest.raises(ValueError, match="`p`"):
        s.deviation(3)
    with pytest.raises(ValueError, match="`spawn`"):
        local_deviation_lower(net, interval_bounds(net, s), rows, s, spawn={n + 1})
    with pytest.raises(ValueError, match="`target`"):
        functional_lower_bounds(net, s, rows, "interval", net(x), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="`candidates`"):
        functional_lower_bounds(net, s, rows, "interval", net(x), torch.zeros(2, 1), [interval_bounds(net, s)])
    with pytest.raises(ValueError, match="`end`"):
        patch_lower(net, s, [], [], n, torch.zeros(2, 1, dtype=torch.long))
