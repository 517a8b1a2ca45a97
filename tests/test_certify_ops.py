"""Each operation's own rules, checked one operation at a time against brute force.

For every kind of operation (the template for a new one): the interval step contains the image of sampled points,
the backward linear relaxation is a lower bound at sampled points, the pulled-back Jacobian row interval and
centre-and-ball contain the exact rows (autograd) at sampled points, the operator-norm bound dominates sampled
difference quotients, and folding a following element-wise affine is exact. A new operation defined only in this file
runs through every engine. Also the network's immutability and its declared Lipschitz memo.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from art_jacreg.certify import PiecewiseLinearNetwork, certified_radius, logit_bounds
from art_jacreg.certify.lipschitz import segment_lipschitz
from art_jacreg.certify.ops import Affine, AffineOp, Conv2d, Linear, MaxPool2d, ReLU, Reshape
from art_jacreg.certify.ops.base import dual_norm

TOL = 1e-9
GEN_SEED = 7


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(GEN_SEED)


def _ops() -> dict[str, object]:
    g = _gen()

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return {
        "affine": Affine(rnd(2, 1, 1), rnd(2, 5, 5), (2, 5, 5)),
        "linear": Linear(rnd(6, 9), rnd(6)),
        "conv": Conv2d(rnd(3, 2, 3, 3), rnd(3), (2, 6, 6), (2, 2), (1, 1), (1, 1), 1),
        "avgpool_as_conv": Conv2d(
            torch.full((2, 1, 2, 2), 0.25, dtype=torch.float64), None, (2, 6, 6), (2, 2), (0, 0), (1, 1), 2
        ),
        "reshape": Reshape((2, 3, 3), (18,)),
        "relu": ReLU((2, 4, 4)),
        "maxpool": MaxPool2d((2, 6, 6), (3, 3), (2, 2), (1, 1), (1, 1)),
        "maxpool_tiles": MaxPool2d((2, 7, 6), (2, 2), (2, 2), (0, 0), (1, 1)),  # windows tile (a row uncovered)
    }


OPS = list(_ops())


def _box(op, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen()
    centre = torch.randn((n, *op.in_shape), generator=g, dtype=torch.float64)
    radius = torch.rand((n, *op.in_shape), generator=g, dtype=torch.float64) * 0.8
    return centre - radius, centre + radius


def _samples(lo: torch.Tensor, hi: torch.Tensor, k: int = 20) -> torch.Tensor:
    """``k`` points per box, corners included: ``(k, B, ...)``."""
    g = _gen()
    u = torch.rand((k, *lo.shape), generator=g, dtype=torch.float64)
    u[0], u[1] = 0.0, 1.0
    return lo + u * (hi - lo)


def _jacobian(op, x: torch.Tensor) -> torch.Tensor:
    """Exact Jacobians ``(B, n_out, n_in)`` at the points ``x`` ``(B, *in_shape)``."""
    jac = [torch.autograd.functional.jacobian(lambda z: op.forward(z[None])[0], xi) for xi in x]
    return torch.stack([j.reshape(math.prod(op.out_shape), -1) for j in jac])


@pytest.mark.parametrize("name", OPS)
def test_interval_step_contains_the_image(name):
    op = _ops()[name]
    lo, hi = _box(op)
    out_lo, out_hi = op.interval(lo, hi)
    for x in _samples(lo, hi):
        y = op.forward(x)
        assert (y >= out_lo - TOL).all() and (y <= out_hi + TOL).all()


@pytest.mark.parametrize("name", OPS)
def test_backward_relaxation_is_a_lower_bound(name):
    op = _ops()[name]
    lo, hi = _box(op)
    a = torch.randn((lo.shape[0], 4, *op.out_shape), generator=_gen(), dtype=torch.float64)
    const = torch.randn((lo.shape[0], 4), generator=_gen(), dtype=torch.float64)
    a_in, const_in = op.relax_backward(a, const, lo, hi)
    for x in _samples(lo, hi):
        exact = (a * op.forward(x)[:, None]).flatten(2).sum(-1) + const
        bound = (a_in * x[:, None]).flatten(2).sum(-1) + const_in
        assert (bound <= exact + TOL * (1 + exact.abs())).all()


@pytest.mark.parametrize("name", OPS)
def test_jacobian_pull_back_and_ball_step_contain_the_exact_rows(name):
    op = _ops()[name]
    lo, hi = _box(op)
    b, m = lo.shape[0], 3
    g = _gen()
    c = torch.randn((1, m, *op.out_shape), generator=g, dtype=torch.float64)
    r = torch.rand((1, m, *op.out_shape), generator=g, dtype=torch.float64) * 0.3
    rho = torch.rand((1, m), generator=g, dtype=torch.float64)
    c_in, r_in = op.pull_back_interval(c, r, lo, hi)
    lip = {p: op.operator_norm(p) for p in (2.0, math.inf)}
    balls = {p: op.ball_step(c, rho, lo, hi, p, lip[p]) for p in (2.0, math.inf)}
    for x in _samples(lo, hi, 6):
        jac = _jacobian(op, x)  # (B, n_out, n_in)
        u = torch.rand((b, m, *op.out_shape), generator=g, dtype=torch.float64) * 2 - 1
        rows = (c + r * u).flatten(2) @ jac  # rows in c ± r, pulled back exactly
        assert (rows >= (c_in - r_in).flatten(2) - TOL).all() and (rows <= (c_in + r_in).flatten(2) + TOL).all()
        for p, (bc, brho) in balls.items():
            d = torch.randn((b, m, math.prod(op.out_shape)), generator=g, dtype=torch.float64)
            d = d / dual_norm(d, p)[..., None] * rho[..., None]  # ||g - c||_{p*} = rho
            rows = (c.flatten(2) + d) @ jac
            assert (dual_norm(rows - bc.flatten(2), p) <= brho * (1 + TOL) + TOL).all(), p


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_operator_norm_dominates_difference_quotients(name, norm):
    op = _ops()[name]
    lo, hi = _box(op, 8)
    x = _samples(lo, hi, 6)
    bound = op.operator_norm(norm)
    for x1, x2 in zip(x[:-1], x[1:]):
        num = (op.forward(x1) - op.forward(x2)).flatten(1).norm(p=norm, dim=1)
        den = (x1 - x2).flatten(1).norm(p=norm, dim=1)
        assert (num <= bound * den * (1 + TOL)).all()
    if op.affine and op.mixes:
        exact = float(torch.linalg.matrix_norm(op.explicit_matrix(None), 2 if norm == 2 else math.inf))
        assert exact * (1 - TOL) <= bound


@pytest.mark.parametrize("name", ["affine", "linear", "conv"])
def test_folding_an_elementwise_affine_is_exact(name):
    op = _ops()[name]
    g = _gen()
    per_channel = (op.out_shape[0], *([1] * (len(op.out_shape) - 1)))
    scale = torch.randn(per_channel, generator=g, dtype=torch.float64).expand(op.out_shape)
    shift = torch.randn(per_channel, generator=g, dtype=torch.float64).expand(op.out_shape)
    after = Affine(scale, shift, op.out_shape)
    folded = after.folded_into(op)
    x = torch.randn((4, *op.in_shape), generator=g, dtype=torch.float64)
    torch.testing.assert_close(folded.forward(x), after.forward(op.forward(x)), rtol=1e-12, atol=1e-12)
    if name == "conv":  # not constant over a channel: kept as two operations
        varying = torch.randn(op.out_shape, generator=g, dtype=torch.float64)
        assert Affine(varying, shift, op.out_shape).folded_into(op) is None
    assert after.folded_into(ReLU(op.out_shape)) is None


def _tiny_network() -> PiecewiseLinearNetwork:
    g = _gen()
    ops = [
        Affine(torch.tensor(2.0), torch.tensor(-0.5), (4,)),
        Linear(torch.randn(5, 4, generator=g), None),
        ReLU((5,)),
        Linear(torch.randn(3, 5, generator=g), torch.randn(3, generator=g)),
    ]
    return PiecewiseLinearNetwork(ops, (4,))


def test_network_is_immutable_and_declares_its_lipschitz_memo():
    net = _tiny_network()
    assert isinstance(net.ops, tuple) and net.num_classes == 3 and net.input_shape == (4,)
    for name, value in (("ops", ()), ("num_classes", 2), ("anything", 1)):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(net, name, value)
    assert net.lipschitz_cache == {}
    bound = segment_lipschitz(net, 0, len(net.ops), 2.0)
    assert net.lipschitz_cache[("segment", 0, len(net.ops), 2.0)] == bound
    assert ("op", 0, 1, 2.0) in net.lipschitz_cache  # the preprocessing Affine merged into the first Linear
    assert not hasattr(net, "__dict__")  # nothing else can be stored on it
    twin = copy.deepcopy(net)
    assert twin.lipschitz_cache == {} and segment_lipschitz(twin, 0, len(twin.ops), 2.0) == bound
    x = torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(twin(x), net(x), rtol=0, atol=0)


class _Negate(AffineOp):
    """A new operation written only here, ``x -> -x``: every rule derives from the five linear maps."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__(shape, shape)
        self._offset = torch.zeros(shape, dtype=torch.float64)

    def lin(self, x: torch.Tensor) -> torch.Tensor:
        return -x

    lin_t = lin

    def abs_lin(self, x: torch.Tensor) -> torch.Tensor:
        return x

    abs_lin_t = abs_lin
    sq_lin = abs_lin


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_a_new_operation_needs_no_engine_change(norm):
    g = _gen()
    ops = [
        Linear(torch.randn(6, 4, generator=g), torch.randn(6, generator=g)),
        ReLU((6,)),
        _Negate((6,)),
        Linear(torch.randn(6, 6, generator=g), torch.randn(6, generator=g)),
        ReLU((6,)),
        Linear(torch.randn(3, 6, generator=g), None),
    ]
    net = PiecewiseLinearNetwork(ops, (4,))
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    eps = 0.2
    points = x + eps * (torch.rand((200, *x.shape), generator=g, dtype=torch.float64) * 2 - 1)
    if norm == 2:
        d = points - x
        points = x + d / d.norm(dim=-1, keepdim=True).clamp(min=eps) * eps
    values = torch.stack([net(p) for p in points])
    widths = {}
    for method in ("lipschitz", "interval", "linear"):
        lower, upper = logit_bounds(net, x, eps, norm, None, method)
        assert (values >= lower - 1e-9).all() and (values <= upper + 1e-9).all(), method
        widths[method] = float((upper - lower).sum())
    assert widths["linear"] <= widths["interval"] * (1 + 1e-9) <= widths["lipschitz"] * (1 + 1e-9)
    radius = certified_radius(net, x, net(x).argmax(1), norm, None, "linear")
    assert (radius > 0).all()
