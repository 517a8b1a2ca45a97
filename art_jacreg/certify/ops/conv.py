"""2-D convolution with zero padding (AvgPool is represented as a depthwise one)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch.nn.grad import conv2d_input

from art_jacreg.certify._dtype import DTYPE, Shape
from art_jacreg.certify.ops.affine import AffineOp
from art_jacreg.certify.ops.base import NORM_SLACK
from art_jacreg.certify.ops.patch_geometry import Pair, PatchGeometry

__all__ = ["Conv2d"]


class Conv2d(AffineOp):
    """2-D convolution with zero padding.

    Operator norm for l2: the smaller of the exact norm of its explicit matrix (when small) and
    :meth:`circular_spectral_bound`; for l-inf the maximum absolute row sum. Patch-form backward steps (rows kept in
    the receptive field), with any stride, padding, dilation and groups.

    :param weight: ``(C_out, C_in / groups, kh, kw)``.
    :param bias: ``(C_out,)`` or ``None``.
    :param in_shape: ``(C_in, H, W)``.
    :param stride: ``(sh, sw)``.
    :param padding: ``(ph, pw)``.
    :param dilation: ``(dh, dw)``.
    :param groups: Number of groups.
    :param live: Use ``weight`` and ``bias`` themselves (dtype, device, gradient) instead of float64 copies.
    """

    mixes = True
    absorbs_input_scale = True
    explicit_side_factor = 1

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        in_shape: Shape,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
        live: bool = False,
    ) -> None:
        if not live:
            weight = weight.detach().to(DTYPE).clone()
            bias = None if bias is None else bias.detach().to(DTYPE)
        self.live = live
        self.weight, self._abs_weight = weight, None if live else weight.abs()
        self.stride: Pair = (int(stride[0]), int(stride[1]))
        self.padding: Pair = (int(padding[0]), int(padding[1]))
        self.dilation: Pair = (int(dilation[0]), int(dilation[1]))
        self.groups = groups
        if live:  # shapes were checked when the plan was traced: the output size by formula (a probe costs a conv)
            size = [
                (n + 2 * p - d * (k - 1) - 1) // s + 1
                for n, p, d, k, s in zip(in_shape[1:], self.padding, self.dilation, weight.shape[2:], self.stride)
            ]
            super().__init__(in_shape, (weight.shape[0], *size))
        else:
            out = self._conv(torch.zeros((1, *in_shape), dtype=weight.dtype, device=weight.device), weight)
            super().__init__(in_shape, out.shape[1:])
        b = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device) if bias is None else bias
        offset = b.reshape(-1, 1, 1).expand(self.out_shape)
        self._offset = offset if live else offset.clone()

    @property
    def abs_weight(self) -> torch.Tensor:
        """``|W|``: computed once for a frozen operation, at every use for a live one (its gradient follows)."""
        return self.weight.abs() if self._abs_weight is None else self._abs_weight

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def _conv_t(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        size = (y.shape[0], *self.in_shape)
        return conv2d_input(size, weight, y, self.stride, self.padding, self.dilation, self.groups)

    def lin(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._conv(x, self.weight)

    def lin_t(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._conv_t(y, self.weight)

    def abs_lin(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._conv(x, self.abs_weight)

    def abs_lin_t(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._conv_t(y, self.abs_weight)

    def sq_lin(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._conv(x, self.weight.square())

    def operator_norm(self, norm: float, in_scale: torch.Tensor | None = None) -> float:  # noqa: D102
        return self.mixing_norm(norm, in_scale)

    def structured_spectral_bound(self, in_scale: torch.Tensor | None) -> float:  # noqa: D102
        return self.circular_spectral_bound(in_scale)

    def circular_spectral_bound(self, in_scale: torch.Tensor | None) -> float:
        """Exact spectral norm of a circular convolution that contains the zero-padded one: an upper bound.

        The zero-padded input lives in ``[0, H + 2p)``; embedded in a circular grid of ``N >= H + 2p`` (a multiple
        of the stride) no valid output wraps around, so the layer is ``R C E`` with ``E`` an isometric embedding,
        ``R`` a restriction (norm <= 1) and ``C`` the circular strided convolution. Splitting the input into its
        ``s_h s_w`` stride phases (a permutation) turns ``C`` into a stride-1 circular convolution on an ``N/s``
        grid, which the 2-D DFT block-diagonalises: ``||C||_2 = max_w sigma_max(W_hat(w))`` over ``(N/s)^2``
        frequencies, each a ``C_out x (C_in s_h s_w)`` matrix. A non-constant input scale enters as its maximum.

        :param in_scale: Optional element-wise input scale ``in_shape``.
        :return: The bound on ``||A diag(in_scale)||_2``.
        """
        co_g, ci_g, kh, kw = self.weight.shape
        co_g //= self.groups
        chan_scale, extra = torch.ones(ci_g * self.groups, dtype=DTYPE), 1.0
        if in_scale is not None:
            flat = in_scale.reshape(in_scale.shape[0], -1)
            if in_scale.ndim == 3 and bool((flat == flat[:, :1]).all()):
                chan_scale = flat[:, 0]
            else:
                extra = float(in_scale.abs().max())
        _, h, wd = self.in_shape
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        nh, nw = -(-(h + 2 * ph) // sh) * sh, -(-(wd + 2 * pw) // sw) * sw
        mh, mw = nh // sh, nw // sw
        best = 0.0
        for g in range(self.groups):
            wg = self.weight[g * co_g : (g + 1) * co_g] * chan_scale[g * ci_g : (g + 1) * ci_g].reshape(1, -1, 1, 1)
            poly = torch.zeros(co_g, ci_g, sh, sw, mh, mw, dtype=DTYPE)
            for a in range(kh):
                qa, ta = (dh * a) % sh, (dh * a) // sh
                for b in range(kw):
                    qb, tb = (dw * b) % sw, (dw * b) // sw
                    poly[:, :, qa, qb, ta % mh, tb % mw] += wg[:, :, a, b]
            spec = torch.fft.fft2(poly)  # (co, ci, sh, sw, mh, mw)
            mats = spec.permute(4, 5, 0, 1, 2, 3).reshape(mh * mw, co_g, ci_g * sh * sw)
            best = max(best, float(torch.linalg.matrix_norm(mats, ord=2).max()))
        return best * extra * NORM_SLACK

    def supports_patches(self) -> bool:  # noqa: D102
        return True

    def patch_size(self, size: Pair) -> Pair:  # noqa: D102
        kh, kw = self.weight.shape[-2:]
        (sh, sw), (dh, dw) = self.stride, self.dilation
        return ((size[0] - 1) * sh + dh * (kh - 1) + 1, (size[1] - 1) * sw + dw * (kw - 1) + 1)

    def patch_backward(  # noqa: D102
        self, a: torch.Tensor, const: torch.Tensor, geometry: PatchGeometry, lower: torch.Tensor, upper: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, PatchGeometry]:
        const = self.patch_offset(a, const, geometry)
        b, rows, c_out = a.shape[:3]
        if geometry.size == (1, 1) and self.groups == 1 and self.dilation == (1, 1):
            # one pixel per row: the transposed convolution is a product with the weight matrix (one GEMM)
            a = (a.reshape(b * rows, c_out) @ self.weight.reshape(c_out, -1)).reshape(-1, *self.weight.shape[1:])
        else:  # the transposed convolution without padding, as the convolution's input gradient (the same numbers
            # as conv_transpose2d, whose native kernel loops over the rows and took 2.5 times as long)
            size = self.patch_size(geometry.size)
            a = conv2d_input(
                (b * rows, self.in_shape[0], *size),
                self.weight,
                a.reshape(b * rows, c_out, *geometry.size),
                self.stride,
                0,
                self.dilation,
                self.groups,
            )
        geometry = geometry.through_conv((a.shape[-2], a.shape[-1]), self.stride, self.padding)
        a = a.reshape(b, rows, self.in_shape[0], *geometry.size)
        if not geometry.inside(*self.in_shape[1:]):  # drop the entries on the zero padding
            a = a * geometry.gather(torch.ones((1, 1, *self.in_shape[1:]), dtype=a.dtype))
        return a, const, geometry

    def patch_offset(self, a: torch.Tensor, const: torch.Tensor, geometry: PatchGeometry) -> torch.Tensor:  # noqa: D102
        if not geometry.inside(*self.out_shape[1:]):
            return super().patch_offset(a, const, geometry)
        # the offset is constant over each channel: every patch holds the same numbers, no gather needed
        return const + a.sum((-2, -1)) @ self.offset[:, 0, 0]

    def then_elementwise(self, scale: torch.Tensor, shift: torch.Tensor) -> Conv2d | None:  # noqa: D102
        if len(scale.shape) != 3 or not bool((scale == scale[:, :1, :1]).all() and (shift == shift[:, :1, :1]).all()):
            return None  # not constant over each channel
        s, t = scale[:, 0, 0], shift[:, 0, 0]
        return Conv2d(
            self.weight * s.reshape(-1, 1, 1, 1),
            self.offset[:, 0, 0] * s + t,
            self.in_shape,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            live=self.live,
        )
