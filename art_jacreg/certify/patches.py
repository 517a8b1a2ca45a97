"""Backward linear bounds in *patch* form for convolutional prefixes (the patches mode of auto_LiRPA, Xu et al. 2020).

CROWN bounds each undecided unit ``u`` of a layer with a backward pass of its own row ``e_u``. Through convolutions
that row stays inside ``u``'s receptive field, so instead of a full ``(C, H, W)`` tensor it is kept as a patch
``(C, P, P)`` placed at ``pos(u) * S - off`` with the geometry updated backwards through each convolution of kernel
``k``, stride ``s`` and padding ``p``: ``P <- (P - 1) s + k``, ``S <- S s``, ``off <- off s + p``; the pulled-back
patch is the transposed convolution of the patch with the layer's weight (no padding). Entries that fall outside the
image multiply the convolution's zero padding and are dropped. On the MNIST CNN this is about 50 times less
arithmetic than dense rows, with the same numbers (the tests compare both to float64 rounding).

Supported prefixes: element-wise affine maps (preprocessing, BatchNorm), ``Conv2d`` with ``groups=1`` and no dilation,
and ReLU. Anything else (MaxPool, reshapes, Linear, depthwise AvgPool) is left to the dense engine,
:func:`~art_jacreg.certify.intervals.backward_lower`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from art_jacreg.certify._common import InputSet
from art_jacreg.certify.ops import Affine, Conv2d, PiecewiseLinearNetwork, ReLU

__all__ = ["patch_supported", "patch_elements", "patch_lower"]

Pair = tuple[int, int]


def patch_supported(net: PiecewiseLinearNetwork, end: int) -> bool:
    """Whether the operations before boundary ``end`` form a prefix :func:`patch_lower` handles.

    :param net: The network.
    :param end: Layer boundary whose units are bounded.
    :return: ``True`` for a chain of element-wise affines, plain ``Conv2d`` and ReLU on ``(C, H, W)`` tensors.
    """
    if end == 0 or len(net.input_shape) != 3:
        return False
    for op in net.ops[:end]:
        if isinstance(op, Conv2d):
            if op.groups != 1 or op.dilation != (1, 1):
                return False
        elif not isinstance(op, (Affine, ReLU)):
            return False
    return True


def patch_elements(net: PiecewiseLinearNetwork, end: int) -> int:
    """Largest number of entries of one row's patch on the way back from ``end`` (for chunking).

    :param net: The network (:func:`patch_supported` must hold for ``end``).
    :param end: Layer boundary of the units.
    :return: ``max_i C_i P_i^2`` over the boundaries ``i < end``.
    """
    size, most = (1, 1), 1
    for op in reversed(net.ops[:end]):
        if isinstance(op, Conv2d):
            kh, kw = op.weight.shape[-2:]
            size = ((size[0] - 1) * op.stride[0] + kh, (size[1] - 1) * op.stride[1] + kw)
        most = max(most, op.in_shape[0] * size[0] * size[1])
    return most


def _gather(t: torch.Tensor, size: Pair, stride: Pair, off: Pair, grid: Pair, pos: torch.Tensor) -> torch.Tensor:
    """The patches of ``t`` ``(B or 1, C, H, W)`` at the row positions ``pos`` ``(B, R)``, zero outside the image.

    Patch ``l`` of the ``grid`` starts at ``(l // grid_w * stride - off, l % grid_w * stride - off)``.

    :return: ``(B, R, C, size_h, size_w)``.
    """
    c, h, w = t.shape[1:]
    need_h, need_w = (grid[0] - 1) * stride[0] + size[0], (grid[1] - 1) * stride[1] + size[1]
    bottom, right = need_h - h - off[0], need_w - w - off[1]
    t = t[:, :, : h + min(bottom, 0), : w + min(right, 0)]
    t = F.pad(t, (off[1], max(right, 0), off[0], max(bottom, 0)))
    cols = F.unfold(t, size, stride=stride)  # (B or 1, C * kh * kw, grid_h * grid_w)
    cols = cols.expand(pos.shape[0], -1, -1)
    picked = cols.gather(2, pos[:, None, :].expand(-1, cols.shape[1], -1))
    return picked.transpose(1, 2).reshape(pos.shape[0], pos.shape[1], c, size[0], size[1])


def patch_lower(
    net: PiecewiseLinearNetwork,
    s: InputSet,
    lower: list[torch.Tensor],
    upper: list[torch.Tensor],
    end: int,
    idx: torch.Tensor,
) -> torch.Tensor:
    """CROWN lower bounds of ``h_end[u]`` and of ``-h_end[u]`` for the units ``idx``, computed in patch form.

    The same bounds as :func:`~art_jacreg.certify.intervals.backward_lower` with rows ``±e_u`` (ReLU relaxation of
    :func:`~art_jacreg.certify.intervals.relu_relaxation`, concretised over the box and, for ``p = 2``, the ball).

    :param net: The network (:func:`patch_supported` must hold for ``end``).
    :param s: The input set.
    :param lower: Lower bounds of ``h_0 .. h_end`` (the ReLU inputs are used), each ``(B, *shape_i)``.
    :param upper: Upper bounds, same shapes.
    :param end: Layer boundary of the units.
    :param idx: Flat unit indices into ``h_end``, ``(B, m)``.
    :return: ``(B, 2 m)``: lower bounds of ``h_end[idx]``, then of ``-h_end[idx]`` (minus the upper bounds).
    :raises ValueError: If the prefix is not supported (see :func:`patch_supported`).
    """
    if not patch_supported(net, end):
        raise ValueError(
            f"`end`={end!r}: the operations before it are not a chain of convolutions, element-wise affines and ReLUs "
            "on (C, H, W) tensors; use intervals.backward_lower."
        )
    from art_jacreg.certify.intervals import relu_relaxation

    c_end, h_end, w_end = net.ops[end - 1].out_shape
    grid = (h_end, w_end)
    b, m = idx.shape
    pos = torch.cat([idx % (h_end * w_end)] * 2, dim=1)  # (B, R), R = 2 m
    chan = torch.cat([idx // (h_end * w_end)] * 2, dim=1)
    sign = torch.cat([torch.ones(b, m), -torch.ones(b, m)], dim=1).to(s.x.dtype)
    rows = 2 * m
    a = torch.zeros(b, rows, c_end, 1, 1, dtype=s.x.dtype)
    a.scatter_(2, chan[:, :, None, None, None], sign[:, :, None, None, None])
    const = torch.zeros(b, rows, dtype=s.x.dtype)
    size, stride, off = (1, 1), (1, 1), (0, 0)

    def at(t: torch.Tensor) -> torch.Tensor:
        return _gather(t if t.ndim == 4 else t[None], size, stride, off, grid, pos)

    for i in range(end - 1, -1, -1):
        op = net.ops[i]
        if isinstance(op, ReLU):
            low_slope, up_slope, up_icpt = relu_relaxation(at(lower[i]), at(upper[i]))
            neg = a.clamp(max=0)
            const = const + (neg * up_icpt).flatten(2).sum(-1)
            a = torch.addcmul(a * low_slope, neg, up_slope - low_slope)
            continue
        const = const + (a * at(op.offset)).flatten(2).sum(-1)
        if isinstance(op, Affine):
            a = a * at(op.scale.expand(op.in_shape))
            continue
        c_out = a.shape[2]
        a = F.conv_transpose2d(a.reshape(b * rows, c_out, *size), op.weight, stride=op.stride)
        size = (a.shape[-2], a.shape[-1])
        stride = (stride[0] * op.stride[0], stride[1] * op.stride[1])
        off = (off[0] * op.stride[0] + op.padding[0], off[1] * op.stride[1] + op.padding[1])
        a = a.reshape(b, rows, op.in_shape[0], *size)
        a = a * at(torch.ones((1, 1, *op.in_shape[1:]), dtype=a.dtype))  # drop what multiplies zero padding
    lo, hi = at(s.lo), at(s.hi)
    low = const + (a * (hi + lo) / 2).flatten(2).sum(-1) - (a.abs() * (hi - lo) / 2).flatten(2).sum(-1)
    if s.norm == 2:
        ball = const + (a * at(s.x)).flatten(2).sum(-1) - s.eps[:, None] * a.flatten(2).norm(dim=-1)
        low = torch.maximum(low, ball)
    return low
