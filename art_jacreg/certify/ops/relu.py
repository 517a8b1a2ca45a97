"""Rectified linear unit and its relaxations."""

from __future__ import annotations

import torch

from art_jacreg.certify._dtype import Shape
from art_jacreg.certify.ops.base import PiecewiseOp, Relaxation, Scalar, Tensors, dual_norm, weighted_sum
from art_jacreg.certify.ops.patch_geometry import PatchGeometry

__all__ = ["ReLU", "relu_relaxation"]


def relu_relaxation(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear relaxation of ReLU on ``[lo, hi]``: ``alpha z <= relu(z) <= u (z - l) / (u - l)`` on an unstable unit,
    with ``alpha = 1`` if ``u > -l`` else ``0`` (CROWN, Zhang et al. 2018); exact on stable units.

    :param lo: Lower bounds of the pre-activation.
    :param hi: Upper bounds.
    :return: ``(lower_slope, upper_slope, upper_intercept)`` with
        ``lower_slope z <= relu(z) <= upper_slope z + upper_intercept`` on ``[lo, hi]``.
    """
    # With u = max(hi, 0) and l = min(lo, 0) the three cases (active, inactive, unstable) share one formula.
    u, neg_l = hi.clamp(min=0), (-lo).clamp(min=0)
    up_slope = u / (u + neg_l).clamp(min=torch.finfo(lo.dtype).tiny)
    return (u > neg_l).to(lo.dtype), up_slope, up_slope * neg_l


def _relaxed_rows(a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rows through the relaxation (the lower slope on positive entries, the upper one on negative entries), the
    negative entries and the upper intercepts (whose product goes into the constant).
    """
    low_slope, up_slope, up_icpt = relu_relaxation(lo, hi)
    neg = a.clamp(max=0)
    return torch.addcmul(a * low_slope, neg, up_slope - low_slope), neg, up_icpt


class ReLU(PiecewiseOp):
    """Rectified linear unit (operator norm ``1``).

    Relaxation :func:`relu_relaxation`; Jacobian slope ``1`` (active), ``0`` (inactive) or anything in ``[0, 1]``
    (unstable), which turns a row interval ``[a, b]`` into ``[min(0, a), max(0, b)]``; in the ball form the slope
    of an unstable unit is ``1/2 ± 1/2``.

    :param shape: Per-sample shape.
    """

    def __init__(self, shape: Shape) -> None:
        super().__init__(shape, shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.relu(x)

    def units_to_tighten(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """The units of the input whose tighter bounds change the relaxation: the unstable ones.

        :param lo: Lower bounds of the input (any shape).
        :param hi: Upper bounds.
        :return: Bool mask, same shape.
        """
        return (lo < 0) & (hi > 0)

    def relax_backward(  # noqa: D102
        self, a: torch.Tensor, const: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
    ) -> Tensors:
        lo, hi = lower[:, None], upper[:, None]
        a, neg, up_icpt = _relaxed_rows(self.rows_for(a, lo), lo, hi)
        return a, const + weighted_sum(neg, up_icpt)

    def supports_patches(self) -> bool:  # noqa: D102
        return True

    def elementwise_relaxation(self, lower: torch.Tensor, upper: torch.Tensor) -> Relaxation:  # noqa: D102
        return relu_relaxation(lower, upper)

    def patch_backward(  # noqa: D102
        self, a: torch.Tensor, const: torch.Tensor, geometry: PatchGeometry, lower: torch.Tensor, upper: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, PatchGeometry]:
        # The relaxation is computed once on the layer and its coefficients gathered under the patches (the same
        # numbers as relaxing the gathered bounds, without repeating the work for every overlapping patch).
        low_slope, up_slope, up_icpt = relu_relaxation(lower, upper)
        neg = a.clamp(max=0)
        a = torch.addcmul(a * geometry.gather(low_slope), neg, geometry.gather(up_slope - low_slope))
        return a, const + (neg * geometry.gather(up_icpt)).flatten(2).sum(-1), geometry

    def pull_back_interval(  # noqa: D102
        self, c: torch.Tensor, r: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
    ) -> Tensors:
        # The hull of pull_back_hull in fewer passes over the rows: with keep = 0 on inactive units (1 elsewhere)
        # and cap = +inf on active ones (0 elsewhere), lo' = min(keep lo, cap), hi' = max(keep hi, -cap): the same
        # numbers.
        c, r = self.rows_for(c, lower), self.rows_for(r, lower)
        keep = ((lower >= 0) | (upper > 0)).to(c.dtype)[:, None]
        cap = torch.where(lower >= 0, torch.inf, 0.0).to(c.dtype)[:, None]
        lo = torch.minimum(torch.sub(c, r).mul_(keep), cap)
        hi = torch.maximum(torch.add(c, r).mul_(keep), -cap)
        return (hi + lo).div_(2), hi.sub_(lo).div_(2)

    def pull_back_hull(  # noqa: D102
        self, lo: torch.Tensor, hi: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
    ) -> Tensors:
        active, unstable = (lower >= 0)[:, None], ((lower < 0) & (upper > 0))[:, None]
        zero = torch.zeros((), dtype=lo.dtype, device=lo.device)
        lo = torch.where(active, lo, torch.where(unstable, lo.clamp(max=0), zero))
        hi = torch.where(active, hi, torch.where(unstable, hi.clamp(min=0), zero))
        return lo, hi

    def ball_step(  # noqa: D102
        self, c: torch.Tensor, rho: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, norm: float, lip: Scalar
    ) -> Tensors:
        c = self.rows_for(c, lower)
        unstable = ((lower < 0) & (upper > 0)).to(c.dtype)[:, None]  # float masks: products beat torch.where here
        rho = rho + dual_norm(c * unstable, norm) / 2
        return c * ((lower >= 0).to(c.dtype)[:, None] + unstable / 2), rho
