"""The input set ``B_p(x, eps) ∩ box`` shared by the certifiers, margin rows, and the tensor-side checks of their
arguments (the vocabulary itself, norms, methods, labels and eps, lives in :mod:`art_jacreg._validate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from art_jacreg import _validate
from art_jacreg.certify.ops import DTYPE, PiecewiseLinearNetwork

__all__ = [
    "InputSet",
    "box_deviation",
    "check_network",
    "check_x",
    "validate_labels",
    "validate_eps",
    "input_set",
    "margin_rows",
]


def check_network(net: Any) -> PiecewiseLinearNetwork:
    """Check that ``net`` is a :class:`PiecewiseLinearNetwork`.

    :param net: The object to check.
    :return: ``net``.
    :raises TypeError: Otherwise.
    """
    if not isinstance(net, PiecewiseLinearNetwork):
        raise TypeError(f"`net` must be a PiecewiseLinearNetwork (see build_network), got {type(net).__name__}.")
    return net


def check_x(net: PiecewiseLinearNetwork, x: Any) -> torch.Tensor:
    """Validate an input batch and return it as a float64 CPU tensor (a copy).

    :param net: The network.
    :param x: Tensor or array ``(B, *net.input_shape)``.
    :return: float64 tensor.
    :raises ValueError: On a wrong shape or non-finite values.
    """
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    _validate.check_input_shape(tuple(x.shape), net.input_shape, "x")
    x = x.detach().to("cpu", DTYPE).clone()
    _validate.check_finite(x.numpy(), "x")
    return x


def validate_labels(labels: Any, n: int, num_classes: int) -> torch.Tensor:
    """Labels as int64 indices from indices ``(B,)`` or exact one-hot rows ``(B, K)`` (see
    :func:`art_jacreg._validate.validate_labels`).

    :param labels: The labels.
    :param n: Batch size.
    :param num_classes: Number of classes ``K``.
    :return: int64 tensor ``(B,)``.
    :raises ValueError: On a wrong shape, out-of-range indices or rows that are not one-hot.
    """
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels
    return torch.from_numpy(_validate.validate_labels(arr, n, num_classes, name="labels"))


def validate_eps(eps: Any, n: int, name: str = "eps") -> torch.Tensor:
    """A radius per sample: a number or an array ``(B,)``, finite and ``>= 0``.

    :param eps: The radius.
    :param n: Batch size.
    :param name: Argument name for messages.
    :return: float64 tensor ``(B,)``.
    :raises ValueError: Otherwise.
    """
    arr = eps.detach().cpu().numpy() if isinstance(eps, torch.Tensor) else eps
    return torch.from_numpy(_validate.validate_eps_per_sample(arr, n, name))


@dataclass
class InputSet:
    """The set ``B_p(x, eps) ∩ [lo, hi]`` a certificate is about (``lo <= x <= hi`` always holds).

    :param x: Centres ``(B, *input_shape)``, float64.
    :param eps: Radii ``(B,)``.
    :param norm: ``2.0`` or ``inf``.
    :param lo: Lower corner of the smallest box containing the set.
    :param hi: Upper corner of that box.
    :param centres: The values ``h_0(x), ..., h_n(x)`` of a network at the centres, when already computed (they do
        not depend on ``eps``: a radius search computes them once); ``None`` otherwise.
    """

    x: torch.Tensor
    eps: torch.Tensor
    norm: float
    lo: torch.Tensor
    hi: torch.Tensor
    centres: list[torch.Tensor] | None = None

    def eps_like(self, t: torch.Tensor) -> torch.Tensor:
        """``eps`` reshaped to broadcast against ``t`` of shape ``(B, ...)``."""
        return self.eps.reshape(-1, *([1] * (t.ndim - 1)))

    def deviation(self, p: float) -> torch.Tensor:
        """Per-sample upper bound on ``||x' - x||_p`` over the set, ``p`` in ``{2, inf}`` (any of the two norms).

        :param p: The norm to measure the deviation in.
        :return: ``(B,)``; ``eps`` or less in the set's own norm, the box's bound in the other.
        :raises ValueError: If ``p`` is not ``2`` or ``inf``.
        """
        p = _validate.validate_norm(p, "p")
        dev = box_deviation(self.x, self.lo, self.hi, p)
        return torch.minimum(dev, self.eps) if p == self.norm else dev

    def subset(self, idx: torch.Tensor) -> InputSet:
        """The input set of the samples ``idx``."""
        centres = None if self.centres is None else [t[idx] for t in self.centres]
        return InputSet(self.x[idx], self.eps[idx], self.norm, self.lo[idx], self.hi[idx], centres)


def box_deviation(centre: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample ``max ||v - centre||_p`` over ``v`` in the box ``[lo, hi]`` (which contains ``centre``).

    :param centre: ``(B, ...)``.
    :param lo: Lower corner, same shape.
    :param hi: Upper corner, same shape.
    :param p: ``2`` or ``inf``.
    :return: ``(B,)``.
    """
    box = torch.maximum(hi - centre, centre - lo).flatten(1)
    return box.amax(dim=1) if p == math.inf else box.norm(dim=1)


def input_set(x: torch.Tensor, eps: torch.Tensor, norm: float, clip_values: Any) -> InputSet:
    """Build :class:`InputSet`; the clip box is enlarged to contain ``x`` so that segments from ``x`` stay inside.

    :param x: Inputs ``(B, *input_shape)`` (float64 for certificates; the set keeps their dtype and device).
    :param eps: Radii ``(B,)``.
    :param norm: ``2.0`` or ``inf``.
    :param clip_values: ``None`` or ``(min, max)``, scalars or arrays broadcastable to one input.
    :return: The set.
    :raises ValueError: On malformed ``clip_values``.
    """
    e = eps.reshape(-1, *([1] * (x.ndim - 1)))
    lo, hi = x - e, x + e
    if clip_values is not None:
        if not isinstance(clip_values, (tuple, list)) or len(clip_values) != 2:
            raise ValueError(f"`clip_values` must be None or a pair (min, max), got {clip_values!r}.")
        try:
            cmin, cmax = (
                torch.as_tensor(np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, np.float64))
                for v in clip_values
            )
            cmin, cmax = torch.broadcast_to(cmin, x.shape[1:]), torch.broadcast_to(cmax, x.shape[1:])
            cmin, cmax = cmin.to(x.device, x.dtype), cmax.to(x.device, x.dtype)
        except (RuntimeError, ValueError, TypeError) as err:
            raise ValueError(f"`clip_values` must broadcast to the input shape {tuple(x.shape[1:])}.") from err
        if bool((cmin > cmax).any()):
            raise ValueError("`clip_values` must satisfy min <= max.")
        lo = torch.maximum(lo, torch.minimum(cmin, x))
        hi = torch.minimum(hi, torch.maximum(cmax, x))
    return InputSet(x, eps, norm, lo, hi)


def margin_rows(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``e_y - e_j`` for ``j != y``: the margins ``m_j = z_y - z_j``.

    :param labels: int64 ``(B,)``.
    :param num_classes: ``K >= 2``.
    :return: ``(C, others)``: ``C`` float64 ``(B, K - 1, K)`` and ``others`` int64 ``(B, K - 1)`` (the ``j``).
    """
    b = labels.shape[0]
    ar = torch.arange(num_classes - 1).expand(b, -1)
    others = ar + (ar >= labels[:, None]).long()
    c = torch.zeros(b, num_classes - 1, num_classes, dtype=DTYPE)
    c.scatter_(2, labels[:, None, None].expand(-1, num_classes - 1, 1), 1.0)
    c.scatter_(2, others[:, :, None], -1.0)
    return c, others
