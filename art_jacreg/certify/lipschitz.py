"""Global Lipschitz constants from *upper* bounds on layer operator norms (THEORY.md section 2, way 1).

Never a power-iteration estimate (that is a lower bound of the largest singular value). l2: the exact largest
singular value of the explicit operator matrix of a Linear/Conv layer (float64 eigenvalues of its smaller Gram
matrix, inflated by a relative ``1e-9`` for rounding) when the matrix is small (:data:`EXPLICIT_LIMIT`,
:data:`EXPLICIT_MIN_SIDE`); for a convolution also the exact norm of a circular convolution containing it (stride
phases + 2-D DFT, see :func:`_conv_circular_bound`), the smaller of the two; ``sqrt(||A||_1 ||A||_inf)`` (Schur's
bound) as the last resort. An element-wise affine
(preprocessing, BatchNorm that could not be folded) is merged into the Linear/Conv after it. ReLU: 1. MaxPool: 1 for
``inf -> inf``; for l2, ``sqrt(c)`` with ``c`` the largest number of windows one input belongs to (1 when windows
do not overlap). AvgPool is a (depthwise) convolution and gets its exact norm.

l-inf: ``inf -> inf`` induced norms (maximum absolute row sum, padding included), chained as
``||grad m||_1 <= ||row of the last layers||_1 * prod ||W_l||_{inf->inf}``, or through l2 with
``||delta||_2 <= sqrt(d) ||delta||_inf``, whichever is smaller.

Margins use the composed rows of the last affine layers, ``W_y - W_j``, much tighter than ``2 ||W||``.
"""

from __future__ import annotations

import logging
import math

import torch

from art_jacreg.certify._common import check_network, validate_norm
from art_jacreg.certify.ops import DTYPE, Affine, AffineOp, Conv2d, Linear, MaxPool2d, Op, PiecewiseLinearNetwork

logger = logging.getLogger(__name__)

__all__ = [
    "layer_operator_norms",
    "global_lipschitz_bound",
    "row_lipschitz",
    "segment_lipschitz",
    "tail_start",
    "EXPLICIT_LIMIT",
    "EXPLICIT_MIN_SIDE",
]

EXPLICIT_LIMIT = 8_000_000  # entries of an explicit operator matrix (64 MB in float64)
EXPLICIT_MIN_SIDE = 512  # and its smaller side for a Conv, 4x that for a Linear (the eigensolver is cubic in it)
_SLACK = 1.0 + 1e-9


def _explicit_matrix(op: AffineOp, in_scale: torch.Tensor | None) -> torch.Tensor:
    """The matrix of ``h -> op.lin(in_scale * h)``, shape ``(n_out, n_in)``."""
    n_in = math.prod(op.in_shape)
    if isinstance(op, Linear):
        w = op.weight
        return w if in_scale is None else w * in_scale.reshape(1, -1)
    basis = torch.eye(n_in, dtype=DTYPE)
    if in_scale is not None:
        basis = basis * in_scale.reshape(1, -1)
    return op.lin(basis.reshape(n_in, *op.in_shape)).reshape(n_in, -1).T


def _spectral_upper(op: AffineOp, in_scale: torch.Tensor | None = None) -> float:
    """Upper bound on ``||A diag(in_scale)||_2`` for a Linear/Conv ``op``."""
    n_in, n_out = math.prod(op.in_shape), math.prod(op.out_shape)
    bound = math.inf
    if isinstance(op, Conv2d):
        bound = _conv_circular_bound(op, in_scale)
    side = EXPLICIT_MIN_SIDE if isinstance(op, Conv2d) else 4 * EXPLICIT_MIN_SIDE
    if n_in * n_out <= EXPLICIT_LIMIT and min(n_in, n_out) <= side:
        a = _explicit_matrix(op, in_scale)
        gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
        top = float(torch.linalg.eigvalsh(gram)[-1].clamp(min=0.0))
        bound = min(bound, math.sqrt(top) * _SLACK)
    if math.isinf(bound):
        s = torch.ones(op.in_shape, dtype=DTYPE) if in_scale is None else in_scale.abs()
        row_sums = op.abs_lin(s[None])[0]  # ||A||_inf = max row sum of |A| diag|s|
        col_sums = op.abs_lin_t(torch.ones((1, *op.out_shape), dtype=DTYPE))[0] * s  # ||A||_1 = max column sum
        logger.info("operator of %r too large for an exact SVD; using sqrt(||A||_1 ||A||_inf)", op)
        bound = math.sqrt(float(row_sums.max()) * float(col_sums.max())) * _SLACK
    return bound


def _conv_circular_bound(op: Conv2d, in_scale: torch.Tensor | None) -> float:
    """Exact spectral norm of a circular convolution that contains the zero-padded one: an upper bound.

    The zero-padded input lives in ``[0, H + 2p)``; embedded in a circular grid of ``N >= H + 2p`` (a multiple of
    the stride) no valid output wraps around, so the layer is ``R C E`` with ``E`` an isometric embedding, ``R`` a
    restriction (norm <= 1) and ``C`` the circular strided convolution. Splitting the input into its ``s_h s_w``
    stride phases (a permutation) turns ``C`` into a stride-1 circular convolution on an ``N/s`` grid, which the 2-D
    DFT block-diagonalises: ``||C||_2 = max_w sigma_max(W_hat(w))`` over ``(N/s)^2`` frequencies, each a
    ``C_out x (C_in s_h s_w)`` matrix. A non-constant input scale enters as its maximum.
    """
    co_g, ci_g, kh, kw = op.weight.shape
    co_g //= op.groups
    chan_scale, extra = torch.ones(ci_g * op.groups, dtype=DTYPE), 1.0
    if in_scale is not None:
        flat = in_scale.reshape(in_scale.shape[0], -1)
        if in_scale.ndim == 3 and bool((flat == flat[:, :1]).all()):
            chan_scale = flat[:, 0]
        else:
            extra = float(in_scale.abs().max())
    _, h, wd = op.in_shape
    (sh, sw), (ph, pw), (dh, dw) = op.stride, op.padding, op.dilation
    nh, nw = -(-(h + 2 * ph) // sh) * sh, -(-(wd + 2 * pw) // sw) * sw
    mh, mw = nh // sh, nw // sw
    best = 0.0
    for g in range(op.groups):
        wg = op.weight[g * co_g : (g + 1) * co_g] * chan_scale[g * ci_g : (g + 1) * ci_g].reshape(1, -1, 1, 1)
        poly = torch.zeros(co_g, ci_g, sh, sw, mh, mw, dtype=DTYPE)
        for a in range(kh):
            qa, ta = (dh * a) % sh, (dh * a) // sh
            for b in range(kw):
                qb, tb = (dw * b) % sw, (dw * b) // sw
                poly[:, :, qa, qb, ta % mh, tb % mw] += wg[:, :, a, b]
        spec = torch.fft.fft2(poly)  # (co, ci, sh, sw, mh, mw)
        mats = spec.permute(4, 5, 0, 1, 2, 3).reshape(mh * mw, co_g, ci_g * sh * sw)
        best = max(best, float(torch.linalg.matrix_norm(mats, ord=2).max()))
    return best * extra * _SLACK


def _inf_norm(op: AffineOp, in_scale: torch.Tensor | None = None) -> float:
    """Exact ``||A diag(in_scale)||_{inf -> inf}`` (maximum absolute row sum)."""
    s = torch.ones(op.in_shape, dtype=DTYPE) if in_scale is None else in_scale.abs()
    return float(op.abs_lin(s[None]).max()) * _SLACK


def _maxpool_overlap(op: MaxPool2d) -> int:
    """Largest number of pooling windows one input belongs to."""
    n_out = math.prod(op.out_shape[1:])
    k = op.kernel_size[0] * op.kernel_size[1]
    ones = torch.ones((1, op.in_shape[0], k, n_out), dtype=DTYPE)
    return int(round(float(op.fold(ones).max())))


def _op_norm(op: Op, norm: float, in_scale: torch.Tensor | None = None) -> float:
    if isinstance(op, (Linear, Conv2d)):
        return _spectral_upper(op, in_scale) if norm == 2 else _inf_norm(op, in_scale)
    if isinstance(op, Affine):
        return float(op.abs_scale.max()) * _SLACK
    if isinstance(op, MaxPool2d):
        return math.sqrt(_maxpool_overlap(op)) * _SLACK if norm == 2 else 1.0
    return 1.0  # ReLU, Reshape


def layer_operator_norms(net: PiecewiseLinearNetwork, norm: float | str = 2) -> list[float]:
    """Upper bounds on the operator norm of every operation of ``net`` on its own (one per ``net.ops`` entry).

    :param net: The network.
    :param norm: ``2`` (spectral norms) or ``inf`` (``inf -> inf`` induced norms, maximum absolute row sums).
    :return: One float per operation; the Lipschitz constant of ReLU and reshapes is ``1``.
    """
    norm = validate_norm(norm)
    net = check_network(net)
    return [_op_norm(op, norm) for op in net.ops]


def segment_lipschitz(net: PiecewiseLinearNetwork, start: int, stop: int, norm: float) -> float:
    """Upper bound on the Lipschitz constant of ``h_start -> h_stop`` (operations ``start..stop-1``) in ``||.||_p``.

    The product of the operations' operator-norm upper bounds, each element-wise affine merged into the Linear/Conv
    after it (a tighter bound than multiplying the two). Cached on the network per ``(start, stop, norm)``.

    :param net: The network.
    :param start: First layer boundary.
    :param stop: Last layer boundary (``start <= stop <= len(net.ops)``).
    :param norm: ``2`` (spectral norms) or ``inf`` (``inf -> inf`` norms).
    :return: The bound (``1`` for an empty segment).
    :raises ValueError: Unless ``0 <= start <= stop <= len(net.ops)`` and ``norm`` is ``2`` or ``inf``.
    """
    net, norm = check_network(net), validate_norm(norm)
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= len(net.ops)):
        raise ValueError(
            f"`start` and `stop` must be layer boundaries with 0 <= start <= stop <= {len(net.ops)}, "
            f"got start={start!r}, stop={stop!r}."
        )
    cache = net.__dict__.setdefault("_lipschitz_cache", {})
    key = (start, stop, norm)
    if key not in cache:
        total, pending, first = 1.0, None, start
        for i in range(start, stop):
            op = net.ops[i]
            if isinstance(op, Affine):
                pending = op.scale if pending is None else pending * op.scale
                continue
            if pending is not None and not isinstance(op, (Linear, Conv2d)):
                total *= float(pending.abs().max()) * _SLACK
            merged = pending if isinstance(op, (Linear, Conv2d)) else None
            total *= _op_norm_cached(net, (first, i, norm), op, norm, merged)
            pending, first = None, i + 1
        if pending is not None:
            total *= float(pending.abs().max()) * _SLACK
        cache[key] = total
    return cache[key]


def _op_norm_cached(
    net: PiecewiseLinearNetwork, key: tuple, op: Op, norm: float, in_scale: torch.Tensor | None
) -> float:
    """:func:`_op_norm` cached on the network under ``key`` = (first merged operation, operation, norm)."""
    cache = net.__dict__.setdefault("_op_norm_cache", {})
    if key not in cache:
        cache[key] = _op_norm(op, norm, in_scale)
    return cache[key]


def tail_start(net: PiecewiseLinearNetwork) -> int:
    """Index of the first operation of the final affine block (after the last ReLU/MaxPool).

    :param net: The network.
    :return: ``0`` for a purely affine network.
    """
    idx = [i for i, op in enumerate(net.ops) if not isinstance(op, AffineOp)]
    return idx[-1] + 1 if idx else 0


def tail_rows(net: PiecewiseLinearNetwork, rows: torch.Tensor) -> torch.Tensor:
    """Pull output rows back through the final affine block: ``rows @ T`` on ``h_t``.

    :param net: The network.
    :param rows: ``(B, M, K)``.
    :return: ``(B, M, *shape_t)``.
    """
    a = rows
    for op in reversed(net.ops[tail_start(net) :]):
        b, m = a.shape[:2]
        a = op.lin_t(a.reshape(b * m, *op.out_shape)).reshape(b, m, *op.in_shape)
    return a


def row_lipschitz(net: PiecewiseLinearNetwork, rows: torch.Tensor, norm: float) -> torch.Tensor:
    """Global Lipschitz constants of ``x -> row · f(x)`` w.r.t. ``||x||_p`` (dual-norm gradient bounds).

    :param net: The network.
    :param rows: ``(B, M, K)`` output functionals (e.g. margin rows ``e_y - e_j``).
    :param norm: ``2`` or ``inf``.
    :return: ``(B, M)`` upper bounds on ``sup_x ||grad_x (row · f)(x)||_{p*}``.
    """
    t = tail_start(net)
    a = tail_rows(net, rows).flatten(2)
    lip2 = a.norm(dim=-1) * segment_lipschitz(net, 0, t, 2.0)
    if norm == 2:
        return lip2
    d = math.prod(net.input_shape)
    return torch.minimum(a.abs().sum(-1) * segment_lipschitz(net, 0, t, math.inf), lip2 * math.sqrt(d) * _SLACK)


def global_lipschitz_bound(net: PiecewiseLinearNetwork, norm: float | str = 2) -> float:
    """Upper bound on ``sup_x ||J(x)||``: spectral norm for ``norm=2``, ``inf -> 1`` norm for ``norm=inf``.

    For ``norm=inf`` this is the Lipschitz constant from ``(R^d, l_inf)`` to ``(R^K, l_1)`` that the l-inf robust
    loss bound needs (THEORY.md section 2): ``min(sum_k L_k, sqrt(K d) * L_2)`` with ``L_k`` the l-inf Lipschitz
    constant of logit ``k``.

    :param net: The network.
    :param norm: ``2`` or ``inf``.
    :return: The bound (a float).
    """
    norm = validate_norm(norm)
    net = check_network(net)
    k = net.num_classes
    lip2 = segment_lipschitz(net, 0, tail_start(net), 2.0)
    tail = tail_rows(net, torch.eye(k, dtype=DTYPE)[None])[0].flatten(1)  # (K, n_t)
    gram = tail @ tail.T
    lip2 *= math.sqrt(float(torch.linalg.eigvalsh(gram)[-1].clamp(min=0.0))) * _SLACK
    if norm == 2:
        return lip2
    rows = row_lipschitz(net, torch.eye(k, dtype=DTYPE)[None], math.inf)[0]
    return min(float(rows.sum()), math.sqrt(k * math.prod(net.input_shape)) * lip2 * _SLACK)
