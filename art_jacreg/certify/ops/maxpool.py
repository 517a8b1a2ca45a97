"""2-D max pooling and its relaxations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812

from art_jacreg.certify._dtype import DTYPE, Shape
from art_jacreg.certify.ops.base import NORM_SLACK, PiecewiseOp, Scalar, Tensors, dual_norm
from art_jacreg.certify.ops.patch_geometry import Pair, PatchGeometry

__all__ = ["MaxPool2d", "maxpool_windows"]


class MaxPool2d(PiecewiseOp):
    """2-D max pooling (padding counts as ``-inf``, floor mode).

    Relaxation: exact when one input of the window provably dominates (its lower bound reaches every other upper
    bound); otherwise ``max >= z_i`` (``i`` with the largest lower bound) and ``max <= max_i u_i``. Jacobian rows go
    to the dominating input, or else to any input that can still be the maximum. Operator norm ``1`` for l-inf and
    ``sqrt(c)`` for l2, ``c`` the largest number of windows one input belongs to.

    :param in_shape: ``(C, H, W)``.
    :param kernel_size: ``(kh, kw)``.
    :param stride: ``(sh, sw)``.
    :param padding: ``(ph, pw)``.
    :param dilation: ``(dh, dw)``.
    """

    def __init__(
        self,
        in_shape: Shape,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
    ) -> None:
        self.kernel_size: Pair = (int(kernel_size[0]), int(kernel_size[1]))
        self.stride: Pair = (int(stride[0]), int(stride[1]))
        self.padding: Pair = (int(padding[0]), int(padding[1]))
        self.dilation: Pair = (int(dilation[0]), int(dilation[1]))
        out = self.forward(torch.zeros((1, *in_shape), dtype=DTYPE))
        super().__init__(in_shape, out.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation)

    def windows(self, x: torch.Tensor) -> torch.Tensor:
        """The pooling windows of ``x``: ``(N, C, k, L)`` with ``k = kh * kw`` and ``L`` output positions.

        :param x: Batch ``(N, C, H, W)``.
        :return: The windows, padded positions equal to ``-inf``.
        """
        if self._tiles():  # windows tile the image: a reshape gives unfold's layout without copying through im2col
            (kh, kw), (_, ho, wo) = self.kernel_size, self.out_shape
            t = x[:, :, : ho * kh, : wo * kw].reshape(x.shape[0], x.shape[1], ho, kh, wo, kw)
            return t.permute(0, 1, 3, 5, 2, 4).reshape(x.shape[0], x.shape[1], kh * kw, ho * wo)
        ph, pw = self.padding
        xp = F.pad(x, (pw, pw, ph, ph), value=-math.inf) if ph or pw else x
        cols = F.unfold(xp, self.kernel_size, dilation=self.dilation, stride=self.stride)
        return cols.reshape(x.shape[0], self.in_shape[0], -1, cols.shape[-1])

    def _tiles(self) -> bool:
        """Whether the windows tile the image without overlap, padding or dilation (``kernel_size == stride``)."""
        return self.kernel_size == self.stride and self.padding == (0, 0) and self.dilation == (1, 1)

    def fold(self, cols: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`windows`: sum window entries ``(N, C, k, L)`` back onto the input ``(N, C, H, W)``.

        :param cols: Window values.
        :return: Input-shaped sums (padded positions dropped).
        """
        c, h, w = self.in_shape
        n = cols.shape[0]
        if self._tiles():  # the inverse of the reshape in `windows`, zeros on the rows/columns no window covers
            (kh, kw), (_, ho, wo) = self.kernel_size, self.out_shape
            t = cols.reshape(n, c, kh, kw, ho, wo).permute(0, 1, 4, 2, 5, 3).reshape(n, c, ho * kh, wo * kw)
            return F.pad(t, (0, w - wo * kw, 0, h - ho * kh)) if (ho * kh, wo * kw) != (h, w) else t
        ph, pw = self.padding
        out = F.fold(
            cols.reshape(n, -1, cols.shape[-1]),
            (h + 2 * ph, w + 2 * pw),
            self.kernel_size,
            dilation=self.dilation,
            stride=self.stride,
        )
        return out[:, :, ph : ph + h, pw : pw + w]

    def _route(self, best: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Rows ``(B, M, C, L)`` sent each to the input ``best`` ``(B, C, L)`` of its window: ``(B, M, *in_shape)``."""
        nb, m, c, n_out = values.shape
        k = self.kernel_size[0] * self.kernel_size[1]
        cols = torch.zeros(nb, m, c, k, n_out, dtype=values.dtype, device=values.device)
        cols.scatter_(3, best[:, None, :, None, :].expand(nb, m, c, 1, n_out), values[:, :, :, None, :])
        return self.fold(cols.reshape(nb * m, c, cols.shape[3], n_out)).reshape(nb, m, *self.in_shape)

    def relax_backward(  # noqa: D102
        self, a: torch.Tensor, const: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
    ) -> Tensors:
        m = a.shape[1]
        a = self.rows_for(a, lower)
        neg = a.clamp(max=0)
        pos = a - neg
        best, _, dominated, upper_max = maxpool_windows(self, lower, upper)
        c, n_out = self.in_shape[0], best.shape[-1]
        pos, neg = pos.reshape(-1, m, c, n_out), neg.reshape(-1, m, c, n_out)
        dom = dominated[:, None].to(a.dtype)
        const = const + (neg * (1 - dom) * upper_max[:, None]).flatten(2).sum(-1)
        return self._route(best, pos + neg * dom), const

    def pull_back_hull(  # noqa: D102
        self, lo: torch.Tensor, hi: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
    ) -> Tensors:
        _, possible, dominated, _ = maxpool_windows(self, lower, upper)
        b, m = lo.shape[:2]
        c, n_out = self.in_shape[0], possible.shape[-1]
        lo, hi = lo.reshape(b, m, c, n_out), hi.reshape(b, m, c, n_out)
        dom = dominated[:, None]
        lo = torch.where(dom, lo, lo.clamp(max=0))  # a non-dominated window may route its row to any possible input
        hi = torch.where(dom, hi, hi.clamp(min=0))
        mask = possible[:, None].to(lo.dtype)  # for a dominated window the only possible input is the dominating one
        k = mask.shape[3]
        fold_lo = self.fold((mask * lo[:, :, :, None]).reshape(b * m, c, k, n_out)).reshape(b, m, *self.in_shape)
        fold_hi = self.fold((mask * hi[:, :, :, None]).reshape(b * m, c, k, n_out)).reshape(b, m, *self.in_shape)
        return fold_lo, fold_hi

    def ball_step(  # noqa: D102
        self, c: torch.Tensor, rho: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, norm: float, lip: Scalar
    ) -> Tensors:
        # A dominated window routes the centre to its maximum; the others, of unknown routing, move into the ball
        # through the pooling's Lipschitz constant, which also scales rho.
        c = self.rows_for(c, lower)
        best, _, dominated, _ = maxpool_windows(self, lower, upper)
        nb, m, ch, n_out = best.shape[0], c.shape[1], self.in_shape[0], best.shape[-1]
        c = c.reshape(nb, m, ch, n_out)
        dom = dominated[:, None]
        rho = lip * (rho + dual_norm(torch.where(dom, 0.0, c), norm))
        return self._route(best, torch.where(dom, c, 0.0)), rho

    def supports_patches(self) -> bool:  # noqa: D102
        return True

    def patch_size(self, size: Pair) -> Pair:  # noqa: D102
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        return ((size[0] - 1) * sh + dh * (kh - 1) + 1, (size[1] - 1) * sw + dw * (kw - 1) + 1)

    def patch_backward(  # noqa: D102
        self, a: torch.Tensor, const: torch.Tensor, geometry: PatchGeometry, lower: torch.Tensor, upper: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, PatchGeometry]:
        # The relaxation of relax_backward on the patch: each output entry routes its (positive, or dominated
        # negative) coefficient to the best input of its window, a transposed "convolution" whose one-hot kernel
        # varies with the position; non-dominated negative coefficients multiply the window's upper bound.
        best, _, dominated, upper_max = maxpool_windows(self, lower, upper)
        grid = (lower.shape[0], self.in_shape[0], *self.out_shape[1:])
        best_p = geometry.gather(best.to(a.dtype).reshape(grid)).long()
        dom = geometry.gather(dominated.to(a.dtype).reshape(grid))
        neg = a.clamp(max=0)
        const = const + (neg * (1 - dom) * geometry.gather(upper_max.reshape(grid))).flatten(2).sum(-1)
        coef = a - neg + neg * dom
        b, rows, c, ph, pw = a.shape
        k = self.kernel_size[0] * self.kernel_size[1]
        cols = torch.zeros(b * rows, c, k, ph * pw, dtype=a.dtype, device=a.device)
        cols.scatter_(2, best_p.reshape(b * rows, c, 1, ph * pw), coef.reshape(b * rows, c, 1, ph * pw))
        size = self.patch_size((ph, pw))
        a = F.fold(cols.reshape(b * rows, c * k, ph * pw), size, self.kernel_size, self.dilation, 0, self.stride)
        geometry = geometry.through_conv(size, self.stride, self.padding)
        return a.reshape(b, rows, c, *size), const, geometry

    def overlap(self) -> int:
        """Largest number of pooling windows one input belongs to."""
        n_out = math.prod(self.out_shape[1:])
        k = self.kernel_size[0] * self.kernel_size[1]
        ones = torch.ones((1, self.in_shape[0], k, n_out), dtype=DTYPE)
        return int(round(float(self.fold(ones).max())))

    def operator_norm(self, norm: float, in_scale: torch.Tensor | None = None) -> float:  # noqa: D102
        return math.sqrt(self.overlap()) * NORM_SLACK if norm == 2 else 1.0


def maxpool_windows(op: MaxPool2d, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Which inputs of each pooling window can be the maximum, given input bounds.

    :param op: The pooling operation.
    :param lo: Lower bounds of its input ``(B, C, H, W)``.
    :param hi: Upper bounds.
    :return: ``(best, possible, dominated, upper_max)``: ``best`` ``(B, C, L)`` window index of the input with the
        largest lower bound; ``possible`` ``(B, C, k, L)`` inputs whose upper bound reaches that lower bound (the only
        ones that can be the maximum); ``dominated`` ``(B, C, L)`` windows with a single possible input; ``upper_max``
        ``(B, C, L)`` the largest upper bound (an upper bound of the output).
    """
    lw, uw = op.windows(lo), op.windows(hi)
    lstar, best = lw.max(dim=2)
    possible = uw >= lstar[:, :, None]
    dominated = possible.sum(dim=2) == 1
    return best, possible, dominated, uw.max(dim=2).values
