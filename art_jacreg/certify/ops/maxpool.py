"""2-D max pooling and its relaxations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812

from art_jacreg.certify._dtype import DTYPE, Shape
from art_jacreg.certify.ops.base import NORM_SLACK, PiecewiseOp, Relaxation, Scalar, Tensors, dual_norm
from art_jacreg.certify.ops.maxpool_patches import pooled_patch_rows
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
        zeros = torch.zeros((1, *in_shape), dtype=DTYPE)
        out = F.max_pool2d(zeros, self.kernel_size, self.stride, self.padding, self.dilation)
        super().__init__(in_shape, out.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if not x.requires_grad and self._tiles():
            return self._window_max(x)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation)

    def _window_max(self, x: torch.Tensor) -> torch.Tensor:
        """Tiling windows only: the maximum of each window, ``(..., C, ho, wo)``, as element-wise maxima of strided
        slices: several times faster than ``max_pool2d`` on CPU in float64, and exact. Not for tensors that need
        gradients (``max_pool2d`` sends a tie's gradient to one input, ``torch.maximum`` splits it).
        """
        kh, kw = self.kernel_size
        t = self._tile(x)  # (..., C, ho, kh, wo, kw)
        rows = t[..., 0, :, :]
        for a in range(1, kh):
            rows = torch.maximum(rows, t[..., a, :, :])
        out = rows[..., 0]
        for b in range(1, kw):
            out = torch.maximum(out, rows[..., b])
        return out

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

    def _tile(self, x: torch.Tensor) -> torch.Tensor:
        """Tiling windows only: ``x`` ``(..., C, H, W)`` as ``(..., C, ho, kh, wo, kw)``, window ``(i, j)`` at
        ``[..., i, :, j, :]`` (a view when the windows cover the image).
        """
        (kh, kw), (_, ho, wo) = self.kernel_size, self.out_shape
        x = x[..., : ho * kh, : wo * kw]
        return x.reshape(*x.shape[:-2], ho, kh, wo, kw)

    def _tile_possible(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tiling windows only: the inputs that can be the maximum ``(B, C, ho, kh, wo, kw)`` (``1.0``, else
        ``0.0``) and the dominated windows ``(B, C, ho, 1, wo, 1)`` (as :func:`maxpool_windows`, in the layout of
        :meth:`_tile`).
        """
        lstar = self._window_max(lo.detach())  # only compared: no gradient
        possible = (self._tile(hi) >= lstar[:, :, :, None, :, None]).to(lo.dtype)
        return possible, self._count(possible)[:, :, :, None, :, None] == 1

    def _count(self, tiled: torch.Tensor) -> torch.Tensor:
        """Tiling windows only: how many entries of each window ``tiled`` ``(B, C, ho, kh, wo, kw)`` marks with
        ``1.0``, ``(B, C, ho, wo)`` (a native pooling kernel: summing over the small window dimensions is slow).
        """
        (kh, kw), (_, ho, wo) = self.kernel_size, self.out_shape
        flat = tiled.reshape(*tiled.shape[:2], ho * kh, wo * kw)
        return F.avg_pool2d(flat, self.kernel_size, self.stride, divisor_override=1)

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
        if self._tiles():  # one pass: the value where the window's index equals `best`, zero elsewhere
            (kh, kw), (_, ho, wo) = self.kernel_size, self.out_shape
            index = torch.arange(k, device=best.device).reshape(1, 1, 1, kh, 1, kw)
            return self._spread((best.reshape(nb, c, ho, 1, wo, 1) == index).to(values.dtype), values)
        cols = torch.zeros(nb, m, c, k, n_out, dtype=values.dtype, device=values.device)
        cols.scatter_(3, best[:, None, :, None, :].expand(nb, m, c, 1, n_out), values[:, :, :, None, :])
        return self.fold(cols.reshape(nb * m, c, cols.shape[3], n_out)).reshape(nb, m, *self.in_shape)

    def _spread(self, where: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Tiling windows only: rows ``(B, M, C, L)`` copied onto the inputs of their window that ``where``
        ``(B, C, ho, kh, wo, kw)`` marks with ``1.0`` (``0.0`` elsewhere), zero elsewhere: ``(B, M, *in_shape)``
        (what :meth:`fold` makes of them).
        """
        (kh, kw), (_, ho, wo), (ch, h, w) = self.kernel_size, self.out_shape, self.in_shape
        nb, m = values.shape[:2]
        # one copy into the input layout, then a product with a mask contiguous along the rows (much faster than
        # torch.where broadcasting over the small window dimensions)
        out = values.reshape(nb, m, ch, ho, 1, wo, 1).expand(nb, m, ch, ho, kh, wo, kw).reshape(nb, m, ch, -1)
        mask = where.reshape(where.shape[0], 1, ch, -1)
        out = out.mul_(mask) if kh * kw > 1 else out * mask  # a 1x1 window: `out` is a view of `values`
        out = out.reshape(nb, m, ch, ho * kh, wo * kw)
        return F.pad(out, (0, w - wo * kw, 0, h - ho * kh)) if (ho * kh, wo * kw) != (h, w) else out

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

    def pull_back_interval(  # noqa: D102
        self, c: torch.Tensor, r: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
    ) -> Tensors:
        if not self._tiles():
            return super().pull_back_interval(c, r, lower, upper)
        # pull_back_hull's numbers with the centre and radius taken on the (smaller) output: tiling windows do not
        # overlap, so each input receives at most one window's row
        c, r = self.rows_for(c, lower), self.rows_for(r, lower)
        possible, dominated = self._tile_possible(lower, upper)
        b, m, ch = c.shape[0], c.shape[1], self.in_shape[0]
        lo, hi = (c - r).reshape(b, m, ch, -1), (c + r).reshape(b, m, ch, -1)
        cap = torch.where(dominated, torch.inf, 0.0).to(c.dtype).reshape(b, 1, ch, -1)
        lo, hi = torch.minimum(lo, cap), torch.maximum(hi, -cap)  # a non-dominated window: [min(lo, 0), max(hi, 0)]
        return self._spread(possible, (hi + lo) / 2), self._spread(possible, (hi - lo) / 2)

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
        nb, m, ch = c.shape[0], c.shape[1], self.in_shape[0]
        c = c.reshape(nb, m, ch, -1)
        if self._tiles():  # the dominating input is the only possible one: route c to the possible inputs
            possible, dominated = self._tile_possible(lower, upper)
            free = (~dominated).to(c.dtype).reshape(nb, 1, ch, -1)
            rho = lip * (rho + dual_norm(c * free, norm))
            return self._spread(possible * dominated, c), rho
        best, _, dominated, _ = maxpool_windows(self, lower, upper)
        dom = dominated[:, None]
        rho = lip * (rho + dual_norm(torch.where(dom, 0.0, c), norm))
        return self._route(best, torch.where(dom, c, 0.0)), rho

    def units_to_tighten(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """The inputs whose tighter bounds can change the relaxation or the output's bounds: those that can be the
        maximum of their window (the others' bounds never reach the window's largest lower bound).

        :param lo: Lower bounds of the input ``(B, C, H, W)``.
        :param hi: Upper bounds.
        :return: Bool mask, same shape.
        """
        possible = maxpool_windows(self, lo, hi)[1]
        return self.fold(possible.to(lo.dtype)).reshape(lo.shape) > 0

    def supports_patches(self) -> bool:  # noqa: D102
        return True

    def patch_size(self, size: Pair) -> Pair:  # noqa: D102
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        return ((size[0] - 1) * sh + dh * (kh - 1) + 1, (size[1] - 1) * sw + dw * (kw - 1) + 1)

    def patch_backward(  # noqa: D102
        self, a: torch.Tensor, const: torch.Tensor, geometry: PatchGeometry, lower: torch.Tensor, upper: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, PatchGeometry]:
        return pooled_patch_rows(self, maxpool_windows(self, lower, upper), a, const, geometry, None)

    def patch_absorbs_elementwise(self) -> bool:  # noqa: D102
        return self._tiles()  # each input receives at most one window's coefficient

    def patch_backward_after(  # noqa: D102
        self,
        a: torch.Tensor,
        const: torch.Tensor,
        geometry: PatchGeometry,
        lower: torch.Tensor,
        upper: torch.Tensor,
        relaxation: Relaxation,
    ) -> tuple[torch.Tensor, torch.Tensor, PatchGeometry]:
        return pooled_patch_rows(self, maxpool_windows(self, lower, upper), a, const, geometry, relaxation)

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
    if op._tiles():  # pooling kernels and the tile layout instead of copying the windows out
        (kh, kw), (_, ho, wo), (_, _, w) = op.kernel_size, op.out_shape, op.in_shape
        nb, ch = lo.shape[:2]
        tiled, dominated = op._tile_possible(lo, hi)
        flat = F.max_pool2d(lo, op.kernel_size, op.stride, return_indices=True)[1]  # the first maximum, as max()
        row = flat // w - torch.arange(ho, device=flat.device)[:, None] * kh
        col = flat % w - torch.arange(wo, device=flat.device) * kw
        possible = tiled.permute(0, 1, 3, 5, 2, 4).reshape(nb, ch, kh * kw, ho * wo) > 0
        best, upper_max = (row * kw + col).reshape(nb, ch, -1), op.forward(hi).reshape(nb, ch, -1)
        return best, possible, dominated.reshape(nb, ch, -1), upper_max
    lw, uw = op.windows(lo), op.windows(hi)
    lstar, best = lw.max(dim=2)
    possible = uw >= lstar[:, :, None]
    dominated = possible.sum(dim=2) == 1
    return best, possible, dominated, uw.max(dim=2).values
