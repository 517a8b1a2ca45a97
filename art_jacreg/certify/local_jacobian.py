"""Interval Jacobians over the input set (the Fast-Lip idea of Weng et al. 2018, https://arxiv.org/abs/1804.09699).

Rows ``c ± r`` of the Jacobian of output functionals (margins ``e_y - e_j``, logits ``e_k``) are pulled back from
the output: through an affine operation ``A`` they become ``c A ± r |A|``; through a ReLU whose pre-activation lies
in ``[l, u]`` the slope is ``1`` (``l >= 0``), ``0`` (``u <= 0``) or anything in ``[0, 1]``, which turns the row
interval ``[a, b]`` into ``[min(0, a), max(0, b)]``; through a MaxPool window the row goes to the single input that
provably dominates, or else to any of the inputs that can still be the maximum (the same hull with ``0`` on each).
Pre-activation bounds come from :mod:`art_jacreg.certify.intervals` and hold on the whole input set, so every
Jacobian of every point of the set lies in the result, and by ``f(x') - f(x) = int_0^1 J(x + t (x' - x)) (x' - x) dt``
(the set is convex and contains ``x``) so does every difference quotient.

Everything is batched: samples and rows travel together through batched convolutions, no Python loop over samples.
"""

from __future__ import annotations

import logging

import torch

from art_jacreg.certify._common import InputSet
from art_jacreg.certify.intervals import Bounds, maxpool_windows
from art_jacreg.certify.ops import AffineOp, MaxPool2d, PiecewiseLinearNetwork, ReLU

logger = logging.getLogger(__name__)

__all__ = ["jacobian_interval", "gradient_dual_norm", "mean_value_lower", "spectral_norm_bound", "l11_norm_bound"]


def jacobian_interval(
    net: PiecewiseLinearNetwork, bounds: Bounds, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval ``centre ± radius`` containing ``rows · J(x')`` for every ``x'`` of the set the bounds hold on.

    :param net: The network.
    :param bounds: Bounds on every ``h_i`` over the input set.
    :param rows: Output functionals ``(B or 1, M, K)``.
    :return: ``(centre, radius)``, each ``(B, M, *input_shape)``.
    """
    c, r = rows, None
    for i in range(len(net.ops) - 1, -1, -1):
        op = net.ops[i]
        b, m = c.shape[:2]
        if isinstance(op, AffineOp):
            c = op.lin_t(c.reshape(b * m, *op.out_shape)).reshape(b, m, *op.in_shape)
            if r is not None:
                r = op.abs_lin_t(r.reshape(b * m, *op.out_shape)).reshape(b, m, *op.in_shape)
            continue
        lo_b, hi_b = bounds.lower[i], bounds.upper[i]
        nb = lo_b.shape[0]
        c = c.expand(nb, *c.shape[1:])
        lo, hi = (c, c) if r is None else (c - r, c + r)
        if isinstance(op, ReLU):
            active, unstable = (lo_b >= 0)[:, None], ((lo_b < 0) & (hi_b > 0))[:, None]
            zero = torch.zeros((), dtype=c.dtype)
            lo = torch.where(active, lo, torch.where(unstable, lo.clamp(max=0), zero))
            hi = torch.where(active, hi, torch.where(unstable, hi.clamp(min=0), zero))
        elif isinstance(op, MaxPool2d):
            lo, hi = _maxpool_rows(op, lo_b, hi_b, lo, hi)
        else:  # pragma: no cover - build_network only produces the operations above
            raise TypeError(f"no Jacobian rule for {op!r}")
        c, r = (hi + lo) / 2, (hi - lo) / 2
    if r is None:
        r = torch.zeros_like(c)
    return c, r


def _maxpool_rows(
    op: MaxPool2d, lo_b: torch.Tensor, hi_b: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pull row intervals ``[lo, hi]`` (B, M, C, Ho, Wo) back through max pooling."""
    _, possible, dominated, _ = maxpool_windows(op, lo_b, hi_b)
    b, m = lo.shape[:2]
    c, n_out = op.in_shape[0], possible.shape[-1]
    lo, hi = lo.reshape(b, m, c, n_out), hi.reshape(b, m, c, n_out)
    dom = dominated[:, None]
    lo = torch.where(dom, lo, lo.clamp(max=0))  # a non-dominated window may route its row to any possible input
    hi = torch.where(dom, hi, hi.clamp(min=0))
    mask = possible[:, None].to(lo.dtype)  # for a dominated window the only possible input is the dominating one
    k = mask.shape[3]
    fold_lo = op.fold((mask * lo[:, :, :, None]).reshape(b * m, c, k, n_out)).reshape(b, m, *op.in_shape)
    fold_hi = op.fold((mask * hi[:, :, :, None]).reshape(b * m, c, k, n_out)).reshape(b, m, *op.in_shape)
    return fold_lo, fold_hi


def gradient_dual_norm(centre: torch.Tensor, radius: torch.Tensor, norm: float) -> torch.Tensor:
    """Upper bound on ``||g||_{p*}`` over ``g in centre ± radius`` (the dual norm of ``|centre| + radius``).

    :param centre: ``(B, M, *input_shape)``.
    :param radius: Same shape.
    :param norm: ``2`` (dual 2) or ``inf`` (dual 1).
    :return: ``(B, M)``.
    """
    mag = (centre.abs() + radius).flatten(2)
    return mag.norm(dim=-1) if norm == 2 else mag.sum(-1)


def mean_value_lower(centre: torch.Tensor, radius: torch.Tensor, s: InputSet) -> torch.Tensor:
    """Lower bound of ``row · (f(x') - f(x))`` over the input set from an interval containing its gradients.

    Two sound bounds, the larger is returned: the dual-norm one ``-eps ||(|c| + r)||_{p*}``, and the box one
    ``sum_i min(g_i * d_i)`` over ``g_i in c_i ± r_i`` and ``d_i in [lo_i - x_i, hi_i - x_i]`` (the box around the set),
    which accounts for ``clip_values`` and, for ``p = inf``, is never worse than the first.

    :param centre: ``(B, M, *input_shape)``.
    :param radius: Same shape.
    :param s: The input set.
    :return: ``(B, M)``.
    """
    g_lo, g_hi = (centre - radius).flatten(2), (centre + radius).flatten(2)
    d_lo, d_hi = (s.lo - s.x).flatten(1)[:, None], (s.hi - s.x).flatten(1)[:, None]
    corner = torch.minimum(torch.minimum(g_lo * d_lo, g_lo * d_hi), torch.minimum(g_hi * d_lo, g_hi * d_hi))
    low = corner.sum(-1)
    if s.norm == 2:
        low = torch.maximum(low, -s.eps[:, None] * gradient_dual_norm(centre, radius, 2.0))
    return low


def spectral_norm_bound(centre: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Upper bound on ``sup ||J||_2`` over ``J in centre ± radius``: the spectral norm of the magnitude matrix.

    ``||J||_2 <= || |J| ||_2 <= ||M||_2`` for ``M = |centre| + radius >= |J|`` entry-wise (the spectral norm is
    monotone on non-negative matrices); computed exactly from the ``K x K`` Gram matrix, and never above the
    Frobenius norm of ``M``.

    :param centre: ``(B, K, *input_shape)``.
    :param radius: Same shape.
    :return: ``(B,)``.
    """
    mag = (centre.abs() + radius).flatten(2)
    gram = mag @ mag.transpose(1, 2)
    top = torch.linalg.eigvalsh(gram)[:, -1].clamp(min=0).sqrt() * (1 + 1e-9)
    return torch.minimum(top, mag.flatten(1).norm(dim=-1) * (1 + 1e-12))


def l11_norm_bound(centre: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Upper bound on ``sup ||J||_{1,1}`` over ``J in centre ± radius``: the sum of ``|centre| + radius``.

    :param centre: ``(B, K, *input_shape)``.
    :param radius: Same shape.
    :return: ``(B,)``.
    """
    return (centre.abs() + radius).flatten(1).sum(-1)
