"""Where rows kept as patches lie on a layer boundary (the geometry of :mod:`art_jacreg.certify.patches`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

__all__ = ["PatchGeometry"]

Pair = tuple[int, int]


class PatchGeometry:
    """Where rows kept as patches lie on a layer boundary ``(C, H, W)``: patch ``l`` of the ``grid`` covers
    ``size`` pixels from ``(l // grid_w * stride - off, l % grid_w * stride - off)``; ``pos`` ``(B, R)`` picks each
    row's patch (see :mod:`art_jacreg.certify.patches`).

    :param size: Patch height and width.
    :param stride: Distance between neighbouring patches.
    :param off: Offset of the first patch.
    :param grid: Number of patches per column and row (the output positions).
    :param pos: Flat patch index of each row, ``(B, R)``.
    """

    def __init__(self, size: Pair, stride: Pair, off: Pair, grid: Pair, pos: torch.Tensor) -> None:
        self.size, self.stride, self.off, self.grid, self.pos = size, stride, off, grid, pos

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """The patches of ``t`` ``(B or 1, C, H, W)`` (or one ``(C, H, W)``) under the rows, zero outside the image.

        :param t: Values on the boundary.
        :return: ``(B, R, C, size_h, size_w)``.
        """
        t = t if t.ndim == 4 else t[None]
        size, stride, off, grid, pos = self.size, self.stride, self.off, self.grid, self.pos
        c, h, w = t.shape[1:]
        need_h, need_w = (grid[0] - 1) * stride[0] + size[0], (grid[1] - 1) * stride[1] + size[1]
        bottom, right = need_h - h - off[0], need_w - w - off[1]
        t = t[:, :, : h + min(bottom, 0), : w + min(right, 0)]
        t = F.pad(t, (off[1], max(right, 0), off[0], max(bottom, 0)))
        cols = F.unfold(t, size, stride=stride)  # (B or 1, C * kh * kw, grid_h * grid_w)
        cols = cols.expand(pos.shape[0], -1, -1)
        picked = cols.gather(2, pos[:, None, :].expand(-1, cols.shape[1], -1))
        return picked.transpose(1, 2).reshape(pos.shape[0], pos.shape[1], c, size[0], size[1])

    def inside(self, height: int, width: int) -> bool:
        """Whether every patch lies inside a ``height x width`` image (then :meth:`gather` never pads).

        :param height: Image height.
        :param width: Image width.
        :return: ``True`` if no patch reaches outside the image.
        """
        if self.off[0] > 0 or self.off[1] > 0:  # the first patch starts above or left of the image
            return False
        end_h = (self.grid[0] - 1) * self.stride[0] + self.size[0] - self.off[0]  # one past the last patch's end
        end_w = (self.grid[1] - 1) * self.stride[1] + self.size[1] - self.off[1]
        return end_h <= height and end_w <= width

    def through_conv(self, size: Pair, stride: Pair, padding: Pair) -> PatchGeometry:
        """The geometry one convolution earlier: patches of ``size`` after a transposed convolution.

        :param size: The new patch size.
        :param stride: The convolution's stride.
        :param padding: Its padding.
        :return: A new geometry (``S <- S s``, ``off <- off s + p``).
        """
        new_stride = (self.stride[0] * stride[0], self.stride[1] * stride[1])
        new_off = (self.off[0] * stride[0] + padding[0], self.off[1] * stride[1] + padding[1])
        return PatchGeometry(size, new_stride, new_off, self.grid, self.pos)
