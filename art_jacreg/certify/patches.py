"""Backward linear bounds in *patch* form for convolutional prefixes (the patches mode of auto_LiRPA, Xu et al. 2020).

CROWN bounds each undecided unit ``u`` of a layer with a backward pass of its own row ``e_u``. Through convolutions
that row stays inside ``u``'s receptive field, so instead of a full ``(C, H, W)`` tensor it is kept as a patch
``(C, P, P)`` placed at ``pos(u) * S - off`` with the geometry updated backwards through each convolution of kernel
``k``, stride ``s`` and padding ``p``: ``P <- (P - 1) s + k``, ``S <- S s``, ``off <- off s + p``; the pulled-back
patch is the transposed convolution of the patch with the layer's weight (no padding). Entries that fall outside the
image multiply the convolution's zero padding and are dropped. On the MNIST CNN this is about 50 times less
arithmetic than dense rows, with the same numbers (the tests compare both to float64 rounding).

Each operation says whether it has a patch-form rule (:meth:`~.ops.base.Op.supports_patches`) and owns it
(:meth:`~.ops.base.Op.patch_backward`, the geometry in :class:`~.ops.patch_geometry.PatchGeometry`). Today: element-wise
affine maps (preprocessing, BatchNorm), ``Conv2d`` with any stride, padding, dilation and groups (so depthwise AvgPool
too), ReLU, and MaxPool (its relaxation routes each coefficient to the best input of its window, a transposed
"convolution" with a one-hot kernel that varies with the position; the patch grows like a convolution's). A ReLU
followed by a pooling whose windows tile the image is applied in one rule
(:meth:`~.ops.base.Op.patch_backward_after`): the ReLU's relaxation acts on the routed coefficients before they are
spread, a quarter of the entries for 2x2 windows. Reshapes and Linear layers are left to the dense engine,
:func:`~art_jacreg.certify.intervals.backward_lower`.
"""

from __future__ import annotations

import torch

from art_jacreg.certify._common import InputSet
from art_jacreg.certify.network import PiecewiseLinearNetwork
from art_jacreg.certify.ops.patch_geometry import PatchGeometry

__all__ = ["patch_supported", "patch_elements", "patch_lower"]


def patch_supported(net: PiecewiseLinearNetwork, end: int) -> bool:
    """Whether the operations before boundary ``end`` form a prefix :func:`patch_lower` handles.

    :param net: The network.
    :param end: Layer boundary whose units are bounded.
    :return: ``True`` for ``(C, H, W)`` inputs and operations that all have a patch-form rule.
    """
    if end == 0 or len(net.input_shape) != 3:
        return False
    return all(op.supports_patches() for op in net.ops[:end])


def patch_elements(net: PiecewiseLinearNetwork, end: int) -> int:
    """Largest number of entries of one row's patch on the way back from ``end`` (for chunking).

    :param net: The network (:func:`patch_supported` must hold for ``end``).
    :param end: Layer boundary of the units.
    :return: ``max_i C_i P_i^2`` over the boundaries ``i < end``.
    """
    size, most = (1, 1), 1
    for op in reversed(net.ops[:end]):
        size = op.patch_size(size)
        most = max(most, op.in_shape[0] * size[0] * size[1])
    return most


def patch_lower(
    net: PiecewiseLinearNetwork,
    s: InputSet,
    lower: list[torch.Tensor],
    upper: list[torch.Tensor],
    end: int,
    idx: torch.Tensor,
) -> torch.Tensor:
    """CROWN lower bounds of ``h_end[u]`` and of ``-h_end[u]`` for the units ``idx``, computed in patch form.

    The same bounds as :func:`~art_jacreg.certify.intervals.backward_lower` with rows ``±e_u`` (the same relaxations,
    concretised over the box and, for ``p = 2``, the ball).

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
            f"`end`={end!r}: the operations before it are not a chain of convolutions, poolings, element-wise affines "
            "and ReLUs on (C, H, W) tensors; use intervals.backward_lower."
        )
    c_end, h_end, w_end = net.ops[end - 1].out_shape
    b, m = idx.shape
    pos = torch.cat([idx % (h_end * w_end)] * 2, dim=1)  # (B, R), R = 2 m
    chan = torch.cat([idx // (h_end * w_end)] * 2, dim=1)
    sign = torch.cat([torch.ones(b, m), -torch.ones(b, m)], dim=1).to(s.x.dtype)
    rows = 2 * m
    a = torch.zeros(b, rows, c_end, 1, 1, dtype=s.x.dtype)
    a.scatter_(2, chan[:, :, None, None, None], sign[:, :, None, None, None])
    const = torch.zeros(b, rows, dtype=s.x.dtype)
    geometry = PatchGeometry((1, 1), (1, 1), (0, 0), (h_end, w_end), pos)
    i = end - 1
    while i >= 0:
        op = net.ops[i]
        absorbs = i > 0 and op.patch_absorbs_elementwise()
        relaxation = net.ops[i - 1].elementwise_relaxation(lower[i - 1], upper[i - 1]) if absorbs else None
        if relaxation is not None:  # e.g. a ReLU then a MaxPool: one rule for both
            a, const, geometry = op.patch_backward_after(a, const, geometry, lower[i], upper[i], relaxation)
            i -= 2
        else:
            a, const, geometry = op.patch_backward(a, const, geometry, lower[i], upper[i])
            i -= 1
    lo, hi = geometry.gather(s.lo), geometry.gather(s.hi)
    low = const + (a * (hi + lo) / 2).flatten(2).sum(-1) - (a.abs() * (hi - lo) / 2).flatten(2).sum(-1)
    if s.norm == 2:
        ball = const + (a * geometry.gather(s.x)).flatten(2).sum(-1) - s.eps[:, None] * a.flatten(2).norm(dim=-1)
        low = torch.maximum(low, ball)
    return low
