"""MaxPool2d's patch-form rule (rows kept as patches, :mod:`art_jacreg.certify.patches`), with the element-wise
relaxation of the operation before it (a ReLU) folded in where the pooling windows tile the image.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F  # noqa: N812

from art_jacreg.certify._dtype import Shape
from art_jacreg.certify.ops.base import Relaxation
from art_jacreg.certify.ops.patch_geometry import Pair, PatchGeometry

__all__ = ["pooled_patch_rows"]


class _Pooling(Protocol):
    """What the rule reads of :class:`~art_jacreg.certify.ops.maxpool.MaxPool2d` (which imports this module)."""

    in_shape: Shape
    out_shape: Shape
    kernel_size: Pair
    stride: Pair
    padding: Pair
    dilation: Pair

    def _tiles(self) -> bool: ...

    def _tile(self, x: torch.Tensor) -> torch.Tensor: ...

    def patch_size(self, size: Pair) -> Pair: ...


def pooled_patch_rows(
    op: _Pooling,
    windows: tuple[torch.Tensor, ...],
    a: torch.Tensor,
    const: torch.Tensor,
    geometry: PatchGeometry,
    relaxation: Relaxation | None,
) -> tuple[torch.Tensor, torch.Tensor, PatchGeometry]:
    """The pooling's relaxation on patch rows: each output entry routes its (positive, or dominated negative)
    coefficient to the best input of its window, a transposed "convolution" whose one-hot kernel varies with the
    position; non-dominated negative coefficients multiply the window's upper bound.

    With the element-wise ``relaxation`` of the operation before (tiling windows only), that relaxation is applied to
    the routed coefficients before they are spread, with its maps taken at each window's best input: the numbers of
    the two rules one after the other (up to rounding), on a quarter of the entries for 2x2 windows. Everything that
    does not depend on the row is folded into per-window maps on the layer first, and gathered under the patches once.

    :param op: The pooling.
    :param windows: :func:`~art_jacreg.certify.ops.maxpool.maxpool_windows` of its input bounds.
    :param a: Patch rows ``(B, R, C, *geometry.size)`` on the pooling's output.
    :param const: Constants ``(B, R)``.
    :param geometry: Where the patches lie on the output.
    :param relaxation: ``(lower_slope, upper_slope, upper_intercept)`` of the operation before, on its input, or
        ``None``.
    :return: ``(a', const', geometry')`` on the pooling's input (on the input of the operation before, with
        ``relaxation``).
    """
    best, _, dominated, upper_max = windows
    c, b, rows, ph, pw = op.in_shape[0], *a.shape[:2], *a.shape[3:]
    (kh, kw), tiles = op.kernel_size, op._tiles()
    # tiling windows: where each window's best input lies in a patch of (ph kh, pw kw), from the window's corner
    target = (best // kw) * (pw * kw) + best % kw if tiles else best
    dom = dominated.to(a.dtype)
    # a row entry z goes on as pos_slope z (z >= 0) or neg_slope z (z < 0), and a negative one adds neg_const z
    neg_const = (1 - dom) * upper_max
    maps = [target.to(a.dtype), dom, neg_const]
    if relaxation is not None:
        low_slope, up_slope, up_icpt = (_at_best(op, t, best) for t in relaxation)
        maps = [maps[0], low_slope, dom * up_slope, torch.addcmul(neg_const, dom, up_icpt)]
    grid = (best.shape[0], len(maps) * c, *op.out_shape[1:])
    picked = geometry.gather(torch.stack(maps, 1).reshape(grid)).split(c, dim=2)  # one gather for all maps
    neg = a.clamp(max=0)
    const = const + (neg * picked[-1]).flatten(2).sum(-1)
    pos = a - neg
    coef = torch.addcmul(pos if relaxation is None else pos.mul_(picked[1]), neg, picked[-2])
    target_p = picked[0].long()
    size = op.patch_size((ph, pw))
    if tiles:  # scatter straight into the patch: window (i, j) starts at i kh (pw kw) + j kw
        corner = torch.arange(ph, device=a.device)[:, None] * (kh * pw * kw) + torch.arange(pw, device=a.device) * kw
        a = torch.zeros(b * rows, c, size[0] * size[1], dtype=a.dtype, device=a.device)
        a.scatter_(2, (target_p + corner).reshape(b * rows, c, -1), coef.reshape(b * rows, c, -1))
    else:
        cols = torch.zeros(b * rows, c, kh * kw, ph * pw, dtype=a.dtype, device=a.device)
        cols.scatter_(2, target_p.reshape(b * rows, c, 1, ph * pw), coef.reshape(b * rows, c, 1, ph * pw))
        cols = cols.reshape(b * rows, c * kh * kw, ph * pw)
        a = F.fold(cols, size, op.kernel_size, op.dilation, 0, op.stride)
    geometry = geometry.through_conv(size, op.stride, op.padding)
    return a.reshape(b, rows, c, *size), const, geometry


def _at_best(op: _Pooling, t: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Tiling windows only: ``t`` ``(B, C, H, W)`` taken at the input ``best`` ``(B, C, L)`` of each window."""
    (kh, kw), (_, ho, wo) = op.kernel_size, op.out_shape
    windows = op._tile(t).permute(0, 1, 2, 4, 3, 5).reshape(*t.shape[:2], ho * wo, kh * kw)
    return windows.gather(3, best[..., None])[..., 0]
